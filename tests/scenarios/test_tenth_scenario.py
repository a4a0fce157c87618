"""A tenth scenario is one unit: the toy plugin tests/scenarios/toy_unit.py (traffic cones left on the road,
class `cone_cluster`), registered through `$CITYLOOP_SCENARIOS` and nothing else, flows through the
simulator, the gate and the data repository, Label Studio's label config, training, the rules and their
event metrics, the weekly report and the dashboard.

Every step runs in a subprocess with the plugin in its environment (the CLI wherever a command exists),
in a throwaway workspace; this process never registers the toy, so the built-ins stay unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import git, make_workspace

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TOY_MODULE = "tests.scenarios.toy_unit"
TOY, TOY_CLASS, TOY_RATE = "traffic_cone_left", "cone_cluster", "cones"
# training kept tiny: one epoch of a width-8 detector on a few dozen frames
TRAIN = {"epochs": 1, "batch_size": 8, "width": 8, "lr": 0.01, "max_train": 48, "seed": 0, "threads": 2}


def toy_env(ws: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(CITYLOOP_SCENARIOS=TOY_MODULE, CITYLOOP_ROOT=str(ws),
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p),
               PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    return env


def run(args: list[str], ws: Path, ok: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """One command with the toy plugin registered, in the workspace."""
    res = subprocess.run(args, cwd=ws, env=toy_env(ws), capture_output=True, text=True, timeout=timeout)
    if ok and res.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {res.returncode}\nstdout:\n{res.stdout[-4000:]}\n"
                             f"stderr:\n{res.stderr[-4000:]}")
    return res


def cli(ws: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    return run([str(BIN / "cityloop"), *args], ws, ok)


def py(ws: Path, code: str) -> Any:
    """A Python snippet with the toy registered; it prints one JSON document as its last line."""
    res = run([sys.executable, "-c", textwrap.dedent(code)], ws)
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The toy through every stage, in order; what each stage said, for the tests below to check."""
    ws = make_workspace(tmp_path_factory.mktemp("tenth") / "ws")
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["train"].update(TRAIN)
    params["gate"]["min_frames_per_class"] = 1  # as the project's own fixtures: every class at least once
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(ws, "commit", "-qam", "tiny training")
    out: dict[str, Any] = {"ws": ws}

    # the registry, as the CLI lists it
    out["list"] = json.loads(cli(ws, "scenarios", "list", "--json").stdout)

    # the simulator: still frames with COCO ground truth
    raw = ws / "raw" / "lab"
    cli(ws, "scenes", "generate", "--out", str(raw), "--domain", "lab", "--frames", "120", "--seed", "0",
        "--workers", "1")
    out["coco"] = json.loads((raw / "annotations.coco.json").read_text())

    # the gate: the same frames without their cones are refused (the toy class is required) ...
    nocones = ws / "raw" / "lab-nocones"
    shutil.copytree(raw, nocones)
    coco = json.loads((nocones / "annotations.coco.json").read_text())
    toy_id = {c["name"]: c["id"] for c in coco["categories"]}[TOY_CLASS]
    coco["annotations"] = [a for a in coco["annotations"] if a["category_id"] != toy_id]
    (nocones / "annotations.coco.json").write_text(json.dumps(coco))
    out["refused"] = cli(ws, "data", "ingest", str(nocones), "--dataset", "nocones", "--no-push", ok=False)
    # ... and with them, they pass and become lab@v1
    cli(ws, "data", "ingest", str(raw), "--dataset", "lab", "--no-push", "--report", str(ws / "ingest.json"))
    out["ingest"] = json.loads((ws / "ingest.json").read_text())
    out["versions"] = json.loads(cli(ws, "data", "versions", "--json").stdout)

    # training (the dvc.yaml stages): one epoch on lab@v1, then ONNX export with its card
    cli(ws, "stage", "train", "--out", "artifacts/train")
    cli(ws, "stage", "export", "--run", "artifacts/train/run.json", "--out", "artifacts/model")

    # the rules: a clip rendered from the toy's positive ClipSpec, patrolled on the simulator's boxes
    clip = ws / "raw" / "cones-video"
    out["clip"] = py(ws, f"""
        import json
        from cityloop.scenarios import registry
        from cityloop.scenes.video import generate_video
        spec = registry().get({TOY!r}).positive
        s = generate_video("field", spec.cameras, spec.seconds, 2, 21 + spec.seed, {str(clip)!r},
                           rates=dict(spec.rates), condition=spec.condition, hour=spec.hour, sites=spec.sites)
        print(json.dumps(s))
    """)
    db = f"sqlite:///{ws}/events.db"
    cli(ws, "patrol", "--streams", str(clip), "--model", "truth", "--db", db, "--out", str(ws / "patrol.json"))
    out["patrol"] = json.loads((ws / "patrol.json").read_text())
    toy_events = [e for e in out["patrol"]["events"] if e["scenario"] == TOY]
    out["check"] = json.loads(cli(ws, "scenarios", "check", "--name", TOY, "--json", ok=False).stdout)

    # the weekly report over the patrol's event store, for a week holding a toy event
    week = "-W".join(f"{v:02d}" for v in datetime.fromtimestamp(toy_events[0]["start_ts"], UTC).isocalendar()[:2]) \
        if toy_events else None
    out["report"] = json.loads(cli(ws, "report", "weekly", "--db", db, "--out", str(ws / "reports"),
                                   *(["--week", week] if week else []), "--json").stdout)

    # what only the library answers: Label Studio's config, the head, the annotators, the dashboard
    out["lib"] = py(ws, f"""
        import json
        from pathlib import Path
        import torch
        from cityloop.analysis.dashboard import state
        from cityloop.analysis.store import EventStore
        from cityloop.governance.gate import GateParams
        from cityloop.governance.schema import CATEGORY_IDS, CLASSES
        from cityloop.labeling.annotator import CONFUSIONS
        from cityloop.labeling.convert import config_classes, label_config
        from cityloop.labeling.push import label_classes
        from cityloop.models.card import ModelCard
        from cityloop.models.components.detector import DetectorConfig
        from cityloop.scenarios import registry
        from cityloop.scenes.video import default_rates

        ws = Path({str(ws)!r})
        weights = torch.load(ws / "artifacts/train/weights.pt", map_location="cpu")
        card = ModelCard.load(ws / "artifacts/model/card.json")
        store = EventStore({db!r})
        try:
            dash = state(store, ws)
        finally:
            store.dispose()
        print(json.dumps({{
            "names": list(registry().names), "classes": list(CLASSES), "category_ids": CATEGORY_IDS,
            "gate_required": GateParams().required_classes, "label_config": label_config(CLASSES),
            "config_classes": config_classes(label_config(CLASSES)), "label_classes": label_classes(card),
            "confusions": CONFUSIONS, "num_classes": DetectorConfig().num_classes,
            "head_outputs": int(weights["heat.weight"].shape[0]), "card_classes": card.classes,
            "card_dataset": card.dataset, "rates": default_rates(),
            "dashboard": dash["scenarios"], "dashboard_events": [e["scenario"] for e in dash["events"]],
        }}))
    """)
    return out


