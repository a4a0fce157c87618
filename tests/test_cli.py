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


# ------------------------------------------------- pipes and logs: --json, tables that never cut an id

LONG = "field-labeled-active-s0"  # its version id is wider than the column rich squeezes it into at 60-80 columns


def test_data_versions_json_and_a_narrow_table_keep_full_ids(workspace: Path, lab_copy: Path):
    from cityloop.governance.gate import GateParams
    from cityloop.governance.repository import DataRepository

    DataRepository(workspace, GateParams.from_dict({})).ingest(lab_copy, LONG, docs=False, push=False)
    res = runner.invoke(app, ["data", "versions", "--json"])
    assert res.exit_code == 0, res.output
    (rec,) = json.loads(res.stdout)
    assert rec["id"] == f"{LONG}@v1" and rec["dataset"] == LONG and rec["version"] == 1
    assert isinstance(rec["frames"], int) and rec["gate"]["success"] is True
    res = runner.invoke(app, ["data", "versions"], env={"COLUMNS": "60"})  # CliRunner's stdout: not a terminal
    assert res.exit_code == 0, res.output
    assert f"{LONG}@v1" in res.stdout and "…" not in res.stdout and "pass" in res.stdout, res.stdout


def _model_version(vid: str, stage: str, metrics: dict | None):
    from types import SimpleNamespace

    name, version = vid.rsplit(":v", 1)
    return SimpleNamespace(id=vid, name=name, version=int(version), stage=stage, size_mb=1.234567,
                           registered="2026-05-01T10:00:00.123456+00:00", metrics=lambda: metrics,
                           card=SimpleNamespace(vendor="cityloop", variant="tiny"))


def test_models_list_json_and_a_narrow_table_keep_full_ids(workspace: Path, monkeypatch: pytest.MonkeyPatch):
    from types import SimpleNamespace

    import cityloop.cli.models as models_cli

    ids = [f"cityloop-detector-{LONG}:v12", "partner-detector-with-a-long-name:v3"]
    bench = {"benchmark": "field-bench@v1", "mAP50": 0.4567, "latency": {"batch1_median_ms": 12.5}}
    versions = [_model_version(ids[0], "production", bench), _model_version(ids[1], "candidate", None)]
    monkeypatch.setattr(models_cli, "_store", lambda: SimpleNamespace(root=workspace, list=lambda name=None: versions,
                                                                     leftovers=lambda: []))
    res = runner.invoke(app, ["models", "list", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert [r["id"] for r in rows] == ids
    assert rows[0]["metric_value"] == 0.4567 and rows[0]["latency_ms"] == 12.5 and rows[0]["stage"] == "production"
    assert rows[1]["benchmark"] is None and rows[1]["metric_value"] is None
    res = runner.invoke(app, ["models", "list"], env={"COLUMNS": "60"})
    assert res.exit_code == 0, res.output
    assert all(i in res.stdout for i in ids) and "…" not in res.stdout, res.stdout
    assert "0.457 (field-bench@v1)" in res.stdout


def test_print_table_never_cuts_an_id_in_a_pipe_or_on_a_terminal():
    import io

    from rich.console import Console
    from rich.table import Table

    from cityloop.cli.output import print_table

    vid, note = f"cityloop-detector-{LONG}:v12", "a note long enough that a narrow terminal has to wrap it"
    for terminal in (False, True):
        t = Table(title="t")
        t.add_column("id")
        t.add_column("note", overflow="fold")
        t.add_row(vid, note)
        buf = io.StringIO()
        print_table(t, Console(file=buf, width=40, force_terminal=terminal, color_system=None))
        out = buf.getvalue()
        assert vid in out and "…" not in out, out
        # in a pipe or a log a row is one line; on a terminal the note wraps (between words), the id stays whole
        assert (note in out) == (not terminal), out
