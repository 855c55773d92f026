"""Cost of the per-layer timing hooks in a training step, measured side by side.

Runs training steps of the default architecture, alternating between
``Sequential.train_step`` (which passes every layer call through the optional
timer, doing nothing when no timer is given) and the same step written out
without any hook, and prints the median step time of each and their ratio.

    python benchmarks/hooks_overhead.py [--steps 300] [--batch-size 64]
"""

import argparse
import time

import numpy as np

from convext import SGD, Sequential
from convext._threads import single_threaded_blas
from convext.losses import softmax_cross_entropy


def bare_step(model, x, y):
    """Sequential.train_step without the timer hooks."""
    with single_threaded_blas():
        out = x
        for layer in model.layers:
            out = layer.forward(out, True)
        loss, dlogits, _ = softmax_cross_entropy(out, y)
        grad = dlogits
        for layer in reversed(model.layers):
            grad = layer.backward(grad)
    model.optimizer.step(model.parameters(), model.gradients())
    return loss


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    x = rng.random((args.batch_size, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, args.batch_size)
    model = Sequential(input_shape=(28, 28, 1), seed=0).compile(SGD(lr=1e-3))
    steps = {"with hooks": lambda: model.train_step(x, y),
             "without hooks": lambda: bare_step(model, x, y)}
    for step in steps.values():
        for _ in range(10):
            step()

    times = {name: [] for name in steps}
    for _ in range(args.steps):
        for name, step in steps.items():
            started = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - started)

    medians = {name: 1e3 * float(np.median(t)) for name, t in times.items()}
    for name, ms in medians.items():
        print(f"{name:<14} {ms:8.3f} ms per step (median of {args.steps})")
    ratio = medians["with hooks"] / medians["without hooks"]
    print(f"with / without: {ratio:.4f}")


if __name__ == "__main__":
    main()
