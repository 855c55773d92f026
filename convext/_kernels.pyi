"""Signatures of the compiled kernels (convext/_kernels.pyx).

Private: convext.ops checks arguments before calling these. Arrays are
C-contiguous float32 or float64 (all of one dtype in a call); shapes use the
legend of the .pyx module docstring.
"""

import numpy as np
from numpy.typing import NDArray

Floats = NDArray[np.floating]

def openmp_enabled() -> bool: ...
def bounds_checked() -> bool: ...
def native_build() -> bool: ...
def profiling_build() -> bool: ...
def pad2d(
    x: Floats, out: Floats, pad_top: int, pad_left: int, n_threads: int
) -> None: ...
def pad2d_backward(
    dout: Floats, dx: Floats, pad_top: int, pad_left: int, n_threads: int
) -> None: ...
def gemm(
    a: Floats,
    b: Floats,
    c: Floats,
    trans_a: bool,
    trans_b: bool,
    accumulate: bool,
    n_threads: int,
) -> None: ...
def gemm_split_inner(
    a: Floats,
    b: Floats,
    c: Floats,
    trans_a: bool,
    trans_b: bool,
    partial: Floats,
) -> None: ...
def conv2d_forward_blocked(
    x: Floats,
    weights: Floats,
    bias: Floats,
    out: Floats,
    slabs: Floats,
    kernel_h: int,
    kernel_w: int,
    stride_h: int,
    stride_w: int,
    pad_top: int,
    pad_left: int,
    n_blocks: int,
    keep_cols: bool,
    n_threads: int,
) -> None: ...
def conv2d_backward_blocked(
    x: Floats,
    weights: Floats,
    dout: Floats,
    slabs: Floats,
    dcols_slabs: Floats,
    partial: Floats,
    bias_partial: NDArray[np.float64],
    dweights: Floats,
    dbias: Floats,
    dx: Floats,
    kernel_h: int,
    kernel_w: int,
    stride_h: int,
    stride_w: int,
    pad_top: int,
    pad_left: int,
    n_blocks: int,
    few_taps: bool,
    cols_kept: bool,
) -> None: ...
def direct_filter_multiple(double_precision: bool) -> int: ...
def conv2d_forward_direct(
    x: Floats,
    weights: Floats,
    bias: Floats,
    out: Floats,
    padded: Floats,
    kernel_h: int,
    kernel_w: int,
    stride_h: int,
    stride_w: int,
    pad_top: int,
    pad_left: int,
) -> None: ...
def conv2d_backward_direct(
    x: Floats,
    flipped: Floats,
    dout: Floats,
    padded: Floats,
    padded_dout: Floats,
    zeros: Floats,
    partial: Floats,
    bias_partial: NDArray[np.float64],
    dweights: Floats,
    dbias: Floats,
    dx: Floats,
    kernel_h: int,
    kernel_w: int,
    stride_h: int,
    stride_w: int,
    pad_top: int,
    pad_left: int,
) -> None: ...
def maxpool2d_forward(
    x: Floats,
    out: Floats,
    argmax: NDArray[np.int32],
    pool_h: int,
    pool_w: int,
    stride_h: int,
    stride_w: int,
    n_threads: int,
) -> None: ...
def maxpool2d_backward(
    dout: Floats, argmax: NDArray[np.int32], dx: Floats, n_threads: int
) -> None: ...
def batchnorm_forward(
    x: Floats,
    gamma: Floats,
    beta: Floats,
    eps: float,
    partial: NDArray[np.float64],
    y: Floats,
    mean: Floats,
    var: Floats,
    inv_std: Floats,
    scale: Floats,
) -> None: ...
def batchnorm_backward(
    dy: Floats,
    x: Floats,
    gamma: Floats,
    mean: Floats,
    inv_std: Floats,
    partial: NDArray[np.float64],
    column_terms: Floats,
    dx: Floats,
    dgamma: Floats,
    dbeta: Floats,
) -> None: ...
def batchnorm_inference(
    x: Floats, mean: Floats, scale: Floats, shift: Floats, y: Floats, n_threads: int
) -> None: ...
def relu_forward(x: Floats, y: Floats, n_threads: int) -> None: ...
def relu_backward(dy: Floats, y: Floats, dx: Floats, n_threads: int) -> None: ...
def sgd_step(value: Floats, grad: Floats, velocity: Floats, lr: float, momentum: float,
             nesterov: bool, weight_decay: float, n_threads: int) -> None: ...
def adam_step(value: Floats, grad: Floats, m: Floats, v: Floats, step: float,
              beta1: float, beta2: float, eps: float, n_threads: int) -> None: ...
