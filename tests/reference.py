"""Plain NumPy reference implementations of convext's operations, for tests.

Slow and obviously correct: loops over output positions are the specification.
Arrays are NHWC as in convext.ops: activations (N, H, W, C), convolution weights
(KH, KW, C, F). Padding is always explicit here, as (PT, PB, PL, PR).
"""

import numpy as np


def relative_error(actual, expected):
    """max|actual - expected| / max(max|actual|, max|expected|, tiny), a float."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.size == 0 and expected.size == 0:
        return 0.0
    scale = max(np.abs(actual).max(), np.abs(expected).max(), np.finfo(float).tiny)
    return float(np.abs(actual - expected).max() / scale)


def numerical_gradient(f, x, eps=1e-6):
    """d f / d x by central differences, for a scalar function f of a float64 array.

    Returns an array of the shape of x. x is perturbed in a private copy.
    """
    x = np.array(x, dtype=np.float64)
    grad = np.empty_like(x)
    for index in np.ndindex(*x.shape):
        original = x[index]
        x[index] = original + eps
        f_plus = f(x)
        x[index] = original - eps
        f_minus = f(x)
        x[index] = original
        grad[index] = (f_plus - f_minus) / (2 * eps)
    return grad


def same_padding(size, kernel, stride):
    """(before, after) zeros of TensorFlow's "same": ceil(size / stride) outputs,
    the odd pixel of the padding at the end."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def explicit_padding(padding, input_hw, kernel_hw, stride_hw):
    """(PT, PB, PL, PR) for a convext padding: int, (PH, PW), "same" or "valid"."""
    if padding == "valid":
        return 0, 0, 0, 0
    if padding == "same":
        top, bottom = same_padding(input_hw[0], kernel_hw[0], stride_hw[0])
        left, right = same_padding(input_hw[1], kernel_hw[1], stride_hw[1])
        return top, bottom, left, right
    pad_h, pad_w = (padding, padding) if np.isscalar(padding) else padding
    return pad_h, pad_h, pad_w, pad_w


def as_pair(value):
    """(value, value) for an int, else the pair itself as a tuple."""
    return (value, value) if np.isscalar(value) else tuple(value)


def zero_pad(x, pad_top, pad_bottom, pad_left, pad_right):
    """x of shape (N, H, W, C) surrounded by zeros."""
    widths = ((0, 0), (pad_top, pad_bottom), (pad_left, pad_right), (0, 0))
    return np.pad(x, widths, mode="constant", constant_values=0)


def conv2d_forward(x, weights, bias=None, stride=1, padding=(0, 0, 0, 0)):
    """Cross-correlation of x (N, H, W, C) with weights (KH, KW, C, F).

    stride is an int or (SH, SW); padding is (PT, PB, PL, PR).
    Returns (N, OH, OW, F) with OH = (H + PT + PB - KH) // SH + 1.
    """
    stride_h, stride_w = as_pair(stride)
    kernel_h, kernel_w, _, n_filters = weights.shape
    padded = zero_pad(x, *padding)
    out_h = (padded.shape[1] - kernel_h) // stride_h + 1
    out_w = (padded.shape[2] - kernel_w) // stride_w + 1

    out = np.zeros((x.shape[0], out_h, out_w, n_filters), dtype=np.float64)
    for oy in range(out_h):
        for ox in range(out_w):
            top, left = oy * stride_h, ox * stride_w
            window = padded[:, top:top + kernel_h, left:left + kernel_w, :]
            out[:, oy, ox, :] = np.tensordot(
                window, weights, axes=([1, 2, 3], [0, 1, 2])
            )
    if bias is not None:
        out += bias
    return out


def conv2d_parameter_grads(x, dout, kernel_hw, stride=1, padding=(0, 0, 0, 0)):
    """Weight (KH, KW, C, F) and bias (F,) gradients of conv2d_forward for the
    output gradient dout (N, OH, OW, F): each output pixel's gradient times the
    input window it saw, summed."""
    stride_h, stride_w = as_pair(stride)
    kernel_h, kernel_w = kernel_hw
    padded = zero_pad(x, *padding)
    dweights = np.zeros((kernel_h, kernel_w, x.shape[3], dout.shape[3]))
    for oy in range(dout.shape[1]):
        for ox in range(dout.shape[2]):
            top, left = oy * stride_h, ox * stride_w
            window = padded[:, top:top + kernel_h, left:left + kernel_w, :]
            dweights += np.tensordot(window, dout[:, oy, ox, :], axes=([0], [0]))
    return dweights, dout.sum(axis=(0, 1, 2))


