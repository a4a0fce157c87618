"""`cityloop bento …`: build a model version's bento and export it for ops (mounted by cityloop.cli)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cityloop.cli.output import JsonOption, echo_json
from cityloop.core.settings import find_root

app = typer.Typer(help="BentoML packaging: build a model version's bento and its .bento archive.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)
console = Console(soft_wrap=True)  # one line per message in a pipe or a log
err = Console(stderr=True, soft_wrap=True)


@app.command("build")
def build(
    model_version: Annotated[str, typer.Argument(help="Registry version, e.g. cityloop-detector:v2 or :production.")],
    out: Annotated[Path | None, typer.Option(help="Folder for the .bento archive (default artifacts/bentos).")] = None,
    json_out: JsonOption = False,
) -> None:
    """Build the bento (service + model + pinned Python deps + generated Dockerfile), export a .bento."""
    from cityloop.bento.build import build_bento, containerize_hint
    from cityloop.models.store import RegistryError

    try:
        res = build_bento(find_root(), model_version, out)
    except (RegistryError, RuntimeError, FileNotFoundError) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    if json_out:  # the bento's tag, path, archive, model
        echo_json(res.to_dict())
        return
    console.print(f"[green]{res.tag}[/] {'reused' if res.reused else 'built'} for {res.model_id}")
    console.print(f"bento: {res.path}\narchive: {res.archive}\nDockerfile: {res.path / 'env/docker/Dockerfile'}")
    console.print(f"On a machine with Docker: {containerize_hint(res.tag)}")


@app.command("serve")
def serve(
    model_version: Annotated[str, typer.Argument(help="Registry version to serve.")],
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 3000,
) -> None:
    """Serve a registry version's bento in the foreground (Ctrl+C stops it)."""
    import os

    from cityloop.bento.build import bento_env, bentoml_bin, build_bento

    root = find_root()
    res = build_bento(root, model_version)
    os.execve(bentoml_bin(), [bentoml_bin(), "serve", res.tag, "--host", "127.0.0.1", "--port", str(port)],
              bento_env(root))
