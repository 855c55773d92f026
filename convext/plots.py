"""Figures of training runs, models and their mistakes, written as PNG files.

Shape legend:
    N images, H/W image height and width, C channels, K classes,
    KH/KW kernel height and width, F filters.

matplotlib is an optional dependency: ``pip install "convext[plot]"``. It is
imported inside the functions, so importing this module never needs it; without
it every plotting function raises ImportError saying how to install it. Figures
are drawn on a ``matplotlib.figure.Figure`` with the Agg canvas attached directly,
so no global backend is switched and no window ever opens.

Every function writes one PNG of exactly the figure's size (width and height in
inches times ``DPI``; no tight cropping) and returns its path.
"""

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from convext.layers import Conv2D
from convext.model import Sequential

logger = logging.getLogger(__name__)

__all__ = [
    "DPI",
    "confusion_matrix",
    "plot_confusion",
    "plot_filters",
    "plot_history",
    "plot_misclassified",
    "require_matplotlib",
]

DPI = 100

INSTALL_HINT = 'install it with: pip install "convext[plot]"'

# Colour maps: sequential for counts, diverging (red +, blue -) for weights,
# white paper and black ink for digits.
_COUNT_CMAP = "Blues"
_WEIGHT_CMAP = "RdBu_r"
_DIGIT_CMAP = "gray_r"

# Up to this many epochs every point gets a marker; beyond, markers would
# merge into a thick line.
_MAX_MARKED_EPOCHS = 50


