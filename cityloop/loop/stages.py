"""The stages of one loop round, each one plain function over a workspace.

Every stage is idempotent where the platform allows it: frames are content-addressed (ingesting
the same frames again adds nothing), a training run resumes from its checkpoint, a registered
artifact is found again instead of duplicated, frames already labeled or already in the project
are never sent again. A round killed half-way is re-run from its first unfinished stage by
`loop.runner` (the stage results it already has live in the loop's state file).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from cityloop.core.procs import ManagedProcess
from cityloop.core.settings import load_section
from cityloop.loop.params import Lineage, LoopParams

log = logging.getLogger("cityloop.loop")


def _raw(root: Path) -> Path:
    return Path(root) / "data" / "raw" / "loop"


def _repository(root: Path, **gate_over: Any):
    from cityloop.governance.repository import open_repository

    return open_repository(Path(root), **gate_over)


# ------------------------------------------------------------------ what the cameras deliver
def deliver_frames(root: Path, rnd: int, p: LoopParams) -> dict:
    """Round `rnd`'s frames from the field cameras: rendered, their truth set aside for the scripted
    annotators only, ingested unlabeled (split pool) into the pool dataset."""
    from cityloop.scenes.frames import generate_frames
    from cityloop.scenes.params import frame_size

    raw = _raw(root) / f"pool-r{rnd}"
    truth = raw.with_name(f"{raw.name}.truth.json")
    if not truth.exists():
        if raw.exists():
            shutil.rmtree(raw)
        generate_frames("field", p.pool_frames, p.pool_seed + rnd, raw, frame_size(root), workers=2)
        (raw / "annotations.coco.json").replace(truth)
    res = _repository(root, require_labels=False).ingest(raw, p.pool, source="field", split="pool", docs=False)
    return {"version": res.version.id, "new_frames": res.new_frames, "truth": str(raw)}


def render_streams(root: Path, rnd: int, p: LoopParams) -> dict:
    """Round `rnd`'s field video: one clip per camera with its truth and ground-truth events."""
    from cityloop.scenes.params import frame_size
    from cityloop.scenes.video import generate_video

    out = _raw(root) / f"video-r{rnd}"
    if not (out / "events.json").exists():
        if out.exists():
            shutil.rmtree(out)
        generate_video("field", p.cameras, p.seconds, p.fps, p.video_seed + rnd, out, frame_size(root), workers=2)
    cams = json.loads((out / "cameras.json").read_text())
    return {"streams": str(out), "cameras": [c["camera_id"] for c in cams],
            "frames": sum(c["frames"] for c in cams)}


# ------------------------------------------------------------------ edge nodes
@dataclasses.dataclass
class EdgeFleet:
    """The loop's edge nodes (real `cityloop edge start` processes) and the center inbox."""

    root: Path
    names: list[str]
    ports: list[int]
    inbox_port: int

    @property
    def center(self) -> str:
        return f"http://127.0.0.1:{self.inbox_port}"


def fleet(root: Path, p: LoopParams) -> EdgeFleet:
    names = [f"loop-edge-{k}" for k in range(p.nodes)]
    return EdgeFleet(Path(root), names, [p.base_port + k for k in range(p.nodes)], p.base_port - 1)


INBOX, INBOX_MODULE = "loop-inbox", "cityloop.edge.inbox"  # the center's inbox process of the loop


def _process(root: Path, name: str, argv: list[str] | None = None) -> ManagedProcess:
    """One of the loop's detached processes: pid under .cityloop/loop/pids, log under .cityloop/loop/logs.
    Its command line must name it (`--name NODE`, or the inbox module) for a recorded pid to count."""
    loop_dir = Path(root) / ".cityloop" / "loop"
    marker = INBOX_MODULE if name == INBOX else name
    return ManagedProcess(name, loop_dir / "pids", argv or [sys.executable], {**os.environ, "CITYLOOP_ROOT": str(root)},
                          cwd=Path(root), marker=marker, log_file=loop_dir / "logs" / f"{name}.log")


