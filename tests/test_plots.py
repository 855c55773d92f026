"""Tests for convext.plots and the CLI options that draw: train --plot,
evaluate --confusion and show."""

import io
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import convext
from convext import Conv2D, Dense, Flatten, Sequential, plots
from convext.cli import main
from convext.data import load_idx

# matplotlib is imported inside the helpers below, after this skip.
pytest.importorskip(
    "matplotlib", reason='convext.plots needs matplotlib: pip install "convext[plot]"'
)

ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = ROOT.parent / "shared" / "data" / "mnist"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PIXELS = [f"pixel{i}" for i in range(784)]


# -- helpers and fixtures -----------------------------------------------------


@pytest.fixture
def saved_figures(monkeypatch):
    """Every Figure that savefig is called on, in order."""
    from matplotlib.figure import Figure

    figures = []
    original = Figure.savefig

    def recording_savefig(fig, *args, **kwargs):
        figures.append(fig)
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording_savefig)
    return figures


def assert_png_of_figure(path, fig):
    """path is a PNG of exactly fig's pixel size, and not one flat colour."""
    from matplotlib.image import imread

    width, height = fig.get_size_inches() * fig.dpi
    raw = Path(path).read_bytes()
    pixels = imread(path)[..., :3]
    background = pixels[0, 0]
    drawn = np.any(pixels != background, axis=-1).mean()

    assert raw.startswith(PNG_SIGNATURE)
    assert pixels.shape[:2] == (round(height), round(width))
    assert drawn > 0.005


def figure_text(fig):
    """All the text on fig: titles, labels, annotations, tick labels."""
    artists = fig.findobj(lambda artist: hasattr(artist, "get_text"))
    return " | ".join(artist.get_text() for artist in artists)


def digit_images(n):
    """(images (n, 28, 28, 1) uint8, labels (n,)): real MNIST test digits when the
    shared data is there, else noise with a bright square whose quadrant is the
    label (0-3)."""
    images_path = MNIST_DIR / "t10k-images-idx3-ubyte.gz"
    if images_path.is_file():
        images, labels = load_idx(images_path, MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
        return images[:n], labels[:n]
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, n)
    images = rng.integers(0, 40, (n, 28, 28, 1))
    for i, label in enumerate(labels):
        top = (label // 2) * 14 + rng.integers(0, 8)
        left = (label % 2) * 14 + rng.integers(0, 8)
        images[i, top : top + 7, left : left + 7, 0] = 255
    return images.astype(np.uint8), labels


def run(capsys, *argv):
    """(exit code, stdout, stderr) of convext.cli.main(argv)."""
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- confusion_matrix ---------------------------------------------------------


def test_confusion_matrix_small_example_by_hand():
    y_true = [0, 0, 1, 2, 2, 2]
    y_pred = [0, 1, 1, 2, 0, 2]
    expected = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 2]])

    matrix = plots.confusion_matrix(y_true, y_pred, 3)

    assert matrix.dtype == np.int64
    np.testing.assert_array_equal(matrix, expected)


def test_confusion_matrix_matches_a_python_loop():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 5, 200)
    y_pred = np.where(rng.random(200) < 0.7, y_true, rng.integers(0, 5, 200))
    expected = np.zeros((5, 5), dtype=np.int64)
    for t, p in zip(y_true.tolist(), y_pred.tolist()):
        expected[t][p] += 1

    matrix = plots.confusion_matrix(y_true, y_pred, 5)

    assert matrix.shape == (5, 5)
    assert matrix.sum() == 200
    np.testing.assert_array_equal(matrix, expected)


@pytest.mark.parametrize(
    "y_true, y_pred, n_classes, error, match",
    [
        ([0, 1, 3], [0, 1, 1], 3, ValueError, r"y_true must hold labels in 0\.\.2"),
        ([0, 1], [0, -1], 3, ValueError, r"y_pred must hold labels in 0\.\.2"),
        ([0, 1, 2], [0, 1], 3, ValueError, r"y_pred must have the length of y_true"),
        ([0.5, 1.0], [0, 1], 3, TypeError, r"y_true must hold integer labels"),
        ([[0, 1]], [[0, 1]], 3, ValueError, r"y_true must be 1-D, got shape \(1, 2\)"),
        ([0, 1], [0, 1], 0, ValueError, r"n_classes must be >= 1, got 0"),
        ([0, 1], [0, 1], 2.0, TypeError, r"n_classes must be an int, got float"),
    ],
)
def test_confusion_matrix_rejects_bad_arguments(
    y_true, y_pred, n_classes, error, match
):
    with pytest.raises(error, match=rf"^confusion_matrix: {match}"):
        plots.confusion_matrix(y_true, y_pred, n_classes)