def require_matplotlib(func="convext.plots"):
    """Import matplotlib, or raise ImportError saying how to install it.

    Parameters
    ----------
    func : str
        The name the error message starts with.

    Returns
    -------
    (Figure, FigureCanvasAgg)
        The classes the plotting functions draw with.

    Raises
    ------
    ImportError
        If matplotlib cannot be imported.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(
            f"{func}: plotting needs matplotlib, which is not installed; {INSTALL_HINT}"
        ) from exc
    return Figure, FigureCanvasAgg


def confusion_matrix(y_true, y_pred, n_classes):
    """Count every (true, predicted) pair of labels.

    Parameters
    ----------
    y_true : array-like of int, shape (N,)
        The true labels, 0 to K - 1.
    y_pred : array-like of int, shape (N,)
        The predicted labels, 0 to K - 1.
    n_classes : int
        K, the number of classes.

    Returns
    -------
    ndarray of shape (K, K), dtype int64
        ``matrix[i, j]`` is the number of samples of true class i predicted as
        class j: rows are true labels, columns predicted ones. The diagonal holds
        the correct predictions, and the matrix sums to N.

    Raises
    ------
    TypeError
        If the labels are not integers, or n_classes is not an int.
    ValueError
        If the labels are not 1-D, differ in length or fall outside 0 to K - 1,
        or if n_classes < 1.
    """
    func = "confusion_matrix"
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)):
        raise TypeError(
            f"{func}: n_classes must be an int, got {type(n_classes).__name__}"
        )
    if n_classes < 1:
        raise ValueError(f"{func}: n_classes must be >= 1, got {n_classes}")
    y_true = _check_labels(func, "y_true", y_true)
    y_pred = _check_labels(func, "y_pred", y_pred)
    _check_same_length(func, y_true, y_pred)
    for name, labels in (("y_true", y_true), ("y_pred", y_pred)):
        if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
            raise ValueError(
                f"{func}: {name} must hold labels in 0..{n_classes - 1}, got values "
                f"from {labels.min()} to {labels.max()}"
            )

    # Pair (i, j) becomes the flat index i * K + j of a (K, K) matrix.
    flat = np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes)

    return flat.reshape(n_classes, n_classes).astype(np.int64, copy=False)


def plot_history(history, path):
    """Draw the loss and accuracy of every epoch, training and validation.

    Parameters
    ----------
    history : dict of lists
        As returned by ``Sequential.fit``: "loss" and "accuracy", optionally
        "epoch", "val_loss", "val_accuracy" and "seconds", one entry per epoch.
        Without "epoch" the epochs are numbered from 1.
    path : str or os.PathLike
        The PNG file to write; its name must end in ``.png``.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ImportError
        If matplotlib is not installed.
    TypeError
        If history is not a dict, or a value is not a list of numbers.
    ValueError
        If "loss" or "accuracy" is missing, the lists are empty or differ in
        length, or path does not end in ``.png``.
    """
    func = "plot_history"
    path = _check_png_path(func, path)
    epochs, series = _check_history(func, history)

    fig = _new_figure(func, (10.0, 4.4))
    # After _new_figure, which turns a missing matplotlib into the install hint.
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    loss_ax, accuracy_ax = fig.subplots(1, 2)
    marker = "o" if len(epochs) <= _MAX_MARKED_EPOCHS else None
    panels = [
        (loss_ax, "loss", "cross-entropy loss", "{:.4f}"),
        (accuracy_ax, "accuracy", "accuracy", "{:.2%}"),
    ]
    for ax, key, ylabel, value_format in panels:
        for prefix, name, colour in (
            ("", "training", "tab:blue"),
            ("val_", "validation", "tab:orange"),
        ):
            values = series.get(prefix + key)
            if values is None:
                continue
            label = f"{name} (last {value_format.format(values[-1])})"
            ax.plot(
                epochs, values, marker=marker, markersize=5, color=colour, label=label
            )
        ax.set_title(ylabel.capitalize() + " per epoch")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlim(epochs[0] - 0.5, epochs[-1] + 0.5)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best")
    accuracy_ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    n = len(epochs)
    title = f"Training history: {n} epoch{'s' if n != 1 else ''}"
    if "seconds" in series:
        title += f", {np.sum(series['seconds']):.1f} s"
    fig.suptitle(title, fontsize=13)

    return _save(func, fig, path)


def plot_confusion(y_true, y_pred, path, n_classes=10):
    """Draw the confusion matrix with the count in every cell.

    Parameters
    ----------
    y_true : array-like of int, shape (N,)
        The true labels, 0 to K - 1; N >= 1.
    y_pred : array-like of int, shape (N,)
        The predicted labels, 0 to K - 1.
    path : str or os.PathLike
        The PNG file to write; its name must end in ``.png``.
    n_classes : int, default 10
        K, the number of classes.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ImportError
        If matplotlib is not installed.
    TypeError, ValueError
        As for ``confusion_matrix``; ValueError also if there are no labels or
        path does not end in ``.png``.
    """
    func = "plot_confusion"
    path = _check_png_path(func, path)
    matrix = confusion_matrix(y_true, y_pred, n_classes)
    total = int(matrix.sum())
    if total == 0:
        raise ValueError(f"{func}: y_true must hold at least one label, got 0")
    correct = int(np.trace(matrix))

    side = max(4.0, 0.55 * n_classes + 1.6)
    fig = _new_figure(func, (side + 1.0, side + 0.6))
    # After _new_figure, which turns a missing matplotlib into the install hint.
    from matplotlib.ticker import MaxNLocator

    ax = fig.subplots()
    vmax = max(int(matrix.max()), 1)
    image = ax.imshow(matrix, cmap=_COUNT_CMAP, vmin=0, vmax=vmax)
    colorbar = fig.colorbar(image, ax=ax, shrink=0.85, ticks=MaxNLocator(integer=True))
    colorbar.set_label("images")
    fontsize = max(5.0, min(10.0, 100.0 / n_classes))
    for (i, j), count in np.ndenumerate(matrix):
        if count == 0:
            colour = "0.7"
        elif count > 0.5 * vmax:
            colour = "white"
        else:
            colour = "black"
        ax.text(
            j, i, str(count), ha="center", va="center", color=colour, fontsize=fontsize
        )
    ticks = np.arange(n_classes)
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    ax.set_title(
        f"Confusion matrix: accuracy {correct / total:.2%}\n"
        f"({correct} of {total} images on the diagonal)"
    )

    return _save(func, fig, path)


def plot_filters(model, path):
    """Draw the weights of a model's first Conv2D layer, one tile per filter.

    Parameters
    ----------
    model : Sequential
        A built model with at least one Conv2D layer; its weights have shape
        (KH, KW, C, F).
    path : str or os.PathLike
        The PNG file to write; its name must end in ``.png``.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ImportError
        If matplotlib is not installed.
    TypeError
        If model is not a Sequential.
    ValueError
        If model has no Conv2D layer or no weights yet, or path does not end in
        ``.png``.

    Notes
    -----
    Each of the F tiles is the KH x KW kernel of input channel 0 when C = 1, or
    the mean over the C channels otherwise. All tiles share one colour scale,
    symmetric around 0: red weights are positive, blue ones negative.
    """
    func = "plot_filters"
    path = _check_png_path(func, path)
    if not isinstance(model, Sequential):
        raise TypeError(
            f"{func}: model must be a convext Sequential, got {type(model).__name__}"
        )
    index = next(
        (i for i, layer in enumerate(model.layers) if isinstance(layer, Conv2D)), None
    )
    if index is None:
        names = ", ".join(type(layer).__name__ for layer in model.layers)
        raise ValueError(
            f"{func}: model must contain a Conv2D layer, got layers {names}"
        )
    if not model.built:
        raise ValueError(f"{func}: model has no weights yet; fit or build it first")
    weights = np.asarray(model.layers[index].params["weights"])
    kernel_h, kernel_w, channels, filters = weights.shape
    if channels == 1:
        tiles = weights[:, :, 0, :]
        shown = "input channel 0"
    else:
        tiles = weights.mean(axis=2)
        shown = f"mean over the {channels} input channels"
    limit = float(np.abs(tiles).max()) or 1.0

    cols = min(filters, max(8, math.ceil(math.sqrt(filters))))
    rows = math.ceil(filters / cols)
    fig = _new_figure(func, (1.0 * cols + 1.4, 1.05 * rows + 1.3))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for f, ax in enumerate(axes):
        ax.set_xticks([])
        ax.set_yticks([])
        if f >= filters:
            ax.set_axis_off()
            continue
        image = ax.imshow(
            tiles[:, :, f],
            cmap=_WEIGHT_CMAP,
            vmin=-limit,
            vmax=limit,
            interpolation="nearest",
        )
        ax.set_title(f"filter {f}", fontsize=8, pad=2)
    colorbar = fig.colorbar(image, ax=axes.tolist(), shrink=0.9)
    colorbar.set_label("weight")
    fig.suptitle(
        f"First convolution, layers[{index}] Conv2D: weights "
        f"(KH, KW, C, F) = {weights.shape}\n"
        f"each tile is one filter's {kernel_h} x {kernel_w} kernel, {shown}",
        fontsize=11,
    )

    return _save(func, fig, path)


def plot_misclassified(images, y_true, y_pred, path, max_images=36):
    """Draw the images whose prediction is wrong, each titled with both labels.

    Parameters
    ----------
    images : ndarray of shape (N, H, W, 1)
        uint8 gray levels 0-255, or floats (drawn on 0-1 when they lie there,
        else on their own range).
    y_true : array-like of int, shape (N,)
        The true labels.
    y_pred : array-like of int, shape (N,)
        The predicted labels.
    path : str or os.PathLike
        The PNG file to write; its name must end in ``.png``.
    max_images : int, default 36
        Draw at most this many misclassified images, the first ones in order.
        With none at all, the PNG says so in words.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ImportError
        If matplotlib is not installed.
    TypeError
        If images is not a uint8 or float ndarray, the labels are not integers, or
        max_images is not an int.
    ValueError
        If images is not (N, H, W, 1) with N >= 1, the lengths differ,
        max_images < 1 or path does not end in ``.png``.
    """
    func = "plot_misclassified"
    path = _check_png_path(func, path)
    images = _check_images(func, images)
    y_true = _check_labels(func, "y_true", y_true)
    y_pred = _check_labels(func, "y_pred", y_pred)
    _check_same_length(func, y_true, y_pred)
    if len(y_true) != len(images):
        raise ValueError(
            f"{func}: y_true must hold one label per image, got {len(y_true)} "
            f"labels for {len(images)} images"
        )
    if isinstance(max_images, bool) or not isinstance(max_images, (int, np.integer)):
        raise TypeError(
            f"{func}: max_images must be an int, got {type(max_images).__name__}"
        )
    if max_images < 1:
        raise ValueError(f"{func}: max_images must be >= 1, got {max_images}")
    wrong = np.flatnonzero(y_true != y_pred)
    n_images = len(images)
    if len(wrong) == 0:
        return _save_no_errors(func, path, n_images)
    shown = wrong[:max_images]

    if images.dtype == np.uint8:
        vmin, vmax = 0.0, 255.0
    else:
        vmin, vmax = float(images.min()), float(images.max())
        if vmin >= 0.0 and vmax <= 1.0:
            vmin, vmax = 0.0, 1.0
    cols = math.ceil(math.sqrt(len(shown)))
    rows = math.ceil(len(shown) / cols)
    fig = _new_figure(func, (max(4.8, 1.3 * cols), 1.45 * rows + 1.1))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(shown) :]:
        ax.set_axis_off()
    for ax, i in zip(axes, shown):
        ax.imshow(
            images[i, :, :, 0],
            cmap=_DIGIT_CMAP,
            vmin=vmin,
            vmax=vmax,
            interpolation="nearest",
        )
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"true {y_true[i]} / pred {y_pred[i]}", fontsize=9, pad=2)
    n_wrong = len(wrong)
    which = (
        f"all {n_wrong}"
        if len(shown) == n_wrong
        else (f"the first {len(shown)} of {n_wrong}")
    )
    fig.suptitle(
        f"Misclassified images: {which}\n"
        f"{n_images} images, accuracy {1 - n_wrong / n_images:.2%}",
        fontsize=11,
    )

    return _save(func, fig, path)


def _new_figure(func, size):
    """A Figure of size (width, height) inches at DPI, on an Agg canvas."""
    figure_class, canvas_class = require_matplotlib(func)
    fig = figure_class(figsize=size, dpi=DPI, layout="constrained")
    canvas_class(fig)
    return fig


def _save(func, fig, path):
    fig.savefig(path, format="png", dpi=DPI)
    logger.info("%s: wrote %s", func, path)
    return path


def _save_no_errors(func, path, n_images):
    fig = _new_figure(func, (6.0, 2.4))
    fig.suptitle("Misclassified images: none", fontsize=12)
    ax = fig.subplots()
    ax.set_axis_off()
    ax.text(
        0.5,
        0.5,
        f"No misclassified images:\nall {n_images} predictions match their labels.",
        ha="center",
        va="center",
        fontsize=12,
        transform=ax.transAxes,
    )
    return _save(func, fig, path)


def _check_png_path(func, path):
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"{func}: path must be a str or os.PathLike, got {type(path).__name__}"
        )
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{func}: path must end in .png, got '{path}'")
    return path


def _check_labels(func, name, labels):
    """labels as a 1-D int64 array."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"{func}: {name} must be 1-D, got shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        if labels.size == 0:
            return labels.astype(np.int64)
        raise TypeError(
            f"{func}: {name} must hold integer labels, got dtype {labels.dtype}"
        )
    return labels.astype(np.int64, copy=False)


