"""Layers of a convolutional network: Conv2D, MaxPool2D, BatchNorm, ReLU, Flatten
and Dense.

Shapes are NHWC: activations (N, H, W, C), convolution weights (KH, KW, C, F),
dense weights (D, U) for D inputs and U units.

A layer is built once its input shape is known (``build``), then runs
``forward(x, training)`` and ``backward(dy)``. ``backward`` overwrites ``grads``;
it reads what the last ``forward`` cached, so the two alternate. A layer's output
lives in a buffer the layer keeps and overwrites on its next forward call; callers
that keep an output across calls copy it.
"""

import numpy as np

from convext import _kernels
from convext._threads import threads_for
from convext.ops import (
    Workspace,
    as_pair,
    batchnorm_backward_checked,
    batchnorm_forward_checked,
    batchnorm_inference,
    check_int,
    conv2d_backward_checked,
    conv2d_forward_checked,
    conv_geometry,
    matmul,
)

LAYER_TYPES = {}


def register(cls):
    """Make a layer class known to model loading by its class name."""
    LAYER_TYPES[cls.__name__] = cls
    return cls


def he_normal(rng, shape, fan_in, dtype):
    """Normal with variance 2 / fan_in, for layers followed by ReLU."""
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(dtype)


def glorot_uniform(rng, shape, fan_in, fan_out, dtype):
    """Uniform on +-sqrt(6 / (fan_in + fan_out))."""
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, shape).astype(dtype)


INITIALIZERS = ("he", "glorot")


def _check_initializer(layer, init):
    if init not in INITIALIZERS:
        raise ValueError(f"{layer}: init must be one of {INITIALIZERS}, got {init!r}")
    return init


class Layer:
    """Base class. Subclasses set params (trainable), state (saved, not trained)
    and grads (same keys as params) in build."""

    def __init__(self):
        self.params = {}
        self.grads = {}
        self.state = {}
        self.input_shape = None
        self.output_shape = None
        self.need_input_grad = True
        self.workspace = Workspace()

    def build(self, input_shape, rng, dtype):
        """Create the parameters for inputs of shape (N, *input_shape).

        Returns the output shape without the batch axis.
        """
        self.input_shape = tuple(input_shape)
        self.output_shape = self.compute_output_shape(self.input_shape)
        return self.output_shape

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        """The constructor's arguments, as JSON-ready values."""
        return {}

    def forward(self, x, training):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


@register
class Conv2D(Layer):
    """Two-dimensional convolution over NHWC inputs.

    Parameters
    ----------
    filters : int
        F, the number of output channels.
    kernel_size : int or (KH, KW)
    stride : int or (SH, SW)
    padding : int, (PH, PW), "same" or "valid"
    use_bias : bool
    init : "he" or "glorot"
        Initialisation of the weights; biases start at zero.
    """

    def __init__(self, filters, kernel_size=3, stride=1, padding="valid",
                 use_bias=True, init="he"):
        super().__init__()
        self.filters = check_int("Conv2D", "filters", filters, 1)
        self.kernel_size = as_pair("Conv2D", "kernel_size", kernel_size, 1)
        self.stride = as_pair("Conv2D", "stride", stride, 1)
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(
                    f"Conv2D: padding must be an int >= 0, a pair of them, 'same' or "
                    f"'valid', got {padding!r}"
                )
            self.padding = padding
        else:
            self.padding = as_pair("Conv2D", "padding", padding, 0)
        self.use_bias = bool(use_bias)
        self.init = _check_initializer("Conv2D", init)
        self.geometry = None

    def get_config(self):
        return {
            "filters": self.filters,
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "padding": self.padding if isinstance(self.padding, str)
            else list(self.padding),
            "use_bias": self.use_bias,
            "init": self.init,
        }

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(
                f"Conv2D: input must be (H, W, C) per sample, got {input_shape}"
            )
        self.geometry = conv_geometry("Conv2D", input_shape[:2], self.kernel_size,
                                      self.stride, self.padding)
        return self.geometry.out_h, self.geometry.out_w, self.filters

    def build(self, input_shape, rng, dtype):
        output_shape = super().build(input_shape, rng, dtype)
        kernel_h, kernel_w = self.kernel_size
        channels = input_shape[2]
        shape = (kernel_h, kernel_w, channels, self.filters)
        fan_in = kernel_h * kernel_w * channels
        fan_out = kernel_h * kernel_w * self.filters
        if self.init == "he":
            self.params["weights"] = he_normal(rng, shape, fan_in, dtype)
        else:
            self.params["weights"] = glorot_uniform(rng, shape, fan_in, fan_out, dtype)
        if self.use_bias:
            self.params["bias"] = np.zeros(self.filters, dtype)
        return output_shape

    def forward(self, x, training):
        # x (N, H, W, C) -> (N, OH, OW, F)
        self._x = x
        self._cols_kept = bool(training)
        return conv2d_forward_checked(x, self.params["weights"],
                                      self.params.get("bias"), self.geometry,
                                      self.workspace, keep_cols=training)

    def backward(self, dy):
        dx, dweights, dbias = conv2d_backward_checked(
            dy, self._x, self.params["weights"], self.geometry, self.workspace,
            self.need_input_grad, cols_kept=self._cols_kept,
        )
        self.grads["weights"] = dweights
        if self.use_bias:
            self.grads["bias"] = dbias
        return dx


