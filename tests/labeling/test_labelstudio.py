"""Labeling against a real Label Studio server (session fixture; its own venv, 127.0.0.1):
project and import with predictions, scripted annotation, export → COCO checked box by box,
the gate rejecting malformed annotations by task id, honeypot hold-back, webhooks into Prefect
events, the `label` flow, and a headless Chromium screenshot of a pre-annotated task."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cityloop.governance.gate import GateParams
from cityloop.governance.repository import DataRepository
from cityloop.labeling.annotator import ErrorModel, run_team
from cityloop.labeling.convert import Box, to_result
from cityloop.labeling.project import LabelingProject, client
from cityloop.labeling.pull import pull
from cityloop.labeling.push import PushParams, label_classes, push
from cityloop.labeling.status import status
from cityloop.models.runtime import OnnxDetector
from cityloop.models.store import ModelStore
from tests.conftest import REPO, ModelWorkspace
from tests.labeling.conftest import ground_truth

pytestmark = pytest.mark.slow
GATE = GateParams.from_dict({"min_frames_per_class": 0})
PERFECT = ErrorModel("perfect", miss=0.0, flip=0.0, jitter=0.0)


def project(labelstudio, ws: ModelWorkspace, title: str) -> LabelingProject:
    proj = LabelingProject(client(labelstudio.url, labelstudio.credentials().token), ws.root, title,
                           labelstudio.media, labelstudio.url)
    proj.ensure(label_classes(ModelStore(ws.root).get(ws.model_id).card))
    return proj


def repo(ws: ModelWorkspace) -> DataRepository:
    return DataRepository(ws.root, GATE, holdout=("field-bench",))


def detector(ws: ModelWorkspace) -> OnnxDetector:
    mv = ModelStore(ws.root).get(ws.model_id)
    return OnnxDetector(mv.model_path, mv.card)


def test_server_up_is_idempotent_and_a_stale_pid_file_is_handled(labelstudio, tmp_path: Path):
    pid = labelstudio.pid()
    again = labelstudio.start()
    assert again.message == "already running" and again.pid == pid and again.running
    from cityloop.labeling.server import LabelStudioServer

    stale = LabelStudioServer(tmp_path, port=labelstudio.port + 1, state_dir=tmp_path / "ls")
    stale.state.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale.pid_file.write_text(str(dead.pid))
    assert stale.pid() is None and not stale.pid_file.exists() and not stale.status().running
    log = labelstudio.log_file.read_text()
    creds = labelstudio.credentials()
    assert creds.password not in log and creds.token not in log and "***" in repr(creds)


def test_the_database_holding_the_admin_token_is_private_and_the_server_env_minimal(labelstudio):
    import stat

    db = labelstudio.data_dir / "label_studio.sqlite3"
    assert labelstudio.credentials().token.encode() in db.read_bytes()  # why it must be private
    for d in (labelstudio.state, labelstudio.data_dir, labelstudio.media):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    for f in (db, labelstudio.state / "credentials.env", labelstudio.log_file):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    pgid = labelstudio.pid()
    envs = []
    for proc in Path("/proc").glob("[0-9]*"):  # the server and the workers it spawned
        try:
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[2] == str(pgid):
                envs.append((proc / "environ").read_bytes())
        except (OSError, IndexError):
            continue
    assert envs
    for env in envs:  # set in the shell that started it (tests/conftest.py), not passed on
        assert b"CITYLOOP_TEST_SECRET" not in env and b"LABEL_STUDIO_API_KEY=" not in env
        assert b"LABEL_STUDIO_USER_TOKEN=" in env and b"PATH=" in env


def test_round_trip_push_annotate_pull_matches_ground_truth_box_by_box(labelstudio, lws: ModelWorkspace):
    proj = project(labelstudio, lws, "round-trip")
    # the tiny test model is unsure on field frames: show its boxes from 0.1 (params default 0.3)
    res = push(proj, repo(lws), detector(lws), lws.model_id, lws.pool,
               PushParams(budget=16, honeypot_share=0.1, prediction_threshold=0.1), honeypot_data="lab@v1")
    assert len(res.task_ids) == 16 and len(res.honeypot_ids) == 2
    tasks = [proj.ls.tasks.get(id=t) for t in res.task_ids]
    preds = [p if isinstance(p, dict) else p.dict() for p in (t.predictions[0] for t in tasks)]
    assert all(p["model_version"] == lws.model_id for p in preds)  # every task carries the model's prediction
    results = [r for p in preds for r in p["result"]]
    assert results, "the tiny model pre-annotates none of the 16 frames"
    assert all(0 < r["score"] <= 1 and r["value"]["rectanglelabels"][0] in label_classes(detector(lws).card)
               for r in results)
    assert all(t.data["strategy"] == "active" and len(t.data["sha256"]) == 64 for t in tasks)

    truth = ground_truth(lws)
    sent = {proj.ls.tasks.get(id=t).data["sha256"] for t in res.task_ids}
    first = next(sha for sha in sorted(sent) if truth[sha])  # one box marked mostly hidden, whatever the frames
    truth[first] = [dataclasses.replace(truth[first][0], hidden=True), *truth[first][1:]]
    run_team(proj, [PERFECT], truth)
    st = status(proj)
    assert st["tasks"] == {"tasks": 18, "labeled": 18, "skipped": 0, "open": 0}
    assert st["by_strategy"]["active"]["labeled"] == 16 and st["by_strategy"]["honeypot"]["tasks"] == 2
    assert st["by_annotator"]["perfect"]["annotations"] == 18

    out = pull(proj, repo(lws), "rt-labeled", GATE, push=False)
    assert out.version == "rt-labeled@v1" and len(out.accepted) == 16 and not out.rejected and not out.held_back
    manifest, coco = repo(lws).load("rt-labeled@v1")
    assert set(manifest["sha256"]) == sent and manifest["labeled"].all()  # honeypots never join the dataset
    names = {c["id"]: c["name"] for c in coco["categories"]}
    by_sha: dict[str, list] = {}
    for a in coco["annotations"]:
        by_sha.setdefault(a["sha256"], []).append((names[a["category_id"]], a["iscrowd"], *a["bbox"]))
    for sha in sent:  # every box, its class and its "mostly hidden" mark (COCO iscrowd) came through
        want = sorted((b.cls, int(b.hidden), b.x, b.y, b.w, b.h) for b in truth[sha])
        got = sorted(by_sha.get(sha, []))
        assert len(got) == len(want), sha
        for g, w in zip(got, want):
            assert g[:2] == w[:2] and g[2:] == pytest.approx(w[2:], abs=0.01)
    assert sum(a["iscrowd"] for a in coco["annotations"]) == sum(b.hidden for sha in sent for b in truth[sha]) >= 1
    again = pull(proj, repo(lws), "rt-labeled", GATE, push=False)  # nothing new: no new version
    assert again.already == 16 and again.version is None


def test_malformed_annotations_are_rejected_by_task_id_and_nothing_labeled_is_lost(labelstudio, lws):
    proj = project(labelstudio, lws, "malformed")
    res = push(proj, repo(lws), detector(lws), lws.model_id, lws.pool, PushParams(budget=6, strategy="random",
                                                                                   honeypot_share=0.0))
    ids = res.task_ids
    user = proj.annotator_ids(["hand"])["hand"]
    outside = to_result([Box("car", 170, 10, 40, 20)], 192, 192)  # 18 px past the right edge
    unknown = to_result([Box("car", 10, 10, 40, 20)], 192, 192)
    unknown[0]["value"]["rectanglelabels"] = ["ufo"]
    for tid, result in zip(ids[:3], (outside, unknown, [])):
        proj.ls.annotations.create(id=tid, result=result, completed_by=user)
    run_team(proj, [PERFECT], ground_truth(lws))  # labels the other three
    out = pull(proj, repo(lws), "mal-labeled", GATE, push=False)
    assert set(out.rejected) == set(ids[:3]), out.rejected
    assert any("right_margin" in r for r in out.rejected[ids[0]])
    assert any("category_name" in r and "ufo" in r for r in out.rejected[ids[1]])
    assert any("explicit" in r for r in out.rejected[ids[2]])
    assert sorted(out.accepted) == sorted(ids[3:]) and out.version == "mal-labeled@v1"
    exported = {t["id"]: t for t in proj.export()}
    assert all(exported[t]["annotations"] for t in ids[:3])  # still in Label Studio, to be fixed
    # the annotator fixes the empty one with an explicit "no objects": the next pull takes it
    from cityloop.labeling.convert import no_objects_result

    ann_id = exported[ids[2]]["annotations"][0]["id"]
    proj.ls.annotations.update(id=ann_id, result=no_objects_result())
    fixed = pull(proj, repo(lws), "mal-labeled", GATE, push=False)
    assert fixed.accepted == [ids[2]] and fixed.version == "mal-labeled@v2" and fixed.already == 3
    manifest, _ = repo(lws).load("mal-labeled@v2")
    assert len(manifest) == 4 and manifest["sha256"].is_unique


def test_an_annotator_failing_the_honeypots_is_held_back(labelstudio, lws: ModelWorkspace):
    proj = project(labelstudio, lws, "quality")
    res = push(proj, repo(lws), detector(lws), lws.model_id, lws.pool, PushParams(budget=10, honeypot_share=0.3),
               honeypot_data="lab@v1")
    assert len(res.honeypot_ids) == 3
    sloppy = ErrorModel("sloppy", miss=0.5, flip=0.6, jitter=5.0, seed=1)
    run_team(proj, [PERFECT, sloppy], ground_truth(lws), overlap_share=0.0)
    out = pull(proj, repo(lws), "q-labeled", GATE, push=False)
    q = out.quality["annotators"]
    assert q["perfect"]["honeypot_agreement"] == 1.0 and not q["perfect"]["held_back"]
    assert q["sloppy"]["held_back"] and q["sloppy"]["honeypot_agreement"] < 0.7
    assert len(out.held_back) == 5 and len(out.accepted) == 5  # round-robin: half the batch each
    assert all("sloppy" in why for why in out.held_back.values())


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


def test_webhooks_count_labels_and_emit_prefect_events(labelstudio, lws, prefect_harness, tmp_path: Path):
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter

    from cityloop.flows.labeling import LABEL_EVENT, READY_EVENT, emit_label, emit_ready
    from cityloop.labeling.webhooks import LabelCounter, WebhookReceiver, register

    proj = project(labelstudio, lws, "webhooks")
    res = push(proj, repo(lws), detector(lws), lws.model_id, lws.pool, PushParams(budget=3, honeypot_share=0.0))
    rx = WebhookReceiver(LabelCounter(tmp_path / "w.sqlite", every=2), "hook-secret", on_label=emit_label,
                         on_threshold=emit_ready).start()
    try:
        register(proj.ls, proj.id, rx.url, "hook-secret")
        run_team(proj, [PERFECT], ground_truth(lws))
        deadline = time.time() + 60
        while time.time() < deadline and rx.counter.counts().get("ANNOTATION_CREATED", 0) < 3:
            time.sleep(0.5)
        assert rx.counter.counts()["ANNOTATION_CREATED"] == 3 and rx.counter.counts()["triggers"] == 1
        assert not rx.errors
    finally:
        rx.stop()
    with get_client(sync_client=True) as c:
        for _ in range(60):
            events = c.read_events(EventFilter(event=EventNameFilter(prefix=["cityloop."])), limit=50).events
            if {LABEL_EVENT, READY_EVENT} <= {e.event for e in events}:
                break
            time.sleep(1)
    labels = [e for e in events if e.event == LABEL_EVENT]
    assert {e.payload["task_id"] for e in labels} == set(res.task_ids)
    assert [e.payload["labels"] for e in events if e.event == READY_EVENT] == [2]


def test_label_flow_runs_select_push_wait_pull_version(labelstudio, lws, prefect_harness, monkeypatch):
    import yaml

    from cityloop.flows.labeling import label_flow

    params = yaml.safe_load((lws.root / "params.yaml").read_text())
    params["labeling"].update({"project": "flow", "port": labelstudio.port, "budget": 8, "dataset": "flow-labeled",
                               "honeypot_dataset": "lab@v1", "gate": {"min_frames_per_class": 0},
                               "annotators": [{"name": "annotator-a", "miss": 0.0, "flip": 0.0, "jitter": 0.5}]})
    (lws.root / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("LABEL_STUDIO_URL", labelstudio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", labelstudio.credentials().token)
    monkeypatch.setenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", str(labelstudio.media))
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    state = label_flow(data=lws.pool, model=lws.model_id, annotators="scripted",
                       truth=[str(lws.pool_src), str(lws.root / "raw" / "lab")], root=str(lws.root),
                       return_state=True)
    assert state.is_completed(), state.message
    out = state.result()
    assert out["wait"] == {"tasks": 9, "done": 9, "timed_out": False}
    assert out["pull"]["version"] == "flow-labeled@v1" and len(out["pull"]["accepted"]) == 8
    # the CLI sees the same project through the environment's URL and token
    env = {**os.environ, "CITYLOOP_ROOT": str(lws.root)}
    shown = subprocess.run([sys.executable, "-m", "cityloop.cli", "label", "status"], env=env, capture_output=True,
                           text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "9 tasks, 9 labeled" in shown.stdout and "annotator-a" in shown.stdout


def test_chromium_shows_the_pre_annotations_on_the_labeling_page(labelstudio, lws: ModelWorkspace):
    from cityloop.labeling.browser import screenshot_task

    proj = project(labelstudio, lws, "screenshot")
    pp = PushParams(budget=4, honeypot_share=0.0, prediction_threshold=0.2)
    res = push(proj, repo(lws), detector(lws), lws.model_id, lws.pool, pp)
    preds = {tid: proj.ls.tasks.get(id=tid).predictions for tid in res.task_ids}
    tid = max(preds, key=lambda t: len((preds[t][0] if isinstance(preds[t][0], dict) else preds[t][0].dict())
                                       ["result"]))
    creds = labelstudio.credentials()
    out = REPO / "reports" / "test-artifacts" / "labelstudio-task.png"
    text = screenshot_task(labelstudio.url, creds.username, creds.password, proj.id, tid, out)
    assert out.stat().st_size > 20_000  # a rendered page, not a blank one
    assert "cityloop" in text  # the prediction's tab names the model version
    result = (preds[tid][0] if isinstance(preds[tid][0], dict) else preds[tid][0].dict())["result"]
    assert any(r["value"]["rectanglelabels"][0] in text for r in result)
    print(json.dumps({"screenshot": str(out)}))


def test_a_dismissed_alert_is_in_the_next_labeling_batch_with_its_reason(labelstudio, lws: ModelWorkspace,
                                                                        tmp_path: Path):
    """An officer dismisses an alert → its clean frame goes to the inbox → the hard-examples ingest pools it →
    the next batch takes it before the selector's picks, even in the random arm, with reason `dismissed alert`."""
    import base64
    import hashlib

    from cityloop.analysis.review import review_alert
    from cityloop.analysis.store import Event, EventStore
    from cityloop.edge.inbox import InboxStore, inbox_ingest
    from cityloop.scenes.video import generate_video

    clip = generate_video("field", 1, 1.0, 1.0, 4242, tmp_path / "clip")  # a frame no dataset holds yet
    frame = next((tmp_path / "clip" / "cam00" / "frames").glob("*.jpg"))
    store = EventStore(f"sqlite:///{tmp_path}/events.db")
    t = 1_791_000_000.0  # 2026-10-03: the gate refuses frames from 1970 or the future
    store.add(Event("ev-dismissed", "helmetless_rider", "cam00", t, t + 4, t + 1, model_version=lws.model_id,
                    score=0.61, boxes=[[10, 10, 40, 60]], extra={"frame": str(frame), "frame_index": 0}), [])
    others = sorted(lws.pool_src.glob("images/*.jpg"))[:8]  # the nodes' own hard examples beside it
    for p in others:
        data = p.read_bytes()
        InboxStore(lws.root).put({"sha256": hashlib.sha256(data).hexdigest(), "image": base64.b64encode(data).decode(),
                                  "camera_id": "cam-x", "model_version": lws.model_id, "reason": "low_confidence",
                                  "score": 0.5, "ts": t, "frame_index": 1}, "node-a")
    out = review_alert(store, lws.root, "ev-dismissed", "dismissed", by="officer-7")
    store.dispose()
    assert clip["frames"] == 1 and out["hard_example"]
    pooled = inbox_ingest(lws.root, dataset="dismissed-pool")
    manifest, _ = repo(lws).load(pooled.version.id)
    assert dict(zip(manifest["sha256"], manifest["reason"]))[out["hard_example"]] == "dismissed alert"

    proj = project(labelstudio, lws, "dismissed-first")
    res = push(proj, repo(lws), detector(lws), lws.model_id, pooled.version.id,
               PushParams(budget=3, strategy="random", honeypot_share=0.0))
    recs = {r.sha256: r for r in proj.records().values()}
    assert len(res.task_ids) == 3 and res.reasons.get("dismissed alert") == 1
    assert recs[out["hard_example"]].reason == "dismissed alert"
    task = proj.ls.tasks.get(id=recs[out["hard_example"]].task_id)
    assert task.data["sha256"] == out["hard_example"]  # the frame itself is in Label Studio, to be labeled
