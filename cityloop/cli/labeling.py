"""`cityloop labelstudio …` (the server) and `cityloop label …` (the round trip), Typer sub-apps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cityloop.cli.output import JsonOption, echo_json, print_table
from cityloop.core.settings import find_root, load_section

server_app = typer.Typer(help="The project's Label Studio server (own venv, 127.0.0.1).", no_args_is_help=True)
label_app = typer.Typer(help="Labeling in Label Studio: push batches, scripted annotators, pull versions.",
                        no_args_is_help=True)
console = Console(soft_wrap=True)  # messages: one line each in a pipe or a log; tables: print_table
err = Console(stderr=True, soft_wrap=True)
MODEL = "cityloop-detector:latest"


def _params(port: int | None = None):
    from cityloop.labeling.params import LabelingParams

    return load_section(find_root(), "labeling", LabelingParams, port=port or None)


def _server(port: int | None = None):
    from cityloop.labeling.server import LabelStudioServer

    return LabelStudioServer(find_root(), port=_params(port).port)


def _fail(exc: Exception) -> None:
    err.print(f"[red]{exc}[/]")
    raise typer.Exit(1) from None


# ------------------------------------------------------------------ server


@server_app.command("up")
def up(port: Annotated[int | None, typer.Option(help="Port (default: params labeling.port).")] = None) -> None:
    """Install Label Studio into its own venv if missing, start it and wait for the API. Idempotent."""
    import time

    from cityloop.labeling.server import LabelStudioError

    srv = _server(port)
    t0 = time.perf_counter()
    try:
        with console.status("starting Label Studio (first start migrates its database: about a minute)"):
            st = srv.start()
    except LabelStudioError as exc:
        _fail(exc)
    console.print(f"Label Studio {st.message} at [bold]{st.url}[/] (pid {st.pid}, {time.perf_counter() - t0:.1f} s); "
                  f"data {st.data_dir}; login: $LABEL_STUDIO_USERNAME or {srv.state / 'credentials.env'}")


@server_app.command("down")
def down(port: Annotated[int | None, typer.Option(help="Port (default: params labeling.port).")] = None) -> None:
    """Stop the server (its data stays)."""
    console.print("stopped" if _server(port).stop() else "not running")


@server_app.command("status")
def server_status(port: Annotated[int | None, typer.Option(help="Port (default: labeling.port).")] = None) -> None:
    """Whether the server runs, where, and on which database."""
    st = _server(port).status()
    console.print_json(json.dumps({"running": st.running, "url": st.url, "pid": st.pid, "data_dir": str(st.data_dir),
                                   "database": st.database}))
    if not st.running:
        raise typer.Exit(1)


# ------------------------------------------------------------------ round trip


def project_and_repo(params):
    from cityloop.labeling.project import open_workspace

    _, project, repo, gate = open_workspace(find_root(), params)
    return project, repo, gate


@label_app.command("push")
def push_cmd(
    data: Annotated[str | None, typer.Option(help="Unlabeled pool version (default: params labeling.pool).")] = None,
    model: Annotated[str, typer.Option(help="Model that pre-annotates and scores uncertainty.")] = MODEL,
    budget: Annotated[int | None, typer.Option(min=0, help="Frames to send (default: params labeling.budget).")] = None,
    strategy: Annotated[str | None, typer.Option(help="active (uncertainty + diversity) | random (control).")] = None,
    honeypots: Annotated[str | None, typer.Option(help="Labeled version for known-answer tasks ('' for none).")] = None,
) -> None:
    """Select a batch from the pool and import it with the model's pre-annotations."""
    from cityloop.labeling.push import label_classes, labeled_elsewhere, push
    from cityloop.models.runtime import OnnxDetector
    from cityloop.models.store import ModelStore

    params = _params()
    project, repo, _ = project_and_repo(params)
    mv = ModelStore(find_root()).get(model)
    project.ensure(label_classes(mv.card), description=f"cityloop batches from {data or params.pool}")
    pp = params.push_params(budget=budget, strategy=strategy)
    hp = params.honeypot_dataset if honeypots is None else (honeypots or None)
    with console.status(f"scoring {data or params.pool} with {mv.id}"):
        res = push(project, repo, OnnxDetector(mv.model_path, mv.card, threads=2), mv.id, data or params.pool, pp,
                   exclude=labeled_elsewhere(repo, [params.dataset]), honeypot_data=hp)
    console.print(f"[green]{len(res.task_ids)}[/] tasks ({res.strategy}: {res.reasons}) + {len(res.honeypot_ids)} "
                  f"honeypots imported into project {res.project_id}, batch {res.batch}; {res.pool_left} frames left "
                  f"in the pool. Label at {project.page()}")


