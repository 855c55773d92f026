"""Property-based tests of convext.ops against the NumPy reference in reference.py.

Every public operation is called on drawn shapes, geometries, dtypes and memory
layouts, valid or not. The property, the same for each: a call either returns the
reference result (computed in float64 on the same values, within a tolerance keyed
by the result dtype) in the dtype that the module rule of convext.ops predicts, or
raises ValueError or TypeError with a message that starts with the function's name.
Whether the arguments are valid is derived here, independently of convext.ops, and
a call with valid arguments must not raise; one with invalid arguments must.

Arrays are made from a drawn seed with a NumPy generator, so a failing example
prints as a short tuple of sizes, dtypes and layouts.
"""

import math
import os
import warnings
from typing import NamedTuple

import numpy as np
import pytest
import reference
from hypothesis import event, given, settings
from hypothesis import strategies as st

from convext import _kernels, ops

# Hypothesis's pytest plugin imports this module to report a failing example; the
# libcst it imports warns at import time, which filterwarnings=error would turn
# into an INTERNALERROR that hides the report and ends the pytest run. So it is
# imported here, once, with that warning silenced.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import hypothesis.extra._patching  # noqa: F401
    except ImportError:
        pass

# Examples per property test; with 11 tests over the kernels that is 2200 examples
# (and 100 of the direct convolution kernels, in a test of its own).
EXAMPLES = 200
PROPERTY_SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, derandomize=True, database=None
)

REAL_DTYPES = [np.dtype(t) for t in (
    np.float32, np.float64, np.float16, np.int8, np.int32, np.int64, np.uint8,
    np.bool_,
)]
DTYPES = [*REAL_DTYPES, np.dtype(np.complex64), np.dtype(object)]
LAYOUTS = ["c", "fortran", "transposed-back", "sliced", "read-only", "big-endian"]
# Result against the float64 reference, relative to the largest magnitude that the
# computation of the result involves (see each test's scale).
RTOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}
BAD_PADDING_STRINGS = ["SAME", "full", ""]


# ---------------------------------------------------------------------------
# Strategies


def mostly(draw, valid, anything, odds=8):
    """A value of valid, except once in odds draws one of anything (which may be
    invalid); so that most examples get past the checks to the kernels. Shrinks
    towards valid."""
    return draw(anything if draw(st.integers(0, odds - 1)) == odds - 1 else valid)


class ArraySpec(NamedTuple):
    """How one argument array is made: its dtype and its memory layout."""

    dtype: np.dtype
    layout: str


@st.composite
def array_specs(draw, base_dtype):
    """base_dtype three times in four, else any dtype; any layout."""
    if draw(st.integers(0, 3)) < 3:
        dtype = base_dtype
    else:
        dtype = draw(st.sampled_from(DTYPES))
    return ArraySpec(dtype, draw(st.sampled_from(LAYOUTS)))


@st.composite
def shared_base_dtype(draw):
    """The dtype that most arrays of one example share; seldom not a real one."""
    return mostly(draw, st.sampled_from(REAL_DTYPES), st.sampled_from(DTYPES))


seeds = st.integers(0, 2**32 - 1)
batches = st.integers(0, 4)
sizes = st.integers(1, 9)
channel_counts = st.integers(1, 5)
filter_counts = st.integers(1, 4)
kernel_sizes = st.integers(1, 5)
any_strides = st.one_of(
    st.integers(-1, 4), st.tuples(st.integers(-1, 4), st.integers(-1, 4))
)
valid_strides = st.one_of(
    st.integers(1, 4), st.tuples(st.integers(1, 4), st.integers(1, 4))
)
any_paddings = st.one_of(
    st.integers(-1, 3),
    st.tuples(st.integers(-1, 3), st.integers(-1, 3)),
    st.sampled_from(["same", "valid", *BAD_PADDING_STRINGS]),
)
valid_paddings = st.one_of(
    st.integers(0, 3),
    st.tuples(st.integers(0, 3), st.integers(0, 3)),
    st.sampled_from(["same", "valid"]),
)
pad_ints = st.integers(-1, 3)
any_pads = st.one_of(
    pad_ints,
    st.tuples(pad_ints, pad_ints),
    st.tuples(st.tuples(pad_ints, pad_ints), st.tuples(pad_ints, pad_ints)),
    st.sampled_from(["same", "valid", *BAD_PADDING_STRINGS]),
)
valid_pads = st.one_of(
    st.integers(0, 3),
    st.tuples(st.integers(0, 3), st.integers(0, 3)),
    st.tuples(st.tuples(st.integers(0, 3), st.integers(0, 3)),
              st.tuples(st.integers(0, 3), st.integers(0, 3))),
)
# Added to a size to make it disagree with the others (mostly(draw, st.just(0),
# offsets) keeps it consistent in most examples).
offsets = st.sampled_from([-1, 1])


# ---------------------------------------------------------------------------
# Arrays


def make_array(rng, shape, dtype, nonnegative=False):
    """Random values of dtype: N(0, 1) floats, whole numbers in [-9, 9] (unsigned or
    nonnegative: [0, 9]), or booleans."""
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    if dtype.kind in "iu":
        low = 0 if nonnegative or dtype.kind == "u" else -9
        return rng.integers(low, 10, shape).astype(dtype)
    values = rng.standard_normal(shape)
    if nonnegative:
        values = np.abs(values)
    if dtype.kind == "c":
        values = values + 1j * rng.standard_normal(shape)
    return values.astype(dtype)


