"""`cityloop edge …`: run edge nodes, see them, roll model versions out and back, the center inbox.

Exit codes: 0 done; 1 refused or failed (rolled back, nothing to roll back, no nodes), message printed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cityloop.cli.output import JsonOption, echo_json, print_table
from cityloop.core.settings import find_root, load_section

app = typer.Typer(help="Edge nodes: serve a bento, run streams, hard examples, canary rollout.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)
inbox_app = typer.Typer(help="The center inbox of hard examples.", no_args_is_help=True)
app.add_typer(inbox_app, name="inbox")
console = Console(soft_wrap=True)  # messages: one line each in a pipe or a log; tables: print_table
err = Console(stderr=True, soft_wrap=True)


def _default_version(root: Path) -> str:
    from cityloop.models.store import ModelStore

    reg = ModelStore(root, track=False)
    versions = reg.list()
    if not versions:
        raise typer.BadParameter("the registry holds no model version", param_hint="--model")
    prod = reg.production(versions[0].name)
    return (prod or versions[-1]).id


@app.command("start")
def start(
    name: Annotated[str, typer.Option(help="Node name (its state: .cityloop/edge/NAME).")],
    port: Annotated[int, typer.Option(help="Port of the node's bento server on 127.0.0.1.")],
    stream: Annotated[list[str] | None, typer.Option(
        help="Camera stream: [CAMERA_ID=]folder | video file | OpenCV URL (repeatable).")] = None,
    model: Annotated[str | None, typer.Option(
        help="Model version to serve when the node has no assignment yet (default: production, else latest).")] = None,
    center: Annotated[str | None, typer.Option(help="Center inbox URL for hard examples.")] = None,
    loop: Annotated[bool, typer.Option(help="Replay streams when they end.")] = False,
    max_fps: Annotated[float, typer.Option(help="Frame rate cap over all streams (0: none).")] = 0.0,
    sink: Annotated[str | None, typer.Option(help="Analysis sink module:object (default: detections.jsonl).")] = None,
    budget_per_hour: Annotated[int | None, typer.Option(
        min=0, help="Most hard examples selected per hour (default: edge.select.budget_per_hour; 0: no cap).",
    )] = None,
    shadow: Annotated[str | None, typer.Option(
        help="Second model version run in-process; frames where the two disagree become hard examples.")] = None,
) -> None:
    """Run an edge node in the foreground until SIGTERM/Ctrl+C (its server stops with it)."""
    import logging

    from cityloop.bento.serving import ServeParams, serve_env
    from cityloop.core.images import image_limit
    from cityloop.edge.node import EdgeNode, EdgeParams, NodeConfig, assign, node_dir, read_json

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is too much on a node
    root = find_root()
    ep = load_section(root, "edge", EdgeParams)
    serve = load_section(root, "serve", ServeParams)
    if read_json(node_dir(root, name) / "assignment.json") is None or model:
        assign(root, name, model or _default_version(root))
    if budget_per_hour is not None:
        ep.select.budget_per_hour = budget_per_hour
    cfg = NodeConfig(root=root, name=name, port=port, streams=list(stream or []), center=center, loop=loop,
                     max_fps=max_fps, select=ep.select, sink=sink, shadow=shadow,
                     serve_env=serve_env(serve, image_limit(root)),
                     **ep.node_settings())
    EdgeNode(cfg).run()


@app.command("status")
def status(json_out: JsonOption = False) -> None:
    """Every node: up/down, model version, fps, latency, queue depth (outbox), dead letters, heartbeat age,
    and what is wrong (a version that failed to start, a dead server, a failing sink)."""
    from cityloop.edge.fleet import list_nodes

    nodes = list_nodes(find_root())
    if json_out:
        echo_json(nodes)
        return
    if not nodes:
        console.print("no edge nodes (start one with `cityloop edge start`)")
        return
    table = Table(title="cityloop edge nodes")
    for col in ("node", "state", "model version", "port", "fps", "p50 ms", "queue", "acked", "dead", "frames", "beat",
                "problems"):
        table.add_column(col, justify="left" if col in ("node", "state", "model version", "problems") else "right",
                         overflow="fold")
    for n in nodes:
        state = f"[green]{n['state']}[/]" if n["up"] else "[red]down[/]"
        version = n.get("model_version") or "-"
        if n.get("assigned") and n["assigned"] != n.get("model_version"):
            version += f" → {n['assigned']}"
        table.add_row(n["name"], state, version, str(n.get("port")), str(n.get("fps")), str(n.get("latency_p50_ms")),
                      str(n.get("queue_depth")), str(n.get("acked")), str(n.get("dead_letter") or 0),
                      str(n.get("frames")), f"{n['age_s']:.0f}s", _problems(n))
    print_table(table, console)


def _problems(n: dict) -> str:
    """One line per thing that went wrong on a node (status.json's failure records), newest facts only."""
    out = []
    fail = n.get("last_failure")
    if fail and not fail.get("resolved"):
        what = "did not start" if fail.get("kind") == "start" else "server died"
        lines = [ln.strip() for ln in str(fail.get("reason", "")).splitlines() if ln.strip()]
        reason = " … ".join(dict.fromkeys(lines[:1] + lines[-1:]))  # the error, and the log's last line
        when = time.strftime("%H:%M:%S", time.localtime(fail.get("ts", 0)))
        out.append(f"{fail.get('version')} {what} at {when} (x{fail.get('attempts')}): {reason[:160]}")
    sink = n.get("sink") or {}
    if sink.get("errors") or sink.get("dropped"):
        err_text = (sink.get("last_error") or {}).get("error", "")
        out.append(f"sink: {sink.get('errors', 0)} errors, {sink.get('dropped', 0)} frames dropped {err_text[:120]}")
    req = n.get("last_error")
    if req and time.time() - float(req.get("ts", 0)) < 60:
        out.append(f"{req.get('kind')}: {str(req.get('error'))[:120]}")
    return "\n".join(out) or "-"


@app.command("assign")
def assign_cmd(name: Annotated[str, typer.Argument(help="Node name.")],
               model_version: Annotated[str, typer.Argument(help="Version to serve.")]) -> None:
    """Point one node at a model version directly (no canary, no comparison)."""
    from cityloop.edge.node import assign

    assign(find_root(), name, model_version)
    console.print(f"{name} → {model_version}")


@app.command("rollout")
def rollout_cmd(
    model_version: Annotated[str, typer.Argument(help="Candidate version, e.g. cityloop-detector:v3.")],
    canary: Annotated[str | None, typer.Option(help="Canary node (default: the first node up).")] = None,
) -> None:
    """Prefect flow `release`: bento → canary → compare with production → roll out or roll back."""
    from cityloop.flows.release import release  # Prefect, only when a rollout runs

    root = find_root()
    try:
        d = release(model_version=model_version, canary=canary, root=str(root))
    except (RuntimeError, TimeoutError, LookupError) as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    colour = "green" if d["passed"] else "yellow"
    console.print(f"[{colour}]{d['action']}[/]: {d['reason']}")
    if not d["passed"]:
        raise typer.Exit(1)


@app.command("rollback")
def rollback_cmd() -> None:
    """Put the registry's previous production version back, on every node that is up."""
    from cityloop.edge.rollout import rollback_all

    try:
        out = rollback_all(find_root())
    except (RuntimeError, TimeoutError) as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    console.print(f"nodes {', '.join(out['nodes'])} on {out['model_version']}: {out['registry']['reason']}")


@inbox_app.command("serve")
def inbox_serve(port: Annotated[int, typer.Option(help="Port on --host.")] = 8701,
                host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1") -> None:
    """Receive hard examples from edge nodes into data/inbox/edge (idempotent by sha256)."""
    from cityloop.edge.inbox import TOKEN_ENV, TOKEN_FILE, InboxStore, serve_inbox

    root = find_root()
    srv = serve_inbox(root, port, host)  # generates the token on the first start; never printed
    where = f"${TOKEN_ENV}" if os.environ.get(TOKEN_ENV) else root / TOKEN_FILE
    console.print(f"inbox on {srv.url} → {InboxStore(root).dir} (uploads need the token in {where})")
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()


@inbox_app.command("ingest")
def inbox_ingest_cmd(dataset: Annotated[str, typer.Option(help="Dataset name.")] = "edge-hard",
                     push: Annotated[bool, typer.Option(help="Push to the DVC remote.")] = False) -> None:
    """The inbox through the governance gate as `--source edge` frames (split pool)."""
    from cityloop.edge.inbox import inbox_ingest

    t0 = time.time()
    try:
        res = inbox_ingest(find_root(), dataset, push)
    except ValueError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    console.print(f"[green]{res.version.id}[/]: {res.new_frames} new, {res.duplicates} duplicates "
                  f"({time.time() - t0:.1f} s)")
