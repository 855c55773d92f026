"""Sequential model: a stack of layers trained with softmax cross-entropy.

Inputs are images of shape (N, H, W, C), or (N, D) for a stack that starts with a
dense layer. uint8 inputs are taken as gray levels 0-255 and scaled to 0-1; every
other real dtype (other integers included) is used as it is, in the model's
float dtype.
"""

import contextlib
import functools
import hashlib
import json
import logging
import os
import threading
import time
import zipfile

import numpy as np
from tqdm.auto import tqdm

from convext._files import atomic_write
from convext._threads import single_threaded_blas
from convext.layers import (
    LAYER_TYPES,
    BatchNorm,
    Conv2D,
    Dense,
    Flatten,
    Layer,
    MaxPool2D,
    ReLU,
)
from convext.losses import softmax, softmax_cross_entropy
from convext.ops import check_int
from convext.optim import OPTIMIZER_TYPES, get_optimizer

logger = logging.getLogger(__name__)

FORMAT_NAME = "convext-model"
FORMAT_VERSION = 1


class TrainingDiverged(FloatingPointError):
    """The loss of a training step was not finite; the weights are those of
    before that step."""


def default_architecture():
    """conv3x3(32, same)-BN-ReLU-maxpool2 / conv3x3(64, same)-BN-ReLU-maxpool2 /
    flatten-dense(128)-ReLU-dense(10)."""
    return [
        Conv2D(32, 3, padding="same"), BatchNorm(), ReLU(), MaxPool2D(2),
        Conv2D(64, 3, padding="same"), BatchNorm(), ReLU(), MaxPool2D(2),
        Flatten(), Dense(128), ReLU(), Dense(10, init="glorot"),
    ]


def _one_call_at_a_time(method):
    """Run method under the model's lock: its layers reuse their buffers from call
    to call, so two calls at once from Python threads would build the model twice
    or write into each other's activations. Calls from threads take turns."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return locked


def _data_digest(x, y):
    """A digest of the samples and labels in their order: a stopped epoch goes on
    only on the data it began with. About 0.1 s for the 60000 MNIST images."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(np.ascontiguousarray(x).data)
    digest.update(np.ascontiguousarray(y, dtype=np.int64).data)
    return digest.hexdigest()


def _floating_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"Sequential: dtype must be float32 or float64, got {dtype}")
    return dtype