def lay_out(a, layout):
    """a in a memory layout; the values stay the same. A 0-D array has no strides
    to change, so it gets a copy for the Fortran, transposed and sliced layouts."""
    if layout in ("fortran", "transposed-back", "sliced") and a.ndim == 0:
        return a.copy()
    if layout == "fortran":
        return np.asfortranarray(a)
    if layout == "transposed-back":
        if a.ndim < 2:
            return a[::-1].copy()[::-1]
        return np.swapaxes(np.swapaxes(a, 0, 1).copy(), 0, 1)
    if layout == "sliced":
        every_other = tuple(slice(None, None, 2) for _ in range(a.ndim))
        larger = np.zeros(tuple(2 * s for s in a.shape), a.dtype)
        larger[every_other] = a
        return larger[every_other]
    if layout == "read-only":
        a = a.copy()
        a.setflags(write=False)
        return a
    if layout == "big-endian" and a.dtype.kind in "iufc" and a.dtype.itemsize > 1:
        return a.astype(a.dtype.newbyteorder(">"))
    return a


def make_arg(rng, shape, spec, nonnegative=False):
    """An argument array of shape made as spec says."""
    return lay_out(make_array(rng, shape, spec.dtype, nonnegative), spec.layout)


def as_float64(a):
    """A float64 copy of a real array."""
    return None if a is None else np.array(a, dtype=np.float64)


def is_real(a):
    return a.dtype.kind in "biuf"


def predicted_dtype(*arrays):
    """ops' module rule: numpy.result_type of the dtypes (in native byte order, which
    does not change the kind or size) and float32."""
    dtypes = [a.dtype.newbyteorder("=") for a in arrays if a is not None]
    return np.result_type(*dtypes, np.float32)


def pair(value):
    return tuple(value) if isinstance(value, tuple) else (value, value)


def pad_widths(pad):
    """(PT, PB, PL, PR) of a zero_pad pad that is made of ints."""
    if isinstance(pad, int):
        return pad, pad, pad, pad
    if isinstance(pad[0], int):
        return pad[0], pad[0], pad[1], pad[1]
    return (*pad[0], *pad[1])


def dtype_problems(**arrays):
    """Names of the arrays that do not hold real numbers, as message patterns."""
    return [f"{name} must hold real numbers" for name, a in arrays.items()
            if a is not None and not is_real(a)]


def expected_failure(func, type_problems, value_problems):
    """pytest.raises for the first failing kind of check, or None for valid
    arguments. ops checks types and dtypes before values, so TypeError wins."""
    for error, problems in ((TypeError, type_problems), (ValueError, value_problems)):
        if problems:
            return pytest.raises(error, match=rf"^{func}: (?:{'|'.join(problems)})")
    return None


def record(failure):
    event("raises" if failure is not None else "valid")


