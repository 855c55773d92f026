"""The compiled kernels over many calls and from many Python threads: resident
memory stays flat, and concurrent calls give the results of sequential ones; and
the OpenMP wait policy the import asks for."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import threadpoolctl

import convext
from convext import ops

CALLS = 10_000
MIB = 1024 * 1024


def resident_bytes():
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def kernel_calls(rng):
    """(name, call) pairs, each call running one kernel on small fixed inputs."""
    x = rng.standard_normal((2, 6, 6, 3)).astype(np.float32)
    weights = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    out = ops.conv2d_forward(x, weights, bias, padding=1)
    pooled, argmax = ops.maxpool2d_forward(x, 2)
    gamma, beta = np.ones(3, np.float32), np.zeros(3, np.float32)
    _, cache = ops.batchnorm_forward(x, gamma, beta)
    return [
        ("zero_pad", lambda: ops.zero_pad(x, 1)),
        ("zero_pad_backward", lambda: ops.zero_pad_backward(x, 1)),
        ("conv2d_forward", lambda: ops.conv2d_forward(x, weights, bias, padding=1)),
        ("conv2d_forward one channel",
         lambda: ops.conv2d_forward(x[..., :1], weights[:, :, :1], stride=2)),
        ("conv2d_backward",
         lambda: ops.conv2d_backward(out, x, weights, padding=1)),
        ("maxpool2d_forward", lambda: ops.maxpool2d_forward(x, 2)),
        ("maxpool2d_backward",
         lambda: ops.maxpool2d_backward(pooled, argmax, x.shape)),
        ("batchnorm_forward", lambda: ops.batchnorm_forward(x, gamma, beta)),
        ("batchnorm_backward", lambda: ops.batchnorm_backward(x, cache)),
        ("relu_forward", lambda: ops.relu_forward(x)),
        ("relu_backward", lambda: ops.relu_backward(x, x)),
    ]


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"),
                    reason="reads resident memory from /proc (Linux only)")
def test_resident_memory_stays_flat_over_many_calls():
    calls = kernel_calls(np.random.default_rng(0))
    for _, call in calls:
        for _ in range(200):
            call()
    before = resident_bytes()

    for _, call in calls:
        for _ in range(CALLS):
            call()
    after = resident_bytes()

    assert after - before < MIB, (
        f"resident memory grew by {(after - before) / MIB:.2f} MiB over "
        f"{CALLS} calls of each of {len(calls)} kernels"
    )


def test_concurrent_calls_from_python_threads_match_sequential_ones():
    rng = np.random.default_rng(1)
    inputs = [
        (rng.standard_normal((3, 9, 8, 5)), rng.standard_normal((3, 3, 5, 6)))
        for _ in range(8)
    ]

    def run(x, weights):
        out = ops.conv2d_forward(x, weights, stride=2, padding="same")
        dx, dweights, dbias = ops.conv2d_backward(out, x, weights, stride=2,
                                                  padding="same")
        pooled, argmax = ops.maxpool2d_forward(out, 2, stride=1)
        normalised, cache = ops.batchnorm_forward(pooled, np.ones(6), np.zeros(6))
        return [out, dx, dweights, dbias, pooled, argmax, normalised,
                *ops.batchnorm_backward(normalised, cache)]

    expected = [run(*pair) for pair in inputs]
    results = [None] * len(inputs)

    def worker(i):
        for _ in range(20):
            results[i] = run(*inputs[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    for got, want in zip(results, expected, strict=True):
        for got_array, want_array in zip(got, want, strict=True):
            np.testing.assert_array_equal(got_array, want_array)


@pytest.mark.parametrize("environment, expected", [
    ({}, "PASSIVE"),
    ({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE"),
    ({"GOMP_SPINCOUNT": "300000"}, None),
])
def test_import_asks_for_passive_waiting_unless_the_user_chose(environment, expected,
                                                              tmp_path):
    env = {key: value for key, value in os.environ.items()
           if key not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(environment)
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(convext.__file__))
    script = "import os, convext; print(os.environ.get('OMP_WAIT_POLICY'))"

    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path,
                            capture_output=True, text=True, check=True)

    assert result.stdout.strip() == str(expected)


def test_overlapping_kernel_calls_from_python_threads_restore_the_blas_threads():
    # Each call limits the BLAS to one thread while it runs; calls that overlap
    # must not leave that limit behind when the last of them ends.
    def blas_threads():
        blas = threadpoolctl.ThreadpoolController().select(user_api="blas")
        return [pool.num_threads for pool in blas.lib_controllers]

    before = blas_threads()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((16, 14, 14, 32)).astype(np.float32)
    weights = rng.standard_normal((3, 3, 32, 64)).astype(np.float32)
    start = threading.Barrier(4)

    def convolve():
        start.wait()
        for _ in range(10):
            ops.conv2d_forward(x, weights, padding="same")

    threads = [threading.Thread(target=convolve) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert blas_threads() == before


@pytest.mark.parametrize("count, error, match", [
    (0, ValueError, r"n_threads must be in 1\.\.65536, got 0"),
    (10**12, ValueError, r"n_threads must be in 1\.\.65536, got 1000000000000"),
    (2.0, TypeError, r"n_threads must be an int or None, got float"),
])
def test_set_num_threads_refuses_counts_the_kernels_cannot_take(count, error, match):
    before = convext.get_num_threads()

    with pytest.raises(error, match="set_num_threads: " + match):
        convext.set_num_threads(count)

    assert convext.get_num_threads() == before


def test_set_num_threads_takes_numpy_integers():
    try:
        convext.set_num_threads(np.int64(1))
        assert convext.get_num_threads() == 1
        assert type(convext.get_num_threads()) is int
    finally:
        convext.set_num_threads(None)
