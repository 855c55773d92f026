"""NHWC operations of a convolutional network, forward and backward.

Shape legend:
    N batch, H/W input height and width, C input channels, F filters,
    KH/KW kernel height and width, SH/SW strides, OH/OW output height and width,
    PT/PB/PL/PR zero padding at the top, bottom, left and right.

Activations are ``(N, H, W, C)`` and convolution weights ``(KH, KW, C, F)``. A
convolution's output size is ``OH = (H + PT + PB - KH) // SH + 1`` (likewise OW).

Every function here checks its arguments, then runs a compiled kernel from
``convext._kernels`` without the GIL. The dtype rule, the same everywhere: the
arrays are computed in ``numpy.result_type(*arrays, numpy.float32)``, which must be
float32 or float64. So float32 stays float32, float64 stays float64, float16 and
small integers become float32, and int64 becomes float64; complex, object and
string arrays raise TypeError. Arrays that are not C-contiguous, or not in native
byte order, are copied; read-only arrays are accepted as inputs.
"""

import math
from typing import NamedTuple

import numpy as np

from convext import _kernels
from convext._threads import single_threaded_blas, threads_for

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class Workspace:
    """Buffers kept between calls, so that a training step does not allocate.

    ``get`` hands back the same array for the same name while shape and dtype stay
    the same; the contents are whatever the last user left there.
    """

    def __init__(self):
        self._buffers = {}
        # the number of blocks of the receptive fields kept in "cols" by the last
        # convolution forward pass with keep_cols, None when none are kept
        self.cols_blocks = None

    def get(self, name, shape, dtype):
        buffer = self._buffers.get(name)
        if buffer is None or buffer.shape != shape or buffer.dtype != dtype:
            buffer = np.empty(shape, dtype=dtype)
            self._buffers[name] = buffer
        return buffer


# ---------------------------------------------------------------------------
# Argument checks


def compute_dtype(func, **arrays):
    """The floating dtype that the named arrays are computed in (see module doc)."""
    dtypes = []
    for name, value in arrays.items():
        if value is None:
            continue
        if not isinstance(value, (np.ndarray, np.generic)):
            raise TypeError(
                f"{func}: {name} must be a numpy.ndarray, got {type(value).__name__}"
            )
        if value.dtype.kind not in "biuf":
            raise TypeError(
                f"{func}: {name} must hold real numbers, got dtype {value.dtype}"
            )
        dtypes.append(value.dtype)
    dtype = np.result_type(*dtypes, np.float32)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{func}: arrays of dtypes {[str(d) for d in dtypes]} would be computed "
            f"in {dtype}; only float32 and float64 are supported"
        )
    return dtype


def as_array(func, name, value, ndim, layout, dtype):
    """value as a C-contiguous, native-order array of dtype with ndim dimensions."""
    if not isinstance(value, (np.ndarray, np.generic)):
        # None, which compute_dtype passes over for the optional arguments
        raise TypeError(
            f"{func}: {name} must be a numpy.ndarray, got {type(value).__name__}"
        )
    if value.ndim != ndim:
        raise ValueError(
            f"{func}: {name} must be {ndim}-D {layout}, got shape {value.shape}"
        )
    return np.ascontiguousarray(value, dtype=dtype)


def as_pair(func, name, value, minimum):
    """An int or a pair of ints, each at least minimum, as a tuple of two ints."""
    pair = (value, value) if not isinstance(value, (tuple, list)) else tuple(value)
    if len(pair) != 2 or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in pair
    ):
        raise TypeError(
            f"{func}: {name} must be an int or a pair of ints, got {value!r}"
        )
    if min(pair) < minimum:
        raise ValueError(f"{func}: {name} must be >= {minimum}, got {value!r}")
    return int(pair[0]), int(pair[1])


def check_int(func, name, value, minimum):
    """value as an int, checked to be an int (not a bool) of at least minimum."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{func}: {name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{func}: {name} must be >= {minimum}, got {value!r}")
    return int(value)


class ConvGeometry(NamedTuple):
    """Where a kernel of size (KH, KW) lands on an (H, W) input."""

    kernel_h: int
    kernel_w: int
    stride_h: int
    stride_w: int
    pad_top: int
    pad_bottom: int
    pad_left: int
    pad_right: int
    out_h: int
    out_w: int


def resolve_padding(func, padding, size, kernel, stride):
    """Padding before and after one axis for an int, "same" or "valid" padding.

    "same" gives ``ceil(size / stride)`` outputs, splitting the padding with the odd
    pixel at the end, as TensorFlow and Keras do.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return 0, 0
        if padding == "same":
            out = math.ceil(size / stride)
            total = max((out - 1) * stride + kernel - size, 0)
            return total // 2, total - total // 2
        raise ValueError(
            f"{func}: padding must be an int >= 0, a pair of them, 'same' or 'valid', "
            f"got {padding!r}"
        )
    return padding, padding


