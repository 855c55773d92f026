"""Optimizers: SGD with momentum, and Adam.

An optimizer updates arrays in place, given their gradients. It keeps its
per-parameter state (velocities, moments) under the keys it is handed, so that the
state can be saved with a model and training resumed from it.
"""

import math

import numpy as np

from convext import _kernels
from convext._threads import threads_for

OPTIMIZER_TYPES = {}


def register(cls):
    OPTIMIZER_TYPES[cls.__name__] = cls
    return cls


def _check_number(optimizer, name, value, low, high=None, low_open=False):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
        raise TypeError(f"{optimizer}: {name} must be a number, got {value!r}")
    ok = ((value > low if low_open else value >= low)
          and (value < high if high is not None else math.isfinite(value)))
    if not ok:
        bound = f"{'>' if low_open else '>='} {low}"
        bound += f" and < {high}" if high is not None else " and finite"
        raise ValueError(f"{optimizer}: {name} must be a number {bound}, got {value!r}")
    return float(value)


def _flat(array):
    """A 1-D view of a C-contiguous array."""
    return array.reshape(-1)


class Optimizer:
    """Base class: ``step(params, grads)`` with dicts of arrays under the same
    keys."""

    def __init__(self):
        self.state = {}
        self.iterations = 0
        self.schedule = None
        self.schedule_start = 0
        self.schedule_steps = 0

    def set_schedule(self, schedule, steps):
        """Scale lr by ``schedule(progress)`` over the next ``steps`` steps.

        progress runs from 0 at the next step to 1 after the last; past the span
        the factor stays at schedule(1). schedule is a name in SCHEDULES or a
        callable (only named schedules are saved with a model).
        """
        self.schedule = get_schedule(schedule)
        self.schedule_start = self.iterations
        self.schedule_steps = max(int(steps), 1)

    def schedule_config(self):
        """The schedule as JSON-ready values, or None without a named schedule."""
        for name, function in SCHEDULES.items():
            if self.schedule is function:
                return {"name": name, "start": self.schedule_start,
                        "steps": self.schedule_steps}
        return None

    def restore_schedule(self, config):
        self.schedule = get_schedule(config["name"])
        self.schedule_start = int(config["start"])
        self.schedule_steps = int(config["steps"])

    @property
    def current_lr(self):
        """The learning rate of the step being taken (or the next one)."""
        if self.schedule is None:
            return self.lr
        done = max(self.iterations - 1, 0) - self.schedule_start
        progress = min(max(done / self.schedule_steps, 0.0), 1.0)
        return self.lr * self.schedule(progress)

    def get_config(self):
        return {}

    def step(self, params, grads):
        """Update every array of params in place; they must be C-contiguous float32
        or float64 arrays, and grads[key] of the same shape."""
        name = type(self).__name__
        for argument, mapping in (("params", params), ("grads", grads)):
            if not isinstance(mapping, dict):
                raise TypeError(f"{name}.step: {argument} must be a dict of arrays, "
                                f"got {type(mapping).__name__}")
        pairs = {key: self._checked_pair(key, value, grads)
                 for key, value in params.items()}
        self.iterations += 1
        for key, (value, grad) in pairs.items():
            self.update(key, value, grad)

    def _checked_pair(self, key, value, grads):
        """(value, grad), grad as a C-contiguous array of value's dtype."""
        name = type(self).__name__
        if not isinstance(value, np.ndarray):
            raise TypeError(f"{name}.step: params[{key!r}] must be a numpy.ndarray, "
                            f"got {type(value).__name__}")
        if value.dtype not in (np.float32, np.float64):
            raise TypeError(f"{name}.step: params[{key!r}] must be float32 or "
                            f"float64, got dtype {value.dtype}")
        if not (value.flags.c_contiguous and value.flags.writeable):
            raise ValueError(f"{name}.step: params[{key!r}] must be a writeable "
                             f"C-contiguous array, updated in place")
        if key not in grads:
            raise ValueError(f"{name}.step: grads has no entry {key!r}")
        grad = np.asarray(grads[key])
        if grad.shape != value.shape:
            raise ValueError(f"{name}.step: grads[{key!r}] must have the shape "
                             f"{value.shape} of its parameter, got {grad.shape}")
        return value, np.ascontiguousarray(grad, value.dtype)

    def _slot(self, key, slot, value):
        """The state array slot of parameter key, zeros at first, C-contiguous in
        value's shape and dtype."""
        slots = self.state.setdefault(key, {})
        array = slots.get(slot)
        if array is None or array.shape != value.shape:
            array = np.zeros(value.shape, value.dtype)
        slots[slot] = array = np.ascontiguousarray(array, value.dtype)
        return array

    def update(self, key, value, grad):
        """One step on value, in place, with grad of its shape and dtype."""
        raise NotImplementedError

    def state_arrays(self):
        """The optimizer's state as flat {name: array}, for saving."""
        arrays = {"iterations": np.array(self.iterations)}
        for key, slots in self.state.items():
            for slot, array in slots.items():
                arrays[f"{key}/{slot}"] = array
        return arrays

    def load_state_arrays(self, arrays):
        self.iterations = int(arrays.get("iterations", 0))
        self.state = {}
        for name, array in arrays.items():
            if name == "iterations":
                continue
            key, slot = name.rsplit("/", 1)
            self.state.setdefault(key, {})[slot] = np.array(array)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


