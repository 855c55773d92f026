"""Benchmark convext against PyTorch on the CPU, in one run.

Measures:

1. one training epoch of the default architecture on MNIST (batch 64, SGD lr 0.05
   momentum 0.9): convext first, so the peak resident memory read after it is
   convext's own (torch is imported only afterwards), then PyTorch in NCHW and in
   channels_last; seconds per epoch, ms per step, test accuracy after the epoch;
2. every layer of the default architecture alone, at batch 64 and 256: forward
   and forward+backward ms, GFLOP/s of convolutions and dense layers; convext and
   PyTorch measurements alternate in rounds, so that load from other processes
   falls on both alike;
3. the float32 GEMM rate of a 2048x2048 product, numpy.matmul on the machine's
   BLAS and torch.mm, timed just before and just after step 2 and pooled, since
   the speed of a shared machine drifts during a run.

Every time is a median of calls made after warm-up calls. Ratios are convext time
over torch time: above 1, convext is slower. The table goes to stdout, every
number to a JSON file.

Run from anywhere (paths default relative to the repository root):

    python benchmarks/run.py            # full: ~0.5 s per measurement
    python benchmarks/run.py --quick    # short per-layer measurements
    python benchmarks/run.py --smoke    # seconds; what CI runs

Shapes are NHWC for convext; the torch layers get the same data as NCHW or as
channels_last tensors.
"""

import argparse
import contextlib
import dataclasses
import gc
import importlib.util
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import threadpoolctl

REPO_ROOT = Path(__file__).resolve().parents[1]

# convext and torch load one libgomp, which reads its settings once, when loaded.
# convext asks for passive waiting (OMP_WAIT_POLICY=PASSIVE: a thread sleeps as soon
# as a parallel loop ends) unless the environment says otherwise; torch leaves
# libgomp's default, spinning for about 300000 rounds before sleeping, and in one
# quiet moment its channels_last epoch took 19.7 s that way and 23.9 s passive,
# each in a process of its own. So that torch runs here as it runs on its own, and
# both libraries alike, the benchmark asks for that default spin unless the
# environment chooses: `OMP_WAIT_POLICY=PASSIVE python benchmarks/run.py` measures
# both with convext's default instead.
LIBGOMP_DEFAULT_SPINCOUNT = "300000"
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = LIBGOMP_DEFAULT_SPINCOUNT

try:
    import convext
except ModuleNotFoundError as exc:
    if exc.name != "convext":
        raise
    # Not installed: benchmark the checkout, built in place.
    sys.path.insert(0, str(REPO_ROOT))
    import convext

import convext.data
from convext._threads import single_threaded_blas
from convext.layers import BatchNorm, Conv2D, Dense, Flatten, MaxPool2D, ReLU
from convext.profiling import layer_flops

DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "mnist" / "mnist_train.csv.gz"
DEFAULT_JSON = REPO_ROOT / "benchmarks" / "results.json"

EPOCH_BATCH_SIZE = 64
LEARNING_RATE = 0.05
MOMENTUM = 0.9
GEMM_SIZE = 2048
SMOKE_EPOCH_STEPS = 5
SMOKE_TEST_IMAGES = 1000

# OpenBLAS worker threads spin for about 2^28 cycles (0.1 s) after a product
# before they sleep; pausing this long after a multi-threaded numpy GEMM keeps
# them from taking cores from whatever is timed next.
BLAS_SETTLE_SECONDS = 0.3

ENV_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS",
            "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS")

LAYER_PREFIXES = {Conv2D: "conv", BatchNorm: "bn", ReLU: "relu", MaxPool2D: "pool",
                  Dense: "dense"}

IMPLEMENTATIONS = ("convext", "torch_nchw", "torch_channels_last")
SHORT_NAMES = {"convext": "convext", "torch_nchw": "torch",
               "torch_channels_last": "t-cl"}


@dataclasses.dataclass(frozen=True)
class Effort:
    """How long each kind of measurement runs."""

    layer_seconds: float    # per implementation and layer measurement
    layer_rounds: int
    warmup_calls: int
    gemm_seconds: float
    gemm_rounds: int


EFFORTS = {
    "full": Effort(layer_seconds=0.5, layer_rounds=5, warmup_calls=3,
                   gemm_seconds=1.5, gemm_rounds=3),
    "quick": Effort(layer_seconds=0.1, layer_rounds=3, warmup_calls=2,
                    gemm_seconds=0.5, gemm_rounds=2),
    "smoke": Effort(layer_seconds=0.0, layer_rounds=2, warmup_calls=1,
                    gemm_seconds=0.0, gemm_rounds=2),
}

MAX_CALLS_PER_ROUND = 100_000
# Names of the GEMM candidates timed in conv2's rounds.
GEMM_ALONGSIDE_PREFIX = "gemm alongside: "


# ---------------------------------------------------------------------------
# Timing


