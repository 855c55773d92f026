"""Where a training step's time goes: per-layer forward and backward timings.

``profile_training`` runs real training steps of a model, times every layer's
forward and backward call, the loss, the optimizer and the batch preparation,
and returns those rows beside the separately measured step time; what the rows
do not cover is the Python glue between the timed sections.
"""

import collections
import contextlib
import time

import numpy as np

from convext.layers import Conv2D, Dense


class StepTimer:
    """Accumulates wall-clock seconds per key; ``timer(*key)`` times a block."""

    def __init__(self):
        self.seconds = collections.defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, *key):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[key] += time.perf_counter() - started


def layer_flops(layer, batch_size):
    """(forward, backward) floating-point operations of one call on a batch.

    A multiply-add counts as two. Convolutions and dense layers only; other
    layers are memory-bound and reported as None.
    """
    if isinstance(layer, Conv2D):
        g = layer.geometry
        kernel_h, kernel_w = layer.kernel_size
        forward = (2 * batch_size * g.out_h * g.out_w * kernel_h * kernel_w
                   * layer.input_shape[2] * layer.filters)
    elif isinstance(layer, Dense):
        forward = 2 * batch_size * layer.input_shape[0] * layer.units
    else:
        return None, None
    # The weight gradient costs as much as the forward, the input gradient too
    # when it is computed.
    backward = forward * (2 if layer.need_input_grad else 1)
    return forward, backward


def profile_training(model, x, y, steps=50, batch_size=64, warmup=3, seed=0):
    """Time ``steps`` training steps of model on batches drawn from (x, y).

    The model is trained by these steps (its weights change); profile a copy to
    keep the original.

    Parameters
    ----------
    model : Sequential, compiled (an Adam optimizer is set if it is not)
    x : ndarray of shape (N, H, W, C); y : int ndarray of shape (N,)
    steps, batch_size, warmup : ints; warmup steps run first and are not counted

    Returns
    -------
    dict with "rows" (a list of dicts: name, forward_ms, backward_ms, total_ms,
    share, and forward_gflops, backward_gflops for convolutions and dense layers),
    "step_ms" (the measured mean step time), "rows_total_ms", "steps",
    "batch_size".
    """
    x, y = model._prepare("profile_training", x, y)
    if model.optimizer is None:
        model.compile()
    rng = np.random.default_rng(seed)
    n = len(x)
    if n == 0:
        raise ValueError("profile_training: x must hold at least one sample, got 0")

    timer = StepTimer()
    step_seconds = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            timer = StepTimer()
        started = time.perf_counter()
        with timer("data"):
            batch = rng.choice(n, size=min(batch_size, n), replace=False)
            x_batch, y_batch = x[batch], y[batch]
        model.train_step(x_batch, y_batch, timer=timer)
        if step >= warmup:
            step_seconds += time.perf_counter() - started

    per_step = {key: seconds / steps * 1e3 for key, seconds in timer.seconds.items()}
    step_ms = step_seconds / steps * 1e3
    rows = []
    for i, layer in enumerate(model.layers):
        forward_ms = per_step.get((i, "forward"), 0.0)
        backward_ms = per_step.get((i, "backward"), 0.0)
        row = {"name": f"{i} {layer!r}", "forward_ms": forward_ms,
               "backward_ms": backward_ms, "total_ms": forward_ms + backward_ms}
        flops_forward, flops_backward = layer_flops(layer, len(x_batch))
        if flops_forward is not None:
            row["forward_gflops"] = flops_forward / (forward_ms * 1e6)
            row["backward_gflops"] = flops_backward / (backward_ms * 1e6)
        rows.append(row)
    for name in ("data", "loss", "optimizer"):
        rows.append({"name": name, "forward_ms": None, "backward_ms": None,
                     "total_ms": per_step.get((name,), 0.0)})
    for row in rows:
        row["share"] = row["total_ms"] / step_ms
    return {"rows": rows, "step_ms": step_ms,
            "rows_total_ms": sum(row["total_ms"] for row in rows),
            "steps": steps, "batch_size": len(x_batch)}


def format_profile(report):
    """The report of profile_training as a text table."""
    lines = [f"{'section':<44} {'fwd ms':>8} {'bwd ms':>8} {'total':>8} {'share':>6} "
             f"{'fwd GF/s':>9} {'bwd GF/s':>9}"]

    def number(value, width, digits):
        return f"{'':>{width}}" if value is None else f"{value:>{width}.{digits}f}"

    for row in report["rows"]:
        name = row["name"] if len(row["name"]) <= 44 else row["name"][:41] + "..."
        lines.append(
            f"{name:<44} {number(row['forward_ms'], 8, 2)} "
            f"{number(row['backward_ms'], 8, 2)} {number(row['total_ms'], 8, 2)} "
            f"{100 * row['share']:>5.1f}% {number(row.get('forward_gflops'), 9, 1)} "
            f"{number(row.get('backward_gflops'), 9, 1)}"
        )
    lines.append(
        f"{'sum of rows':<44} {'':>8} {'':>8} {report['rows_total_ms']:>8.2f}"
    )
    lines.append(
        f"{'measured step':<44} {'':>8} {'':>8} {report['step_ms']:>8.2f}   "
        f"({report['steps']} steps of batch {report['batch_size']})"
    )
    return "\n".join(lines)
