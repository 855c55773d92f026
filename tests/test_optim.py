"""Tests for convext.optim (SGD, Adam) and convext.losses (softmax cross-entropy)."""

import warnings

import numpy as np
import pytest
from reference import numerical_gradient, relative_error
from scipy.special import logsumexp

from convext.losses import softmax, softmax_cross_entropy
from convext.optim import SGD, Adam, get_optimizer

DTYPES = [np.float32, np.float64]
RTOL = {np.float32: 1e-6, np.float64: 1e-14}


def make_params(rng, dtype=np.float64):
    """Two parameter arrays of different shapes, as a model hands them over."""
    return {
        "0/weights": rng.standard_normal((3, 4)).astype(dtype),
        "0/bias": rng.standard_normal(4).astype(dtype),
    }


def make_grads(rng, params, low=0.5, high=2.0):
    """Gradients of magnitude in [low, high] with random signs, one per param."""
    grads = {}
    for key, value in params.items():
        magnitude = rng.uniform(low, high, value.shape)
        sign = rng.choice([-1.0, 1.0], value.shape)
        grads[key] = (sign * magnitude).astype(value.dtype)
    return grads


def copy_arrays(arrays):
    return {key: value.copy() for key, value in arrays.items()}


def assert_arrays_close(actual, expected, rtol, atol=0.0):
    assert actual.keys() == expected.keys()
    for key in expected:
        np.testing.assert_allclose(
            actual[key], expected[key], rtol=rtol, atol=atol, err_msg=key
        )


# -- SGD ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_without_momentum_subtracts_lr_times_gradient(dtype):
    rng = np.random.default_rng(0)
    params = make_params(rng, dtype)
    grads = make_grads(rng, params)
    lr = 0.037
    # in float64, rounded once to dtype, as the kernel computes it
    expected = {key: (value.astype(np.float64)
                      - lr * grads[key].astype(np.float64)).astype(dtype)
                for key, value in params.items()}
    optimizer = SGD(lr=lr)

    optimizer.step(params, grads)

    for key in params:
        assert params[key].dtype == dtype
        np.testing.assert_allclose(params[key], expected[key], rtol=RTOL[dtype],
                                   err_msg=key)
    assert optimizer.iterations == 1


def test_sgd_updates_the_arrays_in_place():
    rng = np.random.default_rng(1)
    params = make_params(rng)
    grads = make_grads(rng, params)
    originals = dict(params)
    before = copy_arrays(params)

    SGD(lr=0.1, momentum=0.5).step(params, grads)

    for key in params:
        assert params[key] is originals[key]
        assert not np.array_equal(params[key], before[key])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_over_three_steps_matches_the_formula(dtype, nesterov):
    rng = np.random.default_rng(2)
    params = make_params(rng, dtype)
    grad_steps = [make_grads(rng, params) for _ in range(3)]
    lr, momentum = 0.05, 0.9
    expected = {key: value.astype(np.float64) for key, value in params.items()}
    velocity = {key: np.zeros_like(value) for key, value in expected.items()}
    for grads in grad_steps:
        for key in expected:
            g = grads[key].astype(np.float64)
            velocity[key] = momentum * velocity[key] - lr * g
            if nesterov:
                expected[key] += momentum * velocity[key] - lr * g
            else:
                expected[key] += velocity[key]
    optimizer = SGD(lr=lr, momentum=momentum, nesterov=nesterov)

    for grads in grad_steps:
        optimizer.step(params, grads)

    assert_arrays_close(params, expected, rtol=RTOL[dtype], atol=RTOL[dtype])
    assert_arrays_close(
        {key: slots["velocity"] for key, slots in optimizer.state.items()},
        velocity,
        rtol=RTOL[dtype],
        atol=RTOL[dtype],
    )
    assert optimizer.iterations == 3


