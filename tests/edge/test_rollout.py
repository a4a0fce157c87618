"""Canary rollout to two real edge nodes: a worse candidate rolls back by itself, a good one rolls out."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from prefect.testing.utilities import prefect_test_harness
from typer.testing import CliRunner

from cityloop.bento.serving import free_port
from cityloop.cli import app
from cityloop.edge import rollout
from cityloop.edge.fleet import list_nodes, served_version
from cityloop.edge.node import node_dir
from cityloop.models.card import ModelCard
from cityloop.models.gate import open_gate
from cityloop.models.store import PARTNER_PARITY, ModelStore

from .conftest import copy_workspace, wait_for

LOOSE_GATE = {"target": 0.0, "max_condition_regression": 1.0, "latency_budget_ms": 1000.0}
RELEASE = {"min_score": 0.2, "max_frames": 24, "deploy_timeout_s": 120}


def perturbed(root: Path, model_id: str, noise: float, out: Path, vendor: str) -> str:
    """Register a copy of model_id with Gaussian noise (noise x each conv weight's std) on its weights."""
    mv = ModelStore(root, track=False).get(model_id)
    m = onnx.load(str(mv.model_path))
    rng = np.random.default_rng(0)
    for init in m.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.dtype == np.float32 and w.ndim == 4:  # conv kernels only (not shape constants)
            w = w + rng.normal(0, noise * (w.std() + 1e-3), w.shape).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(m, str(out))
    card = ModelCard.from_dict({**mv.card.to_dict(), "vendor": vendor, "stage": "candidate", "metrics": {}})
    # a partner-style artifact: the perturbed ONNX file is the artifact, there is no torch model to compare
    return open_gate(root).store.register(out, card, parity={"status": PARTNER_PARITY}).id


@pytest.mark.slow
def test_worse_candidate_rolls_back_good_one_rolls_out(model_ws, tmp_path, nodes_factory):
    from cityloop.flows.release import release

    root = copy_workspace(model_ws.root, tmp_path / "ws", {"registry": LOOSE_GATE, "release": RELEASE,
                                                           "edge": {"heartbeat_s": 0.3}})
    reg = open_gate(root)
    assert reg.promote(model_ws.model_id).promoted  # v1 in production: what the nodes serve
    worse = perturbed(root, model_ws.model_id, 1.0, tmp_path / "worse.onnx", "degraded-test")
    nodes = nodes_factory(root)
    for name in ("n1", "n2"):
        nodes.start(name, free_port(), "--model", model_ws.model_id)
    wait_for(lambda: sum(n["up"] and n["state"] == "serving" for n in list_nodes(root)) == 2, 120, "two nodes up")

    with prefect_test_harness(server_startup_timeout=90):
        bad = release(model_version=worse, canary="n1", root=str(root))
        assert bad["action"] == "rolled_back" and not bad["passed"], bad["reason"]
        failed = {c["name"] for c in bad["checks"] if not c["passed"]}
        assert "agreement" in failed and bad["comparison"]["agreement"] < RELEASE.get("min_agreement", 0.8)
        for n in list_nodes(root):  # both nodes serve production again, the canary included
            assert n["model_version"] == model_ws.model_id and served_version(n["url"]) == model_ws.model_id
        assert reg.store.get(worse).stage == "candidate"
        assert reg.store.production("cityloop-detector").id == model_ws.model_id
        refused = [e for e in reg.store.events() if e["event"] == "promotion_refused" and e["id"] == worse]
        assert refused and "agreement" in refused[-1]["why"]

        good = perturbed(root, model_ws.model_id, 1e-4, tmp_path / "good.onnx", "retrained-test")
        # a canary that does not serve the candidate in time (its server needs seconds to start) is put
        # back on production and the refusal recorded; the server it was starting is stopped when ready
        hurried = rollout.release(root, good, "n2", params=rollout.release_params(root, deploy_timeout_s=0.5))
        assert hurried["action"] == "rolled_back" and not hurried["passed"], hurried["reason"]
        assert [c["name"] for c in hurried["checks"] if not c["passed"]] == ["canary_ready"]
        assert reg.store.get(good).stage == "candidate"
        refused = [e for e in reg.store.events() if e["event"] == "promotion_refused" and e["id"] == good]
        assert refused and "did not serve" in refused[-1]["why"]
        n2 = node_dir(root, "n2")
        wait_for(lambda: "no longer wanted" in (n2 / "node.out").read_text(), 120, "the abandoned server stopped")
        time.sleep(1.0)  # a reconcile pass after it
        for n in list_nodes(root):
            assert n["model_version"] == model_ws.model_id and served_version(n["url"]) == model_ws.model_id

        ok = release(model_version=good, canary="n2", root=str(root))
        assert ok["action"] == "rolled_out", ok["reason"]
        assert ok["comparison"]["agreement"] > 0.95 and ok["comparison"]["canary_error_rate"] == 0
        assert {n["model_version"] for n in list_nodes(root)} == {good}
        assert reg.store.production("cityloop-detector").id == good

        from prefect.artifacts import Artifact

        artifact = Artifact.get("release-decision")
        assert artifact is not None and "ROLLED OUT" in artifact.data and "agreement" in artifact.data

    res = CliRunner().invoke(app, ["edge", "rollback"], env={"CITYLOOP_ROOT": str(root)})  # by hand, no Prefect
    assert res.exit_code == 0, res.output
    assert {n["model_version"] for n in list_nodes(root)} == {model_ws.model_id}
    assert reg.store.production("cityloop-detector").id == model_ws.model_id and reg.store.get(good).stage == "retired"
