"""The `cityloop` CLI as a user types it; and `dvc repro` of the pipeline stages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cityloop.cli import app

runner = CliRunner(env={"COLUMNS": "200"})  # no wrapping of rich error boxes


def test_generate_frames_and_clips(tmp_path: Path):
    res = runner.invoke(app, ["scenes", "generate", "--domain", "field", "--frames", "12", "--out",
                              str(tmp_path / "f"), "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "f" / "images").iterdir())) == 12
    res = runner.invoke(app, ["scenes", "generate", "--video", "--cameras", "2", "--seconds", "20", "--fps", "1",
                              "--out", str(tmp_path / "v"), "--workers", "1", "--mp4"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "v" / "events.json").exists() and (tmp_path / "v" / "cam00.mp4").stat().st_size > 0
    assert len(list((tmp_path / "v" / "cam01" / "frames").iterdir())) == 20


def test_generate_rejects_an_unknown_domain(tmp_path: Path):
    res = runner.invoke(app, ["scenes", "generate", "--domain", "mars", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "domain must be one of" in res.output


def test_ingest_versions_show(workspace: Path, lab_copy: Path):
    res = runner.invoke(app, ["data", "ingest", str(lab_copy), "--dataset", "lab", "--no-push",
                              "--report", str(workspace / "reports" / "lab.json")])
    assert res.exit_code == 0, res.output
    assert "lab@v1 published" in res.output
    report = json.loads((workspace / "reports" / "lab.json").read_text())
    assert report["version"] == "lab@v1" and report["gate"]["success"]
    assert (workspace / "reports" / "datadocs" / "index.html").exists()
    res = runner.invoke(app, ["data", "versions"])
    assert res.exit_code == 0 and "lab@v1" in res.output and "pass" in res.output
    res = runner.invoke(app, ["data", "show", "lab@latest"])
    assert res.exit_code == 0 and json.loads(res.stdout)["frames"] == report["frames"]


def test_ingest_gate_failure_exits_non_zero_and_names_the_expectation(workspace: Path, lab_copy: Path):
    coco_path = lab_copy / "annotations.coco.json"
    coco = json.loads(coco_path.read_text())
    coco["annotations"][0]["bbox"][2] = 0.0  # a degenerate box
    coco_path.write_text(json.dumps(coco))
    res = runner.invoke(app, ["data", "ingest", str(lab_copy), "--dataset", "lab"])
    assert res.exit_code == 1
    assert "Gate FAILED" in res.output and "column=w" in res.output
    assert runner.invoke(app, ["data", "versions"]).output.count("@v") == 0


def test_ingest_rejects_a_missing_folder_and_a_bad_source(workspace: Path):
    res = runner.invoke(app, ["data", "ingest", str(workspace / "nope")])
    assert res.exit_code == 2 and "does not exist" in res.output
    res = runner.invoke(app, ["data", "ingest", str(workspace), "--source", "satellite"])
    assert res.exit_code == 2 and "source must be one of" in res.output


@pytest.mark.slow
def test_dvc_repro_rebuilds_the_stages(workspace: Path):
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["generate"]["sets"] = {"lab": {"domain": "lab", "frames": 40, "seed": 0, "split": "auto"},
                                  "field-bench": {"domain": "field", "frames": 40, "seed": 1, "split": "bench"}}
    params["gate"]["min_frames_per_class"] = 2
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    repro = [sys.executable, "-m", "dvc", "repro", "ingest"]  # the data stages (training has its own tests)
    run = subprocess.run(repro, cwd=workspace, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    for name in ("lab", "field-bench"):
        assert json.loads((workspace / "reports" / "ingest" / f"{name}.json").read_text())["version"] == f"{name}@v1"
    again = subprocess.run(repro, cwd=workspace, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "didn't change" in again.stdout + again.stderr
    tags = subprocess.run(["git", "tag"], cwd=workspace, capture_output=True, text=True).stdout.split()
    assert sorted(tags) == ["data/field-bench/v1", "data/lab/v1"]