@label_app.command("annotate")
def annotate_cmd(
    truth: Annotated[list[Path], typer.Option(help="Simulator output folder(s) holding the ground truth.")],
    overlap: Annotated[float | None, typer.Option(help="Share of tasks labeled twice.")] = None,
) -> None:
    """Run the scripted annotators of params labeling.annotators on the project's open tasks."""
    from cityloop.labeling.annotator import run_team, truth_from_folder

    params = _params()
    project, _, _ = project_and_repo(params)
    gt: dict = {}
    for t in truth:
        gt |= truth_from_folder(t)
    ov = params.overlap_share if overlap is None else overlap
    for r in run_team(project, params.error_models(), gt, ov, params.seed):
        console.print(f"{r.annotator}: {r.annotated} annotated, {r.skipped} skipped in {r.seconds:.1f} s")


@label_app.command("pull")
def pull_cmd(
    into: Annotated[str | None, typer.Option(help="Dataset receiving the labels (default: labeling.dataset).")] = None,
    push: Annotated[bool, typer.Option(help="Push the new version to the DVC remote.")] = True,
) -> None:
    """Export completed annotations, check them, and version the accepted ones through the gate."""
    from cityloop.governance.repository import GateFailed
    from cityloop.labeling.pull import pull

    params = _params()
    project, repo, gate = project_and_repo(params)
    try:
        res = pull(project, repo, into or params.dataset, gate, params.min_agreement, params.iou, params.split, push)
    except GateFailed as exc:
        err.print(f"[red bold]Dataset gate failed: no version published; the annotations stay in Label Studio.[/]\n"
                  f"{exc.result.report()}")
        raise typer.Exit(1) from None
    print_pull(res)
    if res.rejected:
        raise typer.Exit(3)


def print_pull(res) -> None:
    for tid, reasons in sorted(res.rejected.items()):
        err.print(f"[yellow]task {tid} rejected[/]: " + " | ".join(reasons))
    for tid, why in sorted(res.held_back.items()):
        err.print(f"[yellow]task {tid} held back[/]: {why}")
    verdict = f"[green]{res.version}[/] with {res.new_frames} new frames" if res.version else "no new version"
    console.print(f"{len(res.accepted)} tasks accepted, {len(res.rejected)} rejected, {len(res.held_back)} held back, "
                  f"{res.already} already versioned → {verdict}. Report: {res.report}")


@label_app.command("status")
def status_cmd(json_out: JsonOption = False) -> None:
    """Tasks total, labeled, skipped; per annotator; per strategy."""
    from cityloop.labeling.status import status

    s = status(project_and_repo(_params())[0])
    if json_out:
        echo_json(s)
        return
    t = s["tasks"]
    console.print(f"project {s['project']} ({s['project_id']}): {t['tasks']} tasks, {t['labeled']} labeled, "
                  f"{t['skipped']} skipped, {t['open']} open")
    for title, rows, cols in (("per annotator", s["by_annotator"], ("annotations", "skipped", "seconds")),
                              ("per strategy", s["by_strategy"], ("tasks", "labeled", "skipped", "open"))):
        table = Table(title=title)
        table.add_column("")
        for c in cols:
            table.add_column(c, justify="right")
        for k, v in rows.items():
            table.add_row(k, *(f"{v.get(c, 0):.0f}" for c in cols))
        print_table(table, console)