@pytest.mark.parametrize("momentum", [0.0, 0.8])
def test_sgd_weight_decay_adds_decay_times_weights_to_the_gradient(momentum):
    rng = np.random.default_rng(3)
    params = make_params(rng)
    grad_steps = [make_grads(rng, params) for _ in range(3)]
    lr, decay = 0.1, 0.01
    expected = copy_arrays(params)
    velocity = {key: np.zeros_like(value) for key, value in params.items()}
    for grads in grad_steps:
        for key in expected:
            g = grads[key] + decay * expected[key]
            velocity[key] = momentum * velocity[key] - lr * g
            expected[key] = expected[key] + velocity[key]
    optimizer = SGD(lr=lr, momentum=momentum, weight_decay=decay)

    for grads in grad_steps:
        optimizer.step(params, grads)

    assert_arrays_close(params, expected, rtol=1e-14, atol=1e-15)


def test_sgd_weight_decay_shrinks_weights_with_zero_gradient():
    rng = np.random.default_rng(4)
    params = make_params(rng)
    zeros = {key: np.zeros_like(value) for key, value in params.items()}
    expected = {key: value * (1 - 0.5 * 0.1) for key, value in params.items()}

    SGD(lr=0.5, weight_decay=0.1).step(params, zeros)

    assert_arrays_close(params, expected, rtol=1e-15)


# -- Adam ---------------------------------------------------------------------


def adam_paper(params, grad_steps, lr, beta1, beta2, eps):
    """Algorithm 1 of Kingma and Ba (2015), in float64, on copies of params."""
    theta = {key: value.astype(np.float64) for key, value in params.items()}
    m = {key: np.zeros_like(value) for key, value in theta.items()}
    v = {key: np.zeros_like(value) for key, value in theta.items()}
    for t, grads in enumerate(grad_steps, start=1):
        for key, value in theta.items():
            g = grads[key].astype(np.float64)
            m[key] = beta1 * m[key] + (1 - beta1) * g
            v[key] = beta2 * v[key] + (1 - beta2) * g**2
            m_hat = m[key] / (1 - beta1**t)
            v_hat = v[key] / (1 - beta2**t)
            theta[key] = value - lr * m_hat / (np.sqrt(v_hat) + eps)
    return theta, m, v


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.5, 0.8)])
def test_adam_over_three_steps_matches_the_paper(dtype, betas):
    # eps is tiny here: convext folds the bias correction into the step size, so
    # its eps acts as the paper's eps times sqrt(1 - beta2**t) (the paper's
    # "epsilon hat" variant); with gradients of order 1 both give the same steps.
    rng = np.random.default_rng(5)
    params = make_params(rng, dtype)
    grad_steps = [make_grads(rng, params) for _ in range(3)]
    lr, eps = 0.01, 1e-12
    before = copy_arrays(params)
    expected, m, v = adam_paper(params, grad_steps, lr, *betas, eps)
    optimizer = Adam(lr=lr, beta1=betas[0], beta2=betas[1], eps=eps)

    for grads in grad_steps:
        optimizer.step(params, grads)

    # Compare the total updates, which are small next to the weights.
    rtol = {np.float32: 1e-4, np.float64: 1e-9}[dtype]
    updates = {key: params[key] - before[key] for key in params}
    expected_updates = {key: expected[key] - before[key] for key in params}
    assert_arrays_close(updates, expected_updates, rtol=rtol)
    assert_arrays_close(
        {key: s["m"] for key, s in optimizer.state.items()}, m, rtol=RTOL[dtype]
    )
    assert_arrays_close(
        {key: s["v"] for key, s in optimizer.state.items()}, v, rtol=RTOL[dtype]
    )
    assert optimizer.iterations == 3


def test_adam_first_step_moves_each_weight_by_about_lr():
    rng = np.random.default_rng(6)
    params = make_params(rng)
    grads = make_grads(rng, params, low=1e-3, high=1e3)
    before = copy_arrays(params)
    lr = 0.01

    Adam(lr=lr).step(params, grads)

    for key in params:
        expected = -lr * np.sign(grads[key])
        np.testing.assert_allclose(params[key] - before[key], expected, rtol=1e-3)