# -- matplotlib is optional ---------------------------------------------------


def test_importing_plots_does_not_import_matplotlib(tmp_path):
    code = "import sys, convext.plots; print('matplotlib' in sys.modules)"
    # The child imports the convext this test imported: run from the repository
    # root, `python -c` would find the uncompiled source folder first.
    env = dict(os.environ, PYTHONPATH=str(Path(convext.__file__).parents[1]))

    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


@pytest.fixture
def no_matplotlib(monkeypatch):
    """Make every `import matplotlib...` fail, as if it were not installed."""
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.setitem(sys.modules, name, None)


def test_missing_matplotlib_raises_import_error_with_the_install_command(
    no_matplotlib, tmp_path
):
    history = {"epoch": [1], "loss": [0.5], "accuracy": [0.8]}
    path = tmp_path / "curves.png"

    with pytest.raises(ImportError, match=r'pip install "convext\[plot\]"'):
        plots.plot_history(history, path)

    assert not path.exists()


# -- plot_history -------------------------------------------------------------


@pytest.mark.parametrize(
    "history",
    [
        {
            "epoch": [1],
            "loss": [2.1],
            "accuracy": [0.31],
            "val_loss": [1.9],
            "val_accuracy": [0.42],
            "seconds": [1.5],
        },
        {"epoch": [1, 2, 3], "loss": [2.1, 0.9, 0.4], "accuracy": [0.31, 0.72, 0.88]},
    ],
    ids=["one-epoch-with-validation", "three-epochs"],
)
def test_plot_history_writes_a_png(history, tmp_path, saved_figures):
    path = tmp_path / "curves.png"

    returned = plots.plot_history(history, path)

    assert returned == path
    assert len(saved_figures) == 1
    assert_png_of_figure(path, saved_figures[0])
    text = figure_text(saved_figures[0])
    assert "epoch" in text and "accuracy" in text and "training" in text
    assert ("validation" in text) == ("val_loss" in history)


def test_plot_history_labels_epochs_with_integers(tmp_path, saved_figures):
    history = {"epoch": [1], "loss": [2.1], "accuracy": [0.31]}

    plots.plot_history(history, tmp_path / "curves.png")
    loss_ax = saved_figures[0].axes[0]
    ticks = [
        t
        for t in loss_ax.get_xticks()
        if loss_ax.get_xlim()[0] <= t <= loss_ax.get_xlim()[1]
    ]

    assert ticks == [1.0]


@pytest.mark.parametrize(
    "history, path, error, match",
    [
        ([1, 2], "c.png", TypeError, r"history must be a dict of lists, got list"),
        (
            {"loss": [1.0]},
            "c.png",
            ValueError,
            r"history must have the keys 'loss' and 'accuracy'",
        ),
        (
            {"loss": [], "accuracy": []},
            "c.png",
            ValueError,
            r"history\['loss'\] must hold at least one epoch, got 0",
        ),
        (
            {"loss": [1.0, 0.5], "accuracy": [0.1, 0.2], "val_loss": [0.9]},
            "c.png",
            ValueError,
            r"history\['val_loss'\] must have one entry per epoch, 2",
        ),
        (
            {"loss": ["a"], "accuracy": [0.1]},
            "c.png",
            TypeError,
            r"history\['loss'\] must be a list of numbers",
        ),
        (
            {"loss": [1.0], "accuracy": [0.1]},
            "c.jpg",
            ValueError,
            r"path must end in \.png, got '.*c\.jpg'",
        ),
    ],
)
def test_plot_history_rejects_bad_arguments(history, path, error, match, tmp_path):
    with pytest.raises(error, match=rf"^plot_history: {match}"):
        plots.plot_history(history, tmp_path / path)


# -- plot_confusion -----------------------------------------------------------


def test_plot_confusion_writes_counts_and_accuracy(tmp_path, saved_figures):
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 10, 300)
    y_pred = np.where(rng.random(300) < 0.8, y_true, rng.integers(0, 10, 300))
    matrix = plots.confusion_matrix(y_true, y_pred, 10)
    accuracy = np.mean(y_true == y_pred)
    path = tmp_path / "confusion.png"

    plots.plot_confusion(y_true, y_pred, path)
    fig = saved_figures[0]
    ax = fig.axes[0]
    cell_texts = [t.get_text() for t in ax.texts]

    assert_png_of_figure(path, fig)
    assert cell_texts == [str(count) for count in matrix.ravel()]
    assert f"accuracy {accuracy:.2%}" in ax.get_title()
    assert ax.get_xlabel() == "predicted label"
    assert ax.get_ylabel() == "true label"
    assert len(fig.axes) == 2, "the matrix and its colour bar"


