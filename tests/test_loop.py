"""The closed loop: its report's arithmetic, its params, and a shrunk loop end to end through every
real component (Prefect flow, Label Studio, DVC versions, Lightning fine-tunes, the registry,
BentoML edge nodes with their inbox, the canary release, the patrol's event metrics)."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
import yaml

from cityloop.loop.params import LoopParams, lineages
from cityloop.loop.report import labels_to_target, summarize, write_report
from tests.conftest import TINY_TRAIN, ModelWorkspace


def rec(arm: str, seed: int, rnd: int, labels: int, m: float) -> dict:
    return {"lineage": f"{arm}-s{seed}", "arm": arm, "seed": seed, "round": rnd, "labels": labels, "mAP50": m,
            "model": f"m:{arm}{seed}v{rnd}", "per_condition": {"day": m, "night": m / 2}}


def test_labels_to_target_interpolates_between_rounds_and_says_never():
    assert labels_to_target([(0, 0.4), (300, 0.8), (600, 0.95)], 0.9) == pytest.approx(300 + 0.1 / 0.15 * 300)
    assert labels_to_target([(0, 0.4), (300, 0.85)], 0.9) is None
    assert labels_to_target([(0, 0.92)], 0.9) == 0


def test_the_report_measures_how_many_more_labels_random_needed(tmp_path: Path):
    recs = [rec("active", 0, 0, 0, 0.3), rec("active", 0, 1, 300, 0.91),
            rec("random", 0, 0, 0, 0.3), rec("random", 0, 1, 300, 0.6), rec("random", 0, 2, 600, 0.9)]
    s = summarize(recs, 0.9)
    assert s["arms"]["active"]["labels_to_target"][0] == pytest.approx(300 * 0.6 / 0.61)
    assert s["ratio"] == pytest.approx(600 / (300 * 0.6 / 0.61))
    # random never reaching the target gives a lower bound, said as one
    s2 = summarize(recs[:4], 0.9)
    assert s2["ratio_is_lower_bound"] and "did not reach" in s2["ratio_text"]
    out = write_report(tmp_path, LoopParams(), recs, tmp_path / "loop")
    assert Path(out["png"]).stat().st_size > 10_000  # a real matplotlib figure
    md = Path(out["markdown"]).read_text()
    assert "random needed 2.03x the labels of active" in md and "| 1 | active-s0 | 300 |" in md


def test_short_of_the_target_the_report_still_measures_label_efficiency(tmp_path: Path):
    recs = [rec("active", 0, 0, 0, 0.3), rec("active", 0, 1, 200, 0.5), rec("active", 0, 2, 400, 0.6),
            rec("random", 0, 0, 0, 0.3), rec("random", 0, 1, 200, 0.4), rec("random", 0, 2, 400, 0.5)]
    s = summarize(recs, 0.9)
    assert "ratio" not in s  # neither arm reached 0.9: no ratio at the target is claimed
    assert s["matched"]["active_labels"] == pytest.approx(200) and s["matched"]["ratio"] == pytest.approx(2.0)
    # an active arm worse than random is said as such, not as a gain
    worse = summarize([*recs[3:], rec("active", 0, 0, 0, 0.3), rec("active", 0, 1, 200, 0.35),
                       rec("active", 0, 2, 400, 0.45)], 0.9)
    assert worse["matched"]["ratio"] is None and "did not reach" in worse["matched"]["text"]
    md = Path(write_report(tmp_path, LoopParams(), recs, tmp_path / "loop")["markdown"]).read_text()
    assert "with 200 labels against random's 400 (2.00x fewer)" in md


def test_loop_params_name_bad_arms_and_keys():
    with pytest.raises(ValueError, match="loop.arms"):
        LoopParams.from_dict({"arms": ["active", "smart"]})
    with pytest.raises(ValueError, match="unknown loop params"):
        LoopParams.from_dict({"round": 3})
    lins = lineages(LoopParams(arms=["random", "active"], seeds=[0, 1]))
    assert [x.key for x in lins if x.main] == ["active-s0"]  # the edge nodes serve the first active lineage
    assert len({x.dataset for x in lins}) == len({x.project for x in lins}) == len({x.model for x in lins}) == 4


def test_the_loop_and_the_season_render_at_the_frame_contract(workspace: Path):
    """generate.size is the one frame contract: the loop's pool frames (admitted by the gate that allows only
    that size) and streams, and the season, all render at it (they were fixed at 192 before)."""
    from PIL import Image
    from typer.testing import CliRunner

    from cityloop.cli import app
    from cityloop.loop.stages import deliver_frames, render_streams

    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["generate"]["size"], params["gate"]["allowed_sizes"] = 128, ["128x128"]
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    p = LoopParams(pool_frames=4, cameras=1, seconds=2, fps=1)

    pool = deliver_frames(workspace, 1, p)
    assert pool["new_frames"] == 4  # the gate admitted them: at any other size it quarantines every frame
    streams = render_streams(workspace, 1, p)
    season = CliRunner().invoke(app, ["scenes", "season", "--weeks", "1", "--cameras", "1", "--seconds", "1",
                                      "--fps", "1", "--workers", "1", "--out", str(workspace / "season")])
    assert season.exit_code == 0, season.output
    for folder in (Path(pool["truth"]), Path(streams["streams"]), workspace / "season"):
        images = list(folder.rglob("*.jpg"))
        assert images, f"no frames under {folder}"
        assert {Image.open(f).size for f in images} == {(128, 128)}, folder


def free_block(n: int) -> int:
    """A port with the n-1 ports after it free as well (the loop's inbox and nodes)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n >= 65000:
            continue
        try:
            socks = []
            for k in range(n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", base + k))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port block")


@pytest.mark.slow
def test_a_shrunk_loop_raises_field_accuracy_and_versions_every_round(model_ws: ModelWorkspace, labelstudio,
                                                                     tmp_path: Path, monkeypatch):
    from prefect.testing.utilities import prefect_test_harness

    from cityloop.governance import versioning
    from cityloop.governance.repository import DataRepository
    from cityloop.models.store import ModelStore

    root = tmp_path / "ws"
    shutil.copytree(model_ws.root, root, symlinks=True)
    base = free_block(3)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["labeling"].update({"port": labelstudio.port, "honeypot_dataset": "lab@v1", "honeypot_share": 0.1,
                               "gate": {"min_frames_per_class": 0}, "overlap_share": 0.2})
    params["loop"] = {"rounds": 2, "budget": 40, "arms": ["active", "random"], "seeds": [0], "target": 0.99,
                      "base": model_ws.model_id, "pool_frames": 60, "cameras": 2, "seconds": 16, "fps": 2,
                      "nodes": 2, "base_port": base + 1, "truth": ["raw/lab", "raw/field-pool"], "out": "reports/loop",
                      "train": {**TINY_TRAIN, "epochs": 8}}
    params["release"].update({"max_frames": 8, "deploy_timeout_s": 240})
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("CITYLOOP_ROOT", str(root))
    monkeypatch.setenv("LABEL_STUDIO_URL", labelstudio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", labelstudio.credentials().token)
    monkeypatch.setenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", str(labelstudio.media))

    from cityloop.flows.loop import closed_loop

    with prefect_test_harness(server_startup_timeout=90):
        state = closed_loop(root=str(root), return_state=True)
        assert state.is_completed(), state.message
        out = state.result()

    recs = out["records"]
    assert {(r["lineage"], r["round"]) for r in recs} == {(a, k) for a in ("active-s0", "random-s0") for k in (0, 1, 2)}
    reg = ModelStore(root, track=False)
    for lin in ("active-s0", "random-s0"):
        rs = sorted((r for r in recs if r["lineage"] == lin), key=lambda r: r["round"])
        assert rs[2]["mAP50"] > rs[0]["mAP50"], f"{lin}: field accuracy did not rise: {[r['mAP50'] for r in rs]}"
        assert [r["labels"] for r in rs] == [0, 40, 80]  # the budget, spent in full
        assert all(r["accepted"] > 0 for r in rs[1:]), [r["accepted"] for r in rs[1:]]
        for r in rs[1:]:  # every round: a new governed data version and a registered model trained on it
            mv = reg.get(r["model"])
            assert mv.card.dataset == r["data"] and versioning.resolve(root, r["data"]).id == r["data"]
            assert mv.metrics()["mAP50"] == pytest.approx(r["mAP50"])
        assert [v.id for v in versioning.list_versions(root, rs[1]["data"].split("@")[0])][-2:] == \
            [rs[1]["data"], rs[2]["data"]]
    # the main lineage went through the edge: its nodes' hard examples reached the pool, each round
    # ended in a canary release decision recorded in the registry
    manifest, _ = DataRepository(root).load("field-pool@latest")
    assert (manifest["source"] == "edge-hard").sum() > 0
    main = [r for r in recs if r["lineage"] == "active-s0" and r["round"] > 0]
    assert all(r["decision"] for r in main)
    assert all(r["hard_examples"] > 0 for r in main), [r["hard_examples"] for r in main]  # each round's own
    events = [e for e in reg.events() if e.get("id") in {r["model"] for r in main}]
    assert any(e["event"] in ("promoted", "promotion_refused") for e in events)
    # the report: the curve, the table, the summary with both arms
    summary = json.loads((root / "reports" / "loop" / "summary.json").read_text())
    assert set(summary["arms"]) == {"active", "random"}
    assert (root / "reports" / "loop" / "curve.png").stat().st_size > 10_000
    # the loop's edge nodes are gone afterwards
    from cityloop.edge.fleet import up_nodes

    assert up_nodes(root) == []
    # a loop with other params refuses to write into these lineages' datasets (its counts would be wrong)
    from cityloop.loop.runner import LoopConflictError, run_loop

    with pytest.raises(LoopConflictError, match="loop.tag"):
        run_loop(root, LoopParams.from_dict({**params["loop"], "budget": 20}))