# -- hyperparameters ----------------------------------------------------------


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: SGD(lr=0.0), r"SGD: lr must be a number > 0"),
        (lambda: SGD(lr=-0.1), r"SGD: lr must be a number > 0.0 and finite, got -0.1"),
        (lambda: SGD(lr=float("nan")), r"SGD: lr must be a number > 0.0 and finite, "
                                       r"got nan"),
        (lambda: Adam(lr=float("inf")), r"Adam: lr must be a number > 0.0 and finite, "
                                        r"got inf"),
        (lambda: SGD(nesterov=True), r"SGD: nesterov=True needs a momentum > 0"),
        (lambda: SGD(momentum=1.0), r"SGD: momentum must be a number >= 0.0 and < 1"),
        (lambda: SGD(momentum=-0.1), r"SGD: momentum must be a number >= 0.0"),
        (lambda: SGD(weight_decay=-1e-4), r"SGD: weight_decay must be a number >= 0"),
        (lambda: Adam(lr=0), r"Adam: lr must be a number > 0"),
        (lambda: Adam(beta1=1.0), r"Adam: beta1 must be a number >= 0.0 and < 1"),
        (lambda: Adam(beta2=1.5), r"Adam: beta2 must be a number >= 0.0 and < 1"),
        (lambda: Adam(beta1=-0.5), r"Adam: beta1 must be a number >= 0.0"),
        (lambda: Adam(eps=0.0), r"Adam: eps must be a number > 0"),
    ],
)
def test_bad_hyperparameters_raise_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("optimizer", [SGD(lr=0.1, momentum=0.9), Adam()],
                         ids=["sgd", "adam"])
@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda p, g: p.update(w=p["w"].astype(np.int64)), TypeError,
         r"params\['w'\] must be float32 or float64, got dtype int64"),
        (lambda p, g: p.update(w=p["w"].tolist()), TypeError,
         r"params\['w'\] must be a numpy.ndarray, got list"),
        (lambda p, g: p.update(w=np.zeros((8, 6))[::2, ::2]), ValueError,
         r"params\['w'\] must be a writeable C-contiguous array"),
        (lambda p, g: g.update(w=g["w"].T), ValueError,
         r"grads\['w'\] must have the shape \(4, 3\) of its parameter, got \(3, 4\)"),
        (lambda p, g: g.pop("w"), ValueError, r"grads has no entry 'w'"),
    ],
)
def test_bad_params_or_grads_raise_before_any_update(optimizer, change, error, match):
    rng = np.random.default_rng(7)
    params = {"b": rng.standard_normal(3), "w": rng.standard_normal((4, 3))}
    grads = {key: rng.standard_normal(value.shape) for key, value in params.items()}
    change(params, grads)
    before = {key: np.array(value, copy=True) for key, value in params.items()}

    with pytest.raises(error, match=match):
        optimizer.step(params, grads)

    np.testing.assert_array_equal(params["b"], before["b"])
    assert optimizer.iterations == 0


@pytest.mark.parametrize("params, grads, match", [
    ([np.zeros(3)], [np.zeros(3)], r"SGD.step: params must be a dict of arrays, got "
                                   r"list"),
    ({"w": np.zeros(3)}, None, r"SGD.step: grads must be a dict of arrays, got "
                               r"NoneType"),
])
def test_step_takes_dicts_only(params, grads, match):
    with pytest.raises(TypeError, match=match):
        SGD().step(params, grads)


@pytest.mark.parametrize("logits, labels, error, match", [
    (np.zeros((2, 10)), np.array([0, -1]), ValueError,
     r"labels must be in 0..9, got values from -1 to 0"),
    (np.zeros((2, 10)), np.array([0, 10]), ValueError,
     r"labels must be in 0..9, got values from 0 to 10"),
    (np.zeros((2, 10)), np.array([0.0, 1.0]), TypeError,
     r"labels must hold integers, got dtype float64"),
    (np.zeros((2, 10)), np.array([0, 1, 2]), ValueError,
     r"labels must have shape \(2,\) to match logits of shape \(2, 10\), got \(3,\)"),
    (np.zeros((0, 10)), np.array([], np.int64), ValueError,
     r"logits must be 2-D \(N, K\) with N, K >= 1, got shape \(0, 10\)"),
    (np.zeros((2, 10), np.int64), np.array([0, 1]), TypeError,
     r"logits must be a float ndarray, got int64"),
])
def test_softmax_cross_entropy_refuses_bad_labels_and_logits(logits, labels, error,
                                                             match):
    with pytest.raises(error, match="softmax_cross_entropy: " + match):
        softmax_cross_entropy(logits, labels)


