"""params.yaml: every section has a class, one loader builds it, `cityloop params check | show`."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cityloop.cli import app
from cityloop.cli.params import check_sections, section_classes

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner(env={"COLUMNS": "200"})  # no wrapping of rich error boxes


def edit_params(ws: Path, **sections: dict) -> None:
    """Replace or add whole sections of the workspace's params.yaml."""
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params.update(sections)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_every_section_of_params_yaml_maps_to_a_class():
    """A new params.yaml section needs its class (and its entry in cityloop.cli.params.section_classes)."""
    sections = yaml.safe_load((REPO / "params.yaml").read_text())
    classes = section_classes()
    assert sorted(set(sections) - set(classes)) == [], "params.yaml sections without a class"
    assert sorted(set(classes) - set(sections)) == [], "classes of sections params.yaml does not hold"
    assert all(dataclasses.is_dataclass(cls) for cls in classes.values())


def test_the_projects_params_yaml_passes_check(workspace: Path):
    shutil.copy(REPO / "params.yaml", workspace / "params.yaml")  # as shipped (the fixture pins 192 px frames)
    res = runner.invoke(app, ["params", "check", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["ok"] is True
    assert [r["section"] for r in out["sections"]] == list(section_classes())
    assert all(r["ok"] and r["in_params"] and r["error"] is None for r in out["sections"])
    res = runner.invoke(app, ["params", "check"])  # the table
    assert res.exit_code == 0 and "all 18 sections load" in res.output, res.output


@pytest.mark.parametrize(("section", "value", "named"), [
    ("export", {"parity_frame": 16}, ("unknown export params", "parity_frame")),
    ("serve", {"max_batch": 8}, ("unknown serve params", "max_batch")),
    ("train", {"data": "lab@latest", "epoch": 3}, ("unknown train params", "epoch")),
    ("edge", {"select": {"budget_per_hr": 10}}, ("unknown edge.select params", "budget_per_hr")),
    ("generate", {"sets": {"lab": {"domain": "lab", "frame": 10}}}, ("unknown generate.sets.lab params", "frame")),
    ("report", {"top_hotspot": 3}, ("unknown report params", "top_hotspot")),
    ("ingest", {"holdouts": ["field-bench"]}, ("unknown ingest params", "holdouts")),
])
def test_a_typo_key_fails_naming_section_and_key(workspace: Path, section: str, value: dict, named: tuple):
    edit_params(workspace, **{section: value})
    res = runner.invoke(app, ["params", "check", "--json"])
    assert res.exit_code == 1, res.output
    out = json.loads(res.stdout)
    bad = [r for r in out["sections"] if not r["ok"]]
    assert [r["section"] for r in bad] == [section] and all(n in bad[0]["error"] for n in named), bad
    res = runner.invoke(app, ["params", "check"])
    assert res.exit_code == 1 and all(n in res.output for n in named), res.output
    res = runner.invoke(app, ["params", "show", section])
    assert res.exit_code == 1 and named[0] in res.output, res.output


@pytest.mark.parametrize("section, value, named", [
    ("train", {"epochs": "x"}, ("train.epochs", "expected int", "'x'")),
    ("gate", {"require_labels": "yes"}, ("gate.require_labels", "expected bool")),
    ("ingest", {"holdout": "field-bench"}, ("ingest.holdout", "str")),
    ("release", {"max_frames": 4.5}, ("release.max_frames", "expected int", "float")),
])
def test_a_value_of_the_wrong_type_fails_naming_section_and_key(workspace: Path, section: str, value: dict,
                                                                named: tuple):
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    edit_params(workspace, **{section: {**params[section], **value}})
    bad = [r for r in check_sections(workspace) if not r["ok"]]
    assert [r["section"] for r in bad] == [section] and all(n in bad[0]["error"] for n in named), bad


def test_ints_stand_for_floats_and_lists_for_tuples(workspace: Path):
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    edit_params(workspace, release={**params["release"], "min_score": 1, "deploy_timeout_s": 60},
                scenarios={**params["scenarios"], "garbage_pile": {"t_s": 6}})
    assert all(r["ok"] for r in check_sections(workspace)), check_sections(workspace)


def test_a_missing_required_key_fails(workspace: Path):
    edit_params(workspace, registry={"target": 0.6})
    bad = [r for r in check_sections(workspace) if not r["ok"]]
    assert [r["section"] for r in bad] == ["registry"] and "registry params missing" in bad[0]["error"]
    assert "benchmark" in bad[0]["error"]


def test_an_unknown_section_fails(workspace: Path):
    edit_params(workspace, trian={"epochs": 1})
    res = runner.invoke(app, ["params", "check", "--json"])
    assert res.exit_code == 1, res.output
    bad = [r for r in json.loads(res.stdout)["sections"] if not r["ok"]]
    assert [r["section"] for r in bad] == ["trian"] and bad[0]["class"] is None
    assert "unknown section 'trian'" in bad[0]["error"] and "did you mean 'train'" in bad[0]["error"]
    res = runner.invoke(app, ["params", "check"])
    assert res.exit_code == 1 and "unknown section 'trian'" in res.output, res.output


def test_a_section_that_is_not_a_mapping_and_a_missing_file_fail(workspace: Path):
    edit_params(workspace, serve=[1, 2])
    bad = [r for r in check_sections(workspace) if not r["ok"]]
    assert [r["section"] for r in bad] == ["serve"] and "must be a mapping" in bad[0]["error"]
    (workspace / "params.yaml").unlink()
    res = runner.invoke(app, ["params", "check"])
    assert res.exit_code == 1 and "no params.yaml" in res.output, res.output


def test_show_prints_the_effective_values(workspace: Path):
    edit_params(workspace, serve={"max_batch_size": 8})
    res = runner.invoke(app, ["params", "show", "serve", "--json"])
    assert res.exit_code == 0, res.output
    serve = json.loads(res.stdout)
    assert serve["max_batch_size"] == 8 and serve["min_side"] == 16 and serve["max_bytes"] == 8 << 20  # defaults
    res = runner.invoke(app, ["params", "show", "train"])
    assert res.exit_code == 0, res.output
    train = yaml.safe_load(res.stdout)["train"]
    written = yaml.safe_load((workspace / "params.yaml").read_text())["train"]
    assert train["data"] == "lab@latest" and train["epochs"] == written["epochs"]  # the file's value...
    assert "max_train" in train  # ...beside the defaults it leaves out, flat, as params.yaml
    res = runner.invoke(app, ["params", "show", "edge"])
    edge = yaml.safe_load(res.stdout)["edge"]
    assert edge["stale_s"] == 10.0 and edge["select"]["budget_per_hour"] == 120
    res = runner.invoke(app, ["params", "show", "trian"])
    assert res.exit_code == 2 and "unknown section 'trian'" in res.output, res.output


def test_train_section_keeps_data_apart_from_the_training_params():
    from cityloop.models.params import TrainParams, TrainSection

    ts = TrainSection.from_dict({"data": "lab@v2", "epochs": 3})
    assert ts.data == "lab@v2" and ts.params == TrainParams(epochs=3)
    assert TrainSection.from_dict(None).data == "lab@latest"
    assert "data" not in dataclasses.asdict(ts.params)  # never part of a run's identity


def test_serve_params_mirror_the_service_settings():
    """ServeParams (params.yaml `serve:`) and the service's ServeSettings name the same tunables, same defaults."""
    from cityloop.bento.service import ServeSettings
    from cityloop.bento.serving import ServeParams, serve_env
    from cityloop.core.images import LimitsParams

    settings = {f.name: f.default for f in dataclasses.fields(ServeSettings)
                if f.name not in ("model_dir", "token_env", "max_image_pixels")}
    assert {f.name: f.default for f in dataclasses.fields(ServeParams)} == settings
    env = serve_env(ServeParams(max_batch_size=8))
    assert env["CITYLOOP_MAX_BATCH_SIZE"] == "8" and env["CITYLOOP_MIN_SIDE"] == "16" and len(env) == len(settings)
    # the image limit is params.yaml `limits:` (one limit for every door), passed on beside `serve:`
    assert ServeSettings.max_image_pixels == LimitsParams.max_image_pixels
    assert serve_env(ServeParams(), 1000)["CITYLOOP_MAX_IMAGE_PIXELS"] == "1000"


def test_a_frame_size_the_gate_refuses_fails_the_check(workspace: Path):
    """generate.size and gate.allowed_sizes are one contract: a mismatch would quarantine every frame."""
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    assert f"{params['generate']['size']}x{params['generate']['size']}" in params["gate"]["allowed_sizes"]
    assert params["train"]["size"] == params["generate"]["size"]  # the detector sees the frames as rendered
    edit_params(workspace, generate={**params["generate"], "size": 256})
    res = runner.invoke(app, ["params", "check", "--json"])
    assert res.exit_code == 1, res.output
    gate = next(r for r in json.loads(res.stdout)["sections"] if r["section"] == "gate")
    assert not gate["ok"] and "256x256" in gate["error"] and "generate.size" in gate["error"]