def _start(root: Path, name: str, argv: list[str]) -> int:
    """Start a detached process (its log under .cityloop/loop/logs, its pid file beside)."""
    return _process(root, name, argv).launch()


def _stop(root: Path, name: str, timeout: float = 30.0) -> None:
    _process(root, name).stop(timeout)


def production_or(root: Path, name: str, fallback: str) -> str:
    """What the nodes should serve: the name's production version, else `fallback`."""
    from cityloop.models.store import ModelStore

    mv = ModelStore(Path(root), track=False).production(name)
    return mv.id if mv else fallback


def start_edge(root: Path, rnd: int, streams: dict, model: str, p: LoopParams, timeout: float = 180.0) -> dict:
    """Start the center inbox and the nodes on this round's streams, serving `model` (production);
    the cameras are dealt to the nodes in turn. Returns when every node serves."""
    from cityloop.edge.fleet import deploy
    from cityloop.edge.node import assign, node_dir

    f = fleet(root, p)
    stop_edge(root, p)  # a killed earlier round may have left nodes behind
    bin_dir = Path(sys.executable).parent
    _start(root, INBOX, [sys.executable, "-m", INBOX_MODULE, "--root", str(root), "--port", str(f.inbox_port)])
    cams = streams["cameras"]
    for k, (name, port) in enumerate(zip(f.names, f.ports)):
        # the last round's nodes left "streams done" behind: a fresh node writes its own status
        (node_dir(Path(root), name) / "status.json").unlink(missing_ok=True)
        assign(Path(root), name, model)
        mine = [f"{c}={Path(streams['streams']) / c / 'frames'}" for c in cams[k :: len(f.names)]]
        argv = [str(bin_dir / "cityloop"), "edge", "start", "--name", name, "--port", str(port),
                "--center", f.center, "--sink", "cityloop.analysis.sink:edge_sink"]
        if p.edge_budget_per_hour is not None:
            argv += ["--budget-per-hour", str(p.edge_budget_per_hour)]
        for s in mine:
            argv += ["--stream", s]
        _start(root, name, argv)
    try:
        urls = deploy(Path(root), f.names, model, timeout)
    except TimeoutError as e:  # say which node process died, with its log's last line
        logs = Path(root) / ".cityloop" / "loop" / "logs"
        dead = [f"{n} exited ({_last_line(logs / f'{n}.log')!r}; see {logs / f'{n}.log'})"
                for n in f.names if _process(root, n).pid() is None]
        raise RuntimeError(f"{e}{': ' + '; '.join(dead) if dead else ''}") from e
    return {"nodes": f.names, "urls": urls, "model": model, "round": rnd}


def _last_line(path: Path) -> str:
    """The log's last exception line (e.g. "OperationalError: …"), else its last line."""
    lines = [x.strip() for x in path.read_text(errors="replace").splitlines() if x.strip()] if path.exists() else []
    errors = [x for x in lines if re.match(r"^[\w.]*(Error|Exception)\b", x)]
    return (errors or lines or [""])[-1][-300:]


def drain_edge(root: Path, p: LoopParams, timeout: float = 300.0) -> dict:
    """Wait until every node has streamed its cameras and its outbox is empty (all hard examples at
    the center); then feed the inbox through the governance gate into the pool."""
    from cityloop.edge.inbox import inbox_ingest
    from cityloop.edge.node import node_dir, read_json

    f = fleet(root, p)
    deadline = time.monotonic() + timeout
    while True:
        st = [read_json(node_dir(Path(root), n) / "status.json") or {} for n in f.names]
        if all(s.get("streams_done") and not s.get("queue_depth") for s in st):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"edge nodes did not finish their streams within {timeout:.0f} s: "
                               + ", ".join(f"{n}: {s.get('state')} {s.get('frames')} frames, "
                                           f"{s.get('queue_depth')} queued" for n, s in zip(f.names, st)))
        time.sleep(0.5)
    try:
        res = inbox_ingest(Path(root), dataset=p.pool)
        version, new = res.version.id, res.new_frames
    except ValueError:  # an empty inbox: nothing was hard enough this round
        version, new = None, 0
    return {"frames": sum(int(s.get("frames") or 0) for s in st), "selected": sum(int(s.get("selected") or 0)
            for s in st), "hard_examples_new": new, "pool": version,
            "fps": [s.get("fps") for s in st], "latency_p50_ms": [s.get("latency_p50_ms") for s in st]}