@dataclasses.dataclass
class Candidate:
    """One implementation of a measurement: run() does one call.

    context() is entered around each round's calls, outside the timed region
    (convext's single-threaded BLAS, a BLAS thread limit). settle_seconds is slept
    after each round, outside the timed region.
    """

    name: str
    run: Callable[[], object]
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    settle_seconds: float = 0.0


def time_interleaved(candidates, seconds, rounds, warmup_calls):
    """Per-call seconds of each candidate, measured in alternating rounds.

    Each candidate is warmed up, then every round runs each candidate in turn, in
    an order rotated from round to round, for about seconds / rounds each.

    Returns {name: list of per-call seconds}.
    """
    calls_per_round = {}
    for candidate in candidates:
        with candidate.context():
            for _ in range(warmup_calls - 1):
                candidate.run()
            started = time.perf_counter()
            candidate.run()
            one_call = time.perf_counter() - started
        time.sleep(candidate.settle_seconds)
        wanted = seconds / rounds / max(one_call, 1e-7)
        calls_per_round[candidate.name] = max(1, min(MAX_CALLS_PER_ROUND,
                                                     math.ceil(wanted)))

    samples = {candidate.name: [] for candidate in candidates}
    for round_index in range(rounds):
        shift = round_index % len(candidates)
        for candidate in candidates[shift:] + candidates[:shift]:
            times = samples[candidate.name]
            gc_was_enabled = gc.isenabled()
            gc.disable()
            try:
                with candidate.context():
                    for _ in range(calls_per_round[candidate.name]):
                        started = time.perf_counter()
                        candidate.run()
                        times.append(time.perf_counter() - started)
            finally:
                if gc_was_enabled:
                    gc.enable()
            time.sleep(candidate.settle_seconds)
    return samples


def summarize_ms(times, prefix):
    """{"<prefix>_ms": median, "<prefix>_ms_min": min, "<prefix>_samples": count}."""
    return {f"{prefix}_ms": 1e3 * statistics.median(times),
            f"{prefix}_ms_min": 1e3 * min(times),
            f"{prefix}_samples": len(times)}


def ratio(numerator, denominator):
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def peak_rss_mb():
    """Peak resident memory of this process so far, in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


# ---------------------------------------------------------------------------
# The layers of the default architecture, alone


@dataclasses.dataclass
class LayerSpec:
    """One layer of the default architecture and the per-sample shapes around it."""

    name: str
    layer_type: type
    config: dict
    input_shape: tuple
    output_shape: tuple
    is_first: bool


def default_layer_specs():
    """Every layer of convext's default architecture but Flatten, named conv1, bn1,
    ..., with its input and output shapes for 28x28x1 images."""
    specs = []
    counts = {}
    shape = (28, 28, 1)
    rng = np.random.default_rng(0)
    for index, layer in enumerate(convext.default_architecture()):
        input_shape = shape
        shape = layer.build(input_shape, rng, np.float32)
        if isinstance(layer, Flatten):
            continue
        prefix = LAYER_PREFIXES[type(layer)]
        counts[prefix] = counts.get(prefix, 0) + 1
        specs.append(LayerSpec(f"{prefix}{counts[prefix]}", type(layer),
                               layer.get_config(), input_shape, shape, index == 0))
    return specs


def describe(spec):
    """A short text such as "3x3 28x28x1->28x28x32"."""
    def dims(shape):
        return "x".join(str(size) for size in shape)

    text = f"{dims(spec.input_shape)}->{dims(spec.output_shape)}"
    if spec.layer_type is Conv2D:
        text = f"{dims(spec.config['kernel_size'])} {text}"
    return text


def build_convext_layer(spec):
    layer = spec.layer_type(**spec.config)
    layer.build(spec.input_shape, np.random.default_rng(0), np.float32)
    # As Sequential does: the first layer's input is the data.
    layer.need_input_grad = not spec.is_first
    return layer


def layer_inputs(spec, batch_size, seed):
    """(x, dy) as float32 NHWC arrays: images in 0-1 for the first layer, standard
    normal activations elsewhere; dy standard normal."""
    rng = np.random.default_rng(seed)
    x_shape = (batch_size, *spec.input_shape)
    if spec.is_first:
        x = rng.random(x_shape, dtype=np.float32)
    else:
        x = rng.standard_normal(x_shape, dtype=np.float32)
    dy = rng.standard_normal((batch_size, *spec.output_shape), dtype=np.float32)
    return x, dy


def convext_layer_candidates(spec, x, dy):
    """(forward, forward+backward) Candidates of a fresh convext layer."""
    layer = build_convext_layer(spec)

    def forward():
        layer.forward(x, True)

    def forward_backward():
        layer.forward(x, True)
        layer.backward(dy)

    # convext calls the BLAS from its own threads, under a single-threaded BLAS,
    # as Sequential.forward and backward do.
    return (Candidate("convext", forward, single_threaded_blas),
            Candidate("convext", forward_backward, single_threaded_blas))


def torch_layer(spec):
    """The torch.nn module that computes what spec's convext layer does."""
    from torch import nn

    config = spec.config
    if spec.layer_type is Conv2D:
        layer = build_convext_layer(spec)
        g = layer.geometry
        if (g.pad_top, g.pad_left) != (g.pad_bottom, g.pad_right):
            raise ValueError(f"{spec.name}: uneven padding has no nn.Conv2d twin")
        return nn.Conv2d(spec.input_shape[2], config["filters"],
                         tuple(config["kernel_size"]), stride=tuple(config["stride"]),
                         padding=(g.pad_top, g.pad_left), bias=config["use_bias"])
    if spec.layer_type is BatchNorm:
        # convext keeps `momentum` of the running statistics, torch replaces it.
        norm = nn.BatchNorm2d if len(spec.input_shape) == 3 else nn.BatchNorm1d
        return norm(spec.input_shape[-1], eps=config["eps"],
                    momentum=1.0 - config["momentum"])
    if spec.layer_type is ReLU:
        return nn.ReLU()
    if spec.layer_type is MaxPool2D:
        return nn.MaxPool2d(tuple(config["pool_size"]), tuple(config["stride"]))
    if spec.layer_type is Dense:
        return nn.Linear(spec.input_shape[0], config["units"],
                         bias=config["use_bias"])
    raise TypeError(f"{spec.name}: no torch twin for {spec.layer_type.__name__}")