def conv2d_input_grad(dout, weights, x_shape, stride=1, padding=(0, 0, 0, 0)):
    """Input gradient (N, H, W, C) of conv2d_forward for the output gradient dout
    (N, OH, OW, F): each output pixel's gradient spread back over the input window
    it saw through the weights, the padding cut off."""
    stride_h, stride_w = as_pair(stride)
    kernel_h, kernel_w = weights.shape[:2]
    pad_top, pad_bottom, pad_left, pad_right = padding
    n, h, w, c = x_shape
    padded = np.zeros((n, h + pad_top + pad_bottom, w + pad_left + pad_right, c))
    for oy in range(dout.shape[1]):
        for ox in range(dout.shape[2]):
            top, left = oy * stride_h, ox * stride_w
            padded[:, top:top + kernel_h, left:left + kernel_w, :] += np.tensordot(
                dout[:, oy, ox, :], weights, axes=([1], [3])
            )
    return padded[:, pad_top:pad_top + h, pad_left:pad_left + w, :]


def maxpool2d_windows(x, pool_size, stride=None):
    """Yield (oy, ox, window) for each pool window of x (N, H, W, C), no padding."""
    pool_h, pool_w = as_pair(pool_size)
    stride_h, stride_w = as_pair(pool_size if stride is None else stride)
    out_h = (x.shape[1] - pool_h) // stride_h + 1
    out_w = (x.shape[2] - pool_w) // stride_w + 1
    for oy in range(out_h):
        for ox in range(out_w):
            top, left = oy * stride_h, ox * stride_w
            yield oy, ox, x[:, top:top + pool_h, left:left + pool_w, :]


def maxpool2d_output_shape(x_shape, pool_size, stride=None):
    """(N, OH, OW, C) of max-pooling an input of x_shape."""
    pool_h, pool_w = as_pair(pool_size)
    stride_h, stride_w = as_pair(pool_size if stride is None else stride)
    n, h, w, c = x_shape
    return n, (h - pool_h) // stride_h + 1, (w - pool_w) // stride_w + 1, c


def maxpool2d_forward(x, pool_size, stride=None):
    """Maximum of each window of x (N, H, W, C); NaN in a window gives NaN."""
    out = np.empty(maxpool2d_output_shape(x.shape, pool_size, stride), x.dtype)
    for oy, ox, window in maxpool2d_windows(x, pool_size, stride):
        out[:, oy, ox, :] = window.max(axis=(1, 2))
    return out


def maxpool2d_argmax(x, pool_size, stride=None):
    """y * W + x of the first maximum, in row-major window order, of each window."""
    pool_w = as_pair(pool_size)[1]
    stride_h, stride_w = as_pair(pool_size if stride is None else stride)
    width = x.shape[2]
    argmax = np.empty(maxpool2d_output_shape(x.shape, pool_size, stride), np.int64)
    for oy, ox, window in maxpool2d_windows(x, pool_size, stride):
        n, ph, pw, c = window.shape
        flat = window.transpose(0, 3, 1, 2).reshape(n, c, ph * pw)
        first = flat.argmax(axis=2)                     # (N, C)
        rows, cols = oy * stride_h + first // pool_w, ox * stride_w + first % pool_w
        argmax[:, oy, ox, :] = rows * width + cols
    return argmax


def batchnorm_forward(x, gamma, beta, eps=1e-5):
    """Normalise each channel of x (..., C) over all other axes, scale and shift."""
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axis=axes)
    var = ((x - mean) ** 2).mean(axis=axes)
    return gamma * (x - mean) / np.sqrt(var + eps) + beta


def batchnorm_inference(x, gamma, beta, running_mean, running_var, eps=1e-5):
    """gamma * (x - running_mean) / sqrt(running_var + eps) + beta, per channel."""
    return gamma * (x - running_mean) / np.sqrt(running_var + eps) + beta


def relu(x):
    """max(x, 0) elementwise; NaN stays NaN."""
    return np.maximum(x, 0)
