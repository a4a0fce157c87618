"""`label status`: tasks total, labeled, skipped, per annotator and per strategy."""

from __future__ import annotations

from collections import Counter, defaultdict

from cityloop.labeling.annotator import annotator_id
from cityloop.labeling.project import LabelingProject


def status(project: LabelingProject) -> dict:
    """Counts from the project's JSON export joined with cityloop's task records."""
    export = project.export()
    names = project.annotator_names()
    recs = project.records()
    totals = Counter()
    by_annotator: dict[str, Counter] = defaultdict(Counter)
    by_strategy: dict[str, Counter] = defaultdict(Counter)
    for t in export:
        anns = t.get("annotations", [])
        labeled = any(not a.get("was_cancelled") for a in anns)
        skipped = bool(anns) and not labeled
        rec = recs.get(t["id"])
        arm = "honeypot" if rec and rec.honeypot else (rec.strategy if rec else t["data"].get("strategy", "?"))
        state = "labeled" if labeled else "skipped" if skipped else "open"
        totals["tasks"] += 1
        totals[state] += 1
        by_strategy[arm]["tasks"] += 1
        by_strategy[arm][state] += 1
        for a in anns:
            who = names.get(annotator_id(a), str(annotator_id(a)))
            by_annotator[who]["skipped" if a.get("was_cancelled") else "annotations"] += 1
            by_annotator[who]["seconds"] += float(a.get("lead_time") or 0.0)
    return {"project": project.title, "project_id": project.id,
            "tasks": {k: totals.get(k, 0) for k in ("tasks", "labeled", "skipped", "open")},
            "by_annotator": {k: dict(v) for k, v in sorted(by_annotator.items())},
            "by_strategy": {k: dict(v) for k, v in sorted(by_strategy.items())}}


def wait_until_labeled(project: LabelingProject, task_ids: list[int], timeout: float, poll: float = 5.0,
                       sleep=None) -> dict:
    """Block until every task has an annotation or a skip, or `timeout` seconds pass; counts either way."""
    import time

    sleep = sleep or time.sleep
    want = set(task_ids)
    deadline = time.monotonic() + timeout
    while True:
        tasks = [t for t in project.export() if t["id"] in want]
        done = sum(1 for t in tasks if t.get("annotations"))
        if done >= len(want) or time.monotonic() >= deadline:
            return {"tasks": len(want), "done": done, "timed_out": done < len(want)}
        sleep(poll)