def to_torch(array, memory_format):
    """An NHWC (or 2-D) numpy array as a torch tensor in NCHW order, laid out in
    memory_format."""
    import torch

    tensor = torch.from_numpy(array)
    if tensor.dim() == 4:
        tensor = tensor.permute(0, 3, 1, 2)
    return tensor.contiguous(memory_format=memory_format)


def torch_layer_candidates(spec, x, dy, name, memory_format):
    """(forward, forward+backward) Candidates of a fresh torch module in train
    mode; the input needs its gradient except for the first layer."""
    module = torch_layer(spec).to(memory_format=memory_format).train()
    x_t = to_torch(x, memory_format).requires_grad_(not spec.is_first)
    dy_t = to_torch(dy, memory_format)
    parameters = list(module.parameters())

    def forward():
        module(x_t)

    def forward_backward():
        x_t.grad = None
        for parameter in parameters:
            parameter.grad = None
        module(x_t).backward(dy_t)

    return Candidate(name, forward), Candidate(name, forward_backward)


def layer_row(spec, batch_size, samples, use_torch):
    """One JSON row of a layer at one batch size, from its timing samples."""
    flops_layer = build_convext_layer(spec)
    forward_flops, backward_flops = layer_flops(flops_layer, batch_size)
    total_flops = None if forward_flops is None else forward_flops + backward_flops
    row = {"layer": spec.name, "batch_size": batch_size,
           "kind": spec.layer_type.__name__, "shape": describe(spec),
           "input_shape": list(spec.input_shape),
           "output_shape": list(spec.output_shape),
           "forward_flops": forward_flops, "forward_backward_flops": total_flops}
    for implementation in IMPLEMENTATIONS:
        if implementation not in samples["forward"]:
            row[implementation] = None
            continue
        result = {**summarize_ms(samples["forward"][implementation], "forward"),
                  **summarize_ms(samples["forward_backward"][implementation],
                                 "forward_backward")}
        if forward_flops is not None:
            result["forward_gflops"] = forward_flops / (result["forward_ms"] * 1e6)
            result["forward_backward_gflops"] = total_flops / (
                result["forward_backward_ms"] * 1e6)
        row[implementation] = result
    if use_torch and len(spec.input_shape) == 1:
        # Memory formats apply to 4-D tensors only: one measurement serves both.
        row["torch_channels_last"] = {**row["torch_nchw"], "same_as_nchw": True}
    alongside = {name[len(GEMM_ALONGSIDE_PREFIX):]: times
                 for name, times in samples["forward_backward"].items()
                 if name.startswith(GEMM_ALONGSIDE_PREFIX)}
    if alongside:
        row["gemm_alongside"] = {
            f"{name}_gflops": 2 * GEMM_SIZE**3 / statistics.median(times) / 1e9
            for name, times in alongside.items()}
    row["ratios"] = {}
    for implementation in IMPLEMENTATIONS[1:]:
        for mode in ("forward", "forward_backward"):
            key = f"{mode}_convext_over_{implementation}"
            other = row[implementation]
            row["ratios"][key] = ratio(row["convext"][f"{mode}_ms"],
                                       other and other[f"{mode}_ms"])
    return row


