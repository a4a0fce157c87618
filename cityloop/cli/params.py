"""`cityloop params check | show`: every section of the workspace's params.yaml through its class.

params.yaml is the one home of tunables, one section per stage. Each section has one dataclass next
to the code that reads it, and one loader builds it (cityloop.core.settings.load_section): unknown
and missing keys are errors naming the section. The map section -> class lives here, on the top
floor, because only the top may import every wing.

Exit codes: 0 every section loads; 1 a section does not load, params.yaml is missing or unreadable,
or it holds a section no class reads (a typo such as `trian:`); 2 bad usage (show: an unknown SECTION).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cityloop.cli.output import JsonOption, echo_json, print_table
from cityloop.core.settings import find_root, load_params, load_section

app = typer.Typer(help="params.yaml: check every section against its class, show one's effective values.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)
console = Console(soft_wrap=True)  # messages: one line each in a pipe or a log; tables: print_table
err = Console(stderr=True, soft_wrap=True)


def section_classes() -> dict[str, type]:
    """params.yaml section -> the class `load_section` builds it with, in params.yaml's order."""
    from cityloop.analysis.params import AnalysisParams
    from cityloop.analysis.report import ReportParams
    from cityloop.bento.serving import ServeParams
    from cityloop.core.images import LimitsParams
    from cityloop.edge.node import EdgeParams
    from cityloop.edge.rollout import ReleaseParams
    from cityloop.flows.params import StackParams
    from cityloop.governance.gate import GateParams
    from cityloop.governance.repository import IngestParams
    from cityloop.labeling.params import LabelingParams
    from cityloop.loop.params import LoopParams
    from cityloop.models.gate import RegistryParams
    from cityloop.models.lifecycle import ExportParams
    from cityloop.models.params import TrainSection
    from cityloop.scenarios.settings import ScenariosSection
    from cityloop.scenes.params import GenerateParams
    from cityloop.scenes.season import SeasonParams
    from cityloop.schedule.params import ScheduleParams

    return {"generate": GenerateParams, "ingest": IngestParams, "gate": GateParams, "train": TrainSection,
            "export": ExportParams, "registry": RegistryParams, "serve": ServeParams, "edge": EdgeParams,
            "release": ReleaseParams, "labeling": LabelingParams, "analysis": AnalysisParams,
            "scenarios": ScenariosSection, "report": ReportParams, "season": SeasonParams,
            "schedule": ScheduleParams,
            "loop": LoopParams, "stack": StackParams, "limits": LimitsParams}


def _class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def check_sections(root: Path) -> list[dict[str, Any]]:
    """One row per section: {"section", "class", "in_params", "ok", "error"}. Every known section is
    built through its class (defaults where params.yaml has no such section); a section of params.yaml
    that no class reads is a row with ok False. Raises ValueError when params.yaml is missing or unreadable."""
    path = Path(root) / "params.yaml"
    if not path.exists():
        raise ValueError(f"no params.yaml in {root}")
    try:
        raw = load_params(Path(root))
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must map section names to sections, not {type(raw).__name__}")
    classes = section_classes()
    rows = []
    for section, cls in classes.items():
        row = {"section": section, "class": _class_name(cls), "in_params": section in raw, "ok": True, "error": None}
        try:
            if raw.get(section) is not None and not isinstance(raw[section], dict):
                raise ValueError(f"{section}: must be a mapping of keys to values, not {type(raw[section]).__name__}")
            load_section(Path(root), section, cls)
        except Exception as exc:  # noqa: BLE001 - every problem of a section is reported, never raised
            row.update(ok=False, error=f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else str(exc))
        rows.append(row)
    _check_frame_contract(Path(root), {r["section"]: r for r in rows})
    for section in raw:
        if section not in classes:
            near = difflib.get_close_matches(str(section), list(classes), n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"known: {', '.join(classes)}"
            rows.append({"section": section, "class": None, "in_params": True, "ok": False,
                         "error": f"unknown section {section!r}: no params class reads it ({hint})"})
    return rows


def _check_frame_contract(root: Path, rows: dict[str, dict[str, Any]]) -> None:
    """The frame contract across sections: frames rendered at generate.size must pass the gate
    (gate.allowed_sizes), else every dataset of the demo is quarantined at ingest."""
    if not (rows["generate"]["ok"] and rows["gate"]["ok"]):
        return
    from cityloop.governance.gate import GateParams
    from cityloop.scenes.params import frame_size

    size, allowed = frame_size(root), load_section(root, "gate", GateParams).allowed_sizes
    if f"{size}x{size}" not in allowed:
        rows["gate"].update(ok=False, error=f"gate.allowed_sizes {allowed} refuses the frames generate.size renders "
                                            f"({size}x{size}): add it, or change generate.size")


def _plain(value: Any) -> Any:
    """A section's effective values as plain YAML/JSON data (tuples as lists, paths as strings)."""
    return json.loads(json.dumps(value, default=str))


def effective(root: Path, section: str) -> dict[str, Any]:
    """The section as its class builds it, every default filled in (in params.yaml's shape)."""
    obj = load_section(Path(root), section, section_classes()[section])
    return _plain(obj.to_dict() if hasattr(obj, "to_dict") else dataclasses.asdict(obj))


@app.command("check")
def check(json_out: JsonOption = False) -> None:
    """Load every section of params.yaml through its class; report each as OK or its error, and flag
    sections no class reads. Exit 1 on any problem."""
    root = find_root()
    try:
        rows = check_sections(root)
    except ValueError as exc:
        if json_out:
            echo_json({"ok": False, "error": str(exc), "sections": []})
        else:
            err.print(f"[red]{escape(str(exc))}[/]")
        raise typer.Exit(1) from None
    bad = [r for r in rows if not r["ok"]]
    if json_out:
        echo_json({"ok": not bad, "root": str(root), "sections": rows})
    else:
        t = Table(title=f"params.yaml of {root}")
        for col in ("section", "class", "status"):
            t.add_column(col, overflow="fold")
        for r in rows:
            status = ("[green]OK[/]" + ("" if r["in_params"] else " (defaults: not in params.yaml)")
                      if r["ok"] else f"[red]FAIL[/] {escape(r['error'])}")
            t.add_row(r["section"], r["class"] or "-", status)
        print_table(t, console)
        console.print(f"[red]{len(bad)} section(s) with problems[/]" if bad else
                      f"[green]all {len(rows)} sections load[/]")
    if bad:
        raise typer.Exit(1)


@app.command("show")
def show(section: Annotated[str, typer.Argument(help="A params.yaml section, e.g. train, edge, serve.")],
         json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of YAML.")] = False) -> None:
    """Print a section's effective values (params.yaml with every default filled in) as YAML or JSON."""
    classes = section_classes()
    if section not in classes:
        raise typer.BadParameter(f"unknown section {section!r} (known: {', '.join(classes)})", param_hint="SECTION")
    try:
        values = effective(find_root(), section)
    except Exception as exc:  # noqa: BLE001 - a section that does not load: its error, exit 1
        err.print(f"[red]{escape(str(exc))}[/]")
        raise typer.Exit(1) from None
    if json_out:
        echo_json(values)
    else:
        typer.echo(yaml.safe_dump({section: values}, sort_keys=False).rstrip())
