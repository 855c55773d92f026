"""Tests for benchmarks/run.py: the --smoke run that CI relies on works end to end.

Speed is not judged here: the machine is shared, so only the shape of the results
is checked.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["conv1", "bn1", "relu1", "pool1", "conv2", "bn2", "relu2", "pool2",
          "dense1", "relu3", "dense2"]
# Guards against a hung run only; a smoke run takes seconds.
HANG_TIMEOUT_SECONDS = 300


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """(the finished `run.py --smoke` process, its JSON report or None)."""
    json_path = tmp_path_factory.mktemp("benchmarks") / "results.json"
    completed = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--smoke", "--json", str(json_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, check=False,
        timeout=HANG_TIMEOUT_SECONDS,
    )
    report = json.loads(json_path.read_text()) if json_path.is_file() else None
    return completed, report


def test_smoke_run_exits_0(smoke_run):
    completed, report = smoke_run

    assert completed.returncode == 0, completed.stderr
    assert report is not None


def test_smoke_run_times_every_layer(smoke_run):
    _, report = smoke_run

    rows = report["layers"]

    assert [row["layer"] for row in rows] == LAYERS
    assert {row["batch_size"] for row in rows} == {8}
    for row in rows:
        for name in ("convext", "torch_nchw", "torch_channels_last"):
            if name != "convext" and row[name] is None:
                continue
            assert row[name]["forward_ms"] > 0, (row["layer"], name)
            assert row[name]["forward_backward_ms"] > 0, (row["layer"], name)


def test_smoke_table_names_every_layer(smoke_run):
    completed, _ = smoke_run

    first_words = [line.split()[0] for line in completed.stdout.splitlines()
                   if line.strip()]

    for layer in LAYERS:
        assert layer in first_words, f"the table does not name {layer}"


def test_smoke_run_records_the_conditions(smoke_run):
    _, report = smoke_run

    environment = report["environment"]

    assert environment["threads"] == 2
    assert {"OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"} <= set(environment["env"])
    assert any(pool["user_api"] == "blas" for pool in environment["threadpool_info"])
    assert report["gemm"]["numpy_gflops"] > 0


def test_smoke_run_reports_every_goal(smoke_run):
    _, report = smoke_run

    goals = {goal["goal"].split(",")[0].split()[0]: goal for goal in report["goals"]}

    assert set(goals) == {"epoch", "conv1", "conv2", "bn1", "relu1", "pool1", "bn2",
                          "relu2", "pool2", "peak"}
    for goal in report["goals"]:
        if goal["measured"] is None:
            assert goal["met"] is None, goal
        elif goal["at_most"]:
            assert goal["met"] == (goal["measured"] <= goal["bound"]), goal
        else:
            assert goal["met"] == (goal["measured"] >= goal["bound"]), goal
    # A smoke run times batch 8 only: the per-layer goals have no figures.
    assert goals["conv2"]["measured"] is None
