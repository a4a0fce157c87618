"""`cityloop schedule plan | show | apply | history | clear`: which scenarios run on which camera, on
which edge node, with which model version and at how many frames/s, slot by slot (cityloop.schedule)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cityloop.cli.output import JsonOption, echo_json, print_table
from cityloop.core.settings import find_root, load_section

console = Console(soft_wrap=True)  # messages: one line each in a pipe or a log; tables: print_table
err = Console(stderr=True, soft_wrap=True)
app = typer.Typer(help="Scheduling: plan tasks onto edge nodes within their budgets, apply, history.",
                  no_args_is_help=True)
VersionArg = Annotated[str | None, typer.Argument(help="Plan version (v3; default: the current one).")]


def _params(root: Path):
    from cityloop.schedule.params import ScheduleParams

    return load_section(root, "schedule", ScheduleParams)


def _fail(exc: Exception) -> None:
    err.print(f"[red]schedule: {escape(str(exc))}[/]")
    raise typer.Exit(1) from None


def _store(root: Path):
    from cityloop.schedule.store import PlanStore

    return PlanStore(root, _params(root).store)


def _hhmm(iso: str) -> str:
    return datetime.fromisoformat(iso).strftime("%H:%M")


def slots_table(plan: Any) -> Table:
    """One row per slot: its time, the load on each node against its budget, tasks, degraded, unserved."""
    t = Table(title=f"schedule plan {plan.name}: {plan.slot_min}-minute slots from {plan.start} (UTC)")
    t.add_column("slot")
    for n, v in plan.nodes.items():
        t.add_column(f"{n} fps/{v['budget_fps']:g}", justify="right")
    for col in ("cameras", "degraded", "unserved", "scenarios running"):
        t.add_column(col, justify="left" if col == "scenarios running" else "right")
    for s in plan.slots:
        load = s.load()
        running = sorted({sc for task in s.tasks for sc in task.scenarios})
        t.add_row(f"{_hhmm(s.start)}-{_hhmm(s.end)}", *(f"{load.get(n, 0.0):g}" for n in plan.nodes),
                  str(len({task.camera for task in s.tasks})), str(sum(task.degraded for task in s.tasks)),
                  str(len(s.unserved)), ", ".join(running) or "-")
    return t


def tasks_table(plan: Any, slot: Any) -> Table:
    t = Table(title=f"tasks {_hhmm(slot.start)}-{_hhmm(slot.end)} (slot {slot.index})")
    for col in ("camera", "node", "model", "fps", "needs", "scenarios"):
        t.add_column(col, justify="right" if col in ("fps", "needs") else "left")
    for task in slot.tasks:
        t.add_row(task.camera, task.node, task.model or "(served)", f"{task.fps:g}",
                  f"{task.need_fps:g}" + (" [yellow]degraded[/]" if task.degraded else ""), ", ".join(task.scenarios))
    for u in slot.unserved:
        t.add_row(u.camera, "-", "-", "0", "", f"[red]{u.scenario}[/]: {escape(u.reason)}")
    return t


def _models_line(plan: Any) -> str:
    if all(m is None for m in plan.models.values()):
        return "models: none registered (each node runs the version it serves)"
    parts = []
    for sc, m in plan.models.items():
        who = "unserved" if m is None else m["id"] + ("" if m["vendor"] == "cityloop" else f" (partner {m['vendor']})")
        parts.append(f"{sc}: {who}")
    return "models: " + "; ".join(parts)


def _parse_at(at: str | None) -> datetime | None:
    if at is None:
        return None
    try:
        dt = datetime.fromisoformat(at)
    except ValueError:
        raise typer.BadParameter(f"expected an ISO time such as 2026-05-04T06:00, got {at!r}", param_hint="--at") \
            from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


@app.command("plan")
def plan_cmd(
    streams: Annotated[Path | None, typer.Option(help="Stream folder whose cameras.json lists the cameras "
                                                      "(default: params schedule.cameras).")] = None,
    at: Annotated[str | None, typer.Option(help="Start of the plan, ISO (default: now; UTC unless it says).")] = None,
    json_out: JsonOption = False,
) -> None:
    """Plan from the current inputs (cameras, nodes and their budgets, models, windows); a new version
    only when they changed. Prints the plan's slots."""
    from cityloop.schedule.plan import ScheduleError
    from cityloop.schedule.store import change_text, replan

    root = find_root()
    when = _parse_at(at)
    try:
        out = replan(root, _params(root), streams, when)
    except (ScheduleError, ValueError) as exc:
        _fail(exc)
    plan = out["plan"]
    if json_out:
        echo_json({"version": plan.name, "created": out["created"], "diff": out["diff"], "summary": out["summary"],
                   "plan": plan.to_dict()})
        return
    print_table(slots_table(plan), console)
    console.print(_models_line(plan))
    for note in plan.notes:
        console.print(f"[yellow]{escape(note)}[/]")
    s = out["summary"]
    if out["created"]:
        parent = f"v{plan.parent}" if plan.parent is not None else "none"
        console.print(f"[green]plan {plan.name}[/] (parent {parent}): {s['tasks']} tasks, {s['degraded']} degraded, "
                      f"{s['unserved']} unserved; change: {change_text(out['diff'])}. "
                      f"Apply it with: cityloop schedule apply")
    else:
        console.print(f"inputs unchanged: the current plan {plan.name} stands (no new version)")


