"""Per-layer timings (convext.profiling, convext profile) and the progress bar."""

import io
import json

import numpy as np
import pytest

from convext import SGD, BatchNorm, Conv2D, Dense, Flatten, MaxPool2D, ReLU, Sequential
from convext.cli import main
from convext.profiling import format_profile, layer_flops, profile_training


def small_model():
    layers = [Conv2D(4, 3, padding="same"), BatchNorm(), ReLU(), MaxPool2D(2),
              Flatten(), Dense(10)]
    return Sequential(layers, input_shape=(8, 8, 1), seed=0).compile(SGD(lr=0.01))


def random_batch(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8), rng.integers(0, 10, n)


def test_rows_cover_every_layer_and_add_up_to_the_step():
    model = small_model()
    x, y = random_batch(64)

    report = profile_training(model, x, y, steps=20, batch_size=16)

    names = [row["name"] for row in report["rows"]]
    assert names[:6] == [f"{i} {layer!r}" for i, layer in enumerate(model.layers)]
    assert names[6:] == ["data", "loss", "optimizer"]
    for row in report["rows"][:6]:
        assert row["forward_ms"] > 0 and row["backward_ms"] > 0
        assert row["total_ms"] == pytest.approx(row["forward_ms"] + row["backward_ms"])
    # The timed sections lie inside the measured step; what they leave out is the
    # Python between them, a small part of it.
    assert report["rows_total_ms"] <= report["step_ms"]
    assert report["rows_total_ms"] >= 0.7 * report["step_ms"]
    shares = sum(row["share"] for row in report["rows"])
    assert shares == pytest.approx(report["rows_total_ms"] / report["step_ms"])


def test_convolution_and_dense_rows_report_their_flop_rate():
    model = small_model()
    x, y = random_batch(32)

    report = profile_training(model, x, y, steps=5, batch_size=16)

    conv_row, dense_row = report["rows"][0], report["rows"][5]
    # 2 * N * OH * OW * KH * KW * C * F, the first layer without an input gradient
    conv_forward = 2 * 16 * 8 * 8 * 3 * 3 * 1 * 4
    assert layer_flops(model.layers[0], 16) == (conv_forward, conv_forward)
    assert conv_row["forward_gflops"] == pytest.approx(
        conv_forward / (conv_row["forward_ms"] * 1e6))
    dense_forward = 2 * 16 * 64 * 10
    assert layer_flops(model.layers[5], 16) == (dense_forward, 2 * dense_forward)
    assert dense_row["backward_gflops"] == pytest.approx(
        2 * dense_forward / (dense_row["backward_ms"] * 1e6))
    assert "forward_gflops" not in report["rows"][1]


def test_format_profile_prints_every_row_and_the_step():
    report = profile_training(small_model(), *random_batch(32), steps=3,
                              batch_size=16)

    text = format_profile(report)

    assert "BatchNorm" in text and "optimizer" in text
    assert f"{report['step_ms']:.2f}" in text.splitlines()[-1]


def test_profile_command_prints_json(capsys):
    code = main(["profile", "--steps", "3", "--batch-size", "8", "--json"])

    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["steps"] == 3 and report["batch_size"] == 8
    assert report["rows"][0]["name"].startswith("0 Conv2D")
    assert report["rows"][0]["forward_gflops"] > 0


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("verbose, shows_bar", [(1, True), (0, False)])
def test_progress_bar_follows_verbose_on_a_terminal(monkeypatch, verbose, shows_bar):
    terminal = FakeTerminal()
    monkeypatch.setattr("sys.stderr", terminal)
    model = small_model()
    x, y = random_batch(32)

    model.fit(x, y, epochs=1, batch_size=8, verbose=verbose)

    assert ("epoch 1" in terminal.getvalue()) == shows_bar


def test_progress_bar_is_quiet_when_output_is_not_a_terminal(monkeypatch):
    not_a_terminal = io.StringIO()
    monkeypatch.setattr("sys.stderr", not_a_terminal)
    model = small_model()
    x, y = random_batch(32)

    model.fit(x, y, epochs=1, batch_size=8, verbose=1)

    assert not_a_terminal.getvalue() == ""