def conv_geometry(func, input_hw, kernel, stride, padding):
    """Check kernel, stride and padding against an (H, W) input; a ConvGeometry."""
    kernel_h, kernel_w = as_pair(func, "kernel size", kernel, 1)
    stride_h, stride_w = as_pair(func, "stride", stride, 1)
    if isinstance(padding, str):
        pad_h = pad_w = padding
    else:
        pad_h, pad_w = as_pair(func, "padding", padding, 0)
    pad_top, pad_bottom = resolve_padding(func, pad_h, input_hw[0], kernel_h, stride_h)
    pad_left, pad_right = resolve_padding(func, pad_w, input_hw[1], kernel_w, stride_w)

    padded_h = input_hw[0] + pad_top + pad_bottom
    padded_w = input_hw[1] + pad_left + pad_right
    if kernel_h > padded_h or kernel_w > padded_w:
        raise ValueError(
            f"{func}: kernel size ({kernel_h}, {kernel_w}) must fit in the padded "
            f"input ({padded_h}, {padded_w}) (input {tuple(input_hw)}, padding "
            f"{padding!r})"
        )
    if padded_h * padded_w > np.iinfo(np.int32).max:
        raise ValueError(
            f"{func}: the padded input ({padded_h}, {padded_w}) must have fewer than "
            f"2**31 pixels, the most the BLAS can index"
        )
    return ConvGeometry(
        kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_bottom, pad_left,
        pad_right,
        out_h=(padded_h - kernel_h) // stride_h + 1,
        out_w=(padded_w - kernel_w) // stride_w + 1,
    )


def _output_like(func, out, x):
    """out checked to be a writable C-contiguous array like x, or a new one."""
    if out is None:
        return np.empty_like(x)
    if (not isinstance(out, np.ndarray) or out.shape != x.shape
            or out.dtype != x.dtype or not out.flags.c_contiguous
            or not out.flags.writeable):
        raise ValueError(
            f"{func}: out must be a writable C-contiguous {x.dtype} array of shape "
            f"{x.shape}, got {getattr(out, 'dtype', type(out).__name__)} "
            f"{getattr(out, 'shape', '')}"
        )
    return out


def _check_eps(func, eps):
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating)):
        raise TypeError(f"{func}: eps must be a number, got {eps!r}")
    if not 0 < eps < np.inf:
        raise ValueError(f"{func}: eps must be > 0 and finite, got {eps!r}")


def _check_same_shape(func, name, value, expected_shape):
    if value.shape != tuple(expected_shape):
        raise ValueError(
            f"{func}: {name} must have shape {tuple(expected_shape)}, "
            f"got {value.shape}"
        )


# ---------------------------------------------------------------------------
# Matrix products