def benchmark_layers(batch_sizes, effort, use_torch, threads):
    """JSON rows of every layer at every batch size. conv2's forward+backward
    rounds alternate with rounds of the GEMM too, whose rate at the same moments
    its share of the GEMM rate is taken against."""
    if use_torch:
        import torch
    rows = []
    for batch_size in batch_sizes:
        for index, spec in enumerate(default_layer_specs()):
            x, dy = layer_inputs(spec, batch_size, seed=index)
            forward, forward_backward = convext_layer_candidates(spec, x, dy)
            candidates = {"forward": [forward],
                          "forward_backward": [forward_backward]}
            if use_torch:
                formats = [("torch_nchw", torch.contiguous_format)]
                if len(spec.input_shape) == 3:
                    formats.append(("torch_channels_last", torch.channels_last))
                for name, memory_format in formats:
                    forward, forward_backward = torch_layer_candidates(
                        spec, x, dy, name, memory_format)
                    candidates["forward"].append(forward)
                    candidates["forward_backward"].append(forward_backward)
            if spec.name == "conv2":
                candidates["forward_backward"] += gemm_candidates(
                    threads, use_torch, prefix=GEMM_ALONGSIDE_PREFIX)
            samples = {mode: time_interleaved(group, effort.layer_seconds,
                                              effort.layer_rounds,
                                              effort.warmup_calls)
                       for mode, group in candidates.items()}
            rows.append(layer_row(spec, batch_size, samples, use_torch))
    return rows


# ---------------------------------------------------------------------------
# One epoch of the default architecture


def find_mnist(train_path):
    """{"train": (images path, labels path or None), "test": ...}, IDX files
    beside train_path preferred; a missing test set is left out."""
    folder = train_path.parent
    files = {}
    idx_names = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                 "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
    csv_paths = {"train": train_path, "test": folder / "mnist_test.csv.gz"}
    for part in ("train", "test"):
        images, labels = (folder / name for name in idx_names[part])
        if images.is_file() and labels.is_file():
            files[part] = (images, labels)
        elif csv_paths[part].is_file():
            files[part] = (csv_paths[part], None)
    return files


def load_mnist(paths, limit=None):
    """(float32 images 0-1 of shape (N, 28, 28, 1), int64 labels), the first
    limit samples only when limit is given; paths as from find_mnist."""
    images_path, labels_path = paths
    if labels_path is None:
        images, labels = convext.data.load_csv(images_path, labeled=True)
    else:
        images, labels = convext.data.load_idx(images_path, labels_path)
    images, labels = images[:limit], labels[:limit]
    return convext.data.to_float(images), labels


def convext_epoch(x_train, y_train, x_test, y_test, batch_size, memory):
    """Train a fresh default Sequential for one epoch; seconds and accuracy.

    Records in memory the peak resident memory after the epoch and after the
    evaluation on the test set.
    """
    model = convext.Sequential(input_shape=(28, 28, 1), seed=0)
    model.compile(convext.SGD(lr=LEARNING_RATE, momentum=MOMENTUM))
    started = time.perf_counter()
    history = model.fit(x_train, y_train, epochs=1, batch_size=batch_size,
                        verbose=0)
    fit_seconds = time.perf_counter() - started
    memory["peak_rss_mb_after_convext_epoch"] = peak_rss_mb()
    # fit times the epoch itself; the whole call adds its input checks.
    result = {"epoch_seconds": history["seconds"][0],
              "fit_call_seconds": fit_seconds, "train_loss": history["loss"][0]}
    if x_test is not None:
        _, result["test_accuracy"] = model.evaluate(x_test, y_test)
        memory["peak_rss_mb_after_convext_evaluation"] = peak_rss_mb()
    return result


def torch_network(memory_format):
    """The default architecture in torch.nn, initialised as convext initialises
    it: He normal weights, Glorot uniform for the last layer, zero biases."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    network = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32, momentum=0.1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64, momentum=0.1),
        nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(3136, 128), nn.ReLU(), nn.Linear(128, 10),
    )
    weighted = [m for m in network if isinstance(m, (nn.Conv2d, nn.Linear))]
    for module in weighted[:-1]:
        nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
    nn.init.xavier_uniform_(weighted[-1].weight)
    for module in weighted:
        nn.init.zeros_(module.bias)
    return network.to(memory_format=memory_format)


def torch_epoch(x_train, y_train, x_test, y_test, batch_size, memory_format):
    """One epoch of the torch network: a plain loop over shuffled batches."""
    import torch
    from torch import nn

    network = torch_network(memory_format).train()
    optimizer = torch.optim.SGD(network.parameters(), lr=LEARNING_RATE,
                                momentum=MOMENTUM)
    loss_function = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(0)
    n = len(x_train)
    total_loss = 0.0

    started = time.perf_counter()
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        batch = order[start:start + batch_size]
        x_batch = x_train[batch].contiguous(memory_format=memory_format)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_function(network(x_batch), y_train[batch])
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(batch)
    seconds = time.perf_counter() - started

    result = {"epoch_seconds": seconds, "train_loss": total_loss / n}
    if x_test is not None:
        network.eval()
        correct = 0
        with torch.no_grad():
            for start in range(0, len(x_test), 1000):
                x_batch = x_test[start:start + 1000].contiguous(
                    memory_format=memory_format)
                predicted = network(x_batch).argmax(dim=1)
                correct += int((predicted == y_test[start:start + 1000]).sum())
        result["test_accuracy"] = correct / len(x_test)
    return result


def nchw_tensors(x, y):
    """NHWC float32 images with one channel and int labels as torch (N, 1, H, W)
    and int64 tensors; with C = 1 the NCHW view shares x's memory."""
    import torch

    if x is None:
        return None, None
    n, h, w, c = x.shape
    return (torch.from_numpy(x.reshape(n, c, h, w)),
            torch.from_numpy(y.astype(np.int64)))