def _check_same_length(func, y_true, y_pred):
    if len(y_true) != len(y_pred):
        raise ValueError(
            f"{func}: y_pred must have the length of y_true, {len(y_true)}, got "
            f"{len(y_pred)}"
        )


def _check_images(func, images):
    if not isinstance(images, np.ndarray):
        raise TypeError(
            f"{func}: images must be a numpy.ndarray, got {type(images).__name__}"
        )
    if images.dtype != np.uint8 and images.dtype.kind != "f":
        raise TypeError(
            f"{func}: images must be uint8 or float, got dtype {images.dtype}"
        )
    if images.ndim != 4 or images.shape[3] != 1 or images.shape[0] == 0:
        raise ValueError(
            f"{func}: images must be (N, H, W, 1) with N >= 1, got shape {images.shape}"
        )
    return images


def _check_history(func, history):
    """(epochs, {key: float array}) from a fit history, all of one length."""
    if not isinstance(history, Mapping):
        raise TypeError(
            f"{func}: history must be a dict of lists, got {type(history).__name__}"
        )
    if "loss" not in history or "accuracy" not in history:
        raise ValueError(
            f"{func}: history must have the keys 'loss' and 'accuracy', got "
            f"{sorted(history)}"
        )
    series = {}
    keys = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds")
    for key in keys:
        if key not in history:
            continue
        try:
            values = np.asarray(history[key], dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(
                f"{func}: history['{key}'] must be a list of numbers, got "
                f"{history[key]!r:.60}"
            ) from None
        if values.ndim != 1:
            raise ValueError(
                f"{func}: history['{key}'] must be a flat list, got shape "
                f"{values.shape}"
            )
        series[key] = values
    n = len(series["loss"])
    if n == 0:
        raise ValueError(f"{func}: history['loss'] must hold at least one epoch, got 0")
    for key, values in series.items():
        if len(values) != n:
            raise ValueError(
                f"{func}: history['{key}'] must have one entry per epoch, "
                f"{n} like history['loss'], got {len(values)}"
            )
    epochs = series.pop("epoch", np.arange(1, n + 1, dtype=np.float64))
    return epochs, series