def matmul(a, b, c, trans_a=False, trans_b=False, accumulate=False, workspace=None):
    """c = op(a) @ op(b) (or c += when accumulate) on checked C-contiguous arrays
    of one dtype, with op the transpose where asked; the BLAS called from
    convext's threads, so it must be held to one thread (single_threaded_blas)."""
    rows = c.shape[0]
    inner = a.shape[0] if trans_a else a.shape[1]
    threads = threads_for(rows * c.shape[1] * inner // 8)
    # Few rows and a long inner dimension (a weight gradient summed over every
    # pixel of a batch): the threads split the inner dimension instead of the rows.
    if threads > 1 and not accumulate and rows < 32 * threads and inner > 64 * rows:
        partial = (workspace or Workspace()).get("matmul_partial",
                                                 (threads, *c.shape), c.dtype)
        _kernels.gemm_split_inner(a, b, c, trans_a, trans_b, partial)
    else:
        _kernels.gemm(a, b, c, trans_a, trans_b, accumulate, threads)


# ---------------------------------------------------------------------------
# Zero padding


def _pad_amounts(func, pad):
    """pad as ((PT, PB), (PL, PR)) from an int, (PH, PW) or ((PT, PB), (PL, PR))."""
    if isinstance(pad, (tuple, list)) and len(pad) == 2 and all(
        isinstance(p, (tuple, list)) for p in pad
    ):
        top, bottom = as_pair(func, "pad", pad[0], 0)
        left, right = as_pair(func, "pad", pad[1], 0)
        return (top, bottom), (left, right)
    pad_h, pad_w = as_pair(func, "pad", pad, 0)
    return (pad_h, pad_h), (pad_w, pad_w)


def zero_pad(x, pad):
    """Surround each image with zeros.

    Parameters
    ----------
    x : ndarray of shape (N, H, W, C)
    pad : int, (PH, PW) or ((PT, PB), (PL, PR))

    Returns
    -------
    ndarray of shape (N, H + PT + PB, W + PL + PR, C)
    """
    dtype = compute_dtype("zero_pad", x=x)
    x = as_array("zero_pad", "x", x, 4, "(N, H, W, C)", dtype)
    (top, bottom), (left, right) = _pad_amounts("zero_pad", pad)

    n, h, w, c = x.shape
    out = np.empty((n, h + top + bottom, w + left + right, c), dtype=dtype)
    _kernels.pad2d(x, out, top, left, threads_for(out.size))
    return out


def zero_pad_backward(dout, pad):
    """Gradient of zero_pad: the interior of dout.

    Parameters
    ----------
    dout : ndarray of shape (N, H + PT + PB, W + PL + PR, C)
    pad : the pad given to zero_pad

    Returns
    -------
    ndarray of shape (N, H, W, C)
    """
    dtype = compute_dtype("zero_pad_backward", dout=dout)
    dout = as_array("zero_pad_backward", "dout", dout, 4, "(N, H, W, C)", dtype)
    (top, bottom), (left, right) = _pad_amounts("zero_pad_backward", pad)
    n, padded_h, padded_w, c = dout.shape
    if top + bottom >= padded_h or left + right >= padded_w:
        raise ValueError(
            f"zero_pad_backward: pad {pad!r} must leave at least one pixel of dout "
            f"of shape {dout.shape}"
        )

    dx = np.empty((n, padded_h - top - bottom, padded_w - left - right, c), dtype)
    _kernels.pad2d_backward(dout, dx, top, left, threads_for(dout.size))
    return dx


# ---------------------------------------------------------------------------
# Convolution


def _check_conv_args(func, x, weights, bias, dtype=None):
    """Validated (x, weights, bias) in one dtype for a convolution."""
    if dtype is None:
        dtype = compute_dtype(func, x=x, weights=weights, bias=bias)
    x = as_array(func, "x", x, 4, "(N, H, W, C)", dtype)
    weights = as_array(func, "weights", weights, 4, "(KH, KW, C, F)", dtype)
    if 0 in weights.shape:
        raise ValueError(f"{func}: weights must have no empty axis, got shape "
                         f"{weights.shape}")
    if weights.shape[2] != x.shape[3]:
        raise ValueError(
            f"{func}: weights must have {x.shape[3]} input channels (axis 2) to match "
            f"x of shape {x.shape}, got weights of shape {weights.shape}"
        )
    if bias is not None:
        bias = as_array(func, "bias", bias, 1, "(F,)", dtype)
        _check_same_shape(func, "bias", bias, weights.shape[3:])
    return x, weights, bias


# Bytes of receptive fields a thread gathers before multiplying them: cache-sized.
# Measured at batch 64, 3x3 kernels: the second layer of the default network
# (14x14x32 to 64) ran forward in 3.16 ms with the whole im2col matrix (14 MB)
# built first, and in 2.52 ms with blocks of 8 samples (1.8 MB); the first layer
# (28x28x1 to 32) in 0.72 and 0.48 ms.
CONV_BLOCK_BYTES = 2 << 20


# Up to this many taps (KH * KW * C) the weight gradient of the blocked
# convolution is summed by register-tiled loops (csrc/convext_lanes.h) instead of
# the BLAS (0.62 against 0.81 ms for 28x28x1 images, 32 filters, batch 64), and
# training keeps the forward pass's gathered receptive fields for the backward.
FEW_TAPS = 32


def _conv_threads(geometry, x, weights):
    """Threads for a convolution of x: all of them unless the work is small, and
    no more than there are samples."""
    n = x.shape[0]
    work = n * geometry.out_h * geometry.out_w * weights[..., 0].size * weights.shape[3]
    return min(threads_for(work // 8), max(n, 1))


def direct_conv(geometry, weights, dtype, need_input_grad=False):
    """Whether the direct kernels (csrc/convext_direct.h) serve this convolution.

    They need the filters in whole register tiles, and for the input gradient stride
    1, the input channels in whole tiles too and padding smaller than the kernel.
    Where they serve, they beat the blocked im2col kernels, few taps included: for
    28x28x1 to 32 filters, batch 64, without the input gradient, forward and
    backward took 0.95 ms against 1.31, side by side.
    """
    kernel_h, kernel_w, channels, n_filters = weights.shape
    multiple = _kernels.direct_filter_multiple(dtype == np.float64)
    if n_filters % multiple:
        return False
    if not need_input_grad:
        return True
    g = geometry
    return (g.stride_h == g.stride_w == 1 and channels % multiple == 0
            and max(g.pad_top, g.pad_bottom) < kernel_h
            and max(g.pad_left, g.pad_right) < kernel_w)


def _padded_buffer(workspace, name, threads, x_shape, geometry, dtype):
    """(T, H + PT + PB, W + PL + PR, C): a zero-padded sample per thread."""
    _, h, w, c = x_shape
    g = geometry
    shape = (threads, h + g.pad_top + g.pad_bottom, w + g.pad_left + g.pad_right, c)
    return workspace.get(name, shape, dtype)


def conv_blocks(geometry, x, weights, workspace):
    """(blocks, threads, per-thread slabs) for the blocked convolution kernels.

    The samples are split into blocks whose receptive fields fit a slab of
    CONV_BLOCK_BYTES, as many blocks for every thread, and of sizes that differ by
    at most one sample: with 64 samples and room for 9, blocks of 9 gave one
    thread 36 samples and the other 28; 8 blocks of 8 give 32 each.
    """
    n = x.shape[0]
    pixels = geometry.out_h * geometry.out_w
    taps = weights.shape[0] * weights.shape[1] * weights.shape[2]
    threads = _conv_threads(geometry, x, weights)
    most = max(1, CONV_BLOCK_BYTES // max(pixels * taps * x.itemsize, 1))
    n_blocks = threads * -(-n // (threads * most))
    largest = -(-n // n_blocks)
    slabs = workspace.get("slabs", (threads, largest * pixels, taps), x.dtype)
    return n_blocks, threads, slabs


def conv2d_forward_checked(x, weights, bias, geometry, workspace, keep_cols=False):
    """conv2d_forward on arrays that have passed the checks.

    Each thread gathers the receptive fields of a block of samples (im2col) into
    a cache-sized slab and multiplies it by the weights with the BLAS right away.
    With keep_cols and few taps, every block keeps its slab in the workspace, for
    conv2d_backward_checked with cols_kept: training's forward pass, whose
    backward pass then gathers nothing again.
    """
    n, _, _, c = x.shape
    kernel_h, kernel_w, _, n_filters = weights.shape
    g = geometry
    out = workspace.get("out", (n, g.out_h, g.out_w, n_filters), x.dtype)
    workspace.cols_blocks = None
    if n == 0:
        return out
    if bias is None:
        bias = workspace.get("zero_bias", (n_filters,), x.dtype)
        bias[:] = 0

    if direct_conv(g, weights, x.dtype):
        # each thread's samples, zero-padded one by one into its buffer, convolved
        padded = _padded_buffer(workspace, "padded", _conv_threads(g, x, weights),
                                x.shape, g, x.dtype)
        _kernels.conv2d_forward_direct(
            x, weights.reshape(-1, n_filters), bias, out, padded, kernel_h, kernel_w,
            g.stride_h, g.stride_w, g.pad_top, g.pad_left,
        )
        return out

    # (B * OH * OW, KH * KW * C) @ (KH * KW * C, F) + bias per block of B
    # samples, into the NHWC output itself
    n_blocks, threads, slabs = conv_blocks(g, x, weights, workspace)
    # Kept only for few taps, where gathering costs much against the products:
    # for 28x28x1 to 32 filters, batch 64, forward and backward took 0.9 ms with
    # them kept against 1.05; for 14x14x32 to 64, keeping 14 MB of them that the
    # per-thread slabs hold in cache cost 6.0 ms against 5.3.
    keep_cols = keep_cols and slabs.shape[2] <= FEW_TAPS
    if keep_cols:
        slabs = workspace.get("cols", (n_blocks, *slabs.shape[1:]), x.dtype)
        workspace.cols_blocks = n_blocks
    _kernels.conv2d_forward_blocked(
        x, weights.reshape(-1, n_filters), bias, out, slabs, kernel_h, kernel_w,
        g.stride_h, g.stride_w, g.pad_top, g.pad_left, n_blocks, keep_cols, threads,
    )
    return out


def conv2d_backward_checked(dout, x, weights, geometry, workspace, need_input_grad,
                            cols_kept=False):
    """conv2d_backward on checked arrays, block by block as the forward pass; with
    cols_kept, x is the input of the last conv2d_forward_checked with keep_cols
    on this workspace, whose gathered receptive fields are used again."""
    n, h, w, c = x.shape
    kernel_h, kernel_w, _, n_filters = weights.shape
    g = geometry

    # weight gradient, im2col(x)^T @ dout summed over the blocks, bias gradient,
    # the column sums of dout, and input gradient, dout @ weights^T scattered back
    # by col2im, block by block
    dweights = np.empty(weights.shape, dtype=x.dtype)
    dbias = np.empty(n_filters, dtype=x.dtype)
    dx = workspace.get("dx", (n, h, w, c) if need_input_grad else (0, 0, 0, 0),
                       x.dtype)
    if n == 0:
        dweights[:] = 0
        dbias[:] = 0
        return (dx if need_input_grad else None), dweights, dbias
    taps = kernel_h * kernel_w * c
    if direct_conv(g, weights, x.dtype, need_input_grad):
        _conv2d_backward_direct(dout, x, weights, g, workspace, dweights, dbias, dx)
        return (dx if need_input_grad else None), dweights, dbias

    n_blocks, threads, slabs = conv_blocks(g, x, weights, workspace)
    dcols_slabs = (workspace.get("dcols_slabs", slabs.shape, x.dtype)
                   if need_input_grad else slabs[:, :0])
    # The kept slabs serve only if the thread count, and so the blocks, stayed.
    cols_kept = cols_kept and workspace.cols_blocks == n_blocks
    if cols_kept:
        slabs = workspace.get("cols", (n_blocks, *slabs.shape[1:]), x.dtype)
    partial = workspace.get("dweights_partial", (threads, taps, n_filters), x.dtype)
    bias_partial = workspace.get("dbias_partial", (threads, n_filters), np.float64)
    _kernels.conv2d_backward_blocked(
        x, weights.reshape(-1, n_filters), dout, slabs, dcols_slabs, partial,
        bias_partial, dweights.reshape(-1, n_filters), dbias, dx, kernel_h, kernel_w,
        g.stride_h, g.stride_w, g.pad_top, g.pad_left, n_blocks, taps <= FEW_TAPS,
        cols_kept,
    )
    return (dx if need_input_grad else None), dweights, dbias


def _conv2d_backward_direct(dout, x, weights, geometry, workspace, dweights, dbias,
                            dx):
    """The direct kernels' gradients into dweights, dbias and dx, which is
    (0, 0, 0, 0) when the input gradient is not wanted."""
    n, h, w, c = x.shape
    kernel_h, kernel_w, _, n_filters = weights.shape
    g = geometry
    threads = _conv_threads(g, x, weights)
    padded = _padded_buffer(workspace, "padded", threads, x.shape, g, x.dtype)
    if dx.shape[0]:
        # dout zero-padded to (H + KH - 1, W + KW - 1) per thread, convolved with
        # the weights turned by 180 degrees, (KH, KW, F, C)
        padded_dout = workspace.get(
            "padded_dout", (threads, h + kernel_h - 1, w + kernel_w - 1, n_filters),
            x.dtype)
        flipped = workspace.get("flipped", (kernel_h, kernel_w, n_filters, c), x.dtype)
        np.copyto(flipped, weights[::-1, ::-1].transpose(0, 1, 3, 2))
    else:
        padded_dout = np.empty((0, 0, 0, 0), x.dtype)
        flipped = weights
    zeros = workspace.get("zeros", (c,), x.dtype)
    zeros[:] = 0
    taps = kernel_h * kernel_w * c
    partial = workspace.get("dweights_partial", (threads, taps, n_filters), x.dtype)
    bias_partial = workspace.get("dbias_partial", (threads, n_filters), np.float64)
    _kernels.conv2d_backward_direct(
        x, flipped.reshape(-1, c), dout, padded, padded_dout, zeros, partial,
        bias_partial, dweights.reshape(-1, n_filters), dbias, dx, kernel_h, kernel_w,
        g.stride_h, g.stride_w, g.pad_top, g.pad_left,
    )


def conv2d_forward(x, weights, bias=None, stride=1, padding=0):
    """Two-dimensional convolution (cross-correlation, as in deep learning).

    Parameters
    ----------
    x : ndarray of shape (N, H, W, C)
    weights : ndarray of shape (KH, KW, C, F)
    bias : ndarray of shape (F,), optional
    stride : int or (SH, SW)
    padding : int, (PH, PW), "same" or "valid"
        Zeros added around each image; "same" keeps ``OH = ceil(H / SH)``.

    Returns
    -------
    ndarray of shape (N, OH, OW, F)
        ``OH = (H + PT + PB - KH) // SH + 1``, likewise OW.
    """
    x, weights, bias = _check_conv_args("conv2d_forward", x, weights, bias)
    geometry = conv_geometry("conv2d_forward", x.shape[1:3], weights.shape[:2],
                             stride, padding)
    with single_threaded_blas():
        return conv2d_forward_checked(x, weights, bias, geometry, Workspace()).copy()


def conv2d_backward(dout, x, weights, stride=1, padding=0, need_input_grad=True):
    """Gradients of conv2d_forward with respect to x, weights and bias.

    Parameters
    ----------
    dout : ndarray of shape (N, OH, OW, F)
        Gradient of the loss with respect to the convolution's output.
    x, weights, stride, padding
        As given to conv2d_forward.
    need_input_grad : bool
        False skips dx (the first layer of a network never needs it).

    Returns
    -------
    dx : ndarray of shape (N, H, W, C), or None when need_input_grad is False
    dweights : ndarray of shape (KH, KW, C, F)
    dbias : ndarray of shape (F,)
    """
    func = "conv2d_backward"
    dtype = compute_dtype(func, dout=dout, x=x, weights=weights)
    x, weights, _ = _check_conv_args(func, x, weights, None, dtype)
    geometry = conv_geometry(func, x.shape[1:3], weights.shape[:2], stride, padding)
    dout = as_array(func, "dout", dout, 4, "(N, OH, OW, F)", dtype)
    _check_same_shape(
        func, "dout", dout,
        (x.shape[0], geometry.out_h, geometry.out_w, weights.shape[3]),
    )
    with single_threaded_blas():
        return conv2d_backward_checked(dout, x, weights, geometry, Workspace(),
                                       need_input_grad)


# ---------------------------------------------------------------------------
# Max-pooling


def maxpool2d_forward(x, pool_size=2, stride=None):
    """Max-pooling over (pool_h, pool_w) windows, without padding.

    Parameters
    ----------
    x : ndarray of shape (N, H, W, C)
    pool_size : int or (PH, PW)
    stride : int or (SH, SW), default pool_size

    Returns
    -------
    out : ndarray of shape (N, OH, OW, C)
        ``OH = (H - PH) // SH + 1``; rows and columns past the last whole window
        are dropped.
    argmax : int32 ndarray of shape (N, OH, OW, C)
        ``y * W + x`` of the input pixel that each maximum came from, for
        maxpool2d_backward.
    """
    func = "maxpool2d_forward"
    dtype = compute_dtype(func, x=x)
    x = as_array(func, "x", x, 4, "(N, H, W, C)", dtype)
    pool_h, pool_w = as_pair(func, "pool_size", pool_size, 1)
    stride_h, stride_w = as_pair(func, "stride", (pool_h, pool_w) if stride is None
                                 else stride, 1)
    n, h, w, c = x.shape
    if pool_h > h or pool_w > w:
        raise ValueError(
            f"{func}: pool_size ({pool_h}, {pool_w}) must fit in the input "
            f"({h}, {w})"
        )
    if h * w > np.iinfo(np.int32).max:
        raise ValueError(f"{func}: images of {h}x{w} pixels are too large to pool")

    out_h, out_w = (h - pool_h) // stride_h + 1, (w - pool_w) // stride_w + 1
    out = np.empty((n, out_h, out_w, c), dtype=dtype)
    argmax = np.empty((n, out_h, out_w, c), dtype=np.int32)
    _kernels.maxpool2d_forward(x, out, argmax, pool_h, pool_w, stride_h, stride_w,
                               threads_for(x.size))
    return out, argmax


def maxpool2d_backward(dout, argmax, input_shape):
    """Gradient of maxpool2d_forward.

    Parameters
    ----------
    dout : ndarray of shape (N, OH, OW, C)
    argmax : int32 ndarray of shape (N, OH, OW, C), from maxpool2d_forward
    input_shape : (N, H, W, C), the shape of the pooled input

    Returns
    -------
    ndarray of shape (N, H, W, C)
    """
    func = "maxpool2d_backward"
    dtype = compute_dtype(func, dout=dout)
    dout = as_array(func, "dout", dout, 4, "(N, OH, OW, C)", dtype)
    if not isinstance(argmax, np.ndarray) or argmax.dtype.kind not in "iu":
        raise TypeError(
            f"{func}: argmax must be the int32 array from maxpool2d_forward, got "
            f"{getattr(argmax, 'dtype', type(argmax).__name__)}"
        )
    if argmax.shape != dout.shape:
        raise ValueError(f"{func}: dout must have the shape of argmax {argmax.shape}, "
                         f"got {dout.shape}")
    if not isinstance(input_shape, (tuple, list)) or not all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1
        for s in input_shape[1:]
    ):
        raise ValueError(f"{func}: input_shape must be a tuple of 4 positive ints "
                         f"(N, H, W, C), got {input_shape!r}")
    input_shape = tuple(int(s) for s in input_shape)
    if (len(input_shape) != 4 or input_shape[0] != dout.shape[0]
            or input_shape[3] != dout.shape[3]):
        raise ValueError(
            f"{func}: input_shape must be (N, H, W, C) with N and C of dout "
            f"{dout.shape}, got {input_shape}"
        )
    pixels = input_shape[1] * input_shape[2]
    # Checked before the conversion to int32, which would wrap large values.
    if argmax.size and (argmax.min() < 0 or argmax.max() >= pixels):
        raise ValueError(
            f"{func}: argmax must index the {pixels} pixels of input_shape "
            f"{input_shape}, got values from {argmax.min()} to {argmax.max()}"
        )
    argmax = np.ascontiguousarray(argmax, dtype=np.int32)

    dx = np.empty(input_shape, dtype=dtype)
    _kernels.maxpool2d_backward(dout, argmax, dx, threads_for(dx.size))
    return dx


# ---------------------------------------------------------------------------
# Batch normalisation


class BatchNormCache(NamedTuple):
    """What batchnorm_backward reads from batchnorm_forward; each of shape (C,)
    except x, the input of shape (..., C), kept by reference: the gradient is
    computed from it, so it must not change between the two calls."""

    x: np.ndarray
    gamma: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    inv_std: np.ndarray


def batchnorm_forward(x, gamma, beta, eps=1e-5, out=None):
    """Batch normalisation with the statistics of this batch.

    Parameters
    ----------
    x : ndarray of shape (..., C)
        (N, H, W, C) after a convolution or (N, C) after a dense layer; each
        channel is normalised over all other axes.
    gamma, beta : ndarrays of shape (C,)
    eps : float > 0
    out : ndarray of shape (..., C) and x's dtype, optional
        Where to write y; a new array when None.

    Returns
    -------
    y : ndarray of the shape of x
    cache : BatchNormCache, with the batch mean and (biased) variance
    """
    func = "batchnorm_forward"
    dtype = compute_dtype(func, x=x, gamma=gamma, beta=beta)
    if x.ndim < 2:
        raise ValueError(f"{func}: x must be at least 2-D (..., C), got shape "
                         f"{x.shape}")
    x = np.ascontiguousarray(x, dtype=dtype)
    channels = x.shape[-1]
    gamma = as_array(func, "gamma", gamma, 1, "(C,)", dtype)
    beta = as_array(func, "beta", beta, 1, "(C,)", dtype)
    _check_same_shape(func, "gamma", gamma, (channels,))
    _check_same_shape(func, "beta", beta, (channels,))
    _check_eps(func, eps)
    rows = x.size // max(channels, 1)
    if rows == 0:
        raise ValueError(f"{func}: x must hold at least one sample, got shape "
                         f"{x.shape}")
    out = _output_like(func, out, x)

    return batchnorm_forward_checked(x, gamma, beta, float(eps), Workspace(), out)


def batchnorm_forward_checked(x, gamma, beta, eps, workspace, out=None):
    """batchnorm_forward on checked arrays, with y in a workspace buffer unless out
    is given; returns (y, BatchNormCache)."""
    channels = x.shape[-1]
    rows = x.size // channels
    y = workspace.get("y", x.shape, x.dtype) if out is None else out
    if np.may_share_memory(x, y):
        # y overwrites x, which the backward pass needs
        x = x.copy()
    mean, var, inv_std, scale = (np.empty(channels, x.dtype) for _ in range(4))
    chunks = max(1, min(threads_for(x.size), rows))
    _kernels.batchnorm_forward(
        x.reshape(rows, channels), gamma, beta, eps,
        workspace.get("forward_sums", (chunks, 3, channels), np.float64),
        y.reshape(rows, channels), mean, var, inv_std, scale,
    )
    return y, BatchNormCache(x, gamma, mean, var, inv_std)


def batchnorm_backward(dy, cache):
    """Gradients of batchnorm_forward.

    Parameters
    ----------
    dy : ndarray of shape (..., C), the shape of x
    cache : the BatchNormCache from batchnorm_forward

    Returns
    -------
    dx : ndarray of shape (..., C)
    dgamma, dbeta : ndarrays of shape (C,)
    """
    func = "batchnorm_backward"
    if not isinstance(cache, BatchNormCache):
        raise TypeError(f"{func}: cache must be the BatchNormCache from "
                        f"batchnorm_forward, got {type(cache).__name__}")
    dtype = compute_dtype(func, dy=dy, x=cache.x, gamma=cache.gamma,
                          mean=cache.mean, inv_std=cache.inv_std)
    _check_same_shape(func, "dy", dy, cache.x.shape)
    if dy.ndim < 2 or dy.shape[-1] == 0:
        raise ValueError(f"{func}: dy must be at least 2-D (..., C) with C >= 1, got "
                         f"shape {dy.shape}")
    for name in ("gamma", "mean", "inv_std"):
        _check_same_shape(func, f"cache.{name}", getattr(cache, name), dy.shape[-1:])
    dy = np.ascontiguousarray(dy, dtype=dtype)
    cache = cache._replace(**{name: np.ascontiguousarray(getattr(cache, name), dtype)
                              for name in ("x", "gamma", "mean", "inv_std")})
    dx, dgamma, dbeta = batchnorm_backward_checked(dy, cache, Workspace())
    return dx, dgamma, dbeta


def batchnorm_backward_checked(dy, cache, workspace):
    """batchnorm_backward on checked arrays of one dtype, dx in a workspace
    buffer; returns (dx, dgamma, dbeta)."""
    channels = dy.shape[-1]
    rows = dy.size // channels
    dx = workspace.get("dx", dy.shape, dy.dtype)
    dgamma, dbeta = np.empty(channels, dy.dtype), np.empty(channels, dy.dtype)
    chunks = max(1, min(threads_for(dy.size), rows))
    sums = workspace.get("backward_sums", (chunks, 2, channels), np.float64)
    column_terms = workspace.get("column_terms", (3, channels), dy.dtype)
    _kernels.batchnorm_backward(
        dy.reshape(rows, channels), cache.x.reshape(rows, channels), cache.gamma,
        cache.mean, cache.inv_std, sums, column_terms, dx.reshape(rows, channels),
        dgamma, dbeta,
    )
    return dx, dgamma, dbeta


def batchnorm_inference(x, gamma, beta, running_mean, running_var, eps=1e-5):
    """Batch normalisation with fixed statistics, as in evaluation.

    Parameters
    ----------
    x : ndarray of shape (..., C)
    gamma, beta, running_mean, running_var : ndarrays of shape (C,)

    Returns
    -------
    ndarray of the shape of x: ``gamma * (x - mean) / sqrt(var + eps) + beta``
    """
    func = "batchnorm_inference"
    dtype = compute_dtype(func, x=x, gamma=gamma, beta=beta, running_mean=running_mean,
                          running_var=running_var)
    if x.ndim < 2:
        raise ValueError(f"{func}: x must be at least 2-D (..., C), got shape "
                         f"{x.shape}")
    _check_eps(func, eps)
    x = np.ascontiguousarray(x, dtype=dtype)
    channels = x.shape[-1]
    stats = {"gamma": gamma, "beta": beta, "running_mean": running_mean,
             "running_var": running_var}
    for name, value in stats.items():
        _check_same_shape(func, name, value, (channels,))
    if not np.all(running_var >= 0):
        raise ValueError(f"{func}: running_var must be >= 0 (and not NaN), got a "
                         f"minimum of {running_var.min()}")

    # One scale per channel, computed in double precision.
    scale = gamma.astype(np.float64) / np.sqrt(running_var.astype(np.float64) + eps)
    y = np.empty_like(x)
    rows = x.size // max(channels, 1)
    _kernels.batchnorm_inference(
        x.reshape(rows, channels), running_mean.astype(dtype), scale.astype(dtype),
        beta.astype(dtype), y.reshape(rows, channels), threads_for(x.size),
    )
    return y


# ---------------------------------------------------------------------------
# ReLU


def relu_forward(x, out=None):
    """max(x, 0), elementwise; NaN stays NaN.

    Parameters
    ----------
    x : ndarray of any shape
    out : ndarray like x, optional; may be x itself for an in-place ReLU
    """
    dtype = compute_dtype("relu_forward", x=x)
    # asarray keeps a 0-D array 0-D, where ascontiguousarray would make it 1-D.
    x = np.asarray(x, dtype=dtype, order="C")
    out = _output_like("relu_forward", out, x)
    _kernels.relu_forward(x.reshape(-1), out.reshape(-1), threads_for(x.size))
    return out


def relu_backward(dy, y):
    """Gradient of relu_forward given its output y: dy where y > 0, else 0.

    Parameters
    ----------
    dy, y : ndarrays of one shape
    """
    dtype = compute_dtype("relu_backward", dy=dy, y=y)
    _check_same_shape("relu_backward", "dy", dy, y.shape)
    dy = np.asarray(dy, dtype=dtype, order="C")
    y = np.asarray(y, dtype=dtype, order="C")
    dx = np.empty_like(dy)
    _kernels.relu_backward(dy.reshape(-1), y.reshape(-1), dx.reshape(-1),
                           threads_for(dy.size))
    return dx
