"""Tests of convext.ops against the plain NumPy reference in tests/reference.py.

Forwards are compared with the reference over many geometries, gradients with
central finite differences of the reference (float64), float32 with float64, and
repeated runs bit for bit. Bad arguments must raise with a message
that names them; odd but valid layouts must give the plain result.
"""

import math
from typing import Callable, NamedTuple

import numpy as np
import pytest
import reference
from reference import numerical_gradient, relative_error

import convext._threads
from convext import _kernels, ops
from convext._threads import set_num_threads

DTYPES = [np.float32, np.float64]
# Kernel against the float64 reference on the same (rounded) inputs, relative to
# the largest expected magnitude.
RTOL = {np.float32: 1e-5, np.float64: 1e-12}
# Analytic gradient against central differences, both in float64.
GRADIENT_RTOL = 1e-6
# A float32 result against the float64 result on the same inputs.
FLOAT32_RTOL = 1e-4
ROUNDING_RTOL = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-14}


@pytest.fixture
def rng():
    return np.random.default_rng(20240613)


@pytest.fixture
def thread_count(request, monkeypatch):
    """set_num_threads, with the default thread count restored after the test. The
    kernels then take every thread however small the work, as the small inputs of
    the tests would otherwise run on one."""
    monkeypatch.setattr(convext._threads, "SMALL_WORK", 0)
    request.addfinalizer(lambda: set_num_threads(None))
    return set_num_threads


def random_array(rng, shape, dtype=np.float64):
    return rng.standard_normal(shape).astype(dtype)


def as_float64(array):
    return None if array is None else np.asarray(array, dtype=np.float64)


def assert_matches_reference(actual, expected, dtype):
    """actual has dtype and expected's shape, and equals it to RTOL[dtype]."""
    assert actual.dtype == dtype
    assert actual.shape == expected.shape
    scale = np.abs(expected).max(initial=0.0)
    np.testing.assert_allclose(
        actual, expected, rtol=RTOL[dtype], atol=RTOL[dtype] * scale
    )


def assert_bitwise_equal(actual, expected):
    """Same dtype, shape and bytes."""
    np.testing.assert_array_equal(actual, expected, strict=True)
    assert actual.tobytes() == expected.tobytes()


# ---------------------------------------------------------------------------
# Convolution forward


class Geometry(NamedTuple):
    """An (H, W) input, a (KH, KW) kernel, and stride and padding as ops takes them."""

    height: int
    width: int
    kernel_h: int
    kernel_w: int
    stride: object
    padding: object

    def explicit_padding(self):
        return reference.explicit_padding(
            self.padding, (self.height, self.width), (self.kernel_h, self.kernel_w),
            reference.as_pair(self.stride),
        )


def geometry_param(height, width, kernel_h, kernel_w, stride, padding, name):
    geometry = Geometry(height, width, kernel_h, kernel_w, stride, padding)
    return pytest.param(geometry, id=name)


CONV_GEOMETRIES = [
    geometry_param(5, 5, 3, 3, 1, 0, "stride1-pad0"),
    geometry_param(6, 6, 3, 3, 1, 1, "stride1-pad1"),
    geometry_param(7, 7, 3, 3, 2, 1, "stride2-pad1-exact"),
    geometry_param(8, 10, 3, 3, 2, 1, "stride2-pad1-remainder-nonsquare"),
    geometry_param(10, 11, 3, 3, 3, 2, "stride3-pad2-remainder"),
    geometry_param(5, 5, 3, 3, 4, 1, "stride-larger-than-kernel"),
    geometry_param(9, 7, 3, 2, (2, 1), (1, 0), "stride2x1-pad1x0"),
    geometry_param(7, 6, 2, 3, (2, 1), 2, "stride2x1-pad2"),
    geometry_param(3, 8, 2, 2, (1, 3), 0, "stride1x3"),
    geometry_param(6, 5, 3, 3, 1, (1, 0), "pad1x0"),
    geometry_param(5, 6, 3, 3, 1, (0, 2), "pad0x2"),
    geometry_param(5, 7, 3, 3, 1, "same", "same-stride1-odd-kernel"),
    geometry_param(6, 5, 4, 4, 1, "same", "same-stride1-even-kernel"),
    geometry_param(6, 7, 2, 5, 1, "same", "same-stride1-even-odd-kernel"),
    geometry_param(7, 8, 3, 3, 2, "same", "same-stride2-odd-kernel"),
    geometry_param(8, 9, 4, 4, 2, "same", "same-stride2-even-kernel"),
    geometry_param(9, 9, 3, 3, 3, "same", "same-stride3-no-padding-needed"),
    geometry_param(7, 6, 3, 3, 1, "valid", "valid-stride1"),
    geometry_param(9, 8, 4, 3, 2, "valid", "valid-stride2-remainder"),
    geometry_param(5, 6, 1, 1, 1, 0, "1x1"),
    geometry_param(7, 6, 1, 1, 2, 0, "1x1-stride2"),
    geometry_param(4, 5, 1, 1, 1, 1, "1x1-pad1"),
    geometry_param(5, 4, 7, 6, 1, 1, "kernel-fills-padded-input"),
    geometry_param(5, 6, 5, 6, 1, 0, "kernel-equals-input"),
    geometry_param(2, 3, 3, 3, 2, 1, "tiny-input-pad1-stride2"),
    geometry_param(1, 1, 1, 1, 1, 0, "one-pixel"),
]