def stop_edge(root: Path, p: LoopParams) -> None:
    """Stop the loop's nodes (their bento servers stop with them) and the inbox."""
    for name in [*fleet(root, p).names, INBOX]:
        _stop(root, name)


# ------------------------------------------------------------------ labeling
def labeling_params(root: Path, lin: Lineage, p: LoopParams, budget: int):
    from cityloop.labeling.params import LabelingParams

    lp = load_section(Path(root), "labeling", LabelingParams)
    return dataclasses.replace(lp, project=lin.project, dataset=lin.dataset, strategy=lin.arm, budget=budget,
                               seed=lp.seed + lin.seed, pool=f"{p.pool}@latest",
                               annotators=p.annotators or lp.annotators)


def truth_dirs(root: Path, rounds: int, p: LoopParams) -> list[str]:
    """Simulator outputs whose truth the scripted annotators read (pools, video, honeypot sources)."""
    raw = _raw(root)
    out = [str(raw / f"pool-r{r}") for r in range(1, rounds + 1) if (raw / f"pool-r{r}.truth.json").exists()]
    out += [str(raw / f"video-r{r}") for r in range(rounds + 1) if (raw / f"video-r{r}" / "events.json").exists()]
    from cityloop.labeling.annotator import truth_path

    extra = [Path(root) / d for d in p.truth]
    return out + [str(d) for d in extra if truth_path(d).exists()]


def label_round(root: Path, lin: Lineage, rnd: int, model: str, p: LoopParams, budget: int,
                annotators: str = "scripted", timeout_s: float = 3600.0) -> dict:
    """One batch for this lineage through Label Studio: select (its arm) → pre-annotate → annotate
    (scripted annotators, or people) → wait → pull through the batch gate into its dataset."""
    from cityloop.labeling.annotator import run_team, truth_from_folder
    from cityloop.labeling.project import open_workspace
    from cityloop.labeling.pull import pull
    from cityloop.labeling.push import label_classes, labeled_elsewhere, push
    from cityloop.labeling.status import wait_until_labeled
    from cityloop.models.runtime import OnnxDetector
    from cityloop.models.store import ModelStore

    lp = labeling_params(root, lin, p, budget)
    params, project, repo, gate = open_workspace(Path(root), lp)
    mv = ModelStore(Path(root)).get(model)
    project.ensure(label_classes(mv.card))
    t0 = time.perf_counter()
    pushed = push(project, repo, OnnxDetector(mv.model_path, mv.card, threads=2), mv.id, lp.pool,
                  params.push_params(), exclude=labeled_elsewhere(repo, [lin.dataset]),
                  honeypot_data=params.honeypot_dataset)
    t1 = time.perf_counter()
    if annotators == "scripted":
        gt: dict = {}
        for d in truth_dirs(root, rnd, p):
            gt |= truth_from_folder(Path(d))
        run_team(project, params.error_models(), gt, params.overlap_share, params.seed + rnd)
    t2 = time.perf_counter()
    waited = wait_until_labeled(project, pushed.task_ids + pushed.honeypot_ids, timeout_s)
    res = pull(project, repo, lin.dataset, gate, params.min_agreement, params.iou, params.split)
    t3 = time.perf_counter()
    q = res.quality.get("annotators", {})
    return {"version": res.version, "tasks": len(pushed.task_ids), "honeypots": len(pushed.honeypot_ids),
            "reasons": pushed.reasons, "accepted": len(res.accepted), "rejected": len(res.rejected),
            "held_back": len(res.held_back), "timed_out": waited["timed_out"], "project": project.page(),
            "agreement": {k: v.get("honeypot_agreement") for k, v in q.items()},
            "seconds": {"push": round(t1 - t0, 1), "annotate": round(t2 - t1, 1), "pull": round(t3 - t2, 1)}}