def builtin_classes() -> tuple[str, ...]:
    from cityloop.scenarios import registry

    return registry().classes


def test_the_toy_is_a_plugin_only_and_the_builtins_are_unchanged():
    """In this process (no $CITYLOOP_SCENARIOS) the toy is not registered, and no built-in unit is it."""
    from cityloop.governance.schema import CLASSES
    from cityloop.scenarios import ENV, _builtin, registry

    assert ENV not in os.environ or TOY_MODULE not in os.environ[ENV]
    assert TOY not in registry().names and TOY_CLASS not in registry().classes and TOY_RATE not in registry().rates
    assert TOY_CLASS not in CLASSES
    assert TOY not in {sc.name for sc in _builtin()}
    assert not (REPO / "cityloop" / "scenarios" / "units" / "toy_unit.py").exists()


@pytest.mark.slow
def test_the_registry_lists_the_toy_after_the_builtins(flow):
    rows = {r["scenario"]: r for r in flow["list"]}
    assert rows[TOY]["classes"] == [TOY_CLASS] and rows[TOY]["uses"] == [TOY_CLASS]
    assert rows[TOY]["enabled"] and rows[TOY]["rule"] == "dwell"
    assert list(rows)[-1] == TOY, "a plugin comes after every built-in"
    lib = flow["lib"]
    assert lib["names"][-1] == TOY and lib["classes"][:-1] == list(builtin_classes()), \
        "the built-in classes keep their ids; the toy's class comes last"
    assert lib["rates"][TOY_RATE] == 0.5