@app.command("show")
def show(version: VersionArg = None,
         at: Annotated[str | None, typer.Option(help="List the tasks of the slot holding this time "
                                                     "(default: now).")] = None,
         json_out: JsonOption = False) -> None:
    """A plan's slots, the tasks of one slot, and what each node reports it ran."""
    from cityloop.schedule.plan import ScheduleError
    from cityloop.schedule.store import node_reports

    root = find_root()
    try:
        plan = _store(root).get(version)
    except (ScheduleError, ValueError) as exc:
        _fail(exc)
    ran = node_reports(root)
    if json_out:
        echo_json({**plan.to_dict(), "ran": ran})
        return
    when = _parse_at(at) or datetime.now(UTC)
    print_table(slots_table(plan), console)
    print_table(tasks_table(plan, plan.slot_at(when.timestamp())), console)
    console.print(_models_line(plan))
    console.print(f"created {plan.created}, parent {'none' if plan.parent is None else f'v{plan.parent}'}, "
                  f"inputs {plan.inputs_digest[:12]}; nodes: " + ", ".join(
                      f"{n} {v['budget_fps']:g} frames/s ({v['source']})" for n, v in plan.nodes.items()))
    if ran:
        t = Table(title="what the nodes ran (status.json)")
        for col in ("node", "plan", "camera", "processed", "skipped", "fps", "scenarios"):
            t.add_column(col, justify="right" if col in ("processed", "skipped", "fps") else "left")
        for node, rep in ran.items():
            for cam, c in sorted(rep.get("cameras", {}).items()):
                t.add_row(node, rep.get("plan", "?"), cam, str(c["processed"]), str(c["skipped"]), f"{c['fps']:g}",
                          ", ".join(c["scenarios"]) or "-")
        print_table(t, console)


@app.command("apply")
def apply_cmd(version: VersionArg = None, json_out: JsonOption = False) -> None:
    """Write each node's share of a plan into its folder (.cityloop/edge/NODE/schedule.json); running
    nodes pick it up within a second."""
    from cityloop.schedule.plan import ScheduleError

    root = find_root()
    try:
        out = _store(root).apply(version)
    except (ScheduleError, ValueError) as exc:
        _fail(exc)
    if json_out:
        echo_json(out)
        return
    for node, n in out["nodes"].items():
        console.print(f"{node}: {n} tasks of plan {out['version']}")
    console.print(f"[green]applied {out['version']}[/] to {len(out['nodes'])} node(s)")


@app.command("history")
def history(json_out: JsonOption = False) -> None:
    """Every plan version: when, its parent, digests, its size and what changed."""
    try:
        rows = _store(find_root()).history()
    except ValueError as exc:
        _fail(exc)
    if json_out:
        echo_json(rows)
        return
    if not rows:
        console.print("no plans yet (cityloop schedule plan)")
        return
    t = Table(title="schedule plans")
    for col in ("version", "created", "parent", "inputs", "tasks", "degraded", "unserved", "change", ""):
        t.add_column(col, justify="right" if col in ("tasks", "degraded", "unserved") else "left")
    for r in rows:
        flags = " ".join(f for f, on in (("current", r["current"]), ("applied", r["applied"])) if on)
        t.add_row(r["version"], r["created"] or "-", r["parent"] or "-", r["inputs_digest"], str(r["tasks"]),
                  str(r["degraded"]), str(r["unserved"]), r["change"], flags)
    print_table(t, console)


@app.command("clear")
def clear_cmd() -> None:
    """Remove every node's schedule: nodes go back to every camera, every frame, every scenario."""
    from cityloop.schedule.store import clear

    gone = clear(find_root())
    console.print(f"schedule removed from {', '.join(gone)}" if gone else "no node had a schedule")