# ------------------------------------------------------------------ models
def finetune(root: Path, lin: Lineage, data: str, parent: str, p: LoopParams) -> dict:
    """Warm-start from `parent` on the lineage's labeled data (+ replay): a new version of the
    lineage's model (`build_version`: idempotent, a finished run resumes, a stored artifact is found)."""
    from cityloop.models.lifecycle import build_version
    from cityloop.models.params import TrainSection

    tp = {**dataclasses.asdict(load_section(Path(root), "train", TrainSection).params), **p.train}
    tp["seed"] = int(tp["seed"]) + lin.seed
    t0 = time.perf_counter()
    built = build_version(Path(root), data, tp, parent=parent, replay=tuple(p.replay), name=lin.model)
    run = built["run"]
    return {"model": built["model"], "data": run["data"], "parent": parent, "epochs": run["epochs"],
            "steps": run["steps"], "replay": run["replay"], "parity": built["parity"]["passed"],
            "seconds": {"build": round(time.perf_counter() - t0, 1)}}


def evaluate(root: Path, model: str) -> dict:
    """Field mAP@0.5 of a version on the benchmark set, overall and per condition (recorded in the registry)."""
    from cityloop.models.gate import open_gate

    gate = open_gate(Path(root))
    mv = gate.store.get(model)
    m = mv.metrics() or gate.evaluate(mv.id)
    by = m.get("by", {}).get("condition", {})
    return {"model": mv.id, "benchmark": m.get("benchmark"), "mAP50": m["mAP50"], "mAP": m.get("mAP"),
            "per_condition": {k: v.get("mAP50") for k, v in by.items()}, "per_class": m.get("per_class", {})}


def loop_gate(root: Path, p: LoopParams):
    """The promotion gate with the loop's target (`loop.promote_target`; None: registry.target)."""
    from cityloop.models.gate import open_gate

    return open_gate(Path(root), **({} if p.promote_target is None else {"target": p.promote_target}))


def gate(root: Path, model: str, p: LoopParams) -> dict:
    """The registry's promotion gate (target, no condition regression, parity, latency)."""
    d = loop_gate(root, p).promote(model).to_dict()
    return {"promoted": d["promoted"], "reason": d["reason"]}


def release(root: Path, model: str, p: LoopParams) -> dict:
    """Canary on one node, compared with production on the same frames, then rolled out or back
    (the registry's promotion gate decides on accuracy; `loop.release` overrides `release:`)."""
    from cityloop.edge import rollout

    t0 = time.perf_counter()
    d = rollout.release(Path(root), model, params=rollout.release_params(Path(root), **p.release),
                        gate=loop_gate(root, p))
    return {"action": d["action"], "reason": d["reason"], "production": d["plan"]["production"],
            "agreement": d["comparison"]["agreement"], "seconds": round(time.perf_counter() - t0, 1)}


# ------------------------------------------------------------------ events
def patrol(root: Path, streams: dict, model: str) -> dict:
    """Event precision, recall and time to discovery of `model` on the round's streams (in-process)."""
    from cityloop.analysis.params import analysis_params
    from cityloop.analysis.patrol import run_patrol

    db = Path(root) / ".cityloop" / "loop" / "patrol.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    res = run_patrol(Path(root), Path(streams["streams"]), model, analysis_params(Path(root)), f"sqlite:///{db}")
    return {"model": model, "frames": res.frames, **summarize_events(res.metrics or {})}


def summarize_events(metrics: dict) -> dict:
    """Pooled precision/recall over scenarios and the median time to discovery."""
    import numpy as np

    raised = sum(m.get("raised", 0) for m in metrics.values())
    false = sum(m.get("false_alarms", 0) for m in metrics.values())
    truth = sum(m.get("truth", 0) for m in metrics.values())
    hits = sum(m.get("hits", 0) for m in metrics.values())
    ttd = [m["ttd_median_s"] for m in metrics.values() if m.get("ttd_median_s") is not None]
    return {"event_precision": (raised - false) / raised if raised else None,
            "event_recall": hits / truth if truth else None,
            "ttd_median_s": float(np.median(ttd)) if ttd else None, "per_scenario": metrics}
