"""Plans as versioned artifacts, and `apply`: each node's share written into its folder.

Layout under `<root>/<schedule.store>` (default `.cityloop/schedule/`):

    plan-v<N>.json   a plan (immutable once written): its inputs digest, content digest, parent
    current          the newest version ("v<N>")
    applied.json     the version last applied, when, to which nodes

A re-plan whose inputs digest equals the current plan's makes no new version. `apply` writes
`<root>/.cityloop/edge/<node>/schedule.json` (the plan with only that node's tasks) for every node
of the plan, and an empty one for any other node that had a schedule: it then idles until the next
plan names it. A node without a schedule.json runs every camera, every frame, every scenario.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cityloop.edge.node import SCHEDULE_FILE, node_dir, read_json, write_json
from cityloop.schedule.plan import Plan, ScheduleError, diff

_PLAN_RE = re.compile(r"^plan-v([1-9][0-9]*)\.json$")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class PlanStore:
    """The versioned plans of a workspace."""

    def __init__(self, root: Path, folder: str = ".cityloop/schedule") -> None:
        self.root = Path(root)
        self.dir = self.root / folder

    @contextmanager
    def lock(self):
        """One writer at a time (the hourly flow and a person at the CLI may re-plan together)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def path(self, version: int) -> Path:
        return self.dir / f"plan-v{version}.json"

    def versions(self) -> list[int]:
        if not self.dir.is_dir():
            return []
        return sorted(int(m[1]) for p in self.dir.iterdir() if (m := _PLAN_RE.match(p.name)))

    def current_version(self) -> int | None:
        try:
            return int((self.dir / "current").read_text().strip().removeprefix("v"))
        except (OSError, ValueError):
            versions = self.versions()
            return versions[-1] if versions else None

    def get(self, ref: str | int | None = None) -> Plan:
        """A plan by version: 3, "v3", "current" / None (the newest), "applied" (the one the nodes run)."""
        if ref in (None, "current", "latest"):
            version = self.current_version()
        elif ref == "applied":
            version = (read_json(self.dir / "applied.json") or {}).get("version")
        else:
            try:
                version = int(str(ref).removeprefix("v"))
            except ValueError:
                raise ScheduleError(f"plan version must look like v3 (or current, applied), got {ref!r}") from None
        if version is None or not self.path(version).exists():
            have = ", ".join(f"v{v}" for v in self.versions()) or "none yet (cityloop schedule plan)"
            raise ScheduleError(f"no plan {ref or 'current'} in {self.dir} (versions: {have})")
        return Plan.from_dict(json.loads(self.path(version).read_text()))

    def save(self, plan: Plan) -> tuple[Plan, bool]:
        """Store `plan` as the next version, unless the current plan has the same inputs digest: then the
        current plan comes back and nothing is written. Returns (plan, created)."""
        with self.lock():
            cur = self.current_version()
            if cur is not None:
                current = self.get(cur)
                if current.inputs_digest == plan.inputs_digest:
                    return current, False
            version = max(self.versions(), default=0) + 1
            plan.version, plan.parent, plan.created = version, cur, _now()
            data = {**plan.to_dict(), "digest": plan.content_digest()}
            write_json(self.path(version), data)
            tmp = self.dir / f".current.{os.getpid()}.tmp"
            tmp.write_text(f"v{version}\n")
            os.replace(tmp, self.dir / "current")
            return plan, True

    def diff(self, version: int) -> dict[str, Any]:
        """What changed from version's parent to version."""
        plan = self.get(version)
        parent = self.get(plan.parent) if plan.parent is not None and self.path(plan.parent).exists() else None
        return diff(parent, plan)

    def history(self) -> list[dict[str, Any]]:
        """One row per version, oldest first: created, parent, digests, summary, whether it is current / applied."""
        cur = self.current_version()
        applied = (read_json(self.dir / "applied.json") or {}).get("version")
        rows = []
        for v in self.versions():
            data = json.loads(self.path(v).read_text())
            plan = Plan.from_dict(data)
            d = self.diff(v)
            rows.append({"version": f"v{v}", "created": plan.created, "parent": None if plan.parent is None
                         else f"v{plan.parent}", "inputs_digest": plan.inputs_digest[:12],
                         "digest": (data.get("digest") or "")[:12], "current": v == cur, "applied": v == applied,
                         **plan.summary(), "change": change_text(d)})
        return rows

    def apply(self, ref: str | int | None = None) -> dict[str, Any]:
        """Write each node's share of the plan into its folder; returns {version, nodes: {node: tasks}}."""
        plan = self.get(ref)
        written: dict[str, int] = {}
        base = self.root / ".cityloop" / "edge"
        others = [d.name for d in base.iterdir() if (d / SCHEDULE_FILE).exists()] if base.is_dir() else []
        for node in sorted(set(plan.nodes) | set(others)):
            mine = plan.for_node(node)
            d = node_dir(self.root, node)
            d.mkdir(parents=True, exist_ok=True)
            write_json(d / SCHEDULE_FILE, {**mine.to_dict(), "node": node, "applied": _now()})
            written[node] = sum(len(s.tasks) for s in mine.slots)
        with self.lock():
            write_json(self.dir / "applied.json", {"version": plan.version, "ts": _now(), "nodes": written})
        return {"version": plan.name, "nodes": written}


def change_text(d: dict[str, Any]) -> str:
    """A diff in one line: '+3 −1 ~12 tasks; nodes edge-a 4→6; models ...'."""
    parts = [f"+{d['added']} -{d['removed']} ~{d['changed']} tasks"]
    if d["nodes"]:
        parts.append("nodes " + ", ".join(f"{n} {a if a is not None else '-'}→{b if b is not None else '-'}"
                                          for n, (a, b) in d["nodes"].items()))
    if d["models"]:
        parts.append("models " + ", ".join(f"{s} {a or '-'}→{b or '-'}" for s, (a, b) in d["models"].items()))
    return "; ".join(parts)


def node_reports(root: Path) -> dict[str, Any]:
    """What each node says it ran under its schedule (status.json `schedule`), by node."""
    base = Path(root) / ".cityloop" / "edge"
    out = {}
    for d in sorted(base.iterdir()) if base.is_dir() else []:
        st = read_json(d / "status.json") or {}
        if st.get("schedule"):
            out[d.name] = st["schedule"]
    return out


def clear(root: Path) -> list[str]:
    """Remove every node's schedule.json (nodes go back to every camera, frame and scenario)."""
    base = Path(root) / ".cityloop" / "edge"
    gone = []
    for d in sorted(base.iterdir()) if base.is_dir() else []:
        if (d / SCHEDULE_FILE).exists():
            (d / SCHEDULE_FILE).unlink()
            gone.append(d.name)
    return gone


def replan(root: Path, p: Any, streams: Path | None = None, at: datetime | None = None) -> dict[str, Any]:
    """Read the inputs, plan, store the plan as a new version when they changed (the one sequence the CLI
    and the `replan` flow run). Returns {plan, created, diff, summary}; `p` is the ScheduleParams."""
    from cityloop.schedule.inputs import load_inputs
    from cityloop.schedule.plan import make_plan

    inputs = load_inputs(Path(root), p, streams)
    store = PlanStore(Path(root), p.store)
    plan, created = store.save(make_plan(inputs, at))
    return {"plan": plan, "created": created, "diff": store.diff(plan.version) if created else None,
            "summary": plan.summary()}