@register
class MaxPool2D(Layer):
    """Max-pooling over windows of pool_size, stepping by stride (default
    pool_size), without padding: rows and columns past the last whole window are
    dropped."""

    def __init__(self, pool_size=2, stride=None):
        super().__init__()
        self.pool_size = as_pair("MaxPool2D", "pool_size", pool_size, 1)
        self.stride = as_pair("MaxPool2D", "stride",
                              self.pool_size if stride is None else stride, 1)

    def get_config(self):
        return {"pool_size": list(self.pool_size), "stride": list(self.stride)}

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(
                f"MaxPool2D: input must be (H, W, C) per sample, got {input_shape}"
            )
        (h, w, c), (pool_h, pool_w) = input_shape, self.pool_size
        if pool_h > h or pool_w > w:
            raise ValueError(
                f"MaxPool2D: pool_size {self.pool_size} must fit in the input "
                f"({h}, {w})"
            )
        return ((h - pool_h) // self.stride[0] + 1,
                (w - pool_w) // self.stride[1] + 1, c)

    def forward(self, x, training):
        # x (N, H, W, C) -> (N, OH, OW, C)
        n = x.shape[0]
        shape = (n, *self.output_shape)
        out = self.workspace.get("out", shape, x.dtype)
        argmax = self.workspace.get("argmax", shape, np.int32)
        _kernels.maxpool2d_forward(x, out, argmax, *self.pool_size, *self.stride,
                                   threads_for(x.size))
        return out

    def backward(self, dy):
        argmax = self.workspace.get("argmax", dy.shape, np.int32)
        dx = self.workspace.get("dx", (dy.shape[0], *self.input_shape), dy.dtype)
        _kernels.maxpool2d_backward(dy, argmax, dx, threads_for(dx.size))
        return dx


@register
class BatchNorm(Layer):
    """Batch normalisation of the last axis.

    After a convolution, (N, H, W, C) inputs are normalised per channel over N, H
    and W; after a dense layer, (N, C) inputs per feature over N. Training uses the
    batch's statistics and folds them into running ones; evaluation uses the
    running ones.

    Parameters
    ----------
    momentum : float in [0, 1)
        running = momentum * running + (1 - momentum) * batch statistic.
    eps : float > 0
    """

    def __init__(self, momentum=0.9, eps=1e-5):
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"BatchNorm: momentum must be in [0, 1), got {momentum!r}")
        if not eps > 0:
            raise ValueError(f"BatchNorm: eps must be > 0, got {eps!r}")
        self.momentum = float(momentum)
        self.eps = float(eps)

    def get_config(self):
        return {"momentum": self.momentum, "eps": self.eps}

    def build(self, input_shape, rng, dtype):
        output_shape = super().build(input_shape, rng, dtype)
        channels = input_shape[-1]
        self.params["gamma"] = np.ones(channels, dtype)
        self.params["beta"] = np.zeros(channels, dtype)
        self.state["running_mean"] = np.zeros(channels, dtype)
        self.state["running_var"] = np.ones(channels, dtype)
        return output_shape

    def forward(self, x, training):
        # x (N, ..., C) -> (N, ..., C), seen as (M, C)
        gamma, beta = self.params["gamma"], self.params["beta"]
        if not training:
            return batchnorm_inference(x, gamma, beta, self.state["running_mean"],
                                       self.state["running_var"], self.eps)
        y, self._cache = batchnorm_forward_checked(x, gamma, beta, self.eps,
                                                   self.workspace)
        return y

    def backward(self, dy):
        dx, dgamma, dbeta = batchnorm_backward_checked(dy, self._cache, self.workspace)
        self.grads["gamma"], self.grads["beta"] = dgamma, dbeta
        self._update_running_stats(dy.size // dy.shape[-1])
        return dx

    def _update_running_stats(self, rows):
        # Done in backward, which runs only once the step's loss proved finite, so
        # a step that is thrown away leaves the running statistics untouched. The
        # running variance is the unbiased one, as the evaluation estimate.
        unbiased = self._cache.var * (rows / max(rows - 1, 1))
        keep = self.momentum
        self.state["running_mean"] *= keep
        self.state["running_mean"] += (1 - keep) * self._cache.mean
        self.state["running_var"] *= keep
        self.state["running_var"] += (1 - keep) * unbiased


@register
class ReLU(Layer):
    """max(x, 0), elementwise."""

    def forward(self, x, training):
        y = self.workspace.get("y", x.shape, x.dtype)
        _kernels.relu_forward(x.reshape(-1), y.reshape(-1), threads_for(x.size))
        self._y = y
        return y

    def backward(self, dy):
        dx = self.workspace.get("dx", dy.shape, dy.dtype)
        _kernels.relu_backward(dy.reshape(-1), self._y.reshape(-1), dx.reshape(-1),
                               threads_for(dy.size))
        return dx


@register
class Flatten(Layer):
    """(N, H, W, C) -> (N, H * W * C), in NHWC order."""

    def compute_output_shape(self, input_shape):
        return (int(np.prod(input_shape)),)

    def forward(self, x, training):
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(dy.shape[0], *self.input_shape)


@register
class Dense(Layer):
    """Fully connected layer: (N, D) @ (D, U) + (U,).

    Parameters
    ----------
    units : int
    use_bias : bool
    init : "he" or "glorot"
    """

    def __init__(self, units, use_bias=True, init="he"):
        super().__init__()
        self.units = check_int("Dense", "units", units, 1)
        self.use_bias = bool(use_bias)
        self.init = _check_initializer("Dense", init)

    def get_config(self):
        return {"units": self.units, "use_bias": self.use_bias, "init": self.init}

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 1:
            raise ValueError(
                f"Dense: input must be flat (D,) per sample, got {input_shape}; "
                f"put a Flatten layer before it"
            )
        return (self.units,)

    def build(self, input_shape, rng, dtype):
        output_shape = super().build(input_shape, rng, dtype)
        shape = (input_shape[0], self.units)
        if self.init == "he":
            self.params["weights"] = he_normal(rng, shape, shape[0], dtype)
        else:
            self.params["weights"] = glorot_uniform(rng, shape, *shape, dtype)
        if self.use_bias:
            self.params["bias"] = np.zeros(self.units, dtype)
        return output_shape

    def forward(self, x, training):
        # x (N, D) -> (N, U)
        self._x = x
        weights = self.params["weights"]
        out = self.workspace.get("out", (x.shape[0], self.units), x.dtype)
        out[:] = self.params["bias"] if self.use_bias else 0
        matmul(x, weights, out, accumulate=True, workspace=self.workspace)
        return out

    def backward(self, dy):
        weights = self.params["weights"]
        # (D, N) @ (N, U) -> (D, U)
        dweights = self.grads["weights"] = np.empty_like(weights)
        matmul(self._x, dy, dweights, trans_a=True, workspace=self.workspace)
        if self.use_bias:
            self.grads["bias"] = dy.sum(axis=0)
        if not self.need_input_grad:
            return None
        # (N, U) @ (U, D) -> (N, D)
        dx = self.workspace.get("dx", self._x.shape, dy.dtype)
        matmul(dy, weights, dx, trans_b=True, workspace=self.workspace)
        return dx