def conv_case(rng, geometry, batch, channels, filters, dtype):
    """Random x, weights, bias in dtype and the reference output in float64."""
    x = random_array(rng, (batch, geometry.height, geometry.width, channels), dtype)
    weights = random_array(
        rng, (geometry.kernel_h, geometry.kernel_w, channels, filters), dtype
    )
    bias = random_array(rng, (filters,), dtype)
    expected = reference.conv2d_forward(
        as_float64(x), as_float64(weights), as_float64(bias), geometry.stride,
        geometry.explicit_padding(),
    )
    return x, weights, bias, expected


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("geometry", CONV_GEOMETRIES)
def test_conv2d_forward_matches_reference(geometry, channels, dtype, rng):
    x, weights, bias, expected = conv_case(rng, geometry, 2, channels, 4, dtype)

    out = ops.conv2d_forward(x, weights, bias, geometry.stride, geometry.padding)

    assert_matches_reference(out, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", [
    geometry_param(6, 7, 3, 3, 1, 1, "stride1-pad1"),
    geometry_param(8, 9, 4, 4, 2, "same", "same-stride2-even-kernel"),
    geometry_param(5, 5, 1, 1, 1, 0, "1x1"),
])
def test_conv2d_forward_many_channels_matches_reference(geometry, dtype, rng):
    x, weights, bias, expected = conv_case(rng, geometry, 2, 37, 5, dtype)

    out = ops.conv2d_forward(x, weights, bias, geometry.stride, geometry.padding)

    assert_matches_reference(out, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels", [1, 3])
def test_conv2d_forward_batch1_one_filter_matches_reference(channels, dtype, rng):
    geometry = Geometry(7, 6, 3, 2, 2, 1)
    x, weights, bias, expected = conv_case(rng, geometry, 1, channels, 1, dtype)

    out = ops.conv2d_forward(x, weights, bias, geometry.stride, geometry.padding)

    assert_matches_reference(out, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels", [1, 3])
def test_conv2d_forward_without_bias_matches_reference(channels, dtype, rng):
    geometry = Geometry(6, 7, 3, 3, 2, "same")
    x, weights, _, _ = conv_case(rng, geometry, 2, channels, 4, dtype)
    expected = reference.conv2d_forward(
        as_float64(x), as_float64(weights), None, 2, geometry.explicit_padding()
    )

    out = ops.conv2d_forward(x, weights, stride=2, padding="same")

    assert_matches_reference(out, expected, dtype)


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("kernel", [1, 2, 3, 4])
def test_conv2d_forward_same_padding_gives_ceil_of_size_over_stride(
    kernel, stride, channels, rng
):
    geometry = Geometry(7, 8, kernel, kernel, stride, "same")
    x, weights, bias, expected = conv_case(rng, geometry, 2, channels, 3, np.float64)

    out = ops.conv2d_forward(x, weights, bias, stride, "same")

    assert out.shape[1:3] == (math.ceil(7 / stride), math.ceil(8 / stride))
    assert_matches_reference(out, expected, np.float64)


# ---------------------------------------------------------------------------
# Padding, pooling, batch-norm and ReLU forward


def pad_widths(pad):
    """(PT, PB, PL, PR) of a zero_pad pad: int, (PH, PW) or ((PT, PB), (PL, PR))."""
    if np.isscalar(pad):
        return pad, pad, pad, pad
    if np.isscalar(pad[0]):
        return pad[0], pad[0], pad[1], pad[1]
    return (*pad[0], *pad[1])


PADS = [0, 1, 3, (2, 0), (0, 1), ((0, 2), (1, 0)), ((3, 1), (2, 4))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 4, 5, 3), (1, 3, 2, 1), (3, 1, 1, 37)])
@pytest.mark.parametrize("pad", PADS, ids=str)
def test_zero_pad_matches_reference(pad, shape, dtype, rng):
    x = random_array(rng, shape, dtype)
    expected = reference.zero_pad(x, *pad_widths(pad))

    out = ops.zero_pad(x, pad)

    assert_bitwise_equal(out, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pad", PADS, ids=str)
def test_zero_pad_backward_inverts_zero_pad(pad, dtype, rng):
    x = random_array(rng, (2, 4, 5, 3), dtype)

    dx = ops.zero_pad_backward(ops.zero_pad(x, pad), pad)

    assert_bitwise_equal(dx, x)


POOLS = [
    pytest.param((2, 4, 6, 3), 2, None, id="2x2"),
    pytest.param((2, 5, 7, 2), 2, None, id="2x2-odd-size-drops-last"),
    pytest.param((2, 7, 6, 2), 3, 2, id="3x3-stride2-overlapping"),
    pytest.param((2, 5, 7, 2), (2, 3), (1, 2), id="2x3-stride1x2"),
    pytest.param((1, 6, 5, 1), 2, 1, id="2x2-stride1-one-channel"),
    pytest.param((2, 3, 4, 37), (3, 4), None, id="whole-image-many-channels"),
    pytest.param((3, 4, 4, 2), 1, None, id="1x1"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, pool_size, stride", POOLS)
def test_maxpool2d_forward_matches_reference(shape, pool_size, stride, dtype, rng):
    x = random_array(rng, shape, dtype)
    expected_out = reference.maxpool2d_forward(x, pool_size, stride)
    expected_argmax = reference.maxpool2d_argmax(x, pool_size, stride)

    out, argmax = ops.maxpool2d_forward(x, pool_size, stride)

    assert_bitwise_equal(out, expected_out)
    assert argmax.dtype == np.int32
    np.testing.assert_array_equal(argmax, expected_argmax)


BATCHNORM_SHAPES = [(6, 3), (1, 4), (4, 5, 3), (2, 4, 3, 5), (3, 1, 1, 37)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("eps", [1e-5, 1e-1])
@pytest.mark.parametrize("shape", BATCHNORM_SHAPES, ids=str)
def test_batchnorm_forward_matches_reference(shape, eps, dtype, rng):
    x = random_array(rng, shape, dtype) * 3 + 1
    gamma = random_array(rng, shape[-1:], dtype)
    beta = random_array(rng, shape[-1:], dtype)
    axes = tuple(range(x.ndim - 1))
    expected_y = reference.batchnorm_forward(
        as_float64(x), as_float64(gamma), as_float64(beta), eps
    )

    y, cache = ops.batchnorm_forward(x, gamma, beta, eps)

    assert_matches_reference(y, expected_y, dtype)
    assert_matches_reference(cache.mean, as_float64(x).mean(axis=axes), dtype)
    assert_matches_reference(cache.var, as_float64(x).var(axis=axes), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BATCHNORM_SHAPES, ids=str)
def test_batchnorm_forward_writes_into_out(shape, dtype, rng):
    x = random_array(rng, shape, dtype)
    gamma = random_array(rng, shape[-1:], dtype)
    beta = random_array(rng, shape[-1:], dtype)
    out = np.empty_like(x)
    expected_y, _ = ops.batchnorm_forward(x, gamma, beta)

    y, _ = ops.batchnorm_forward(x, gamma, beta, out=out)

    assert y is out
    assert_bitwise_equal(out, expected_y)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_in_place_keeps_the_input_for_the_gradient(dtype, rng):
    x = random_array(rng, (3, 4, 5, 6), dtype)
    gamma = random_array(rng, (6,), dtype)
    beta = random_array(rng, (6,), dtype)
    dy = random_array(rng, x.shape, dtype)
    _, cache = ops.batchnorm_forward(x, gamma, beta)
    expected = ops.batchnorm_backward(dy, cache)
    original = x.copy()

    _, in_place_cache = ops.batchnorm_forward(x, gamma, beta, out=x)
    grads = ops.batchnorm_backward(dy, in_place_cache)

    assert_bitwise_equal(in_place_cache.x, original)
    for actual, wanted in zip(grads, expected):
        assert_bitwise_equal(actual, wanted)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(6, 3), (2, 4, 3, 5), (0, 3, 3, 2)], ids=str)
def test_batchnorm_inference_matches_reference(shape, dtype, rng):
    x = random_array(rng, shape, dtype)
    gamma, beta, running_mean = (random_array(rng, shape[-1:], dtype) for _ in "abc")
    running_var = rng.uniform(0.5, 2.0, shape[-1:]).astype(dtype)
    expected = reference.batchnorm_inference(
        *(as_float64(a) for a in (x, gamma, beta, running_mean, running_var)), 1e-3
    )

    y = ops.batchnorm_inference(x, gamma, beta, running_mean, running_var, eps=1e-3)

    assert_matches_reference(y, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7,), (3, 4), (2, 3, 4, 5)], ids=str)