@pytest.mark.slow
def test_the_registry_names_the_toy_s_module(flow):
    rows = {r["scenario"]: r for r in flow["list"]}
    assert rows[TOY]["module"] == TOY_MODULE


@pytest.mark.slow
def test_the_simulator_draws_the_toy_class_with_the_next_category_id(flow):
    coco = flow["coco"]
    cats = {c["name"]: c["id"] for c in coco["categories"]}
    assert cats[TOY_CLASS] == len(builtin_classes()) + 1
    toy = [a for a in coco["annotations"] if a["category_id"] == cats[TOY_CLASS]]
    assert len({a["image_id"] for a in toy}) >= 10, "still-frame rate 0.5: cones in many frames"
    assert all(a["bbox"][2] >= 4 and a["bbox"][3] >= 4 for a in toy)


@pytest.mark.slow
def test_the_gate_requires_and_counts_the_toy_class(flow):
    refused = flow["refused"]
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "Gate FAILED" in refused.stderr, refused.stderr
    assert f'"class_name": "{TOY_CLASS}"' in refused.stderr, refused.stderr  # class_coverage names it
    assert TOY_CLASS in flow["lib"]["gate_required"]
    ing = flow["ingest"]
    assert ing["version"] == "lab@v1" and ing["gate"]["success"]
    toy_boxes = sum(1 for a in flow["coco"]["annotations"] if a["category_id"] == len(builtin_classes()) + 1)
    assert ing["boxes"][TOY_CLASS] == toy_boxes > 0
    versions = {v["id"]: v for v in flow["versions"]}
    assert set(versions) == {"lab@v1"}, "the refused batch published nothing"
    assert versions["lab@v1"]["boxes"][TOY_CLASS] == toy_boxes


@pytest.mark.slow
def test_label_studio_gets_a_label_for_the_toy_class(flow):
    lib = flow["lib"]
    assert f'<Label value="{TOY_CLASS}"' in lib["label_config"]
    assert lib["config_classes"] == lib["classes"]
    assert TOY_CLASS in lib["label_classes"], "a model trained with the toy pre-annotates it"
    assert set(lib["confusions"]) <= set(lib["classes"]) and set(lib["confusions"].values()) <= set(lib["classes"])


@pytest.mark.slow
def test_training_gives_a_head_with_an_output_for_the_toy(flow):
    lib = flow["lib"]
    assert lib["num_classes"] == lib["head_outputs"] == len(lib["classes"]) == len(builtin_classes()) + 1
    assert lib["card_classes"] == lib["classes"] and lib["card_classes"][-1] == TOY_CLASS
    assert lib["card_dataset"] == "lab@v1"


@pytest.mark.slow
def test_the_rule_raises_the_toy_events_and_the_metrics_have_its_row(flow):
    assert flow["clip"]["events"].get(TOY, 0) >= 2, flow["clip"]
    patrol = flow["patrol"]
    raised = [e for e in patrol["events"] if e["scenario"] == TOY]
    assert raised and all(e["boxes"] and e["alerted_ts"] is not None for e in raised)
    m = patrol["metrics"][TOY]
    assert m["truth"] == flow["clip"]["events"][TOY] and m["hits"] >= 1 and m["precision"] >= 0.8, m
    check = {r["scenario"]: r for r in flow["check"]}
    assert check[TOY]["ok"], check[TOY]  # precision, recall, TTD on its clip; silent on its confusers


@pytest.mark.slow
def test_the_report_and_the_dashboard_have_a_row_for_the_toy(flow):
    rows = {r["scenario"]: r for r in flow["report"]["scenarios"]}
    assert rows[TOY]["title"] == "Traffic cones left on the road" and rows[TOY]["this_week"] >= 1, rows[TOY]
    assert (Path(flow["report"]["html"])).read_text().count("Traffic cones left on the road") >= 1
    dash = {r["id"]: r for r in flow["lib"]["dashboard"]}
    raised = sum(1 for e in flow["patrol"]["events"] if e["scenario"] == TOY)
    assert dash[TOY]["scenario"] == "Traffic cones left on the road" and dash[TOY]["agency"] == "roads"
    assert dash[TOY]["events"] == raised >= 1 and dash[TOY]["last_event"]