def test_float64_gradients_update_float32_params_in_their_dtype():
    rng = np.random.default_rng(8)
    params = make_params(rng, np.float32)
    grads = make_grads(rng, make_params(rng, np.float64))
    lr = 0.25
    expected = {key: (value - lr * grads[key]).astype(np.float32)
                for key, value in params.items()}

    SGD(lr=lr).step(params, grads)

    for key in params:
        assert params[key].dtype == np.float32
        np.testing.assert_allclose(params[key], expected[key], rtol=1e-6)


def test_get_optimizer_rejects_unknown_names():
    with pytest.raises(ValueError, match=r"one of \['adam', 'sgd'\], got 'rmsprop'"):
        get_optimizer("rmsprop")


def test_get_optimizer_builds_by_name_and_passes_instances_through():
    sgd = SGD(lr=0.2)

    by_name = get_optimizer("SGD", lr=0.3)
    adam = get_optimizer("adam")

    assert get_optimizer(sgd) is sgd
    assert isinstance(by_name, SGD) and by_name.lr == 0.3
    assert isinstance(adam, Adam) and adam.lr == 1e-3


# -- saving state -------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [lambda: SGD(lr=0.1, momentum=0.9, nesterov=True), lambda: Adam(lr=0.01)],
    ids=["sgd", "adam"],
)
def test_state_arrays_round_trip_resumes_identically(make):
    rng = np.random.default_rng(7)
    params = make_params(rng, np.float32)
    grad_steps = [make_grads(rng, params) for _ in range(3)]
    original = make()
    for grads in grad_steps[:2]:
        original.step(params, grads)
    saved = copy_arrays(original.state_arrays())
    resumed = type(original)(**original.get_config())
    params_copy = copy_arrays(params)

    resumed.load_state_arrays(saved)
    original.step(params, grad_steps[2])
    resumed.step(params_copy, grad_steps[2])

    assert resumed.iterations == original.iterations == 3
    assert resumed.get_config() == original.get_config()
    assert resumed.state.keys() == original.state.keys()
    for key, slots in original.state.items():
        assert resumed.state[key].keys() == slots.keys()
        for slot, array in slots.items():
            np.testing.assert_array_equal(resumed.state[key][slot], array)
    for key in params:
        np.testing.assert_array_equal(params_copy[key], params[key])


def test_state_arrays_names_slots_under_parameter_keys():
    rng = np.random.default_rng(8)
    params = make_params(rng)
    optimizer = Adam()

    optimizer.step(params, make_grads(rng, params))
    arrays = optimizer.state_arrays()

    assert set(arrays) == {
        "iterations",
        "0/weights/m",
        "0/weights/v",
        "0/bias/m",
        "0/bias/v",
    }
    assert int(arrays["iterations"]) == 1


# -- softmax cross-entropy ----------------------------------------------------


def naive_cross_entropy(logits, labels):
    """mean(-log softmax(logits)[label]), in float64, without any shift."""
    logits = logits.astype(np.float64)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return float(np.mean(-np.log(probabilities[np.arange(len(labels)), labels])))


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_equals_naive_formula_for_moderate_logits(dtype):
    rng = np.random.default_rng(9)
    logits = (3 * rng.standard_normal((7, 10))).astype(dtype)
    labels = rng.integers(0, 10, 7)
    expected = naive_cross_entropy(logits, labels)

    loss, dlogits, probabilities = softmax_cross_entropy(logits, labels)

    assert isinstance(loss, float)
    assert loss == pytest.approx(
        expected, rel={np.float32: 1e-5, np.float64: 1e-12}[dtype]
    )
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(probabilities, softmax(logits.copy()), rtol=1e-6)
    assert dlogits.shape == logits.shape


def test_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1e4, 0.0, -1e4], [-1e4, 1e4, 1e4], [1e4, 1e4, 1e4]])
    labels = np.array([1, 2, 0])
    expected = float(np.mean(logsumexp(logits, axis=1) - logits[[0, 1, 2], labels]))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, dlogits, probabilities = softmax_cross_entropy(logits, labels)

    assert np.isfinite(loss)
    assert loss == pytest.approx(expected, rel=1e-12)
    assert np.isfinite(dlogits).all() and np.isfinite(probabilities).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-12)