class Sequential:
    """A stack of layers ending in class scores (logits).

    Parameters
    ----------
    layers : list of Layer, default the default architecture
    input_shape : tuple, optional
        Shape of one sample, e.g. (28, 28, 1). Without it the model is built on the
        first batch it sees.
    seed : int, optional
        Seeds the weight initialisation and the shuffling in fit; with one thread,
        two runs with one seed give identical weights.
    dtype : "float32" or "float64"
    """

    def __init__(self, layers=None, input_shape=None, seed=None, dtype="float32"):
        layers = default_architecture() if layers is None else list(layers)
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(
                    f"Sequential: layers[{i}] must be a convext Layer, got "
                    f"{type(layer).__name__}"
                )
        if not layers:
            raise ValueError("Sequential: layers must not be empty")
        self.layers = layers
        self.dtype = _floating_dtype(dtype)
        if seed is not None:
            seed = check_int("Sequential", "seed", seed, minimum=0)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.optimizer = None
        self.input_shape = None
        self.history = {}
        self.epochs_done = 0
        # fit stops after the batch during which this becomes True.
        self.stop_training = False
        self.stopped_at = None
        # Where a stopped epoch stood: its sample order, the next batch and the
        # running sums of loss and correct answers.
        self.resume_point = None
        self._lock = threading.RLock()
        if input_shape is not None:
            self.build(input_shape)

    # -- construction -------------------------------------------------------

    @property
    def built(self):
        return self.input_shape is not None

    def build(self, input_shape):
        """Create every layer's parameters for samples of shape input_shape."""
        shape = tuple(int(s) for s in input_shape)
        self.input_shape = shape
        for layer in self.layers:
            shape = layer.build(shape, self.rng, self.dtype)
        self.output_shape = shape
        # The first layer's input is the data: its gradient is never needed.
        self.layers[0].need_input_grad = False
        return self

    def compile(self, optimizer="adam", lr=None):
        """Choose the optimizer: an Optimizer, or "sgd" / "adam" with lr."""
        self.optimizer = get_optimizer(optimizer, lr)
        return self

    def summary(self):
        """A table of the layers, their output shapes and parameter counts."""
        lines = [f"{'layer':<40} {'output shape':<20} {'params':>10}"]
        total = 0
        for layer in self.layers:
            count = sum(p.size for p in layer.params.values())
            total += count
            lines.append(f"{layer!r:<40} {str(layer.output_shape):<20} {count:>10}")
        lines.append(f"total parameters: {total}")
        return "\n".join(lines)

    def parameters(self):
        """{"<layer index>/<name>": array} of every trainable array."""
        return {f"{i}/{name}": value for i, layer in enumerate(self.layers)
                for name, value in layer.params.items()}

    def gradients(self):
        return {f"{i}/{name}": value for i, layer in enumerate(self.layers)
                for name, value in layer.grads.items()}

    # -- input checks -------------------------------------------------------

    def _check_x(self, func, x):
        """x as a C-contiguous array of the model's dtype, uint8 scaled to 0-1."""
        if not isinstance(x, np.ndarray):
            raise TypeError(
                f"{func}: x must be a numpy.ndarray, got {type(x).__name__}"
            )
        if x.dtype.kind not in "uif" or x.dtype.itemsize > 8:
            raise TypeError(f"{func}: x must hold real numbers, got dtype {x.dtype}")
        if x.ndim < 2:
            raise ValueError(
                f"{func}: x must be a batch of samples, (N, H, W, C) or (N, D), got "
                f"shape {x.shape}"
            )
        if self.built and x.shape[1:] != self.input_shape:
            raise ValueError(
                f"{func}: x must have samples of shape {self.input_shape}, got "
                f"{x.shape[1:]}"
            )
        if x.dtype == np.uint8:
            return np.multiply(x, 1.0 / 255, dtype=self.dtype, order="C")
        x = np.ascontiguousarray(x, dtype=self.dtype)
        if not np.isfinite(x).all():
            raise ValueError(f"{func}: x must be finite, got NaN or infinite values")
        return x

    def _check_y(self, func, y, n, n_classes):
        if not isinstance(y, np.ndarray):
            y = np.asarray(y)
        if y.ndim != 1 or y.shape[0] != n:
            raise ValueError(
                f"{func}: y must be a 1-D array of {n} labels, got shape {y.shape}"
            )
        if y.dtype.kind not in "iu":
            if y.dtype.kind == "f" and np.all(np.mod(y, 1) == 0):
                y = y.astype(np.int64)
            else:
                raise TypeError(f"{func}: y must hold integer labels, got dtype "
                                f"{y.dtype}")
        if n and (y.min() < 0 or y.max() >= n_classes):
            raise ValueError(
                f"{func}: y must hold labels in 0..{n_classes - 1}, got values from "
                f"{y.min()} to {y.max()}"
            )
        return y.astype(np.intp, copy=False)

    def _prepare(self, func, x, y=None):
        if isinstance(x, np.ndarray) and x.ndim >= 2 and not self.built:
            self.build(x.shape[1:])
        x = self._check_x(func, x)
        if y is None:
            return x, None
        return x, self._check_y(func, y, x.shape[0], self.output_shape[-1])

    # -- forward and backward -----------------------------------------------

    def forward(self, x, training=False, timer=None):
        """Logits of shape (N, K) for checked inputs of shape (N, *input_shape).

        timer, when given, is called as ``timer(layer_index, "forward")`` and must
        return a context manager that times the layer (see convext.profiling).
        """
        timer = timer or _untimed
        with single_threaded_blas():
            for i, layer in enumerate(self.layers):
                with timer(i, "forward"):
                    x = layer.forward(x, training)
        return x

    def backward(self, dlogits, timer=None):
        """Fill every layer's grads from the gradient of the loss w.r.t. the
        logits."""
        timer = timer or _untimed
        grad = dlogits
        with single_threaded_blas():
            for i in range(len(self.layers) - 1, -1, -1):
                with timer(i, "backward"):
                    grad = self.layers[i].backward(grad)

    @_one_call_at_a_time
    def loss_and_gradients(self, x, y):
        """Mean cross-entropy on (x, y) in training mode, and {name: gradient}."""
        x, y = self._prepare("loss_and_gradients", x, y)
        loss, dlogits, _ = softmax_cross_entropy(self.forward(x, training=True), y)
        self.backward(dlogits)
        return loss, self.gradients()

    @_one_call_at_a_time
    def train_step(self, x, y, timer=None):
        """One optimizer step on a checked batch; returns (loss, correct count).

        Raises TrainingDiverged, without updating anything, when the loss is not
        finite. timer is as for forward; it also times "loss" and "optimizer".
        """
        logits = self.forward(x, training=True, timer=timer)
        # Overflowing logits are reported as TrainingDiverged below, not as
        # NumPy warnings on the way there.
        with (timer or _untimed)("loss"), np.errstate(over="ignore", invalid="ignore"):
            loss, dlogits, _ = softmax_cross_entropy(logits, y)
            correct = int(np.count_nonzero(logits.argmax(axis=1) == y))
        if not np.isfinite(loss):
            raise TrainingDiverged(f"loss is {loss}")
        self.backward(dlogits, timer=timer)
        with (timer or _untimed)("optimizer"):
            self.optimizer.step(self.parameters(), self.gradients())
        return loss, correct

    # -- training and inference ---------------------------------------------

    @_one_call_at_a_time
    def fit(self, x, y, epochs=1, batch_size=64, validation_split=0.0,
            validation_data=None, shuffle=True, lr_schedule=None, callback=None,
            verbose=1):
        """Train with mini-batches.

        Parameters
        ----------
        x : ndarray of shape (N, H, W, C) (uint8 0-255 or float)
        y : int ndarray of shape (N,)
        epochs : int
            Epochs to run now; a loaded model goes on counting from its own.
        batch_size : int
            The last, smaller batch of an epoch is used, not dropped.
        validation_split : float in [0, 1)
            Hold out this last fraction of (x, y), before shuffling, to validate on.
        validation_data : (x_val, y_val), optional
            Overrides validation_split.
        shuffle : bool
            A new order of the training samples every epoch.
        lr_schedule : None, "constant", "cosine" or callable
            Scales the optimizer's learning rate by ``lr_schedule(progress)``,
            progress running from 0 at the first step of this call to 1 after its
            last; "cosine" falls from 1 to 0 along half a cosine. None keeps the
            optimizer's schedule, such as one restored with a saved model, so a
            resumed run goes on along the schedule it started.
        callback : callable, optional
            Called after every epoch with a dict: epoch, loss, accuracy, seconds and,
            with validation, val_loss and val_accuracy.
        verbose : int
            0 for no progress bar; otherwise a tqdm bar per epoch on a terminal.

        Returns
        -------
        dict of lists: the history of every logged quantity, one entry per epoch.
        """
        func = "fit"
        epochs = check_int(func, "epochs", epochs, minimum=0)
        batch_size = check_int(func, "batch_size", batch_size, minimum=1)
        if not 0.0 <= validation_split < 1.0:
            raise ValueError(
                f"{func}: validation_split must be in [0, 1), got {validation_split!r}"
            )
        x, y = self._prepare(func, x, y)
        if validation_data is not None:
            is_sequence = isinstance(validation_data, (tuple, list))
            if not is_sequence or len(validation_data) != 2:
                got = type(validation_data).__name__
                if is_sequence:
                    got += f" of {len(validation_data)} items"
                raise ValueError(f"{func}: validation_data must be a pair (x_val, "
                                 f"y_val), got {got}")
            x_val, y_val = self._prepare(func, *validation_data)
            if len(x_val) == 0:
                raise ValueError(f"{func}: validation_data must hold at least one "
                                 f"sample, got 0")
        elif validation_split > 0:
            n_val = validation_count(len(x), validation_split)
            if n_val == 0 or n_val == len(x):
                raise ValueError(
                    f"{func}: validation_split {validation_split} of {len(x)} samples "
                    f"leaves {len(x) - n_val} to train on and {n_val} to validate"
                )
            x, x_val = x[:-n_val], x[-n_val:]
            y, y_val = y[:-n_val], y[-n_val:]
        else:
            x_val = y_val = None
        if len(x) == 0:
            raise ValueError(f"{func}: x must hold at least one sample, got 0")
        if self.optimizer is None:
            self.compile()
        n = len(x)
        n_batches = steps_per_epoch(n, batch_size)
        if lr_schedule is not None:
            self.optimizer.set_schedule(lr_schedule, epochs * n_batches)

        self._check_resume_point(func, x, y, batch_size)

        # stop_training is cleared when fit returns, not when it starts, so that a
        # stop asked for before the first batch (a Ctrl-C as training begins) holds.
        self.stopped_at = None
        try:
            self._run_epochs(x, y, x_val, y_val, epochs, batch_size, shuffle,
                             callback, verbose)
        finally:
            self.stop_training = False
        return self.history

    def _check_resume_point(self, func, x, y, batch_size):
        """Refuse data or a batch size that do not fit the epoch left part way."""
        point = self.resume_point
        if point is None:
            return
        n = len(x)
        how = "set the model's resume_point to None to start that epoch afresh"
        if len(point["order"]) != n:
            raise ValueError(
                f"{func}: x must hold the {len(point['order'])} training samples of "
                f"the epoch that was stopped part way, got {n}; pass the same data and "
                f"validation split to finish it, or {how}"
            )
        if "data_digest" in point and point["data_digest"] != _data_digest(x, y):
            raise ValueError(
                f"{func}: x and y must be the {n} training samples and labels, in "
                f"their order, of the epoch that was stopped part way, got others of "
                f"that number; pass the same data and validation split to finish it, "
                f"or {how}"
            )
        saved_batch_size = point.get("batch_size", batch_size)
        if saved_batch_size != batch_size:
            raise ValueError(
                f"{func}: batch_size must be {saved_batch_size}, the batch size of the "
                f"epoch that was stopped part way, got {batch_size}; pass it to finish "
                f"that epoch, or {how}"
            )

    def _run_epochs(self, x, y, x_val, y_val, epochs, batch_size, shuffle, callback,
                    verbose):
        n = len(x)
        n_batches = steps_per_epoch(n, batch_size)
        for _ in range(epochs):
            epoch = self.epochs_done + 1
            if self.stop_training:
                # Set by the callback of the epoch before: stop between epochs.
                self.stopped_at = (epoch, 0)
                break
            started = time.perf_counter()
            # An epoch that was stopped part way goes on with its own order, from
            # the batch after the last one done.
            resume = self.resume_point
            self.resume_point = None
            if resume is not None:
                order, first_batch = resume["order"], resume["batch"]
                total_loss, total_correct = resume["loss_sum"], resume["correct"]
            else:
                order = self.rng.permutation(n) if shuffle else np.arange(n)
                first_batch, total_loss, total_correct = 0, 0.0, 0
            bar = tqdm(range(first_batch, n_batches), initial=first_batch,
                       total=n_batches, desc=f"epoch {epoch}", unit="batch",
                       disable=None if verbose else True, leave=False)
            for b in bar:
                batch = order[b * batch_size:(b + 1) * batch_size]
                try:
                    loss, correct = self.train_step(x[batch], y[batch])
                except TrainingDiverged as exc:
                    bar.close()
                    raise TrainingDiverged(
                        f"fit: training diverged at epoch {epoch}, batch {b + 1} of "
                        f"{n_batches}: {exc}; the weights are those of before this "
                        f"batch. Try a smaller learning rate (now "
                        f"{self.optimizer.current_lr:.3g})."
                    ) from None
                total_loss += loss * len(batch)
                total_correct += correct
                if b % 20 == 0:
                    seen = min(n, (b + 1) * batch_size)
                    bar.set_postfix(loss=f"{total_loss / seen:.4f}",
                                    accuracy=f"{total_correct / seen:.4f}")
                if self.stop_training and b + 1 < n_batches:
                    # Set from outside (a signal handler): the weights keep the
                    # finished batches, and save() keeps where the epoch stood.
                    self.stopped_at = (epoch, b + 1)
                    self.resume_point = {"order": order, "batch": b + 1,
                                         "batch_size": batch_size,
                                         "data_digest": _data_digest(x, y),
                                         "loss_sum": total_loss,
                                         "correct": total_correct}
                    break
            bar.close()
            if self.stopped_at is not None:
                logger.info("training stopped at epoch %d after batch %d of %d",
                            epoch, b + 1, n_batches)
                break

            logs = {"epoch": epoch, "loss": total_loss / n,
                    "accuracy": total_correct / n}
            if x_val is not None:
                logs["val_loss"], logs["val_accuracy"] = self._evaluate_checked(
                    x_val, y_val, 256)
            logs["seconds"] = time.perf_counter() - started
            self.epochs_done = epoch
            for key, value in logs.items():
                self.history.setdefault(key, []).append(value)
            logger.info("epoch %d: %s", epoch, ", ".join(
                f"{k} {v:.4f}" for k, v in logs.items() if k != "epoch"))
            if callback is not None:
                callback(dict(logs))

    def _logits(self, x, batch_size, verbose=0):
        # (N, *input_shape) -> (N, K), batch by batch in evaluation mode
        out = np.empty((len(x), self.output_shape[-1]), dtype=self.dtype)
        starts = range(0, len(x), batch_size)
        for start in tqdm(starts, desc="predict", unit="batch", leave=False,
                          disable=None if verbose else True):
            out[start:start + batch_size] = self.forward(x[start:start + batch_size])
        return out

    def _evaluate_checked(self, x, y, batch_size, verbose=0):
        logits = self._logits(x, batch_size, verbose)
        loss, _, probabilities = softmax_cross_entropy(logits, y)
        return loss, float(np.mean(probabilities.argmax(axis=1) == y))

    @_one_call_at_a_time
    def evaluate(self, x, y, batch_size=256, verbose=0):
        """(mean cross-entropy, accuracy) on (x, y), in evaluation mode.

        verbose=1 shows a progress bar over the batches on a terminal.
        """
        batch_size = check_int("evaluate", "batch_size", batch_size, minimum=1)
        x, y = self._prepare("evaluate", x, y)
        if len(x) == 0:
            raise ValueError("evaluate: x must hold at least one sample, got 0")
        return self._evaluate_checked(x, y, batch_size, verbose)

    @_one_call_at_a_time
    def predict(self, x, batch_size=256, verbose=0):
        """Class probabilities, shape (N, K), in evaluation mode.

        verbose=1 shows a progress bar over the batches on a terminal.
        """
        batch_size = check_int("predict", "batch_size", batch_size, minimum=1)
        x, _ = self._prepare("predict", x)
        return softmax(self._logits(x, batch_size, verbose))

    def predict_labels(self, x, batch_size=256, verbose=0):
        """The most probable class of each sample, shape (N,)."""
        return self.predict(x, batch_size, verbose).argmax(axis=1)

    # -- saving and loading -------------------------------------------------

    def save(self, path, include_optimizer=True):
        """Write the model to one .npz file, atomically.

        The file holds the architecture (JSON), every parameter, the batch-norm
        running statistics, a format name and version, and, unless told otherwise,
        the optimizer and its state so that training can resume. The file appears
        whole or not at all: it is written beside its destination, then renamed.
        """
        if not self.built:
            raise ValueError(
                "save: the model has no weights yet; fit or build it first"
            )
        header = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "input_shape": list(self.input_shape),
            "dtype": self.dtype.name,
            "seed": self.seed,
            "epochs_done": self.epochs_done,
            "history": self.history,
            # The shuffling generator, so that a resumed run draws what an
            # uninterrupted one would have.
            "rng_state": self.rng.bit_generator.state,
            "layers": [{"class": type(layer).__name__, "config": layer.get_config()}
                       for layer in self.layers],
        }
        arrays = {}
        for i, layer in enumerate(self.layers):
            for name, value in {**layer.params, **layer.state}.items():
                arrays[f"layer{i}/{name}"] = value
        if include_optimizer and self.optimizer is not None:
            header["optimizer"] = {"class": type(self.optimizer).__name__,
                                   "config": self.optimizer.get_config(),
                                   "schedule": self.optimizer.schedule_config()}
            for name, value in self.optimizer.state_arrays().items():
                arrays[f"optimizer/{name}"] = value
        if self.resume_point is not None:
            point = self.resume_point
            header["resume_point"] = {key: point[key] for key in (
                "batch", "batch_size", "data_digest", "loss_sum", "correct")
                if key in point}
            arrays["resume_order"] = point["order"]
        arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
        with atomic_write(path) as handle:
            np.savez(handle, **arrays)

    @classmethod
    def load(cls, path):
        """Read a model written by save. Nothing in the file is unpickled."""
        return load_model(path)