def import_torch(threads):
    """torch, with its intra-op threads set to threads."""
    import torch

    torch.set_num_threads(threads)
    return torch


def add_step_times(result, steps):
    result["ms_per_step"] = 1e3 * result["epoch_seconds"] / steps
    return result


# ---------------------------------------------------------------------------
# The GEMM rate


def time_gemm(threads, effort, use_torch):
    """Per-call seconds of a square float32 product: {"numpy": [...], "torch":
    [...]}, numpy.matmul on the machine's BLAS and torch.mm."""
    return time_interleaved(gemm_candidates(threads, use_torch), effort.gemm_seconds,
                            effort.gemm_rounds, warmup_calls=2)


def gemm_candidates(threads, use_torch, prefix=""):
    """Candidates "numpy" (numpy.matmul on the machine's BLAS, held to threads)
    and "torch" (torch.mm) of a square float32 product, their names prefixed."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((GEMM_SIZE, GEMM_SIZE), dtype=np.float32)
    b = rng.standard_normal((GEMM_SIZE, GEMM_SIZE), dtype=np.float32)
    c = np.empty_like(a)

    def numpy_product():
        np.matmul(a, b, out=c)

    candidates = [Candidate(
        prefix + "numpy", numpy_product,
        lambda: threadpoolctl.threadpool_limits(limits=threads, user_api="blas"),
        settle_seconds=BLAS_SETTLE_SECONDS)]
    if use_torch:
        import torch

        a_t, b_t = torch.from_numpy(a), torch.from_numpy(b)
        c_t = torch.empty_like(a_t)
        candidates.append(Candidate(prefix + "torch",
                                    lambda: torch.mm(a_t, b_t, out=c_t)))
    return candidates


def gemm_result(rounds):
    """GFLOP/s of the GEMM from the samples of its rounds, pooled and per
    round; the rounds bracket the per-layer measurements, whose machine
    speed they stand for."""
    flops = 2 * GEMM_SIZE**3
    result = {"size": GEMM_SIZE, "flops": flops}
    for name in rounds[0]:
        pooled = [seconds for round in rounds for seconds in round[name]]
        result[f"{name}_gflops"] = flops / statistics.median(pooled) / 1e9
        result[f"{name}_best_gflops"] = flops / min(pooled) / 1e9
        result[f"{name}_gflops_per_round"] = [
            flops / statistics.median(round[name]) / 1e9 for round in rounds]
        result[f"{name}_samples"] = len(pooled)
    return result


# ---------------------------------------------------------------------------
# Report


def environment(threads, torch_version):
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpus_usable": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "numpy": np.__version__,
        "convext": convext.build_info(),
        "convext_path": str(Path(convext.__file__).parent),
        "torch": torch_version,
        "threads": threads,
        "env": {name: os.environ.get(name) for name in ENV_VARS},
        "threadpool_info": threadpoolctl.threadpool_info(),
    }


def number(value, width, digits):
    """value right-aligned in width, or "-" when there is none."""
    if value is None:
        return f"{'-':>{width}}"
    return f"{value:>{width}.{digits}f}"


def layer_table(rows, batch_size, mode):
    """Fixed-width lines for one batch size and mode ("forward" or
    "forward_backward")."""
    title = "forward" if mode == "forward" else "forward+backward"
    lines = [f"Per layer, batch {batch_size}, {title} (median ms, GFLOP/s)",
             (f"{'layer':<7} {'shape':<24} {'convext':>8} {'torch':>8} {'t-cl':>7}  "
              f"{'cx/torch':>8} {'cx/t-cl':>8} {'cx GF/s':>8} {'torch GF/s':>10} "
              f"{'t-cl GF/s':>9}")]
    shared = False
    for row in rows:
        if row["batch_size"] != batch_size:
            continue
        times, rates = [], []
        for implementation in IMPLEMENTATIONS:
            result = row[implementation] or {}
            times.append(result.get(f"{mode}_ms"))
            rates.append(result.get(f"{mode}_gflops"))
        marker = " "
        if (row["torch_channels_last"] or {}).get("same_as_nchw"):
            marker, shared = "*", True
        ratios = [row["ratios"][f"{mode}_convext_over_{name}"]
                  for name in IMPLEMENTATIONS[1:]]
        lines.append(
            f"{row['layer']:<7} {row['shape']:<24} {number(times[0], 8, 3)} "
            f"{number(times[1], 8, 3)} {number(times[2], 7, 3)}{marker} "
            f"{number(ratios[0], 8, 2)} {number(ratios[1], 8, 2)} "
            f"{number(rates[0], 8, 1)} {number(rates[1], 10, 1)} "
            f"{number(rates[2], 9, 1)}"
        )
    if shared:
        lines.append("* 2-D input: one torch measurement serves both memory formats")
    return lines


def epoch_table(epoch):
    limited = " (limited by --epoch-steps)" if epoch["limited"] else ""
    lines = [(f"One epoch, batch {epoch['batch_size']}, SGD lr {LEARNING_RATE} "
              f"momentum {MOMENTUM}: {epoch['steps']} steps of {epoch['images']} "
              f"images{limited}"),
             (f"{'network':<20} {'s/epoch':>9} {'ms/step':>9} {'test acc':>9} "
              f"{'convext/this':>12}")]
    for name, label in (("convext", "convext NHWC"), ("torch_nchw", "torch NCHW"),
                        ("torch_channels_last", "torch channels_last")):
        result = epoch[name]
        if result is None:
            lines.append(f"{label:<20} {'-':>9} {'-':>9} {'-':>9} {'-':>12}")
            continue
        accuracy = result.get("test_accuracy")
        lines.append(
            f"{label:<20} {number(result['epoch_seconds'], 9, 2)} "
            f"{number(result['ms_per_step'], 9, 2)} "
            f"{number(None if accuracy is None else 100 * accuracy, 8, 2)}% "
            f"{number(epoch['ratios'].get(f'convext_over_{name}'), 12, 2)}"
        )
    if epoch["test_images"]:
        lines.append(f"test accuracy on {epoch['test_images']} test images")
    return lines


def summary_lines(report):
    lines = []
    gemm = report["gemm"]
    rates = []
    for name, label in (("numpy", "numpy.matmul"), ("torch", "torch.mm")):
        if f"{name}_gflops" not in gemm:
            rates.append(f"{label} -")
            continue
        rounds = "/".join(f"{rate:.1f}"
                            for rate in gemm[f"{name}_gflops_per_round"])
        rates.append(f"{label} {gemm[f'{name}_gflops']:.1f} GFLOP/s "
                     f"(before/after the layers {rounds})")
    lines.append(f"GEMM {gemm['size']}x{gemm['size']} float32, "
                 f"threads {report['environment']['threads']}, median: "
                 + ", ".join(rates))
    for row in report["layers"]:
        if row["layer"] != "conv2":
            continue
        fractions = report["conv2_fraction_of_gemm"][str(row["batch_size"])]
        text = ", ".join(
            f"{SHORT_NAMES[name]} {100 * value:.0f}%"
            for name, value in fractions.items() if value is not None)
        alongside = row.get("gemm_alongside", {})
        rates = ", ".join(f"{label} {alongside[key]:.1f}" for key, label in (
            ("numpy_gflops", "numpy.matmul"), ("torch_gflops", "torch.mm"))
            if key in alongside)
        lines.append(f"conv2 forward+backward at batch {row['batch_size']}, share "
                     f"of the GEMM rate timed in the same rounds ({rates} GFLOP/s; "
                     f"convext: numpy's, torch: torch.mm's): {text}")
    memory = report["memory"]
    if memory["peak_rss_mb_after_convext_epoch"] is not None:
        lines.append(
            f"Peak resident memory after the convext epoch (convext's own, torch "
            f"not yet imported): {memory['peak_rss_mb_after_convext_epoch']:.0f} MB"
        )
        evaluation = memory["peak_rss_mb_after_convext_evaluation"]
        lines.append(
            f"  before the epoch (imports, data loading): "
            f"{memory['peak_rss_mb_before_convext_epoch']:.0f} MB; float32 data "
            f"held: {memory['data_mb']:.0f} MB; after the test-set evaluation: "
            + ("-" if evaluation is None else f"{evaluation:.0f} MB")
        )
    lines.append(f"Peak resident memory at the end of the run: "
                 f"{memory['peak_rss_mb_at_end']:.0f} MB")
    return lines


def print_report(report):
    env = report["environment"]
    build = env["convext"]
    print(f"convext {build['version']} ({build['build']}, OpenMP "
          f"{'on' if build['openmp'] else 'off'}), torch {env['torch'] or '-'}, "
          f"numpy {env['numpy']}, threads {env['threads']}, float32, "
          f"mode {report['settings']['mode']}")
    print("ratios are convext time / torch time: above 1, convext is slower; "
          "t-cl is torch channels_last")
    for note in report["notes"]:
        print(f"note: {note}")
    print()

    if report["epoch"] is not None:
        print("\n".join(epoch_table(report["epoch"])))
        print()

    for batch_size in report["settings"]["batch_sizes"]:
        for mode in ("forward", "forward_backward"):
            print("\n".join(layer_table(report["layers"], batch_size, mode)))
            print()

    print("\n".join(summary_lines(report)))
    print()
    print("\n".join(goal_table(report["goals"])))
    print(f"Run time: {report['run_seconds']:.1f} s")


# The goals convext is measured against, on the batch-64 figures of one run: a
# full epoch at most 0.8 times torch's NCHW epoch and no slower than its
# channels_last one; each convolution's forward+backward no slower than torch's
# faster layout, the second at 80% or more of the GEMM rate; batch-norm, ReLU and
# pooling no slower than torch channels_last; at most 2 GiB resident.
GOAL_BATCH_SIZE = 64
GOAL_EPOCH_OVER_NCHW = 0.8
GOAL_CONV2_SHARE_OF_GEMM = 0.8
GOAL_PEAK_RSS_MB = 2048


def goal_rows(report):
    """[{"goal", "measured", "bound", "at_most", "met"}]; met is None when the
    figure is missing (no torch, no data, or a run without batch 64)."""
    goals = []

    def add(goal, measured, bound, at_most=True):
        met = None if measured is None else (
            measured <= bound if at_most else measured >= bound)
        goals.append({"goal": goal, "measured": measured, "bound": bound,
                      "at_most": at_most, "met": met})

    epoch = report["epoch"] or {}
    # A run cut short by --epoch-steps (as --smoke is) has no full epoch to judge.
    epoch_ratios = {} if epoch.get("limited", True) else epoch["ratios"]
    add("epoch, convext / torch NCHW", epoch_ratios.get("convext_over_torch_nchw"),
        GOAL_EPOCH_OVER_NCHW)
    add("epoch, convext / torch channels_last",
        epoch_ratios.get("convext_over_torch_channels_last"), 1.0)
    rows = {row["layer"]: row for row in report["layers"]
            if row["batch_size"] == GOAL_BATCH_SIZE}
    for layer in ("conv1", "conv2"):
        ratios = rows.get(layer, {}).get("ratios", {})
        against = [ratios.get(f"forward_backward_convext_over_{name}")
                   for name in IMPLEMENTATIONS[1:]]
        # Against the faster torch layout: the larger of the two ratios.
        known = [value for value in against if value is not None]
        add(f"{layer} fwd+bwd, convext / faster torch layout",
            max(known) if len(known) == len(against) else None, 1.0)
    share = report["conv2_fraction_of_gemm"].get(str(GOAL_BATCH_SIZE), {})
    add("conv2 fwd+bwd GFLOP/s / numpy GEMM GFLOP/s", share.get("convext"),
        GOAL_CONV2_SHARE_OF_GEMM, at_most=False)
    for layer in ("bn1", "relu1", "pool1", "bn2", "relu2", "pool2"):
        ratios = rows.get(layer, {}).get("ratios", {})
        add(f"{layer} fwd+bwd, convext / torch channels_last",
            ratios.get("forward_backward_convext_over_torch_channels_last"), 1.0)
    add("peak resident MB after the convext epoch",
        report["memory"]["peak_rss_mb_after_convext_epoch"], GOAL_PEAK_RSS_MB)
    return goals


def goal_table(goals):
    lines = [f"Goals at batch {GOAL_BATCH_SIZE}",
             f"{'goal':48s} {'measured':>9s} {'bound':>11s}  met"]
    for goal in goals:
        measured = goal["measured"]
        sign = "<=" if goal["at_most"] else ">="
        met = {None: "-", True: "yes", False: "NO"}[goal["met"]]
        lines.append(f"{goal['goal']:48s} {number(measured, 9, 2)} "
                     f"{sign} {goal['bound']:8.2f}  {met}")
    return lines


def conv2_fractions(rows, gemm):
    """{batch size: {implementation: conv2 fwd+bwd GFLOP/s / GEMM GFLOP/s}}, with
    the GEMM rate timed alongside conv2 where there is one."""
    fractions = {}
    for row in rows:
        if row["layer"] != "conv2":
            continue
        rate = row.get("gemm_alongside", gemm)
        rates = {"convext": rate["numpy_gflops"],
                 "torch_nchw": rate.get("torch_gflops"),
                 "torch_channels_last": rate.get("torch_gflops")}
        fractions[str(row["batch_size"])] = {
            name: ratio((row[name] or {}).get("forward_backward_gflops"), rates[name])
            for name in IMPLEMENTATIONS}
    return fractions


# ---------------------------------------------------------------------------
# Main


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Benchmark convext against PyTorch: per layer, per epoch, and "
                    "the GEMM rate, in one run.")
    parser.add_argument("--threads", type=int, default=2,
                        help="threads of convext and torch, and of the BLAS in the "
                             "GEMM measurement (default 2)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON,
                        help="where to write the results (default "
                             "benchmarks/results.json)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="mnist_train.csv.gz; IDX files beside it are read "
                             "instead when present (default "
                             "../shared/data/mnist/ beside the repository)")
    parser.add_argument("--epoch-steps", type=int, default=None,
                        help="limit the epoch to this many steps")
    parser.add_argument("--quick", action="store_true",
                        help="short per-layer and GEMM measurements")
    parser.add_argument("--smoke", action="store_true",
                        help="a seconds-long run to check that the script works: "
                             "batch 8, tiny repetition counts, 5 epoch steps")
    parser.add_argument("--no-torch", action="store_true",
                        help="skip the torch columns even when torch is installed")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.epoch_steps is not None and args.epoch_steps < 1:
        parser.error(f"--epoch-steps must be >= 1, got {args.epoch_steps}")
    if args.smoke:
        args.quick = True
        if args.epoch_steps is None:
            args.epoch_steps = SMOKE_EPOCH_STEPS
    return args


def run_epochs(args, use_torch, notes):
    """The epoch section and the memory figures; torch is imported in here,
    after the convext epoch, when use_torch is set."""
    memory = {"peak_rss_mb_before_convext_epoch": None,
              "peak_rss_mb_after_convext_epoch": None,
              "peak_rss_mb_after_convext_evaluation": None, "data_mb": None}
    files = find_mnist(args.data)
    if "train" not in files:
        notes.append(f"no MNIST training data at {args.data}: epoch skipped")
        return None, memory

    limit = None if args.epoch_steps is None else args.epoch_steps * EPOCH_BATCH_SIZE
    x_train, y_train = load_mnist(files["train"], limit)
    x_test = y_test = None
    if "test" in files:
        x_test, y_test = load_mnist(files["test"],
                                    SMOKE_TEST_IMAGES if args.smoke else None)
    else:
        notes.append(f"no MNIST test data beside {args.data}: no test accuracy")
    data_mb = sum(a.nbytes for a in (x_train, x_test) if a is not None) / 2**20
    steps = -(-len(x_train) // EPOCH_BATCH_SIZE)
    epoch = {"batch_size": EPOCH_BATCH_SIZE, "images": len(x_train), "steps": steps,
             "limited": args.epoch_steps is not None and steps == args.epoch_steps,
             "test_images": 0 if x_test is None else len(x_test),
             "data_files": [str(path) for path in files["train"] if path],
             "convext": None, "torch_nchw": None, "torch_channels_last": None,
             "ratios": {}}

    memory["peak_rss_mb_before_convext_epoch"] = peak_rss_mb()
    memory["data_mb"] = data_mb
    epoch["convext"] = add_step_times(
        convext_epoch(x_train, y_train, x_test, y_test, EPOCH_BATCH_SIZE, memory),
        steps)

    if use_torch:
        torch = import_torch(args.threads)
        x_train_t, y_train_t = nchw_tensors(x_train, y_train)
        x_test_t, y_test_t = nchw_tensors(x_test, y_test)
        for name, memory_format in (("torch_nchw", torch.contiguous_format),
                                    ("torch_channels_last", torch.channels_last)):
            result = torch_epoch(x_train_t, y_train_t, x_test_t, y_test_t,
                                 EPOCH_BATCH_SIZE, memory_format)
            epoch[name] = add_step_times(result, steps)
            epoch["ratios"][f"convext_over_{name}"] = ratio(
                epoch["convext"]["epoch_seconds"], result["epoch_seconds"])
    return epoch, memory


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    effort = EFFORTS[mode]
    batch_sizes = [8] if args.smoke else [64, 256]
    notes = []
    use_torch = not args.no_torch and importlib.util.find_spec("torch") is not None
    if not use_torch:
        notes.append("torch not installed: torch columns skipped" if not args.no_torch
                     else "--no-torch: torch columns skipped")

    convext.set_num_threads(args.threads)

    # The convext epoch runs before torch is imported, so that the peak memory
    # read after it is convext's own.
    epoch, memory = run_epochs(args, use_torch, notes)

    torch_version = import_torch(args.threads).__version__ if use_torch else None

    gemm_before = time_gemm(args.threads, effort, use_torch)
    layers = benchmark_layers(batch_sizes, effort, use_torch, args.threads)
    gemm = gemm_result([gemm_before, time_gemm(args.threads, effort, use_torch)])

    memory["peak_rss_mb_at_end"] = peak_rss_mb()
    openmp = [pool["filepath"] for pool in threadpoolctl.threadpool_info()
              if pool["user_api"] == "openmp"]
    if use_torch and len(openmp) == 1:
        notes.append(f"convext and torch share one OpenMP runtime ({openmp[0]}), "
                     f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
                     f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT')}")
    report = {
        "settings": {"mode": mode, "threads": args.threads, "dtype": "float32",
                     "batch_sizes": batch_sizes,
                     "epoch_steps_limit": args.epoch_steps,
                     "layer_seconds_per_measurement": effort.layer_seconds,
                     "layer_rounds": effort.layer_rounds,
                     "warmup_calls": effort.warmup_calls,
                     "gemm_seconds": effort.gemm_seconds,
                     "ratio": "convext time / torch time; above 1 convext is slower"},
        "environment": environment(args.threads, torch_version),
        "notes": notes,
        "epoch": epoch,
        "layers": layers,
        "gemm": gemm,
        "conv2_fraction_of_gemm": conv2_fractions(layers, gemm),
        "memory": memory,
    }
    report["goals"] = goal_rows(report)
    report["run_seconds"] = time.perf_counter() - started

    print_report(report)

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"Results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
