"""Ingest and the algorithm repository under races and crashes: two ingests at once, a lock left by a
killed process, a log line torn by a crash, a registration or a publish killed half-way.

Crashes are real: a child process SIGKILLs itself at the worst moment (after the version folder or
the dataset files are in place, before the commit record), so nothing is cleaned up for the test.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from cityloop.core.jsonl import append_jsonl, read_jsonl
from cityloop.governance import versioning
from cityloop.governance.gate import GateParams
from cityloop.governance.repository import DataRepository
from cityloop.models.card import ModelCard
from cityloop.models.store import ModelStore
from cityloop.scenes.frames import generate_frames

GATE = {"min_frames_per_class": 1, "max_class_share": 1.0}
PARITY = {"passed": True, "max_abs_diff": 1e-7}

INGEST_CHILD = """
import sys, time
from pathlib import Path
from cityloop.governance.gate import GateParams
from cityloop.governance.repository import DataRepository
ws, src, go = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
repo = DataRepository(ws, GateParams.from_dict({"min_frames_per_class": 1, "max_class_share": 1.0}))
while not go.exists():  # both children start ingesting at the same moment
    time.sleep(0.01)
res = repo.ingest(src, "city", docs=False, push=False, on_wait=lambda m: print("WAIT", m, flush=True))
print("DONE", res.version.id, res.new_frames, flush=True)
"""

LOCK_CHILD = """
import os, signal, sys, time
from pathlib import Path
from cityloop.governance.versioning import workspace_lock
with workspace_lock(Path(sys.argv[1])):
    print("HELD", flush=True)
    if sys.argv[2] == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(float(sys.argv[2]))
"""

REGISTER_KILLED = """
import os, signal, sys
from pathlib import Path
from cityloop.models import store as S
from cityloop.models.card import ModelCard
root, model, where = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
if where == "before-log":  # the folder is renamed into place, the "registered" event not yet written
    S.ModelStore._append = die
else:  # files copied into the staging folder, not yet renamed
    S._make_read_only = die
S.ModelStore(root, track=False).register(model, ModelCard("m", "v0", "cityloop", classes=["car"]),
                                         parity={"passed": True, "max_abs_diff": 1e-7})
"""

PUBLISH_KILLED = """
import os, signal, sys
from pathlib import Path
from cityloop.governance import versioning
from cityloop.governance.gate import GateParams
from cityloop.governance.repository import DataRepository
versioning._write_tag = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)  # files committed, no tag yet
DataRepository(Path(sys.argv[1]), GateParams.from_dict({"min_frames_per_class": 1, "max_class_share": 1.0})
               ).ingest(Path(sys.argv[2]), "city", docs=False, push=False)