def test_cross_entropy_gradient_matches_finite_differences():
    rng = np.random.default_rng(10)
    logits = 2 * rng.standard_normal((5, 4))
    labels = rng.integers(0, 4, 5)
    numerical = numerical_gradient(
        lambda z: softmax_cross_entropy(z, labels)[0], logits
    )

    _, dlogits, _ = softmax_cross_entropy(logits, labels)

    assert relative_error(dlogits, numerical) < 1e-8


def test_cross_entropy_gradient_is_softmax_minus_onehot_over_n():
    rng = np.random.default_rng(11)
    logits = rng.standard_normal((6, 10))
    labels = rng.integers(0, 10, 6)
    onehot = np.eye(10)[labels]

    _, dlogits, probabilities = softmax_cross_entropy(logits, labels)

    np.testing.assert_allclose(
        dlogits, (probabilities - onehot) / 6, rtol=1e-14, atol=1e-17
    )


def test_cross_entropy_does_not_modify_the_logits():
    rng = np.random.default_rng(12)
    logits = rng.standard_normal((4, 10))
    before = logits.copy()

    softmax_cross_entropy(logits, rng.integers(0, 10, 4))

    np.testing.assert_array_equal(logits, before)


# -- learning-rate schedules --------------------------------------------------


def test_cosine_schedule_scales_every_step_of_its_span():
    rng = np.random.default_rng(13)
    params = make_params(rng)
    grads = make_grads(rng, params)
    lr, steps = 0.1, 4
    # Past its span the factor stays at its end value, 0.
    factors = [0.5 * (1 + np.cos(np.pi * min(k / steps, 1))) for k in range(6)]
    optimizer = SGD(lr=lr)
    optimizer.set_schedule("cosine", steps)
    moves = []

    for _ in range(6):
        before = copy_arrays(params)
        optimizer.step(params, grads)
        moves.append({key: before[key] - params[key] for key in params})

    for factor, move in zip(factors, moves, strict=True):
        expected = {key: lr * factor * grads[key] for key in grads}
        assert_arrays_close(move, expected, rtol=1e-12, atol=1e-15)


def test_schedule_starts_at_the_current_iteration():
    rng = np.random.default_rng(14)
    params = make_params(rng)
    grads = make_grads(rng, params)
    optimizer = SGD(lr=0.1)
    optimizer.step(params, grads)
    moves = []

    optimizer.set_schedule("cosine", 2)
    for _ in range(3):
        before = copy_arrays(params)
        optimizer.step(params, grads)
        moves.append(before["0/bias"] - params["0/bias"])

    for factor, move in zip([1.0, 0.5, 0.0], moves, strict=True):
        np.testing.assert_allclose(
            move, 0.1 * factor * grads["0/bias"], rtol=1e-12, atol=1e-15
        )


def test_schedule_config_round_trip_continues_the_schedule():
    rng = np.random.default_rng(15)
    params = make_params(rng)
    grads = make_grads(rng, params)
    original = SGD(lr=0.2, momentum=0.5)
    original.set_schedule("cosine", 5)
    for _ in range(2):
        original.step(params, grads)
    resumed = SGD(**original.get_config())
    params_copy = copy_arrays(params)

    resumed.restore_schedule(original.schedule_config())
    resumed.load_state_arrays(copy_arrays(original.state_arrays()))
    original.step(params, grads)
    resumed.step(params_copy, grads)

    assert resumed.current_lr == original.current_lr
    for key in params:
        np.testing.assert_array_equal(params_copy[key], params[key])


def test_callable_schedule_is_used_but_not_saved():
    rng = np.random.default_rng(16)
    params = make_params(rng)
    grads = make_grads(rng, params)
    before = copy_arrays(params)
    optimizer = SGD(lr=0.1)
    optimizer.set_schedule(lambda progress: 0.25, 10)

    optimizer.step(params, grads)

    assert optimizer.schedule_config() is None
    for key in params:
        np.testing.assert_allclose(
            before[key] - params[key], 0.025 * grads[key], rtol=1e-12
        )


def test_unknown_schedule_raises():
    with pytest.raises(
        ValueError,
        match=r"lr_schedule must be a callable or one of "
        r"\['constant', 'cosine'\], got 'step'",
    ):
        SGD().set_schedule("step", 10)
