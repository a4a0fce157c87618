"""`cityloop up | down | status`: the local stack (Prefect server + UI, the served deployments,
Label Studio) as the control room. Lifecycle code: cityloop/stack.py.

Exit codes: 0 done; 1 a component could not start (message and log tail printed).
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cityloop.cli.output import JsonOption, echo_json, print_table
from cityloop.core.settings import find_root

console = Console(soft_wrap=True)  # messages: one line each in a pipe or a log; tables: print_table
err = Console(stderr=True, soft_wrap=True)


def _stack(port: int | None = None, ls_port: int | None = None):
    from cityloop.stack import Stack

    return Stack(find_root(), prefect_port=port, labelstudio_port=ls_port)


def _components_table(st) -> Table:
    t = Table(title="cityloop stack")
    for col in ("component", "state", "url", "pid", "note"):
        t.add_column(col)
    for c in st.components:
        t.add_row(c.name, "[green]up[/]" if c.running else "[red]down[/]", c.url or "", str(c.pid or ""),
                  c.message)
    return t


def _deployments_table(deps: list[dict]) -> Table:
    t = Table(title=f"deployments ({len(deps)})")
    for col in ("deployment", "schedule", "triggers", "paused", "tags"):
        t.add_column(col)
    for d in deps:
        t.add_row(d["name"], ", ".join(map(str, d["schedules"])) or "-", ", ".join(d["triggers"]) or "-",
                  "yes" if d["paused"] else "no", ", ".join(d["tags"]))
    return t


def up(
    port: Annotated[int | None, typer.Option(help="Prefect server port on 127.0.0.1 (default: params "
                                                  "stack.prefect_port, or the last `up`'s).")] = None,
    labelstudio: Annotated[bool | None, typer.Option("--labelstudio/--no-labelstudio",
                                                     help="Also start Label Studio (default: params "
                                                          "stack.labelstudio).")] = None,
    labelstudio_port: Annotated[int | None, typer.Option(help="Label Studio port (default: params "
                                                              "labeling.port).")] = None,
) -> None:
    """Start the local stack: Prefect server + UI, the served deployments, Label Studio; print the URLs.
    Idempotent: what runs already is found, not started twice."""
    from cityloop.stack import StackError

    stack = _stack(port, labelstudio_port)
    try:
        st = stack.up(labelstudio=labelstudio, say=lambda s: err.print(f"[dim]{s}[/]"))
    except StackError as exc:
        err.print(f"[red bold]cityloop up failed:[/] {exc}")
        raise typer.Exit(1) from None
    print_table(_components_table(st), console)
    print_table(_deployments_table(st.deployments), console)
    ls = st.get("labelstudio")
    console.print(f"Prefect UI:   [bold]{stack.url}[/]  (deployments: {stack.url}/deployments, "
                  f"runs: {stack.url}/runs)\n"
                  f"Prefect API:  {stack.api_url}  (export PREFECT_API_URL={stack.api_url} and PREFECT_API_AUTH_STRING "
                  f"from {stack.credentials_file} to run flows against it; the UI asks for that string once)"
                  + (f"\nLabel Studio: [bold]{ls.url}[/]  (login: .cityloop/labelstudio/credentials.env)"
                     if ls.running else "") + "\nStop with: cityloop down")


def down() -> None:
    """Stop the serve process, Label Studio and the Prefect server (SIGTERM, then SIGKILL); data stays."""
    stopped = _stack().down()
    for name, was in stopped.items():
        console.print(f"{name}: {'[yellow]stopped[/]' if was else 'not running'}")


def status(json_out: JsonOption = False) -> None:
    """Each component up/down with URL and pid, and the deployments registered on the server."""
    import dataclasses

    st = _stack().status()
    if json_out:
        echo_json(dataclasses.asdict(st))
        return
    print_table(_components_table(st), console)
    if st.get("prefect-server").running:
        print_table(_deployments_table(st.deployments), console)
    if st.api_error:
        err.print(f"[yellow]Prefect API: {st.api_error}[/]")
    console.print("Logs: " + ", ".join(c.log for c in st.components if c.log))