def test_plot_confusion_rejects_no_labels(tmp_path):
    with pytest.raises(ValueError, match=r"^plot_confusion: y_true must hold at least"):
        plots.plot_confusion([], [], tmp_path / "confusion.png")


# -- plot_filters -------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_plot_filters_draws_one_tile_per_filter(channels, tmp_path, saved_figures):
    model = Sequential(
        [Conv2D(5, 3), Flatten(), Dense(10)], input_shape=(8, 8, channels), seed=0
    )
    weights = model.layers[0].params["weights"]
    expected = weights[:, :, 0, :] if channels == 1 else weights.mean(axis=2)
    path = tmp_path / "filters.png"

    plots.plot_filters(model, path)
    fig = saved_figures[0]
    tiles = [ax for ax in fig.axes if ax.images]
    limits = {ax.images[0].get_clim() for ax in tiles}

    assert_png_of_figure(path, fig)
    assert len(tiles) == 5
    for f, ax in enumerate(tiles):
        np.testing.assert_array_equal(ax.images[0].get_array(), expected[:, :, f])
    assert len(limits) == 1, "one colour scale shared by every tile"
    low, high = limits.pop()
    assert low == -high == -np.abs(expected).max()
    assert f"(3, 3, {channels}, 5)" in fig.get_suptitle()
    assert any(ax.get_ylabel() == "weight" for ax in fig.axes), "a colour bar"


def test_plot_filters_rejects_a_model_without_convolution(tmp_path):
    model = Sequential([Flatten(), Dense(10)], input_shape=(4, 4, 1))

    with pytest.raises(
        ValueError,
        match=r"^plot_filters: model must contain a "
        r"Conv2D layer, got layers Flatten, Dense",
    ):
        plots.plot_filters(model, tmp_path / "filters.png")


def test_plot_filters_rejects_a_model_without_weights(tmp_path):
    model = Sequential([Conv2D(4, 3), Flatten(), Dense(10)])

    with pytest.raises(ValueError, match=r"^plot_filters: model has no weights yet"):
        plots.plot_filters(model, tmp_path / "filters.png")


def test_plot_filters_rejects_what_is_not_a_model(tmp_path):
    with pytest.raises(
        TypeError,
        match=r"^plot_filters: model must be a convext "
        r"Sequential, got dict",
    ):
        plots.plot_filters({}, tmp_path / "filters.png")


# -- plot_misclassified -------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_plot_misclassified_titles_the_first_errors(dtype, tmp_path, saved_figures):
    images, labels = digit_images(40)
    if dtype == np.float32:
        images = images.astype(np.float32) / 255
    predicted = labels.copy()
    wrong = [2, 5, 7, 11, 30]
    predicted[wrong] = (labels[wrong] + 1) % 10
    path = tmp_path / "errors.png"

    plots.plot_misclassified(images, labels, predicted, path, max_images=4)
    fig = saved_figures[0]
    titles = [ax.get_title() for ax in fig.axes if ax.images]

    assert_png_of_figure(path, fig)
    assert titles == [f"true {labels[i]} / pred {predicted[i]}" for i in wrong[:4]]
    assert "the first 4 of 5" in fig.get_suptitle()


def test_plot_misclassified_says_when_there_are_none(tmp_path, saved_figures):
    images, labels = digit_images(12)
    path = tmp_path / "errors.png"

    plots.plot_misclassified(images, labels, labels, path)
    fig = saved_figures[0]

    assert_png_of_figure(path, fig)
    assert "No misclassified images" in figure_text(fig)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (
            {"images": np.zeros((3, 28, 28), np.uint8)},
            ValueError,
            r"images must be \(N, H, W, 1\) with N >= 1, got shape \(3, 28, 28\)",
        ),
        (
            {"images": np.zeros((3, 28, 28, 1), np.int64)},
            TypeError,
            r"images must be uint8 or float, got dtype int64",
        ),
        ({"y_true": [0, 1]}, ValueError, r"y_pred must have the length of y_true"),
        (
            {"y_true": [0, 1], "y_pred": [0, 1]},
            ValueError,
            r"y_true must hold one label per image, got 2 labels for 3 images",
        ),
        ({"max_images": 0}, ValueError, r"max_images must be >= 1, got 0"),
    ],
)
def test_plot_misclassified_rejects_bad_arguments(change, error, match, tmp_path):
    arguments = {
        "images": np.zeros((3, 28, 28, 1), np.uint8),
        "y_true": [0, 1, 2],
        "y_pred": [0, 1, 1],
        "path": tmp_path / "errors.png",
        "max_images": 36,
    }
    arguments.update(change)

    with pytest.raises(error, match=rf"^plot_misclassified: {match}"):
        plots.plot_misclassified(**arguments)


