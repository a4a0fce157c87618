"""The rounds of the closed loop, in order, with a `call` hook around every stage.

`call(name, fn, *args)` runs one stage (a cityloop.core.steps.StepRunner): `run_direct` calls it,
the Prefect flow wraps it in a task.
Finished stages are kept in `.cityloop/loop/<run>/state.json` (the run id is a hash of the
loop's params), so a loop killed mid-round starts again at its first unfinished stage; the
rounds' figures go to `rounds.jsonl` and, after each round, to the report (loop.report).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cityloop.core.jsonl import append_jsonl, read_jsonl
from cityloop.core.steps import StepRunner, run_direct
from cityloop.loop import stages
from cityloop.loop.params import Lineage, LoopParams, lineages


def run_key(p: LoopParams, annotators: str) -> str:
    """Same params, same run: a killed loop resumes instead of starting over."""
    blob = json.dumps({**dataclasses.asdict(p), "annotators_mode": annotators}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


class LoopState:
    """Stage results of one loop run (atomic JSON) and its per-round records (JSON lines)."""

    def __init__(self, root: Path, key: str) -> None:
        self.dir = Path(root) / ".cityloop" / "loop" / key
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path, self.rounds_path = self.dir / "state.json", self.dir / "rounds.jsonl"
        self.done: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def run(self, call: StepRunner, key: str, name: str, fn: Callable, *args: Any) -> Any:
        if key in self.done:
            return self.done[key]
        out = call(name, fn, *args)
        self.done[key] = out
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.done, indent=1, default=str))
        os.replace(tmp, self.path)
        return out

    def records(self) -> list[dict]:
        return read_jsonl(self.rounds_path).records  # a line torn by a crash is skipped, not fatal

    def add_record(self, rec: dict) -> None:
        have = {(r["lineage"], r["round"]) for r in self.records()}
        if (rec["lineage"], rec["round"]) not in have:
            append_jsonl(self.rounds_path, [rec])  # on a fresh line, fsynced


def _record(lin: Lineage, rnd: int, labels: int, ev: dict, pt: dict, extra: dict) -> dict:
    return {"lineage": lin.key, "arm": lin.arm, "seed": lin.seed, "main": lin.main, "round": rnd, "labels": labels,
            "model": ev["model"], "benchmark": ev.get("benchmark"), "mAP50": ev["mAP50"],
            "per_condition": ev["per_condition"],
            "event_precision": pt.get("event_precision"), "event_recall": pt.get("event_recall"),
            "ttd_median_s": pt.get("ttd_median_s"), **extra}


class LoopConflictError(RuntimeError):
    """A new loop run would write into the projects and datasets of another one."""


def check_fresh(root: Path, lins: list[Lineage], key: str) -> None:
    """A run with other params must not continue another run's lineages: its label counts would
    leave out the frames that one already labeled into the same datasets."""
    from cityloop.governance.versioning import list_versions

    taken = [f"{v.id}" for lin in lins for v in list_versions(root, lin.dataset)[-1:]]
    if taken:
        others = sorted(x.parent.name for x in (root / ".cityloop" / "loop").glob("*/rounds.jsonl")
                        if x.parent.name != key)
        raise LoopConflictError(
            f"loop run {key} is new, but its lineages' datasets already exist ({', '.join(taken)}) from "
            f"another loop run{' (' + ', '.join(others) + ')' if others else ''}: the loop's params changed. "
            "Set loop.tag (e.g. loop.tag: v2) to run a separate loop beside it, or go back to that run's params.")


def run_loop(root: Path, p: LoopParams, call: StepRunner = run_direct, annotators: str = "scripted",
             say: Callable[[str], None] = print) -> dict:
    """Round 0 (the lab-trained base model, on the edge nodes) and up to `p.rounds` labeling
    rounds per lineage, each stopping at the target or the label budget; returns the records."""
    from cityloop.loop.report import write_report

    root = Path(root).resolve()
    key = run_key(p, annotators)
    st = LoopState(root, key)
    lins = lineages(p)
    if not st.done:
        check_fresh(root, lins, key)
    main = next(x for x in lins if x.main)
    run = lambda k, name, fn, *a: st.run(call, k, name, fn, *a)  # noqa: E731
    timings: dict[str, float] = {}

    def timed(stage: str, k: str | None, fn: Callable, *a: Any) -> Any:
        """One stage, timed; k=None: not kept (stages whose effect is a running process)."""
        t = time.perf_counter()
        out = run(k, stage, fn, *a) if k else call(stage, fn, *a)
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - t
        return out

    # round 0: every lineage starts from the lab-trained model
    streams = timed("streams", "r0/streams", stages.render_streams, root, 0, p)
    ev0 = timed("evaluate", "r0/evaluate", stages.evaluate, root, p.base)
    pt0 = timed("patrol", "r0/patrol", stages.patrol, root, streams, ev0["model"])
    for lin in lins:
        st.add_record(_record(lin, 0, 0, ev0, pt0, {"data": None, "released": lin.main and p.edge}))
    say(f"round 0: {ev0['model']} field mAP@0.5 {ev0['mAP50']:.3f}, events P/R "
        f"{_f(pt0.get('event_precision'))}/{_f(pt0.get('event_recall'))}")
    current = {lin.key: ev0["model"] for lin in lins}
    labels = {lin.key: 0 for lin in lins}
    last = {lin.key: ev0["mAP50"] for lin in lins}
    serving = ev0["model"]
    try:
        for rnd in range(1, p.rounds + 1):
            live = [x for x in lins if last[x.key] < p.target and labels[x.key] < p.total_labels]
            if not live:
                break
            streams = timed("streams", f"r{rnd}/streams", stages.render_streams, root, rnd, p)
            timed("deliver", f"r{rnd}/deliver", stages.deliver_frames, root, rnd, p)
            edge_on = p.edge and main in live
            if edge_on:  # the nodes stream the round's video with what they serve; hard examples → the pool
                serving = stages.production_or(root, main.model, serving)
                timed("edge", None, stages.start_edge, root, rnd, streams, serving, p)
                hard = timed("edge", None, stages.drain_edge, root, p)
                say(f"round {rnd}: edge nodes streamed {hard['frames']} frames with {serving}, "
                    f"{hard['hard_examples_new']} new hard examples into {hard['pool'] or p.pool}")
            for lin in live:
                k = f"r{rnd}/{lin.key}"
                budget = min(p.budget, p.total_labels - labels[lin.key])
                batch = timed("label", f"{k}/label", stages.label_round, root, lin, rnd, current[lin.key], p, budget,
                            annotators)
                if not batch["version"]:
                    say(f"round {rnd} {lin.key}: no labeled version (nothing accepted): {batch}")
                    continue
                ft = timed("train", f"{k}/train", stages.finetune, root, lin, batch["version"], current[lin.key], p)
                ev = timed("evaluate", f"{k}/evaluate", stages.evaluate, root, ft["model"])
                pt = timed("patrol", f"{k}/patrol", stages.patrol, root, streams, ft["model"])
                if lin.main and edge_on:
                    dec = timed("release", f"{k}/release", stages.release, root, ft["model"], p)
                    released = dec["action"] == "rolled_out"
                    serving = ft["model"] if released else serving
                else:
                    dec = timed("gate", f"{k}/gate", stages.gate, root, ft["model"], p)
                    released = False
                labels[lin.key] += batch["tasks"]  # the annotation effort spent, accepted or not
                current[lin.key], last[lin.key] = ft["model"], ev["mAP50"]
                st.add_record(_record(lin, rnd, labels[lin.key], ev, pt, {
                    "data": batch["version"], "released": released, "decision": dec.get("reason"),
                    "accepted": batch["accepted"], "rejected": batch["rejected"], "agreement": batch["agreement"],
                    "train_s": ft["seconds"]["build"], "steps": ft["steps"],
                    "hard_examples": hard["hard_examples_new"] if lin.main and edge_on else None}))
                say(f"round {rnd} {lin.key}: {batch['tasks']} frames labeled, {batch['accepted']} accepted → "
                    f"{batch['version']} (total {labels[lin.key]}), "
                    f"{ft['model']} field mAP@0.5 {ev['mAP50']:.3f}, events P/R {_f(pt.get('event_precision'))}/"
                    f"{_f(pt.get('event_recall'))}" + (f", {dec['action']}" if lin.main and edge_on else ""))
            if edge_on:
                stages.stop_edge(root, p)
            write_report(root, p, st.records(), Path(root) / p.out)
            (st.dir / "timings.json").write_text(json.dumps(timings, indent=1))
    finally:
        if p.edge:
            stages.stop_edge(root, p)
    report = write_report(root, p, st.records(), Path(root) / p.out)
    (st.dir / "timings.json").write_text(json.dumps(timings, indent=1))
    return {"run": key, "records": st.records(), "report": report, "timings": timings}


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"