@register
class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum:
    ``v = momentum * v - lr * g; w += v``.

    Parameters
    ----------
    lr : float > 0
    momentum : float in [0, 1)
    nesterov : bool
    weight_decay : float >= 0
        L2 penalty added to the gradient as ``weight_decay * w``.
    """

    def __init__(self, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__()
        self.lr = _check_number("SGD", "lr", lr, 0.0, low_open=True)
        self.momentum = _check_number("SGD", "momentum", momentum, 0.0, 1.0)
        self.nesterov = bool(nesterov)
        if self.nesterov and not self.momentum:
            raise ValueError("SGD: nesterov=True needs a momentum > 0, got momentum "
                             f"{self.momentum}")
        self.weight_decay = _check_number("SGD", "weight_decay", weight_decay, 0.0)

    def get_config(self):
        return {"lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay}

    def update(self, key, value, grad):
        # without momentum the kernel reads no velocity: an empty one stands in
        velocity = (_flat(self._slot(key, "velocity", value)) if self.momentum
                    else _flat(value)[:0])
        _kernels.sgd_step(_flat(value), _flat(grad), velocity, self.current_lr,
                          self.momentum, self.nesterov, self.weight_decay,
                          threads_for(value.size))


@register
class Adam(Optimizer):
    """Adam (Kingma and Ba) with bias-corrected moment estimates.

    Parameters
    ----------
    lr : float > 0
    beta1, beta2 : floats in [0, 1)
    eps : float > 0
    """

    def __init__(self, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
        super().__init__()
        self.lr = _check_number("Adam", "lr", lr, 0.0, low_open=True)
        self.beta1 = _check_number("Adam", "beta1", beta1, 0.0, 1.0)
        self.beta2 = _check_number("Adam", "beta2", beta2, 0.0, 1.0)
        self.eps = _check_number("Adam", "eps", eps, 0.0, low_open=True)

    def get_config(self):
        return {"lr": self.lr, "beta1": self.beta1, "beta2": self.beta2,
                "eps": self.eps}

    def update(self, key, value, grad):
        t = self.iterations
        step = self.current_lr * math.sqrt(1 - self.beta2**t) / (1 - self.beta1**t)
        m, v = self._slot(key, "m", value), self._slot(key, "v", value)
        _kernels.adam_step(_flat(value), _flat(grad), _flat(m), _flat(v), step,
                           self.beta1, self.beta2, self.eps, threads_for(value.size))


def get_optimizer(spec, lr=None):
    """An optimizer from an instance, or from a name ("sgd", "adam") and lr."""
    if isinstance(spec, Optimizer):
        return spec
    names = {"sgd": lambda: SGD(lr=lr or 0.05, momentum=0.9),
             "adam": lambda: Adam(lr=lr or 1e-3)}
    if not isinstance(spec, str) or spec.lower() not in names:
        raise ValueError(
            f"optimizer must be an Optimizer or one of {sorted(names)}, got {spec!r}"
        )
    return names[spec.lower()]()


def cosine_schedule(progress):
    """Learning-rate factor falling from 1 to 0 along half a cosine as training
    progresses from 0 to 1."""
    return 0.5 * (1.0 + np.cos(np.pi * progress))


def constant_schedule(progress):
    return 1.0


SCHEDULES = {"constant": constant_schedule, "cosine": cosine_schedule}


def get_schedule(spec):
    """A schedule from a name in SCHEDULES or a callable progress -> factor."""
    if callable(spec):
        return spec
    if spec not in SCHEDULES:
        raise ValueError(
            f"lr_schedule must be a callable or one of {sorted(SCHEDULES)}, "
            f"got {spec!r}"
        )
    return SCHEDULES[spec]