# -- command line -------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train for one epoch on a 200-row CSV with --plot; returns (code, stdout,
    stderr, folder). capsys is per test, so the output is redirected by hand."""
    folder = tmp_path_factory.mktemp("plots-cli")
    images, labels = digit_images(200)
    frame = pd.DataFrame(images.reshape(len(images), -1), columns=PIXELS)
    frame.insert(0, "label", labels)
    frame.to_csv(folder / "train.csv", index=False)
    out, err = io.StringIO(), io.StringIO()

    with redirect_stdout(out), redirect_stderr(err):
        code = main(
            [
                "train",
                str(folder / "train.csv"),
                "--epochs",
                "1",
                "--validation-split",
                "0.2",
                "--out",
                str(folder / "model.npz"),
                "--quiet",
                "--plot",
                str(folder / "curves.png"),
            ]
        )

    return code, out.getvalue(), err.getvalue(), folder


def assert_is_png(path):
    from matplotlib.image import imread

    pixels = imread(path)[..., :3]

    assert Path(path).read_bytes().startswith(PNG_SIGNATURE)
    assert np.any(pixels != pixels[0, 0])


def test_train_plot_writes_the_training_curves(trained):
    code, out, err, folder = trained

    assert code == 0, err
    assert f"Wrote the training curves to {folder / 'curves.png'}." in out
    assert_is_png(folder / "curves.png")


def test_evaluate_confusion_writes_the_matrix(trained, capsys):
    folder = trained[3]
    path = folder / "confusion.png"

    code, out, err = run(
        capsys,
        "evaluate",
        folder / "model.npz",
        folder / "train.csv",
        "--confusion",
        path,
    )

    assert code == 0, err
    assert out.splitlines()[-1] == f"Wrote the confusion matrix to {path}."
    assert_is_png(path)


def test_show_writes_filters_and_errors(trained, capsys):
    folder = trained[3]
    filters, errors = folder / "filters.png", folder / "errors.png"

    code, out, err = run(
        capsys,
        "show",
        folder / "model.npz",
        folder / "train.csv",
        "--filters",
        filters,
        "--errors",
        errors,
        "--max-errors",
        "9",
    )

    assert code == 0, err
    assert f"Wrote the first convolution's filters to {filters}." in out
    assert f"misclassified images (of 200) to {errors}." in out
    assert_is_png(filters)
    assert_is_png(errors)


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "pass at least one of --filters PNG and --errors PNG"),
        (["--errors", "e.png"], "--errors needs a labeled CSV after MODEL"),
    ],
)
def test_show_without_what_to_draw_is_an_error(trained, capsys, extra, message):
    folder = trained[3]

    code, out, err = run(capsys, "show", folder / "model.npz", *extra)

    assert code == 1
    assert out == ""
    assert err == f"convext show: error: {message}\n"


def test_show_without_matplotlib_is_a_one_line_error(
    trained, capsys, no_matplotlib, tmp_path
):
    folder = trained[3]
    path = tmp_path / "filters.png"

    code, _, err = run(capsys, "show", folder / "model.npz", "--filters", path)

    assert code == 1
    assert len(err.splitlines()) == 1
    assert 'pip install "convext[plot]"' in err
    assert not path.exists()


@pytest.mark.parametrize(
    "name, message",
    [
        ("curves.jpg", "must end in .png, got '{path}'"),
        ("missing/curves.png", "folder '{parent}' does not exist"),
        ("folder.png", "'{path}' is a folder, not a file"),
    ],
)
def test_plot_option_must_name_a_new_png_file(capsys, tmp_path, name, message):
    (tmp_path / "folder.png").mkdir()
    path = tmp_path / name
    expected = message.format(path=path, parent=path.parent)

    with pytest.raises(SystemExit, match=r"^2$"):
        main(["train", "x.csv", "--plot", str(path)])

    assert f"argument --plot: {expected}" in capsys.readouterr().err