def test_relu_forward_matches_reference(shape, dtype, rng):
    x = random_array(rng, shape, dtype)

    y = ops.relu_forward(x)

    assert_bitwise_equal(y, reference.relu(x))


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_forward_in_place(dtype, rng):
    x = random_array(rng, (2, 3, 4, 5), dtype)
    expected = reference.relu(x)

    y = ops.relu_forward(x, out=x)

    assert y is x
    assert_bitwise_equal(x, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_backward_passes_gradient_where_output_positive(dtype, rng):
    x = random_array(rng, (2, 3, 4, 5), dtype)
    y = reference.relu(x)
    dy = random_array(rng, x.shape, dtype)

    dx = ops.relu_backward(dy, y)

    assert_bitwise_equal(dx, np.where(x > 0, dy, np.zeros_like(dy)))


# ---------------------------------------------------------------------------
# Gradients against central finite differences (float64)


def gradient_error_of(function, array, analytic):
    """Relative error of analytic against the numerical gradient of function."""
    return relative_error(analytic, numerical_gradient(function, array))


CONV_GRADIENT_GEOMETRIES = [
    geometry_param(5, 4, 3, 3, 1, 1, "stride1-pad1"),
    geometry_param(6, 5, 3, 3, 2, 0, "stride2-pad0-remainder"),
    geometry_param(7, 5, 3, 2, 3, 2, "stride3-pad2"),
    geometry_param(5, 4, 3, 2, (2, 1), (1, 0), "stride2x1-pad1x0"),
    geometry_param(5, 6, 4, 4, 2, "same", "same-stride2-even-kernel"),
    geometry_param(5, 4, 2, 3, 1, "same", "same-stride1-even-odd-kernel"),
    geometry_param(5, 5, 3, 3, 2, "valid", "valid-stride2"),
    geometry_param(4, 5, 1, 1, 2, 1, "1x1-stride2-pad1"),
    geometry_param(3, 4, 5, 6, 1, 1, "kernel-fills-padded-input"),
]


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("geometry", CONV_GRADIENT_GEOMETRIES)
def test_conv2d_backward_matches_finite_differences(geometry, channels, rng):
    x, weights, bias, out = conv_case(rng, geometry, 2, channels, 3, np.float64)
    out_grad = random_array(rng, out.shape)
    pads = geometry.explicit_padding()

    def loss(x_, weights_, bias_):
        out_ = reference.conv2d_forward(x_, weights_, bias_, geometry.stride, pads)
        return np.sum(out_ * out_grad)

    dx, dweights, dbias = ops.conv2d_backward(
        out_grad, x, weights, geometry.stride, geometry.padding
    )

    assert gradient_error_of(lambda v: loss(v, weights, bias), x, dx) < GRADIENT_RTOL
    assert gradient_error_of(
        lambda v: loss(x, v, bias), weights, dweights
    ) < GRADIENT_RTOL
    assert gradient_error_of(lambda v: loss(x, weights, v), bias, dbias) < GRADIENT_RTOL


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels", [1, 3])
def test_conv2d_backward_without_input_grad_gives_same_parameter_grads(
    channels, dtype, rng
):
    geometry = Geometry(6, 5, 3, 3, 2, "same")
    x, weights, _, out = conv_case(rng, geometry, 3, channels, 4, dtype)
    out_grad = random_array(rng, out.shape, dtype)
    _, expected_dweights, expected_dbias = ops.conv2d_backward(
        out_grad, x, weights, 2, "same"
    )

    dx, dweights, dbias = ops.conv2d_backward(
        out_grad, x, weights, 2, "same", need_input_grad=False
    )

    assert dx is None
    assert_bitwise_equal(dweights, expected_dweights)
    assert_bitwise_equal(dbias, expected_dbias)


# Taps (KH * KW * C) of 9 and 27 take the register-tiled weight gradient, 36 the
# BLAS; the filter counts cover whole tiles of 32 columns, a tile and a half, and
# tiles with a few columns left over.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("filters", [32, 48, 70])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_conv2d_parameter_grads_match_reference(channels, filters, dtype, rng):
    geometry = Geometry(9, 8, 3, 3, 1, "same")
    x, weights, _, out = conv_case(rng, geometry, 5, channels, filters, dtype)
    out_grad = random_array(rng, out.shape, dtype)
    expected_dweights, expected_dbias = reference.conv2d_parameter_grads(
        as_float64(x), as_float64(out_grad), (3, 3), 1, geometry.explicit_padding()
    )

    _, dweights, dbias = ops.conv2d_backward(
        out_grad, x, weights, 1, "same", need_input_grad=False
    )

    assert_matches_reference(dweights, expected_dweights, dtype)
    assert_matches_reference(dbias, expected_dbias, dtype)


@pytest.mark.parametrize("channels", [1, 3])
def test_conv2d_few_taps_weight_grad_equals_blas_path(channels, rng, monkeypatch):
    # 12 samples of 16 output pixels: 192 rows, more than one chunk of the tiled
    # loops, which sum the bias gradient chunk by chunk beside the weights'.
    x, weights, _, out = conv_case(rng, Geometry(7, 7, 3, 3, 2, 1), 12, channels,
                                   40, np.float64)
    out_grad = random_array(rng, out.shape)
    _, tiled, tiled_bias = ops.conv2d_backward(out_grad, x, weights, 2, 1)
    monkeypatch.setattr(ops, "FEW_TAPS", 0)

    _, from_blas, blas_bias = ops.conv2d_backward(out_grad, x, weights, 2, 1)

    np.testing.assert_allclose(tiled, from_blas, rtol=1e-13, atol=1e-13)
    # Both add each column's terms in row order, in double.
    assert_bitwise_equal(tiled_bias, blas_bias)


# ---------------------------------------------------------------------------
# The direct convolution kernels: filters (and, for the input gradient, channels)
# in whole register tiles


def tile_multiple(dtype):
    return _kernels.direct_filter_multiple(np.dtype(dtype) == np.float64)


def checked_geometry(geometry):
    return ops.conv_geometry("test", (geometry.height, geometry.width),
                             (geometry.kernel_h, geometry.kernel_w), geometry.stride,
                             geometry.padding)


# Output widths 14, 23 and 7 take every tile size of the pixel loop (14 or 6 wide,
# then 8, 4, 2, 1); "same" with an even kernel pads unevenly.
DIRECT_GEOMETRIES = [
    geometry_param(14, 14, 3, 3, 1, "same", "mnist-second-layer"),
    geometry_param(5, 23, 3, 3, 1, 1, "width-23"),
    geometry_param(6, 7, 5, 5, 1, 2, "5x5-pad2"),
    geometry_param(8, 9, 4, 4, 1, "same", "even-kernel-uneven-padding"),
    geometry_param(7, 6, 2, 3, 1, (1, 2), "padding-kernel-minus-one"),
    geometry_param(5, 6, 3, 3, 1, 0, "valid"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", DIRECT_GEOMETRIES)
def test_direct_convolution_matches_reference(geometry, dtype, rng):
    multiple = tile_multiple(dtype)
    x, weights, bias, expected = conv_case(rng, geometry, 3, multiple, 2 * multiple,
                                           dtype)
    out_grad = random_array(rng, expected.shape, dtype)
    pads = geometry.explicit_padding()
    expected_dx = reference.conv2d_input_grad(as_float64(out_grad), as_float64(weights),
                                              x.shape, geometry.stride, pads)
    expected_dweights, expected_dbias = reference.conv2d_parameter_grads(
        as_float64(x), as_float64(out_grad), weights.shape[:2], geometry.stride, pads
    )
    assert ops.direct_conv(checked_geometry(geometry), weights, dtype,
                           need_input_grad=True)

    out = ops.conv2d_forward(x, weights, bias, geometry.stride, geometry.padding)
    dx, dweights, dbias = ops.conv2d_backward(out_grad, x, weights, geometry.stride,
                                              geometry.padding)

    assert_matches_reference(out, expected, dtype)
    assert_matches_reference(dx, expected_dx, dtype)
    assert_matches_reference(dweights, expected_dweights, dtype)
    assert_matches_reference(dbias, expected_dbias, dtype)


# Strides above 1 and channels that fill no whole tile: the direct forward pass and
# weight gradient, while the input gradient goes the im2col way. With fewer
# channels than a tile holds (one: the first layer of the default network), the
# weight gradient runs its tiles along whole kernel rows, padding included.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tiles, extra_channels", [(1, 0), (1, 5), (0, 1), (0, 5)],
                         ids=["tile", "tile+5", "1", "5"])
@pytest.mark.parametrize("geometry", [
    geometry_param(9, 9, 3, 3, 2, "same", "stride2-same"),
    geometry_param(10, 11, 3, 3, 3, 2, "stride3-pad2-remainder"),
    geometry_param(9, 7, 3, 2, (2, 1), (1, 0), "stride2x1-pad1x0"),
    geometry_param(6, 7, 3, 3, 1, 1, "stride1"),
    geometry_param(28, 28, 3, 3, 1, "same", "mnist-first-layer"),
    geometry_param(9, 7, 5, 4, 1, 0, "5x4-valid"),
])
def test_direct_convolution_strided_or_ragged_matches_reference(
    geometry, tiles, extra_channels, dtype, rng
):
    multiple = tile_multiple(dtype)
    channels = tiles * multiple + extra_channels
    x, weights, bias, expected = conv_case(rng, geometry, 3, channels, multiple, dtype)
    out_grad = random_array(rng, expected.shape, dtype)
    pads = geometry.explicit_padding()
    expected_dx = reference.conv2d_input_grad(as_float64(out_grad), as_float64(weights),
                                              x.shape, geometry.stride, pads)
    expected_dweights, expected_dbias = reference.conv2d_parameter_grads(
        as_float64(x), as_float64(out_grad), weights.shape[:2], geometry.stride, pads
    )
    g = checked_geometry(geometry)
    assert ops.direct_conv(g, weights, dtype)
    assert ops.direct_conv(g, weights, dtype, need_input_grad=True) == (
        geometry.stride == 1 and channels % multiple == 0
    )

    out = ops.conv2d_forward(x, weights, bias, geometry.stride, geometry.padding)
    _, dweights, dbias = ops.conv2d_backward(out_grad, x, weights, geometry.stride,
                                             geometry.padding, need_input_grad=False)
    dx, dweights_with_dx, _ = ops.conv2d_backward(out_grad, x, weights,
                                                  geometry.stride, geometry.padding)

    assert_matches_reference(out, expected, dtype)
    assert_matches_reference(dweights, expected_dweights, dtype)
    assert_matches_reference(dweights_with_dx, expected_dweights, dtype)
    assert_matches_reference(dbias, expected_dbias, dtype)
    assert_matches_reference(dx, expected_dx, dtype)


def test_direct_convolution_gradients_match_finite_differences(rng):
    geometry = Geometry(4, 5, 3, 3, 1, "same")
    multiple = tile_multiple(np.float64)
    x, weights, bias, out = conv_case(rng, geometry, 1, multiple, multiple,
                                      np.float64)
    out_grad = random_array(rng, out.shape)
    pads = geometry.explicit_padding()
    assert ops.direct_conv(checked_geometry(geometry), weights, np.float64, True)

    def loss(x_, weights_, bias_):
        return np.sum(reference.conv2d_forward(x_, weights_, bias_, 1, pads) * out_grad)

    dx, dweights, dbias = ops.conv2d_backward(out_grad, x, weights, 1, "same")

    assert gradient_error_of(lambda v: loss(v, weights, bias), x, dx) < GRADIENT_RTOL
    assert gradient_error_of(lambda v: loss(x, weights, v), bias, dbias) < GRADIENT_RTOL
    # The weights by central differences over one tap's filters of two channels.
    tap = (1, 2, slice(0, 2), slice(None))
    numerical = numerical_gradient(
        lambda v: loss(x, _with_block(weights, tap, v), bias), weights[tap]
    )
    assert relative_error(dweights[tap], numerical) < GRADIENT_RTOL


def _with_block(array, index, block):
    """A copy of array with array[index] replaced by block."""
    copy = array.copy()
    copy[index] = block
    return copy


@pytest.mark.parametrize("pad", PADS, ids=str)
def test_zero_pad_backward_matches_finite_differences(pad, rng):
    x = random_array(rng, (2, 3, 4, 2))
    padded_grad = random_array(rng, reference.zero_pad(x, *pad_widths(pad)).shape)

    dx = ops.zero_pad_backward(padded_grad, pad)

    error = gradient_error_of(
        lambda v: np.sum(reference.zero_pad(v, *pad_widths(pad)) * padded_grad), x, dx
    )
    assert error < GRADIENT_RTOL


@pytest.mark.parametrize("shape, pool_size, stride", [
    pytest.param((2, 4, 6, 3), 2, None, id="2x2"),
    pytest.param((2, 5, 5, 1), 2, None, id="2x2-odd-size-one-channel"),
    pytest.param((2, 7, 6, 2), 3, 2, id="3x3-stride2-overlapping"),
    pytest.param((2, 5, 7, 2), (2, 3), (1, 2), id="2x3-stride1x2"),
])
def test_maxpool2d_backward_matches_finite_differences(shape, pool_size, stride, rng):
    # Distinct values 1/size apart: a perturbation of 1e-6 never changes a maximum.
    x = rng.permutation(math.prod(shape)).reshape(shape) / math.prod(shape)
    out_grad = random_array(rng, reference.maxpool2d_output_shape(shape, pool_size,
                                                                  stride))
    _, argmax = ops.maxpool2d_forward(x, pool_size, stride)

    dx = ops.maxpool2d_backward(out_grad, argmax, x.shape)

    error = gradient_error_of(
        lambda v: np.sum(reference.maxpool2d_forward(v, pool_size, stride) * out_grad),
        x, dx,
    )
    assert error < GRADIENT_RTOL


@pytest.mark.parametrize("shape", [(6, 3), (1, 2), (2, 3, 2, 4)], ids=str)
def test_batchnorm_backward_matches_finite_differences(shape, rng):
    x = random_array(rng, shape) * 2 + 0.5
    gamma = random_array(rng, shape[-1:])
    beta = random_array(rng, shape[-1:])
    out_grad = random_array(rng, shape)

    def loss(x_, gamma_, beta_):
        return np.sum(reference.batchnorm_forward(x_, gamma_, beta_) * out_grad)

    _, cache = ops.batchnorm_forward(x, gamma, beta)
    dx, dgamma, dbeta = ops.batchnorm_backward(out_grad, cache)

    assert gradient_error_of(lambda v: loss(v, gamma, beta), x, dx) < GRADIENT_RTOL
    assert gradient_error_of(
        lambda v: loss(x, v, beta), gamma, dgamma
    ) < GRADIENT_RTOL
    assert gradient_error_of(lambda v: loss(x, gamma, v), beta, dbeta) < GRADIENT_RTOL


def test_relu_backward_matches_finite_differences(rng):
    shape = (2, 3, 4, 2)
    # At least 0.1 away from the kink at 0.
    x = rng.uniform(0.1, 1.0, shape) * rng.choice([-1.0, 1.0], shape)
    out_grad = random_array(rng, shape)

    dx = ops.relu_backward(out_grad, ops.relu_forward(x))

    error = gradient_error_of(lambda v: np.sum(reference.relu(v) * out_grad), x, dx)
    assert error < GRADIENT_RTOL


# ---------------------------------------------------------------------------
# Every operation, forward and backward, as one callable over named arrays, for the
# float32, threading and input-layout tests.


class Operation(NamedTuple):
    """make_inputs(rng) gives named float64 (or int32) arrays; run(**arrays) gives a
    tuple of results. integer_input names the array that test_integer_inputs makes
    integer."""

    name: str
    make_inputs: Callable
    run: Callable
    integer_input: str = "x"


def zero_pad_inputs(rng):
    return {"x": random_array(rng, (3, 4, 5, 2))}


def run_zero_pad(x):
    return (ops.zero_pad(x, ((1, 2), (0, 3))),)


def zero_pad_backward_inputs(rng):
    return {"dout": random_array(rng, (3, 7, 8, 2))}


def run_zero_pad_backward(dout):
    return (ops.zero_pad_backward(dout, ((1, 2), (0, 3))),)


def conv_inputs(channels):
    """x (4, 7, 6, C) and weights (3, 3, C, 5), stride 2 and padding 1: (4, 4, 3, 5)."""
    def make_inputs(rng):
        return {"x": random_array(rng, (4, 7, 6, channels)),
                "weights": random_array(rng, (3, 3, channels, 5)),
                "bias": random_array(rng, (5,)),
                "dout": random_array(rng, (4, 4, 3, 5))}
    return make_inputs


def run_conv(x, weights, bias, dout):
    out = ops.conv2d_forward(x, weights, bias, stride=2, padding=1)
    return (out, *ops.conv2d_backward(dout, x, weights, stride=2, padding=1))


def same_conv_inputs(rng):
    """x (4, 7, 8, 1) and weights (4, 2, 1, 3), stride (2, 1), "same": (4, 4, 8, 3)."""
    return {"x": random_array(rng, (4, 7, 8, 1)),
            "weights": random_array(rng, (4, 2, 1, 3)),
            "bias": random_array(rng, (3,)),
            "dout": random_array(rng, (4, 4, 8, 3))}


def run_same_conv(x, weights, bias, dout):
    out = ops.conv2d_forward(x, weights, bias, stride=(2, 1), padding="same")
    return (out,
            *ops.conv2d_backward(dout, x, weights, stride=(2, 1), padding="same"))


def direct_conv_inputs(rng):
    """x (4, 6, 7, 32) and weights (3, 3, 32, 32), stride 1 and padding 1: the
    direct kernels in float32 and float64 alike."""
    return {"x": random_array(rng, (4, 6, 7, 32)),
            "weights": random_array(rng, (3, 3, 32, 32)),
            "bias": random_array(rng, (32,)),
            "dout": random_array(rng, (4, 6, 7, 32))}


def run_direct_conv(x, weights, bias, dout):
    out = ops.conv2d_forward(x, weights, bias, stride=1, padding=1)
    return (out, *ops.conv2d_backward(dout, x, weights, stride=1, padding=1))


def maxpool_forward_inputs(rng):
    return {"x": random_array(rng, (4, 7, 6, 3))}


def run_maxpool_forward(x):
    return ops.maxpool2d_forward(x, 3, 2)


def maxpool_backward_inputs(rng):
    x = random_array(rng, (4, 7, 6, 3))
    return {"dout": random_array(rng, (4, 3, 2, 3)),
            "argmax": reference.maxpool2d_argmax(x, 3, 2).astype(np.int32)}


def run_maxpool_backward(dout, argmax):
    return (ops.maxpool2d_backward(dout, argmax, (4, 7, 6, 3)),)


def batchnorm_inputs(shape):
    def make_inputs(rng):
        return {"x": random_array(rng, shape) * 2 + 1,
                "gamma": random_array(rng, shape[-1:]),
                "beta": random_array(rng, shape[-1:]),
                "dy": random_array(rng, shape)}
    return make_inputs


def run_batchnorm(x, gamma, beta, dy):
    y, cache = ops.batchnorm_forward(x, gamma, beta)
    return (y, cache.mean, cache.var, *ops.batchnorm_backward(dy, cache))


def batchnorm_inference_inputs(rng):
    shape = (4, 3, 3, 5)
    return {"x": random_array(rng, shape),
            "gamma": random_array(rng, shape[-1:]),
            "beta": random_array(rng, shape[-1:]),
            "running_mean": random_array(rng, shape[-1:]),
            "running_var": rng.uniform(0.5, 2.0, shape[-1:])}


def run_batchnorm_inference(x, gamma, beta, running_mean, running_var):
    return (ops.batchnorm_inference(x, gamma, beta, running_mean, running_var),)


def relu_forward_inputs(rng):
    return {"x": random_array(rng, (4, 3, 5, 2))}


def run_relu_forward(x):
    return (ops.relu_forward(x),)


def relu_backward_inputs(rng):
    return {"dy": random_array(rng, (4, 3, 5, 2)),
            "y": reference.relu(random_array(rng, (4, 3, 5, 2)))}


def run_relu_backward(dy, y):
    return (ops.relu_backward(dy, y),)


OPERATIONS = [
    Operation("zero_pad", zero_pad_inputs, run_zero_pad),
    Operation("zero_pad_backward", zero_pad_backward_inputs, run_zero_pad_backward,
              integer_input="dout"),
    Operation("conv2d-3-channels", conv_inputs(3), run_conv),
    Operation("conv2d-1-channel", conv_inputs(1), run_conv),
    Operation("conv2d-1-channel-same-stride2x1", same_conv_inputs, run_same_conv),
    Operation("conv2d-direct-32-channels", direct_conv_inputs, run_direct_conv),
    Operation("maxpool2d_forward", maxpool_forward_inputs, run_maxpool_forward),
    Operation("maxpool2d_backward", maxpool_backward_inputs, run_maxpool_backward,
              integer_input="dout"),
    Operation("batchnorm-2d", batchnorm_inputs((16, 5)), run_batchnorm),
    Operation("batchnorm-4d", batchnorm_inputs((4, 5, 3, 6)), run_batchnorm),
    Operation("batchnorm_inference", batchnorm_inference_inputs,
              run_batchnorm_inference),
    Operation("relu_forward", relu_forward_inputs, run_relu_forward),
    Operation("relu_backward", relu_backward_inputs, run_relu_backward,
              integer_input="dy"),
]
OPERATION_PARAMS = [pytest.param(op, id=op.name) for op in OPERATIONS]


def cast_floats(arrays, dtype):
    """arrays with every floating one cast to dtype (argmax stays integer)."""
    return {name: a.astype(dtype) if a.dtype.kind == "f" else a
            for name, a in arrays.items()}


@pytest.mark.parametrize("operation", OPERATION_PARAMS)
def test_float32_within_1e_4_of_float64(operation, rng):
    inputs = operation.make_inputs(rng)

    results64 = operation.run(**inputs)
    results32 = operation.run(**cast_floats(inputs, np.float32))

    for result32, result64 in zip(results32, results64, strict=True):
        if result64.dtype.kind == "f":
            assert result32.dtype == np.float32
        assert relative_error(result32, result64) < FLOAT32_RTOL


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("operation", OPERATION_PARAMS)
def test_repeated_runs_with_two_threads_give_identical_results(
    operation, dtype, rng, thread_count
):
    inputs = cast_floats(operation.make_inputs(rng), dtype)
    thread_count(2)

    first = operation.run(**inputs)
    second = operation.run(**inputs)

    for one, two in zip(first, second, strict=True):
        assert_bitwise_equal(two, one)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("operation", OPERATION_PARAMS)
def test_one_and_two_threads_agree_to_rounding(operation, dtype, rng, thread_count):
    # Sums and matrix products are split by thread count, so the last bits may
    # differ between counts; anything beyond rounding would be a race.
    inputs = cast_floats(operation.make_inputs(rng), dtype)

    thread_count(1)
    results_one_thread = operation.run(**inputs)
    thread_count(2)
    results_two_threads = operation.run(**inputs)

    for one, two in zip(results_one_thread, results_two_threads, strict=True):
        assert two.dtype == one.dtype
        assert relative_error(two, one) < ROUNDING_RTOL[np.dtype(dtype)]


# ---------------------------------------------------------------------------
# Inputs that must be accepted and give the plain C-contiguous result


def transposed_back(a):
    """Non-contiguous: a copy with the first two axes swapped, swapped back (a 1-D
    array: reversed, copied and reversed back)."""
    if a.ndim == 1:
        return a[::-1].copy()[::-1]
    return np.swapaxes(np.swapaxes(a, 0, 1).copy(), 0, 1)


def sliced_with_step(a):
    """A view that takes every other element of a twice-as-large array."""
    every_other = tuple(slice(None, None, 2) for _ in range(a.ndim))
    larger = np.zeros(tuple(2 * s for s in a.shape), a.dtype)
    larger[every_other] = a
    return larger[every_other]


def read_only(a):
    a = a.copy()
    a.setflags(write=False)
    return a


def big_endian(a):
    return a.astype(a.dtype.newbyteorder(">"))


LAYOUTS = [
    pytest.param(transposed_back, id="transposed-back"),
    pytest.param(sliced_with_step, id="sliced-with-step"),
    pytest.param(np.asfortranarray, id="fortran"),
    pytest.param(read_only, id="read-only"),
    pytest.param(big_endian, id="big-endian"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("operation", OPERATION_PARAMS)
def test_layouts_give_the_plain_result(operation, layout, dtype, rng):
    inputs = cast_floats(operation.make_inputs(rng), dtype)
    laid_out = {name: layout(a) for name, a in inputs.items()}
    expected = operation.run(**inputs)

    results = operation.run(**laid_out)

    assert all(np.array_equal(laid_out[name], a) for name, a in inputs.items())
    for result, expected_result in zip(results, expected, strict=True):
        assert_bitwise_equal(result, expected_result)


def test_layouts_are_what_they_claim(rng):
    a = random_array(rng, (2, 3, 4, 5))

    transposed, sliced = transposed_back(a), sliced_with_step(a)
    fortran, frozen, swapped = np.asfortranarray(a), read_only(a), big_endian(a)

    assert not transposed.flags.c_contiguous and not transposed.flags.f_contiguous
    assert not sliced.flags.c_contiguous and not sliced.flags.f_contiguous
    assert fortran.flags.f_contiguous and not fortran.flags.c_contiguous
    assert not frozen.flags.writeable
    assert not swapped.dtype.isnative
    for view in (transposed, sliced, fortran, frozen, swapped):
        np.testing.assert_array_equal(view, a)


def as_integers(a, dtype):
    """a * 3 rounded to whole numbers, in dtype (bool: a > 0; unsigned: |a * 3|)."""
    if dtype == np.bool_:
        return a > 0
    scaled = np.round(a * 3)
    return (np.abs(scaled) if np.dtype(dtype).kind == "u" else scaled).astype(dtype)


# Integer dtypes with the float dtype of the other arrays, chosen so that every call
# of an operation with float arrays computes in that float dtype.
INTEGER_AND_FLOAT_DTYPES = [
    *((int_dtype, np.float32) for int_dtype in (np.bool_, np.int8, np.uint8, np.int16)),
    *((int_dtype, np.float64) for int_dtype in
      (np.bool_, np.int8, np.uint8, np.int16, np.int32, np.int64)),
]


@pytest.mark.parametrize(
    "int_dtype, float_dtype", INTEGER_AND_FLOAT_DTYPES,
    ids=[f"{np.dtype(i)}-{np.dtype(f)}" for i, f in INTEGER_AND_FLOAT_DTYPES],
)
@pytest.mark.parametrize("operation", OPERATION_PARAMS)
def test_integer_inputs_compute_in_the_float_dtype(
    operation, int_dtype, float_dtype, rng
):
    inputs = cast_floats(operation.make_inputs(rng), float_dtype)
    name = operation.integer_input
    inputs[name] = as_integers(inputs[name], int_dtype)
    # The module's rule; float_dtype unless the integer array is the only one.
    compute_dtype = np.result_type(
        *(a for n, a in inputs.items() if n != "argmax"), np.float32
    )
    expected = operation.run(**{**inputs, name: inputs[name].astype(compute_dtype)})

    results = operation.run(**inputs)

    for result, expected_result in zip(results, expected, strict=True):
        assert_bitwise_equal(result, expected_result)


def call_with_float64(function, *arrays):
    """function on arrays with every integer or floating one made float64."""
    return function(*(a.astype(np.float64) if isinstance(a, np.ndarray) else a
                      for a in arrays))


@pytest.mark.parametrize("int_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("function, shapes", [
    pytest.param(ops.conv2d_forward, [(2, 5, 4, 3), (3, 3, 3, 2), (2,)],
                 id="conv2d_forward"),
    pytest.param(lambda x, gamma, beta: ops.batchnorm_forward(x, gamma, beta)[0],
                 [(6, 3), (3,), (3,)], id="batchnorm_forward"),
    pytest.param(lambda x, y: ops.relu_backward(x, y), [(2, 3, 4, 5), (2, 3, 4, 5)],
                 id="relu_backward"),
])
def test_wide_integers_with_float32_compute_in_float64(
    function, shapes, int_dtype, rng
):
    # numpy.result_type(int32 or int64, float32) is float64.
    x = as_integers(random_array(rng, shapes[0]), int_dtype)
    others = [random_array(rng, shape, np.float32) for shape in shapes[1:]]
    expected = call_with_float64(function, x, *others)

    result = function(x, *others)

    assert_bitwise_equal(result, expected)


@pytest.mark.parametrize("x_dtype, weights_dtype, dout_dtype", [
    (np.float32, np.float32, np.float64),
    (np.int64, np.float32, np.float32),
])
def test_conv2d_backward_computes_mixed_dtypes_by_the_module_rule(
    x_dtype, weights_dtype, dout_dtype, rng
):
    # ops' module docstring: "the arrays are computed in
    # numpy.result_type(*arrays, numpy.float32)", float64 in both cases here.
    x = as_integers(random_array(rng, (2, 5, 4, 3)), x_dtype)
    weights = random_array(rng, (3, 3, 3, 2), weights_dtype)
    dout = random_array(rng, (2, 3, 2, 2), dout_dtype)
    expected = call_with_float64(ops.conv2d_backward, dout, x, weights)

    results = ops.conv2d_backward(dout, x, weights)

    for result, expected_result in zip(results, expected, strict=True):
        assert_bitwise_equal(result, expected_result)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels", [1, 3])
def test_conv2d_with_empty_batch(channels, dtype, rng):
    x = np.empty((0, 7, 6, channels), dtype)
    weights = random_array(rng, (3, 3, channels, 4), dtype)
    bias = random_array(rng, (4,), dtype)
    dout = np.empty((0, 4, 3, 4), dtype)

    out = ops.conv2d_forward(x, weights, bias, stride=2, padding=1)
    dx, dweights, dbias = ops.conv2d_backward(dout, x, weights, stride=2, padding=1)

    assert out.shape == (0, 4, 3, 4) and out.dtype == dtype
    assert dx.shape == x.shape and dx.dtype == dtype
    assert_bitwise_equal(dweights, np.zeros_like(weights))
    assert_bitwise_equal(dbias, np.zeros_like(bias))


@pytest.mark.parametrize("dtype", DTYPES)
def test_maxpool2d_with_empty_batch(dtype):
    x = np.empty((0, 5, 4, 3), dtype)

    out, argmax = ops.maxpool2d_forward(x, 2)
    dx = ops.maxpool2d_backward(np.empty(out.shape, dtype), argmax, x.shape)

    assert out.shape == (0, 2, 2, 3) and out.dtype == dtype
    assert argmax.shape == (0, 2, 2, 3)
    assert dx.shape == x.shape and dx.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_with_empty_batch(dtype):
    x = np.empty((0, 5, 4, 3), dtype)

    y = ops.relu_forward(x)
    dx = ops.relu_backward(np.empty_like(x), y)

    assert y.shape == x.shape and y.dtype == dtype
    assert dx.shape == x.shape and dx.dtype == dtype


# ---------------------------------------------------------------------------
# Max-pooling ties and NaN, ReLU NaN


def scatter_to_argmax(out_grad, argmax, input_shape):
    """Each output gradient added onto the input pixel argmax names."""
    dx = np.zeros(input_shape)
    n, out_h, out_w, c = argmax.shape
    for index in np.ndindex(n, out_h, out_w, c):
        y, x = divmod(int(argmax[index]), input_shape[2])
        dx[index[0], y, x, index[3]] += out_grad[index]
    return dx


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, pool_size, stride", POOLS)
def test_maxpool2d_ties_go_to_first_maximum_in_window(
    shape, pool_size, stride, dtype, rng
):
    x = rng.integers(0, 3, shape).astype(dtype)
    out_grad = random_array(rng, reference.maxpool2d_output_shape(shape, pool_size,
                                                                  stride))
    expected_argmax = reference.maxpool2d_argmax(x, pool_size, stride)

    _, argmax = ops.maxpool2d_forward(x, pool_size, stride)
    dx = ops.maxpool2d_backward(out_grad.astype(dtype), argmax, shape)

    np.testing.assert_array_equal(argmax, expected_argmax)
    expected_dx = scatter_to_argmax(out_grad.astype(dtype), expected_argmax, shape)
    assert_matches_reference(dx, expected_dx, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_maxpool2d_constant_input_sends_each_gradient_to_one_pixel(dtype):
    x = np.full((2, 4, 6, 3), 1.5, dtype)
    out_grad = np.ones((2, 2, 3, 3), dtype)

    _, argmax = ops.maxpool2d_forward(x, 2)
    dx = ops.maxpool2d_backward(out_grad, argmax, x.shape)

    window_top_left = np.zeros(x.shape, dtype)
    window_top_left[:, ::2, ::2, :] = 1
    assert_bitwise_equal(dx, window_top_left)


@pytest.mark.parametrize("dtype", DTYPES)
def test_maxpool2d_nan_in_window_gives_nan(dtype, rng):
    x = random_array(rng, (2, 4, 6, 3), dtype)
    x[0, 0, 0, 0] = np.nan                    # first pixel of window (0, 0)
    x[0, 2, 3, 1] = np.nan                    # middle pixel of window (1, 1)
    x[1, 3, 5, 2] = np.nan                    # last pixel of window (1, 2)
    x[1, 0, 2, 0] = x[1, 1, 3, 0] = np.nan    # two NaNs in window (0, 1)
    expected = reference.maxpool2d_forward(x, 2)

    out, argmax = ops.maxpool2d_forward(x, 2)

    np.testing.assert_array_equal(out, expected)
    assert np.count_nonzero(np.isnan(out)) == 4
    batch, out_y, out_x, channel = np.nonzero(np.isnan(out))
    rows, cols = np.divmod(argmax[batch, out_y, out_x, channel], x.shape[2])
    assert np.isnan(x[batch, rows, cols, channel]).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_forward_keeps_nan(dtype, rng):
    x = random_array(rng, (3, 4), dtype)
    x[0, 1] = x[2, 3] = np.nan
    x[1, 2] = -np.nan

    y = ops.relu_forward(x)

    np.testing.assert_array_equal(np.isnan(y), np.isnan(x))
    assert_bitwise_equal(y[~np.isnan(x)], reference.relu(x[~np.isnan(x)]))


# ---------------------------------------------------------------------------
# Bad arguments


X = np.zeros((2, 5, 5, 3))
WEIGHTS = np.zeros((3, 3, 3, 4))
BIAS = np.zeros(4)
# conv2d_forward(X, WEIGHTS) with stride 1 and no padding gives (2, 3, 3, 4).
DOUT = np.zeros((2, 3, 3, 4))
GAMMA = np.ones(3)
BETA = np.zeros(3)


def bad(call, error, match, name):
    return pytest.param(call, error, match, id=name)


BAD_ARGUMENTS = [
    # conv2d_forward
    bad(lambda: ops.conv2d_forward(X[0], WEIGHTS), ValueError,
        r"conv2d_forward: x must be 4-D \(N, H, W, C\), got shape \(5, 5, 3\)",
        "conv-x-3d"),
    bad(lambda: ops.conv2d_forward(X, WEIGHTS[0]), ValueError,
        r"conv2d_forward: weights must be 4-D \(KH, KW, C, F\)", "conv-weights-3d"),
    bad(lambda: ops.conv2d_forward(X, np.zeros((3, 3, 2, 4))), ValueError,
        r"conv2d_forward: weights must have 3 input channels", "conv-channels"),
    bad(lambda: ops.conv2d_forward(X, WEIGHTS, np.zeros(5)), ValueError,
        r"conv2d_forward: bias must have shape \(4,\), got \(5,\)", "conv-bias-length"),
    bad(lambda: ops.conv2d_forward(X, WEIGHTS, np.zeros((1, 4))), ValueError,
        r"conv2d_forward: bias must be 1-D", "conv-bias-2d"),
    bad(lambda: ops.conv2d_forward(X, WEIGHTS, stride=0), ValueError,
        r"conv2d_forward: stride must be >= 1, got 0", "conv-stride-0"),
    bad(lambda: ops.conv2d_forward(X, WEIGHTS, stride=-2), ValueError,
        r"conv2d_forward: stride must be >= 1, got -2", "conv-stride-negative"),
    bad(lambda: ops.conv2d_forward(X, WEIGHTS, stride=(1, 0)), ValueError,
        r"conv2d_forward: stride must be >= 1, got \(1, 0\)", "conv-stride-pair-0"),
    bad(lambda: ops.conv2d_forward(X, WEIGHTS, stride=1.5), TypeError,
        r"conv2d_forward: stride must be an int or a pair of ints, got 1\.5",
        "conv-stride-float"),
    bad(lambda: ops.conv2d_forward(X, WEIGHTS, stride=(1, 2, 3)), TypeError,
        r"conv2d_forward: stride must be an int or a pair of ints", "conv-stride-3"),
    bad(lambda: ops.conv2d_forward(X, WEIGHTS, padding=-1), ValueError,
        r"conv2d_forward: padding must be >= 0, got -1", "conv-padding-negative"),
    bad(lambda: ops.conv2d_forward(X, WEIGHTS, padding=(0, -2)), ValueError,
        r"conv2d_forward: padding must be >= 0, got \(0, -2\)",
        "conv-padding-pair-negative"),
    bad(lambda: ops.conv2d_forward(X, WEIGHTS, padding="full"), ValueError,
        r"conv2d_forward: padding must be .*'same' or 'valid', got 'full'",
        "conv-padding-unknown"),
    bad(lambda: ops.conv2d_forward(X, WEIGHTS, padding="SAME"), ValueError,
        r"conv2d_forward: padding must be .*, got 'SAME'", "conv-padding-upper"),
    bad(lambda: ops.conv2d_forward(X, np.zeros((8, 8, 3, 4)), padding=1), ValueError,
        r"conv2d_forward: kernel size \(8, 8\) must fit in the padded input \(7, 7\)",
        "conv-kernel-too-large"),
    bad(lambda: ops.conv2d_forward(X, np.zeros((3, 6, 3, 4))), ValueError,
        r"conv2d_forward: kernel size \(3, 6\) must fit", "conv-kernel-too-wide"),
    bad(lambda: ops.conv2d_forward(X.astype(complex), WEIGHTS), TypeError,
        r"conv2d_forward: x must hold real numbers, got dtype complex128",
        "conv-x-complex"),
    bad(lambda: ops.conv2d_forward(X, WEIGHTS.astype(object)), TypeError,
        r"conv2d_forward: weights must hold real numbers, got dtype object",
        "conv-weights-object"),
    bad(lambda: ops.conv2d_forward(X.astype(str), WEIGHTS), TypeError,
        r"conv2d_forward: x must hold real numbers, got dtype <U", "conv-x-string"),
    bad(lambda: ops.conv2d_forward(X, WEIGHTS, BIAS.astype(np.complex64)), TypeError,
        r"conv2d_forward: bias must hold real numbers", "conv-bias-complex"),
    bad(lambda: ops.conv2d_forward(X.tolist(), WEIGHTS), TypeError,
        r"conv2d_forward: x must be a numpy\.ndarray, got list", "conv-x-list"),
    bad(lambda: ops.conv2d_forward(None, WEIGHTS), TypeError,
        r"conv2d_forward: x must be a numpy\.ndarray, got NoneType", "conv-x-none"),
    # conv2d_backward
    bad(lambda: ops.conv2d_backward(np.zeros((2, 4, 4, 4)), X, WEIGHTS), ValueError,
        r"conv2d_backward: dout must have shape \(2, 3, 3, 4\), got \(2, 4, 4, 4\)",
        "conv-backward-dout-shape"),
    bad(lambda: ops.conv2d_backward(DOUT[0], X, WEIGHTS), ValueError,
        r"conv2d_backward: dout must be 4-D", "conv-backward-dout-3d"),
    bad(lambda: ops.conv2d_backward(DOUT.astype(complex), X, WEIGHTS), TypeError,
        r"conv2d_backward: dout must hold real numbers", "conv-backward-dout-complex"),
    bad(lambda: ops.conv2d_backward(DOUT, X[0], WEIGHTS), ValueError,
        r"conv2d_backward: x must be 4-D", "conv-backward-x-3d"),
    bad(lambda: ops.conv2d_backward(DOUT, X, np.zeros((3, 3, 1, 4))), ValueError,
        r"conv2d_backward: weights must have 3 input channels",
        "conv-backward-channels"),
    bad(lambda: ops.conv2d_backward(DOUT, X, WEIGHTS, stride=0), ValueError,
        r"conv2d_backward: stride must be >= 1", "conv-backward-stride-0"),
    bad(lambda: ops.conv2d_backward(DOUT, X, WEIGHTS, padding="full"), ValueError,
        r"conv2d_backward: padding must be", "conv-backward-padding-unknown"),
    # zero_pad and zero_pad_backward
    bad(lambda: ops.zero_pad(X[0], 1), ValueError,
        r"zero_pad: x must be 4-D", "pad-x-3d"),
    bad(lambda: ops.zero_pad(X, -1), ValueError,
        r"zero_pad: pad must be >= 0, got -1", "pad-negative"),
    bad(lambda: ops.zero_pad(X, ((0, 1), (-1, 0))), ValueError,
        r"zero_pad: pad must be >= 0", "pad-pairs-negative"),
    bad(lambda: ops.zero_pad(X, "same"), TypeError,
        r"zero_pad: pad must be an int or a pair of ints", "pad-string"),
    bad(lambda: ops.zero_pad(X.astype(complex), 1), TypeError,
        r"zero_pad: x must hold real numbers", "pad-x-complex"),
    bad(lambda: ops.zero_pad_backward(X, 3), ValueError,
        r"zero_pad_backward: pad 3 must leave at least one pixel of dout",
        "pad-backward-pad-too-large"),
    bad(lambda: ops.zero_pad_backward(X[0], 1), ValueError,
        r"zero_pad_backward: dout must be 4-D", "pad-backward-dout-3d"),
    # maxpool2d_forward
    bad(lambda: ops.maxpool2d_forward(X[0]), ValueError,
        r"maxpool2d_forward: x must be 4-D", "pool-x-3d"),
    bad(lambda: ops.maxpool2d_forward(X, 6), ValueError,
        r"maxpool2d_forward: pool_size \(6, 6\) must fit in the input \(5, 5\)",
        "pool-too-large"),
    bad(lambda: ops.maxpool2d_forward(X, (2, 6)), ValueError,
        r"maxpool2d_forward: pool_size \(2, 6\) must fit", "pool-too-wide"),
    bad(lambda: ops.maxpool2d_forward(X, 0), ValueError,
        r"maxpool2d_forward: pool_size must be >= 1, got 0", "pool-size-0"),
    bad(lambda: ops.maxpool2d_forward(X, 2, stride=0), ValueError,
        r"maxpool2d_forward: stride must be >= 1, got 0", "pool-stride-0"),
    bad(lambda: ops.maxpool2d_forward(X, 2, stride=-1), ValueError,
        r"maxpool2d_forward: stride must be >= 1, got -1", "pool-stride-negative"),
    bad(lambda: ops.maxpool2d_forward(X.astype(object)), TypeError,
        r"maxpool2d_forward: x must hold real numbers", "pool-x-object"),
    # maxpool2d_backward on the (2, 2, 2, 3) output of a 2x2 pool of X
    bad(lambda: ops.maxpool2d_backward(np.zeros((2, 3, 2, 3)),
                                       np.zeros((2, 2, 2, 3), np.int32), X.shape),
        ValueError,
        r"maxpool2d_backward: dout must have the shape of argmax \(2, 2, 2, 3\), "
        r"got \(2, 3, 2, 3\)",
        "pool-backward-dout-shape"),
    bad(lambda: ops.maxpool2d_backward(np.zeros((2, 2, 2, 3)),
                                       np.zeros((2, 2, 2, 3), np.int32), (5, 5, 3)),
        ValueError, r"maxpool2d_backward: input_shape must be \(N, H, W, C\)",
        "pool-backward-input-shape-3"),
    bad(lambda: ops.maxpool2d_backward(np.zeros((2, 2, 2, 3)),
                                       np.zeros((2, 2, 2, 3), np.int32), (2, 5, 5, 4)),
        ValueError, r"maxpool2d_backward: input_shape must be .* with N and C of dout",
        "pool-backward-input-shape-channels"),
    bad(lambda: ops.maxpool2d_backward(np.zeros((2, 2, 2, 3)), np.zeros((2, 2, 2, 3)),
                                       X.shape),
        TypeError, r"maxpool2d_backward: argmax must be the int32 array",
        "pool-backward-argmax-float"),
    bad(lambda: ops.maxpool2d_backward(np.zeros((2, 2, 2, 3)),
                                       np.full((2, 2, 2, 3), 25, np.int32), X.shape),
        ValueError, r"maxpool2d_backward: argmax must index the 25 pixels",
        "pool-backward-argmax-out-of-range"),
    bad(lambda: ops.maxpool2d_backward(np.zeros((2, 2, 2, 3), complex),
                                       np.zeros((2, 2, 2, 3), np.int32), X.shape),
        TypeError, r"maxpool2d_backward: dout must hold real numbers",
        "pool-backward-dout-complex"),
    # batchnorm_forward, batchnorm_backward, batchnorm_inference
    bad(lambda: ops.batchnorm_forward(GAMMA, GAMMA, BETA), ValueError,
        r"batchnorm_forward: x must be at least 2-D \(\.\.\., C\), got shape \(3,\)",
        "batchnorm-x-1d"),
    bad(lambda: ops.batchnorm_forward(X, np.ones(4), BETA), ValueError,
        r"batchnorm_forward: gamma must have shape \(3,\), got \(4,\)",
        "batchnorm-gamma-length"),
    bad(lambda: ops.batchnorm_forward(X, GAMMA, np.zeros((1, 3))), ValueError,
        r"batchnorm_forward: beta must be 1-D", "batchnorm-beta-2d"),
    bad(lambda: ops.batchnorm_forward(np.zeros((0, 3)), GAMMA, BETA), ValueError,
        r"batchnorm_forward: x must hold at least one sample, got shape \(0, 3\)",
        "batchnorm-zero-rows"),
    bad(lambda: ops.batchnorm_forward(np.zeros((0, 4, 4, 3)), GAMMA, BETA),
        ValueError, r"batchnorm_forward: x must hold at least one sample",
        "batchnorm-zero-batch"),
    bad(lambda: ops.batchnorm_forward(X, GAMMA, BETA, eps=0.0), ValueError,
        r"batchnorm_forward: eps must be > 0 and finite, got 0\.0", "batchnorm-eps-0"),
    bad(lambda: ops.batchnorm_forward(X, GAMMA, BETA, eps=float("nan")), ValueError,
        r"batchnorm_forward: eps must be > 0 and finite, got nan", "batchnorm-eps-nan"),
    bad(lambda: ops.batchnorm_forward(X.astype(complex), GAMMA, BETA), TypeError,
        r"batchnorm_forward: x must hold real numbers", "batchnorm-x-complex"),
    bad(lambda: ops.batchnorm_forward(X, GAMMA.astype(str), BETA), TypeError,
        r"batchnorm_forward: gamma must hold real numbers", "batchnorm-gamma-string"),
    bad(lambda: ops.batchnorm_forward(X, GAMMA, BETA, out=np.empty(X.shape, "f4")),
        ValueError, r"batchnorm_forward: out must be a writable C-contiguous float64",
        "batchnorm-out-dtype"),
    bad(lambda: ops.batchnorm_backward(X[0], ops.batchnorm_forward(X, GAMMA, BETA)[1]),
        ValueError, r"batchnorm_backward: dy must have shape \(2, 5, 5, 3\)",
        "batchnorm-backward-dy-shape"),
    bad(lambda: ops.batchnorm_backward(X, (X, GAMMA, BETA, BETA, BETA)), TypeError,
        r"batchnorm_backward: cache must be the BatchNormCache", "batchnorm-cache"),
    bad(lambda: ops.batchnorm_backward(X.astype(complex),
                                       ops.batchnorm_forward(X, GAMMA, BETA)[1]),
        TypeError, r"batchnorm_backward: dy must hold real numbers",
        "batchnorm-backward-dy-complex"),
    bad(lambda: ops.batchnorm_inference(X, GAMMA, BETA, BETA, np.ones(4)), ValueError,
        r"batchnorm_inference: running_var must have shape \(3,\), got \(4,\)",
        "batchnorm-inference-running-var"),
    bad(lambda: ops.batchnorm_inference(GAMMA, GAMMA, BETA, BETA, GAMMA), ValueError,
        r"batchnorm_inference: x must be at least 2-D", "batchnorm-inference-x-1d"),
    bad(lambda: ops.batchnorm_inference(X, GAMMA, BETA, BETA.astype(complex), GAMMA),
        TypeError, r"batchnorm_inference: running_mean must hold real numbers",
        "batchnorm-inference-running-mean-complex"),
    bad(lambda: ops.batchnorm_inference(X, GAMMA, BETA, BETA, GAMMA.astype(str)),
        TypeError, r"batchnorm_inference: running_var must hold real numbers",
        "batchnorm-inference-running-var-string"),
    bad(lambda: ops.batchnorm_inference(X, GAMMA, BETA, BETA, GAMMA, eps=-2.0),
        ValueError, r"batchnorm_inference: eps must be > 0 and finite, got -2\.0",
        "batchnorm-inference-eps-negative"),
    # relu_forward, relu_backward
    bad(lambda: ops.relu_forward(X.astype(complex)), TypeError,
        r"relu_forward: x must hold real numbers", "relu-x-complex"),
    bad(lambda: ops.relu_forward(X, out=read_only(X)), ValueError,
        r"relu_forward: out must be a writable C-contiguous float64 array",
        "relu-out-read-only"),
    bad(lambda: ops.relu_backward(X[0], X), ValueError,
        r"relu_backward: dy must have shape \(2, 5, 5, 3\), got \(5, 5, 3\)",
        "relu-backward-dy-shape"),
    bad(lambda: ops.relu_backward(X, X.astype(str)), TypeError,
        r"relu_backward: y must hold real numbers", "relu-backward-y-string"),
]


@pytest.mark.parametrize("call, error, match", BAD_ARGUMENTS)
def test_bad_arguments_raise_naming_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_batchnorm_backward_checks_the_cache_against_dy():
    dy = np.ones((4, 3), np.float32)
    cache = ops.BatchNormCache(np.ones((4, 3), np.float32), np.ones(1, np.float32),
                               np.ones(1, np.float32), np.ones(1, np.float32),
                               np.ones(1, np.float32))

    with pytest.raises(ValueError, match=r"batchnorm_backward: cache\.gamma must have "
                       r"shape \(3,\), got \(1,\)"):
        ops.batchnorm_backward(dy, cache)


@pytest.mark.parametrize("eps", ["a", None])
def test_batchnorm_eps_of_the_wrong_type_raises_type_error(eps):
    x = np.ones((4, 3))

    with pytest.raises(TypeError, match=r"batchnorm_forward: eps must be a number"):
        ops.batchnorm_forward(x, np.ones(3), np.zeros(3), eps=eps)


@pytest.mark.parametrize("input_shape", [(1, 2.9, 2.9, 1), None, (1, -2, 2, 1)])
def test_maxpool_backward_refuses_an_input_shape_that_is_not_positive_ints(
    input_shape,
):
    dout = np.ones((1, 1, 1, 1))
    argmax = np.zeros((1, 1, 1, 1), np.int32)

    with pytest.raises(ValueError, match=r"maxpool2d_backward: input_shape must be a "
                       r"tuple of 4 positive ints"):
        ops.maxpool2d_backward(dout, argmax, input_shape)


def test_padding_beyond_what_the_blas_can_index_is_refused():
    x = np.ones((1, 1, 1, 1), np.float32)
    weights = np.ones((1, 1, 1, 1), np.float32)

    with pytest.raises(ValueError, match=r"conv2d_forward: the padded input .* must "
                       r"have fewer than 2\*\*31 pixels"):
        ops.conv2d_forward(x, weights, padding=(2**31, 0))