def steps_per_epoch(n_samples, batch_size, validation_split=0.0):
    """Optimizer steps in one epoch of fit, the last partial batch included."""
    n_train = n_samples - validation_count(n_samples, validation_split)
    return -(-n_train // batch_size)


def validation_count(n_samples, validation_split):
    """How many of n_samples fit holds out for validation_split."""
    return int(round(n_samples * validation_split))


def _untimed(*key):
    """The timer used when none is given: times nothing."""
    return _NOTHING


_NOTHING = contextlib.nullcontext()


def load_model(path):
    """A Sequential model from a file written by Sequential.save.

    Raises ValueError, naming the file, for a file that is truncated, corrupted,
    not a convext model or from a newer format version.
    """
    path = os.fspath(path)
    try:
        # The handle is ours to close: np.load leaves a file it opened itself open
        # when the archive turns out to be truncated.
        with open(path, "rb") as handle:
            # np.load takes anything that is not a zip or .npy archive for a
            # pickle and would say so; a model file is a zip archive.
            if handle.read(4) != b"PK\x03\x04":
                raise ValueError("it is not an .npz (zip) archive")
            handle.seek(0)
            with np.load(handle, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise ValueError(
            f"load_model: {path} is not a readable convext model file "
            f"(truncated or not an .npz archive: {exc})"
        ) from None

    if "header" not in arrays:
        raise ValueError(f"load_model: {path} is an .npz file but not a convext "
                         f"model (it has no header)")
    try:
        header = json.loads(arrays.pop("header").tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"load_model: {path} has a corrupted header: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise ValueError(f"load_model: {path} is not a convext model file")
    version = header.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"load_model: {path} has format version {version!r}; this convext reads "
            f"versions up to {FORMAT_VERSION}: upgrade convext to load it"
        )

    try:
        layers = [LAYER_TYPES[spec["class"]](**spec["config"])
                  for spec in header["layers"]]
        model = Sequential(layers, seed=header.get("seed"), dtype=header["dtype"])
        model.build(header["input_shape"])
        for i, layer in enumerate(model.layers):
            for store in (layer.params, layer.state):
                for name, value in store.items():
                    saved = arrays[f"layer{i}/{name}"]
                    if saved.shape != value.shape:
                        raise ValueError(
                            f"layer {i} {name} has shape {saved.shape}, the "
                            f"architecture needs {value.shape}"
                        )
                    if saved.dtype.kind not in "fiu" or not np.isfinite(saved).all():
                        raise ValueError(
                            f"layer {i} {name} must hold finite real numbers, got "
                            f"dtype {saved.dtype} with non-finite or complex values"
                        )
                    store[name] = saved.astype(model.dtype)
        model.epochs_done = int(header.get("epochs_done", 0))
        if "rng_state" in header:
            model.rng.bit_generator.state = header["rng_state"]
        if "resume_point" in header:
            model.resume_point = {**header["resume_point"],
                                  "order": arrays["resume_order"].astype(np.intp)}
        model.history = header.get("history", {})
        if "optimizer" in header:
            spec = header["optimizer"]
            model.optimizer = OPTIMIZER_TYPES[spec["class"]](**spec["config"])
            if spec.get("schedule") is not None:
                model.optimizer.restore_schedule(spec["schedule"])
            prefix = "optimizer/"
            model.optimizer.load_state_arrays(
                {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)})
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"load_model: {path} is corrupted or incomplete: "
                         f"{type(exc).__name__}: {exc}") from None
    return model