def assert_matches(actual, expected, dtype, scale):
    """actual is a dtype array of expected's shape, within RTOL[dtype] * scale of it.

    scale is the largest magnitude that the computation involves (at least the
    largest expected value); a float computation cannot do better than its rounding
    of those magnitudes.
    """
    assert isinstance(actual, np.ndarray)
    assert actual.dtype == dtype
    assert actual.shape == expected.shape
    scale = max(float(np.max(scale, initial=0.0)),
                float(np.max(np.abs(expected), initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=RTOL[dtype] * scale)


def assert_exact(actual, expected, dtype):
    """actual is a dtype array equal to expected: for results that only copy or
    select input values, which every dtype here holds exactly."""
    assert isinstance(actual, np.ndarray)
    assert actual.dtype == dtype
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(actual, expected)


# ---------------------------------------------------------------------------
# Zero padding


class PadCase(NamedTuple):
    seed: int
    shape: tuple
    pad: object
    x: ArraySpec


@st.composite
def pad_cases(draw):
    shape = (draw(batches), draw(sizes), draw(sizes), draw(channel_counts))
    pad = mostly(draw, valid_pads, any_pads)
    x = draw(array_specs(draw(shared_base_dtype())))
    return PadCase(draw(seeds), shape, pad, x)


def pad_problems(pad):
    """(type problems, value problems) of a zero_pad pad."""
    if isinstance(pad, str):
        return ["pad must be an int or a pair of ints"], []
    if min(pad_widths(pad)) < 0:
        return [], ["pad must be >= 0"]
    return [], []


@PROPERTY_SETTINGS
@given(pad_cases())
def test_zero_pad_is_reference_or_raises(case):
    x = make_arg(np.random.default_rng(case.seed), case.shape, case.x)
    type_problems, value_problems = pad_problems(case.pad)
    failure = expected_failure(
        "zero_pad", dtype_problems(x=x) + type_problems, value_problems
    )
    record(failure)

    if failure is not None:
        with failure:
            ops.zero_pad(x, case.pad)
        return
    expected = reference.zero_pad(as_float64(x), *pad_widths(case.pad))
    out = ops.zero_pad(x, case.pad)

    assert_exact(out, expected, predicted_dtype(x))


@PROPERTY_SETTINGS
@given(pad_cases())
def test_zero_pad_backward_is_reference_or_raises(case):
    # case.shape is the shape of dout, the padded array.
    dout = make_arg(np.random.default_rng(case.seed), case.shape, case.x)
    type_problems, value_problems = pad_problems(case.pad)
    height, width = case.shape[1:3]
    if not type_problems and not value_problems:
        top, bottom, left, right = pad_widths(case.pad)
        if top + bottom >= height or left + right >= width:
            value_problems = [r"pad .* must leave at least one pixel of dout"]
    failure = expected_failure(
        "zero_pad_backward", dtype_problems(dout=dout) + type_problems, value_problems
    )
    record(failure)

    if failure is not None:
        with failure:
            ops.zero_pad_backward(dout, case.pad)
        return
    # The adjoint of reference.zero_pad: the interior of dout.
    expected = as_float64(dout)[:, top:height - bottom, left:width - right, :]
    dx = ops.zero_pad_backward(dout, case.pad)

    assert_exact(dx, expected, predicted_dtype(dout))


# ---------------------------------------------------------------------------
# Convolution


class ConvCase(NamedTuple):
    seed: int
    batch: int
    height: int
    width: int
    channels: int
    filters: int
    kernel_h: int
    kernel_w: int
    weight_channels: int
    stride: object
    padding: object
    bias_length: object       # None: no bias
    dout_offset: int          # added to OH of the dout given to conv2d_backward
    need_input_grad: bool
    x: ArraySpec
    weights: ArraySpec
    bias: ArraySpec
    dout: ArraySpec


@st.composite
def conv_cases(draw):
    channels, filters = draw(channel_counts), draw(filter_counts)
    base = draw(shared_base_dtype())
    weight_channels = channels + mostly(draw, st.just(0), offsets)
    bias_length = mostly(draw, st.sampled_from([None, filters]),
                         st.sampled_from([filters - 1, filters + 1]))
    return ConvCase(
        seed=draw(seeds), batch=draw(batches), height=draw(sizes), width=draw(sizes),
        channels=channels, filters=filters, kernel_h=draw(kernel_sizes),
        kernel_w=draw(kernel_sizes), weight_channels=max(weight_channels, 1),
        stride=mostly(draw, valid_strides, any_strides),
        padding=mostly(draw, valid_paddings, any_paddings),
        bias_length=bias_length, dout_offset=mostly(draw, st.just(0), offsets),
        need_input_grad=draw(st.booleans()), x=draw(array_specs(base)),
        weights=draw(array_specs(base)), bias=draw(array_specs(base)),
        dout=draw(array_specs(base)),
    )


def conv_geometry_problems(case):
    """Value problems of a convolution's arguments, and its explicit padding
    (PT, PB, PL, PR) and output size (OH, OW), None where they are undefined."""
    problems = []
    if case.weight_channels != case.channels:
        problems.append(rf"weights must have {case.channels} input channels")
    if case.bias_length not in (None, case.filters):
        problems.append(r"bias must have shape")
    strides = pair(case.stride)
    if min(strides) < 1:
        problems.append(r"stride must be >= 1")
    if isinstance(case.padding, str):
        padding_ok = case.padding in ("same", "valid")
    else:
        padding_ok = min(pair(case.padding)) >= 0
    if not padding_ok:
        problems.append(r"padding must be")
    if min(strides) < 1 or not padding_ok:
        return problems, None, None

    padding = reference.explicit_padding(
        case.padding, (case.height, case.width), (case.kernel_h, case.kernel_w),
        strides,
    )
    padded_h = case.height + padding[0] + padding[1]
    padded_w = case.width + padding[2] + padding[3]
    if case.kernel_h > padded_h or case.kernel_w > padded_w:
        problems.append(rf"kernel size \({case.kernel_h}, {case.kernel_w}\) must fit")
        return problems, padding, None
    out_hw = ((padded_h - case.kernel_h) // strides[0] + 1,
              (padded_w - case.kernel_w) // strides[1] + 1)
    return problems, padding, out_hw


def conv_arrays(case):
    rng = np.random.default_rng(case.seed)
    x = make_arg(rng, (case.batch, case.height, case.width, case.channels), case.x)
    weights = make_arg(
        rng, (case.kernel_h, case.kernel_w, case.weight_channels, case.filters),
        case.weights,
    )
    bias = (None if case.bias_length is None
            else make_arg(rng, (case.bias_length,), case.bias))
    return rng, x, weights, bias


def conv2d_backward_reference(dout, x, weights, stride, padding):
    """(dx, dweights, dbias) of reference.conv2d_forward for the output gradient
    dout, in float64: the adjoint of its loop over output pixels."""
    stride_h, stride_w = reference.as_pair(stride)
    kernel_h, kernel_w = weights.shape[:2]
    padded = reference.zero_pad(x, *padding)
    dpadded = np.zeros_like(padded)
    dweights = np.zeros_like(weights)
    for oy in range(dout.shape[1]):
        for ox in range(dout.shape[2]):
            top, left = oy * stride_h, ox * stride_w
            window = (slice(None), slice(top, top + kernel_h),
                      slice(left, left + kernel_w), slice(None))
            grad = dout[:, oy, ox, :]                                   # (N, F)
            dweights += np.tensordot(padded[window], grad, axes=([0], [0]))
            dpadded[window] += np.tensordot(grad, weights, axes=([1], [3]))
    dx = dpadded[:, padding[0]:padding[0] + x.shape[1],
                 padding[2]:padding[2] + x.shape[2], :]
    return dx, dweights, dout.sum(axis=(0, 1, 2))


@PROPERTY_SETTINGS
@given(conv_cases())
def test_conv2d_forward_is_reference_or_raises(case):
    _, x, weights, bias = conv_arrays(case)
    value_problems, padding, _ = conv_geometry_problems(case)
    failure = expected_failure(
        "conv2d_forward", dtype_problems(x=x, weights=weights, bias=bias),
        value_problems,
    )
    record(failure)

    if failure is not None:
        with failure:
            ops.conv2d_forward(x, weights, bias, case.stride, case.padding)
        return
    x64, weights64, bias64 = as_float64(x), as_float64(weights), as_float64(bias)
    expected = reference.conv2d_forward(x64, weights64, bias64, case.stride, padding)
    # Each output sums |x| * |w| products and |bias|: the magnitude it is rounded at.
    scale = reference.conv2d_forward(
        np.abs(x64), np.abs(weights64), None if bias is None else np.abs(bias64),
        case.stride, padding,
    )
    out = ops.conv2d_forward(x, weights, bias, case.stride, case.padding)

    assert_matches(out, expected, predicted_dtype(x, weights, bias), scale)


@PROPERTY_SETTINGS
@given(conv_cases())
def test_conv2d_backward_is_reference_or_raises(case):
    rng, x, weights, _ = conv_arrays(case)
    value_problems, padding, out_hw = conv_geometry_problems(case)
    value_problems = [p for p in value_problems if not p.startswith("bias")]
    out_h, out_w = (1, 1) if out_hw is None else out_hw
    dout_shape = (case.batch, max(out_h + case.dout_offset, 0), out_w, case.filters)
    dout = make_arg(rng, dout_shape, case.dout)
    if out_hw is not None and case.dout_offset != 0:
        value_problems.append(r"dout must have shape")
    failure = expected_failure(
        "conv2d_backward", dtype_problems(dout=dout, x=x, weights=weights),
        value_problems,
    )
    record(failure)

    if failure is not None:
        with failure:
            ops.conv2d_backward(dout, x, weights, case.stride, case.padding,
                                case.need_input_grad)
        return
    x64, weights64, dout64 = as_float64(x), as_float64(weights), as_float64(dout)
    expected = conv2d_backward_reference(dout64, x64, weights64, case.stride, padding)
    scale = conv2d_backward_reference(
        np.abs(dout64), np.abs(x64), np.abs(weights64), case.stride, padding
    )
    # The reference gradients are the adjoint of reference.conv2d_forward:
    # <conv(x, w), dout> = <x, dx> = <w, dweights>.
    product = np.sum(reference.conv2d_forward(x64, weights64, None, case.stride,
                                              padding) * dout64)
    bound = 1e-12 * max(np.sum(np.abs(x64) * scale[0]), 1.0)
    assert abs(product - np.sum(x64 * expected[0])) <= bound
    assert abs(product - np.sum(weights64 * expected[1])) <= bound

    dx, dweights, dbias = ops.conv2d_backward(
        dout, x, weights, case.stride, case.padding, case.need_input_grad
    )

    dtype = predicted_dtype(dout, x, weights)
    if case.need_input_grad:
        assert_matches(dx, expected[0], dtype, scale[0])
    else:
        assert dx is None
    assert_matches(dweights, expected[1], dtype, scale[1])
    assert_matches(dbias, expected[2], dtype, scale[2])


@st.composite
def direct_conv_cases(draw):
    """Valid float convolutions with filters in whole register tiles of the direct
    kernels (channels in whole tiles, or not, or fewer than a tile), over any
    geometry."""
    dtype = draw(st.sampled_from([np.dtype(np.float32), np.dtype(np.float64)]))
    multiple = _kernels.direct_filter_multiple(dtype == np.float64)
    spec = ArraySpec(dtype, "c")
    return ConvCase(
        seed=draw(seeds), batch=draw(st.integers(1, 3)), height=draw(sizes),
        width=draw(sizes), channels=draw(st.sampled_from(
            [multiple, multiple, multiple + 3, 1, 3])),
        filters=multiple * draw(st.integers(1, 2)), kernel_h=draw(kernel_sizes),
        kernel_w=draw(kernel_sizes), weight_channels=0, stride=draw(valid_strides),
        padding=draw(valid_paddings), bias_length=None, dout_offset=0,
        need_input_grad=draw(st.booleans()), x=spec, weights=spec, bias=spec,
        dout=spec,
    )


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(direct_conv_cases())
def test_direct_conv2d_forward_and_backward_are_reference(case):
    case = case._replace(weight_channels=case.channels,
                         bias_length=None if case.seed % 2 else case.filters)
    value_problems, padding, out_hw = conv_geometry_problems(case)
    if value_problems:
        return
    rng, x, weights, bias = conv_arrays(case)
    dout = make_arg(rng, (case.batch, *out_hw, case.filters), case.dout)
    geometry = ops.conv_geometry("test", x.shape[1:3], weights.shape[:2],
                                 case.stride, case.padding)
    event(f"direct forward: {ops.direct_conv(geometry, weights, x.dtype)}")
    event("direct backward: "
          f"{ops.direct_conv(geometry, weights, x.dtype, case.need_input_grad)}")
    x64, weights64, dout64 = as_float64(x), as_float64(weights), as_float64(dout)
    bias64 = as_float64(bias)
    expected_out = reference.conv2d_forward(x64, weights64, bias64, case.stride,
                                            padding)
    out_scale = reference.conv2d_forward(
        np.abs(x64), np.abs(weights64), None if bias is None else np.abs(bias64),
        case.stride, padding,
    )
    expected = conv2d_backward_reference(dout64, x64, weights64, case.stride, padding)
    scale = conv2d_backward_reference(
        np.abs(dout64), np.abs(x64), np.abs(weights64), case.stride, padding
    )

    out = ops.conv2d_forward(x, weights, bias, case.stride, case.padding)
    dx, dweights, dbias = ops.conv2d_backward(
        dout, x, weights, case.stride, case.padding, case.need_input_grad
    )

    assert_matches(out, expected_out, x.dtype, out_scale)
    if case.need_input_grad:
        assert_matches(dx, expected[0], x.dtype, scale[0])
    assert_matches(dweights, expected[1], x.dtype, scale[1])
    assert_matches(dbias, expected[2], x.dtype, scale[2])


# ---------------------------------------------------------------------------
# Max-pooling


class PoolCase(NamedTuple):
    seed: int
    shape: tuple
    pool_size: object
    stride: object            # None: pool_size
    x: ArraySpec


pool_values = st.integers(-1, 5)
any_pool_sizes = st.one_of(pool_values, st.tuples(pool_values, pool_values))
valid_pool_sizes = st.one_of(
    st.integers(1, 5), st.tuples(st.integers(1, 5), st.integers(1, 5))
)


@st.composite
def pool_cases(draw):
    shape = (draw(batches), draw(sizes), draw(sizes), draw(channel_counts))
    pool_size = mostly(draw, valid_pool_sizes, any_pool_sizes)
    stride = mostly(draw, st.one_of(st.none(), valid_strides), any_strides)
    return PoolCase(draw(seeds), shape, pool_size, stride,
                    draw(array_specs(draw(shared_base_dtype()))))


@PROPERTY_SETTINGS
@given(pool_cases())
def test_maxpool2d_forward_is_reference_or_raises(case):
    x = make_arg(np.random.default_rng(case.seed), case.shape, case.x)
    pool_h, pool_w = pair(case.pool_size)
    value_problems = []
    if min(pool_h, pool_w) < 1:
        value_problems.append(r"pool_size must be >= 1")
    if min(pair(case.pool_size if case.stride is None else case.stride)) < 1:
        value_problems.append(r"stride must be >= 1")
    if pool_h > case.shape[1] or pool_w > case.shape[2]:
        value_problems.append(rf"pool_size \({pool_h}, {pool_w}\) must fit")
    failure = expected_failure(
        "maxpool2d_forward", dtype_problems(x=x), value_problems
    )
    record(failure)

    if failure is not None:
        with failure:
            ops.maxpool2d_forward(x, case.pool_size, case.stride)
        return
    x64 = as_float64(x)
    expected = reference.maxpool2d_forward(x64, case.pool_size, case.stride)
    expected_argmax = reference.maxpool2d_argmax(x64, case.pool_size, case.stride)
    out, argmax = ops.maxpool2d_forward(x, case.pool_size, case.stride)

    assert_exact(out, expected, predicted_dtype(x))
    assert argmax.dtype == np.int32
    np.testing.assert_array_equal(argmax, expected_argmax)


class PoolBackwardCase(NamedTuple):
    seed: int
    shape: tuple              # of the pooled input
    pool_size: tuple
    stride: tuple
    argmax_values: str        # forward, random or with-one-bad
    bad_value: int
    argmax_dtype: np.dtype
    argmax_layout: str
    dout_offset: int          # added to OH of dout
    input_shape: str          # how the input_shape argument differs from shape
    other_hw: tuple           # H and W of input_shape when input_shape is other-hw
    dout: ArraySpec


ARGMAX_DTYPES = [np.dtype(t) for t in (
    np.int32, np.int64, np.int16, np.uint8, np.uint64, np.float64, np.bool_,
)]


def fits(values, dtype):
    """True when every one of the int64 values is representable in dtype."""
    if dtype.kind not in "iu" or values.size == 0:
        return True
    info = np.iinfo(dtype)
    return bool(values.min() >= info.min and values.max() <= info.max)


@st.composite
def pool_backward_cases(draw):
    shape = (draw(batches), draw(sizes), draw(sizes), draw(channel_counts))
    pool_size = (draw(st.integers(1, shape[1])), draw(st.integers(1, shape[2])))
    argmax_values = mostly(draw, st.sampled_from(["forward", "random"]),
                           st.just("with-one-bad"), odds=4)
    bad_value = draw(st.sampled_from([-1, 2**31, 2**32, 2**32 + 1, -2**32]))
    argmax_dtype = mostly(draw, st.sampled_from(ARGMAX_DTYPES[:5]),
                          st.sampled_from(ARGMAX_DTYPES))
    # Every index (< 81) fits each integer dtype; a bad value may need int64.
    if argmax_values == "with-one-bad" and not fits(np.array([bad_value]),
                                                     argmax_dtype):
        argmax_dtype = np.dtype(np.int64)
    return PoolBackwardCase(
        seed=draw(seeds), shape=shape, pool_size=pool_size,
        stride=(draw(st.integers(1, 4)), draw(st.integers(1, 4))),
        argmax_values=argmax_values, bad_value=bad_value, argmax_dtype=argmax_dtype,
        argmax_layout=draw(st.sampled_from(LAYOUTS)),
        dout_offset=mostly(draw, st.just(0), offsets),
        input_shape=mostly(draw, st.just("same"), st.sampled_from(
            ["other-hw", "other-batch", "other-channels", "three-axes"])),
        other_hw=(draw(st.integers(0, 9)), draw(st.integers(0, 9))),
        dout=draw(array_specs(draw(shared_base_dtype()))),
    )


def pool_backward_arrays(case):
    """dout, argmax (argmax_values made as the case says, held as exact int64 too)
    and the input_shape argument."""
    rng = np.random.default_rng(case.seed)
    n, height, width, channels = case.shape
    out_shape = reference.maxpool2d_output_shape(case.shape, case.pool_size,
                                                 case.stride)
    if case.argmax_values == "forward":
        x = make_array(rng, case.shape, np.dtype(np.int8))       # many ties
        values = reference.maxpool2d_argmax(x, case.pool_size, case.stride)
    else:
        values = rng.integers(0, height * width, out_shape)
        if case.argmax_values == "with-one-bad" and values.size:
            values.flat[rng.integers(values.size)] = case.bad_value
    argmax = lay_out(values.astype(case.argmax_dtype), case.argmax_layout)

    dout_shape = (n, out_shape[1] + case.dout_offset, *out_shape[2:])
    dout = make_arg(rng, dout_shape, case.dout)
    input_shape = {
        "same": case.shape,
        "other-hw": (n, *case.other_hw, channels),
        "other-batch": (n + 1, height, width, channels),
        "other-channels": (n, height, width, channels + 1),
        "three-axes": (height, width, channels),
    }[case.input_shape]
    return dout, argmax, values, input_shape


def maxpool2d_backward_reference(dout, argmax, input_shape):
    """Each of dout (N, OH, OW, C) added onto the input pixel y * W + x that
    argmax names, in float64."""
    dx = np.zeros(input_shape)
    if argmax.size == 0:
        return dx
    batch, _, _, channel = np.indices(argmax.shape)
    rows, cols = np.divmod(argmax, input_shape[2])
    np.add.at(dx, (batch, rows, cols, channel), dout)
    return dx


@PROPERTY_SETTINGS
@given(pool_backward_cases())
def test_maxpool2d_backward_is_reference_or_raises(case):
    dout, argmax, values, input_shape = pool_backward_arrays(case)
    type_problems = dtype_problems(dout=dout)
    if argmax.dtype.kind not in "iu":
        type_problems.append(r"argmax must be the int32 array")
    value_problems = []
    if argmax.shape != dout.shape:
        value_problems.append(r"dout must have the shape of argmax")
    if (len(input_shape) != 4 or input_shape[0] != dout.shape[0]
            or input_shape[3] != dout.shape[3]):
        value_problems.append(r"input_shape must be \(N, H, W, C\)")
    elif values.size and not (
        0 <= values.min() and values.max() < input_shape[1] * input_shape[2]
    ):
        value_problems.append(r"argmax must index the \d+ pixels")
    failure = expected_failure("maxpool2d_backward", type_problems, value_problems)
    record(failure)

    if failure is not None:
        with failure:
            ops.maxpool2d_backward(dout, argmax, input_shape)
        return
    expected = maxpool2d_backward_reference(as_float64(dout), values, input_shape)
    scale = maxpool2d_backward_reference(np.abs(as_float64(dout)), values,
                                         input_shape)
    dx = ops.maxpool2d_backward(dout, argmax, input_shape)

    assert_matches(dx, expected, predicted_dtype(dout), scale)


# ---------------------------------------------------------------------------
# Batch normalisation


class BatchNormCase(NamedTuple):
    seed: int
    shape: tuple
    gamma_offset: int         # added to the length of gamma
    beta_offset: int
    eps: float
    out: str                  # the out argument: none, fresh or one that is wrong
    x: ArraySpec
    gamma: ArraySpec
    beta: ArraySpec


OUT_KINDS = ["none", "fresh"]
BAD_OUT_KINDS = ["other-dtype", "read-only", "not-c-contiguous", "other-shape"]


@st.composite
def batch_shapes(draw, min_batch=0):
    """(N, C) or (N, H, W, C)."""
    batch = draw(st.integers(min_batch, 4))
    if draw(st.booleans()):
        return (batch, draw(channel_counts))
    return (batch, draw(sizes), draw(sizes), draw(channel_counts))


@st.composite
def batchnorm_cases(draw):
    base = draw(shared_base_dtype())
    return BatchNormCase(
        seed=draw(seeds), shape=draw(batch_shapes()),
        gamma_offset=mostly(draw, st.just(0), offsets),
        beta_offset=mostly(draw, st.just(0), offsets),
        eps=mostly(draw, st.sampled_from([1e-5, 1e-3, 1.0]),
                   st.sampled_from([0.0, -1e-5])),
        out=mostly(draw, st.sampled_from(OUT_KINDS), st.sampled_from(BAD_OUT_KINDS)),
        x=draw(array_specs(base)), gamma=draw(array_specs(base)),
        beta=draw(array_specs(base)),
    )


def make_out(kind, shape, dtype):
    """An out argument: None, a fresh array, or one that is wrong in one way."""
    if kind == "none":
        return None
    if kind == "other-dtype":
        dtype = np.float64 if dtype == np.float32 else np.float32
    if kind == "other-shape":
        shape = (*shape[:-1], shape[-1] + 1)
    out = np.full(shape, np.nan, dtype)
    if kind == "read-only":
        out.setflags(write=False)
    if kind == "not-c-contiguous" and out.ndim == 1:
        out = np.full(2 * out.size, np.nan, dtype)[::2]
    if kind == "not-c-contiguous" and out.ndim > 1:
        out = np.asfortranarray(out)      # still C-contiguous if one axis only is > 1
    return out


def out_problems(out, shape, dtype):
    """ops._output_like's rule, stated independently."""
    if out is None:
        return []
    if (out.shape != shape or out.dtype != dtype or not out.flags.c_contiguous
            or not out.flags.writeable):
        return [r"out must be a writable C-contiguous"]
    return []


def channel_axes(shape):
    return tuple(range(len(shape) - 1))


@PROPERTY_SETTINGS
@given(batchnorm_cases())
def test_batchnorm_forward_is_reference_or_raises(case):
    rng = np.random.default_rng(case.seed)
    channels = case.shape[-1]
    x = make_arg(rng, case.shape, case.x)
    gamma = make_arg(rng, (channels + case.gamma_offset,), case.gamma)
    beta = make_arg(rng, (channels + case.beta_offset,), case.beta)
    type_problems = dtype_problems(x=x, gamma=gamma, beta=beta)
    dtype = None if type_problems else predicted_dtype(x, gamma, beta)
    out = make_out(case.out, case.shape, dtype or np.float64)
    value_problems = out_problems(out, case.shape, dtype)
    if case.gamma_offset:
        value_problems.append(r"gamma must have shape")
    if case.beta_offset:
        value_problems.append(r"beta must have shape")
    if case.eps <= 0:
        value_problems.append(r"eps must be > 0")
    if case.shape[0] == 0:
        value_problems.append(r"x must hold at least one sample")
    failure = expected_failure("batchnorm_forward", type_problems, value_problems)
    record(failure)

    if failure is not None:
        with failure:
            ops.batchnorm_forward(x, gamma, beta, case.eps, out)
        return
    x64, gamma64, beta64 = as_float64(x), as_float64(gamma), as_float64(beta)
    expected = reference.batchnorm_forward(x64, gamma64, beta64, case.eps)
    mean = x64.mean(axis=channel_axes(case.shape))
    var = ((x64 - mean) ** 2).mean(axis=channel_axes(case.shape))
    inv_std = 1 / np.sqrt(var + case.eps)
    # x - mean is rounded at the magnitude of x and the mean, then scaled.
    x_hat_scale = (np.abs(x64) + np.abs(mean)) * inv_std
    y, cache = ops.batchnorm_forward(x, gamma, beta, case.eps, out)

    if out is not None:
        assert y is out
    assert_matches(y, expected, dtype,
                   np.abs(gamma64) * x_hat_scale + np.abs(beta64))
    # The cache holds the input itself, from which the backward pass works.
    assert_exact(cache.x, x64, dtype)
    assert_matches(cache.mean, mean, dtype, np.abs(x64))
    assert_matches(cache.var, var, dtype, 0.0)
    assert_matches(cache.inv_std, inv_std, dtype, 0.0)
    assert_exact(cache.gamma, gamma64, dtype)


class BatchNormBackwardCase(NamedTuple):
    seed: int
    shape: tuple
    forward_dtype: np.dtype
    cache: str                # forward, tuple or other-batch
    x_layout: str
    dy: ArraySpec


@st.composite
def batchnorm_backward_cases(draw):
    return BatchNormBackwardCase(
        seed=draw(seeds), shape=draw(batch_shapes(min_batch=1)),
        forward_dtype=draw(st.sampled_from(REAL_DTYPES[:2])),
        cache=mostly(draw, st.just("forward"),
                     st.sampled_from(["tuple", "other-batch"])),
        x_layout=draw(st.sampled_from(LAYOUTS)),
        dy=draw(array_specs(draw(shared_base_dtype()))),
    )


@PROPERTY_SETTINGS
@given(batchnorm_backward_cases())
def test_batchnorm_backward_is_reference_or_raises(case):
    rng = np.random.default_rng(case.seed)
    channels = case.shape[-1]
    x_shape = ((case.shape[0] + 1, *case.shape[1:]) if case.cache == "other-batch"
               else case.shape)
    x = make_array(rng, x_shape, case.forward_dtype)
    gamma = make_array(rng, (channels,), case.forward_dtype)
    beta = make_array(rng, (channels,), case.forward_dtype)
    _, cache = ops.batchnorm_forward(x, gamma, beta)
    cache = cache._replace(x=lay_out(cache.x, case.x_layout))
    if case.cache == "tuple":
        cache = tuple(cache)
    dy = make_arg(rng, case.shape, case.dy)
    type_problems = dtype_problems(dy=dy)
    if case.cache == "tuple":
        type_problems = [r"cache must be the BatchNormCache"]
    value_problems = [r"dy must have shape"] if x_shape != case.shape else []
    failure = expected_failure("batchnorm_backward", type_problems, value_problems)
    record(failure)

    if failure is not None:
        with failure:
            ops.batchnorm_backward(dy, cache)
        return
    # The gradient of reference.batchnorm_forward, from the cached values in float64.
    dy64, x64, mean = as_float64(dy), as_float64(cache.x), as_float64(cache.mean)
    gamma64, inv_std = as_float64(cache.gamma), as_float64(cache.inv_std)
    x_hat = (x64 - mean) * inv_std
    # x - mean is rounded at the magnitude of x and the mean.
    x_hat_scale = (np.abs(x64) + np.abs(mean)) * inv_std
    axes, rows = channel_axes(case.shape), math.prod(case.shape[:-1])
    dbeta = dy64.sum(axis=axes)
    dgamma = (dy64 * x_hat).sum(axis=axes)
    expected_dx = gamma64 * inv_std / rows * (rows * dy64 - dbeta - x_hat * dgamma)
    dbeta_scale = np.abs(dy64).sum(axis=axes)
    dgamma_scale = np.abs(dy64 * x_hat_scale).sum(axis=axes)
    dx_scale = (np.abs(gamma64) * inv_std / rows
                * (rows * np.abs(dy64) + dbeta_scale + x_hat_scale * dgamma_scale))
    dx, dgamma_out, dbeta_out = ops.batchnorm_backward(dy, cache)

    dtype = predicted_dtype(dy, cache.x)
    assert_matches(dx, expected_dx, dtype, dx_scale)
    assert_matches(dgamma_out, dgamma, dtype, dgamma_scale)
    assert_matches(dbeta_out, dbeta, dtype, dbeta_scale)


class InferenceCase(NamedTuple):
    seed: int
    shape: tuple
    stat_offsets: tuple       # added to the lengths of gamma, beta, mean, var
    negative_var: bool
    eps: float
    specs: tuple              # ArraySpec of x, gamma, beta, running_mean, running_var


STAT_NAMES = ("gamma", "beta", "running_mean", "running_var")


@st.composite
def inference_cases(draw):
    base = draw(shared_base_dtype())
    return InferenceCase(
        seed=draw(seeds), shape=draw(batch_shapes()),
        stat_offsets=tuple(mostly(draw, st.just(0), offsets, odds=16)
                           for _ in STAT_NAMES),
        negative_var=mostly(draw, st.just(False), st.just(True)),
        eps=mostly(draw, st.sampled_from([1e-5, 1e-3, 1.0]),
                   st.sampled_from([0.0, -1e-5])),
        specs=tuple(draw(array_specs(base)) for _ in range(5)),
    )


@PROPERTY_SETTINGS
@given(inference_cases())
def test_batchnorm_inference_is_reference_or_raises(case):
    rng = np.random.default_rng(case.seed)
    channels = case.shape[-1]
    x = make_arg(rng, case.shape, case.specs[0])
    stats = {}
    for name, offset, spec in zip(STAT_NAMES, case.stat_offsets, case.specs[1:]):
        values = make_array(rng, (channels + offset,), spec.dtype,
                            nonnegative=name == "running_var")
        if (name == "running_var" and case.negative_var and values.size
                and spec.dtype.kind in "if"):
            values[0] = -1
        stats[name] = lay_out(values, spec.layout)
    value_problems = [rf"{name} must have shape"
                      for name, offset in zip(STAT_NAMES, case.stat_offsets) if offset]
    if case.eps <= 0:
        value_problems.append(r"eps must be > 0")
    if is_real(stats["running_var"]) and np.any(stats["running_var"] < 0):
        value_problems.append(r"running_var must be >= 0")
    failure = expected_failure(
        "batchnorm_inference", dtype_problems(x=x, **stats), value_problems
    )
    record(failure)

    if failure is not None:
        with failure:
            ops.batchnorm_inference(x, **stats, eps=case.eps)
        return
    x64 = as_float64(x)
    gamma, beta, mean, var = (as_float64(stats[name]) for name in STAT_NAMES)
    expected = reference.batchnorm_inference(x64, gamma, beta, mean, var, case.eps)
    scale = (np.abs(gamma) * (np.abs(x64) + np.abs(mean)) / np.sqrt(var + case.eps)
             + np.abs(beta))
    y = ops.batchnorm_inference(x, **stats, eps=case.eps)

    assert_matches(y, expected, predicted_dtype(x, *stats.values()), scale)


# ---------------------------------------------------------------------------
# ReLU


class ReluCase(NamedTuple):
    seed: int
    shape: tuple
    out: str                  # none, fresh, in-place, or one that is wrong
    y_offset: int             # added to the last axis of y given to relu_backward
    first: ArraySpec          # x of relu_forward, dy of relu_backward
    second: ArraySpec         # y of relu_backward


@st.composite
def relu_cases(draw):
    dims = (draw(batches), draw(sizes), draw(sizes), draw(channel_counts))
    base = draw(shared_base_dtype())
    return ReluCase(
        seed=draw(seeds), shape=dims[:draw(st.integers(0, 4))],
        out=mostly(draw, st.sampled_from([*OUT_KINDS, "in-place"]),
                   st.sampled_from(BAD_OUT_KINDS)),
        y_offset=mostly(draw, st.just(0), offsets),
        first=draw(array_specs(base)), second=draw(array_specs(base)),
    )


@PROPERTY_SETTINGS
@given(relu_cases())
def test_relu_forward_is_reference_or_raises(case):
    x = make_arg(np.random.default_rng(case.seed), case.shape, case.first)
    type_problems = dtype_problems(x=x)
    dtype = None if type_problems else predicted_dtype(x)
    if case.out == "in-place":
        out = x
    elif case.out == "other-shape" and not case.shape:
        out = np.empty(1)
    else:
        out = make_out(case.out, case.shape, dtype or np.float64)
    failure = expected_failure(
        "relu_forward", type_problems, out_problems(out, case.shape, dtype)
    )
    record(failure)

    if failure is not None:
        with failure:
            ops.relu_forward(x, out)
        return
    expected = reference.relu(as_float64(x))
    y = ops.relu_forward(x, out)

    if out is not None:
        assert y is out
    assert_exact(y, expected, dtype)


@PROPERTY_SETTINGS
@given(relu_cases())
def test_relu_backward_is_reference_or_raises(case):
    rng = np.random.default_rng(case.seed)
    dy = make_arg(rng, case.shape, case.first)
    y_shape = case.shape
    if case.shape and case.y_offset:
        y_shape = (*case.shape[:-1], max(case.shape[-1] + case.y_offset, 0))
    # Like the output of a forward pass: about half zeros, the rest positive.
    y = make_array(rng, y_shape, case.second.dtype)
    if y.dtype.kind in "if":
        y = np.asarray(reference.relu(y))
    y = lay_out(y, case.second.layout)
    value_problems = [r"dy must have shape"] if y_shape != case.shape else []
    failure = expected_failure(
        "relu_backward", dtype_problems(dy=dy, y=y), value_problems
    )
    record(failure)

    if failure is not None:
        with failure:
            ops.relu_backward(dy, y)
        return
    dy64 = as_float64(dy)
    expected = np.where(as_float64(y) > 0, dy64, 0.0)
    dx = ops.relu_backward(dy, y)

    assert_exact(dx, expected, predicted_dtype(dy, y))


# ---------------------------------------------------------------------------
# The bounds-checked build


def test_build_is_bounds_checked_when_ci_asks_for_it():
    # CI installs the bounds-checked build and sets this variable, so that a
    # release build slipping in fails instead of skipping the test below.
    if os.environ.get("CONVEXT_EXPECT_BOUNDS_CHECKED") != "1":
        pytest.skip("CONVEXT_EXPECT_BOUNDS_CHECKED is not set")

    assert _kernels.bounds_checked()


@pytest.mark.skipif(
    not _kernels.bounds_checked(),
    reason="needs the bounds-checked build (CONVEXT_CYTHON_DEBUG=1 python3 setup.py "
    "build_ext --inplace); on a release build this out-of-bounds call would "
    "corrupt memory",
)
def test_bounds_checked_build_raises_index_error_on_out_of_bounds_write():
    x = np.ones((1, 3, 2, 1))
    out_too_small = np.zeros((1, 2, 2, 1))        # one row short of x's three

    with pytest.raises(IndexError, match=r"Out of bounds on buffer access \(axis 1\)"):
        _kernels.pad2d(x, out_too_small, 0, 0, 1)