"""


def shas(src: Path) -> set[str]:
    return {hashlib.sha256(p.read_bytes()).hexdigest() for p in (src / "images").iterdir()}


def frames(tmp_path: Path, name: str, seed: int, n: int = 24) -> Path:
    out = tmp_path / name
    generate_frames("lab", n, seed, out)
    return out


def child(script: str, *args: object, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


# ---------------------------------------------------------------------- two ingests at once


def test_two_concurrent_ingests_into_one_dataset_each_publish_exactly_their_frames(workspace: Path,
                                                                                   tmp_path: Path):
    a, b = frames(tmp_path, "a", 1), frames(tmp_path, "b", 2)
    assert not shas(a) & shas(b)
    go = tmp_path / "go"
    kids = [child(INGEST_CHILD, workspace, src, go) for src in (a, b)]
    time.sleep(0.5)
    go.touch()
    outs = [k.communicate(timeout=600) for k in kids]
    assert [k.returncode for k in kids] == [0, 0], [o[1][-2000:] for o in outs]
    done = {line.split()[1]: src for (out, _), src in zip(outs, (a, b))
            for line in out.splitlines() if line.startswith("DONE")}
    assert set(done) == {"city@v1", "city@v2"}  # both landed, one after the other
    waited = [out for out, _ in outs if "WAIT" in out]
    assert len(waited) == 1 and "held by pid" in waited[0] and "since" in waited[0]  # the second was told who
    first, second = done["city@v1"], done["city@v2"]
    repo = DataRepository(workspace, GateParams.from_dict(GATE))
    v1, coco1 = repo.load("city@v1")  # read at the tag's commit, not from the workspace
    v2, coco2 = repo.load("city@v2")
    assert set(v1.sha256) == shas(first) and len(v1) == len(shas(first))
    assert set(v2.sha256) == shas(first) | shas(second) and len(v2) == len(v2.sha256.unique())
    assert {im["sha256"] for im in coco2["images"]} == set(v2.sha256)
    assert versioning.resolve(workspace, "city@latest").version == 2
    assert not list((workspace / ".cityloop" / "staging").glob("*"))  # nothing left half-way


def test_a_candidate_prepared_before_another_publish_is_refused_not_merged(workspace: Path, tmp_path: Path):
    """The Prefect flow prepares, gates and publishes in separate tasks: a candidate built on v1's
    state must not become v2 after another ingest published v2 (it would drop v2's frames)."""
    from cityloop.governance.repository import StaleCandidateError

    repo = DataRepository(workspace, GateParams.from_dict(GATE))
    stale = repo.prepare(frames(tmp_path, "a", 1), "city")
    published = repo.ingest(frames(tmp_path, "b", 2), "city", docs=False, push=False)
    assert published.version.id == "city@v1"
    with pytest.raises(StaleCandidateError, match="another ingest published"):
        repo.publish(stale, repo.validate(stale, docs=False), push=False)
    assert [r.id for r in versioning.list_versions(workspace, "city")] == ["city@v1"]
    assert stale.staging.is_dir()  # the staged input is kept for a new prepare


# ---------------------------------------------------------------------- the workspace lock


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    kid = child(LOCK_CHILD, tmp_path, "die")
    out, err = kid.communicate(timeout=60)
    assert kid.returncode == -signal.SIGKILL and "HELD" in out, err
    assert f'"pid": {kid.pid}' in (tmp_path / versioning.LOCK_FILE).read_text()  # its record is still there
    caplog.set_level(logging.WARNING, logger="cityloop.governance.versioning")
    t0 = time.monotonic()
    with versioning.workspace_lock(tmp_path, timeout=5):
        assert str(os.getpid()) in (tmp_path / versioning.LOCK_FILE).read_text()
    assert time.monotonic() - t0 < 2
    assert any(f"pid {kid.pid}" in r.message and "no longer running" in r.message for r in caplog.records)
    assert (tmp_path / versioning.LOCK_FILE).read_text() == ""  # released cleanly: no record left


def test_a_second_holder_waits_bounded_and_is_told_who_holds_the_lock(tmp_path: Path):
    kid = child(LOCK_CHILD, tmp_path, "30")
    try:
        assert kid.stdout.readline().strip() == "HELD"
        heard: list[str] = []
        t0 = time.monotonic()
        with pytest.raises(versioning.WorkspaceBusyError) as info:
            with versioning.workspace_lock(tmp_path, timeout=1.0, on_wait=heard.append):
                pytest.fail("the lock was taken while another process held it")
        assert 0.9 < time.monotonic() - t0 < 5
        assert len(heard) == 1 and f"pid {kid.pid}" in heard[0] and "waiting up to 1s" in heard[0]
        assert f"pid {kid.pid}" in str(info.value) and "since" in str(info.value) and "waited 1s" in str(info.value)
    finally:
        kid.kill()
        kid.wait()
    with versioning.workspace_lock(tmp_path, timeout=5):  # the holder is gone: free at once
        pass


def test_the_lock_is_reentrant_in_one_thread(tmp_path: Path):
    with versioning.workspace_lock(tmp_path, timeout=1):
        with versioning.workspace_lock(tmp_path, timeout=1):  # e.g. ingest -> publish
            pass
        assert str(os.getpid()) in (tmp_path / versioning.LOCK_FILE).read_text()  # still held by the outer one


# ---------------------------------------------------------------------- torn log lines


def test_a_torn_last_line_never_hides_the_next_appended_event(tmp_path: Path):
    log = tmp_path / "events.jsonl"
    append_jsonl(log, [{"event": "registered", "id": "m:v1"}])
    with open(log, "ab") as fh:  # a crash in the middle of an append, even inside a UTF-8 character
        fh.write('{"event":"promoted","why":"caf\u00e9'.encode()[:-1])
    append_jsonl(log, [{"event": "registered", "id": "m:v2"}, {"event": "evaluated", "id": "m:v2"}])
    read = read_jsonl(log)
    assert [(e["event"], e["id"]) for e in read.records] == [("registered", "m:v1"), ("registered", "m:v2"),
                                                             ("evaluated", "m:v2")]
    assert read.skipped == [2]  # counted and reported, not merged with the next line
    append_jsonl(log, [{"event": "promoted", "id": "m:v2"}])  # the file ends clean now: no blank line added
    assert log.read_bytes().count(b"\n") == 5 and len(read_jsonl(log).records) == 4


def test_the_loop_rounds_log_survives_a_torn_line(tmp_path: Path):
    from cityloop.loop.runner import LoopState

    state = LoopState(tmp_path, "run")
    state.add_record({"lineage": "a", "round": 0, "mAP50": 0.5})
    with open(state.rounds_path, "a") as fh:  # killed mid-append
        fh.write('{"lineage": "a", "round": 1, "mAP')
    state.add_record({"lineage": "a", "round": 1, "mAP50": 0.6})
    assert [r["round"] for r in state.records()] == [0, 1]


# ---------------------------------------------------------------------- half-way registrations


def test_a_registration_killed_half_way_never_resolves_as_latest(tmp_path: Path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"onnx bytes v1")
    store = ModelStore(tmp_path, track=False)
    v1 = store.register(model, ModelCard("m", "v0", "cityloop", classes=["car"]), parity=PARITY)
    for where in ("before-log", "staging"):  # leaves m/v2 (no event), then m/.tmp-v3-*
        model.write_bytes(f"onnx bytes, killed {where}".encode())
        kid = child(REGISTER_KILLED, tmp_path, model, where)
        _, err = kid.communicate(timeout=120)
        assert kid.returncode == -signal.SIGKILL, err
    assert (tmp_path / "data/models/m/v2/card.json").is_file()  # complete on disk, but never registered
    assert list((tmp_path / "data/models/m").glob(".tmp-v3-*"))
    assert store.get("m:latest").id == v1.id and [mv.id for mv in store.list()] == [v1.id]
    with pytest.raises(LookupError, match="m:v2 not found"):
        store.get("m:v2")
    left = {Path(i["path"]).name: i["why"] for i in store.leftovers()}
    assert set(left) == {"v2"} | {p.name for p in (tmp_path / "data/models/m").glob(".tmp-v3-*")}
    assert "never registered" in left["v2"]

    model.write_bytes(b"onnx bytes v3")
    v3 = store.register(model, ModelCard("m", "v0", "cityloop", classes=["car"]), parity=PARITY)
    assert v3.id == "m:v3" and store.get("m:latest").id == "m:v3"  # v2's folder is skipped, never overwritten
    assert not list((tmp_path / "data/models/m").glob(".tmp-v*"))  # dead staging removed under the lock
    removed = store.remove_leftovers()
    assert [Path(i["path"]).name for i in removed] == ["v2"] and not (tmp_path / "data/models/m/v2").exists()
    assert store.leftovers() == [] and [mv.id for mv in store.list()] == [v1.id, v3.id]
    assert store.events()[-1]["event"] == "leftovers_removed"


def test_models_leftovers_command_lists_and_removes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from typer.testing import CliRunner

    from cityloop.cli.models import app

    monkeypatch.setenv("CITYLOOP_ROOT", str(tmp_path))
    (tmp_path / "params.yaml").write_text("{}\n")
    orphan = tmp_path / "data/models/m/v1"
    orphan.mkdir(parents=True)
    ModelCard("m", "v1", "cityloop", classes=["car"]).save(orphan / "card.json")
    runner = CliRunner()
    listed = runner.invoke(app, ["leftovers"])
    assert listed.exit_code == 0 and "m:v1 was never registered" in listed.output and "--remove" in listed.output
    assert "half-written" in runner.invoke(app, ["list"]).output
    removed = runner.invoke(app, ["leftovers", "--remove"])
    assert removed.exit_code == 0 and "removed" in removed.output and not orphan.exists()


# ---------------------------------------------------------------------- half-way dataset versions


def test_an_ingest_killed_before_its_tag_leaves_latest_on_the_previous_version(workspace: Path, tmp_path: Path):
    a, b, c = frames(tmp_path, "a", 1), frames(tmp_path, "b", 2), frames(tmp_path, "c", 3)
    repo = DataRepository(workspace, GateParams.from_dict(GATE))
    assert repo.ingest(a, "city", docs=False, push=False).version.id == "city@v1"
    kid = child(PUBLISH_KILLED, workspace, b)
    _, err = kid.communicate(timeout=600)
    assert kid.returncode == -signal.SIGKILL, err[-2000:]
    assert versioning.resolve(workspace, "city@latest").version == 1
    latest, _ = repo.load("city@latest")
    assert set(latest.sha256) == shas(a)  # never the killed ingest's half-published state
    after = repo.ingest(c, "city", docs=False, push=False)  # the lock the child held is free again
    assert after.version.id == "city@v2"
    v2, _ = repo.load("city@v2")
    # the killed ingest had passed its gate and committed its files: the next version keeps them (nothing lost)
    assert set(v2.sha256) == shas(a) | shas(b) | shas(c) and after.new_frames == len(shas(c))
    assert isinstance(pd.read_parquet(workspace / "data/datasets/city/manifest.parquet"), pd.DataFrame)
