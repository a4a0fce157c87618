"""The `cityloop` command line (Typer): one sub-command group per lifecycle stage."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cityloop.cli.output import JsonOption, echo_json, print_table
from cityloop.core.settings import find_root, load_params, load_section, quiet_env

app = typer.Typer(help="cityloop: the closed loop of city video AI, from camera frames to edge alerts.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)
scenes_app = typer.Typer(help="The city camera simulator.", no_args_is_help=True)
data_app = typer.Typer(help="The data repository: ingest through the gate, versions.", no_args_is_help=True)
app.add_typer(scenes_app, name="scenes")
app.add_typer(data_app, name="data")


def _mount_models() -> None:
    from cityloop.cli.models import app as models_app

    app.add_typer(models_app, name="models", help="The algorithm repository: versions, promotion, admission.")


_mount_models()


def _mount_labeling() -> None:
    from cityloop.cli.labeling import label_app, server_app

    app.add_typer(server_app, name="labelstudio", help="The project's Label Studio server: up, down, status.")
    app.add_typer(label_app, name="label", help="Labeling: push a batch, annotate, pull a version, status.")
    label_app.command("run")(label_run)
    label_app.command("webhook")(label_webhook)


def _mount_serving() -> None:
    from cityloop.cli.bento import app as bento_app
    from cityloop.cli.edge import app as edge_app

    app.add_typer(bento_app, name="bento", help="BentoML packaging: a model version's bento and .bento archive.")
    app.add_typer(edge_app, name="edge", help="Edge nodes: serve, stream, hard examples, rollout.")


_mount_serving()


def _mount_analysis() -> None:
    from cityloop.cli.analysis import dashboard_app, patrol, patrol_season, report_app

    app.command("patrol")(patrol)
    app.command("patrol-season")(patrol_season)
    app.add_typer(report_app, name="report", help="Reports over the event store: weekly.")
    app.add_typer(dashboard_app, name="dashboard", help="The one-screen dashboard: live events, versions, accuracy.")
    from cityloop.cli.alerts import alerts_app

    app.add_typer(alerts_app, name="alerts", help="Alerts: list them, confirm or dismiss them (a dismissed one "
                  "goes to the next labeling round).")


_mount_analysis()


def _mount_scenarios() -> None:
    from cityloop.cli.scenarios import app as scenarios_app

    app.add_typer(scenarios_app, name="scenarios", help="City scenarios: classes, rules, zones, active windows.")


_mount_scenarios()


def _mount_schedule() -> None:
    from cityloop.cli.schedule import app as schedule_app

    app.add_typer(schedule_app, name="schedule", help="Scheduling: tasks onto edge nodes within their budgets, "
                  "slot by slot (plan, show, apply, history).")


_mount_schedule()


def loop_run(
    rounds: Annotated[int | None, typer.Option(help="Labeling rounds after round 0 (default: loop.rounds).")] = None,
    budget: Annotated[int | None, typer.Option(help="Labels per round and lineage (default: loop.budget).")] = None,
    arm: Annotated[list[str] | None, typer.Option(help="active and/or random (repeatable).")] = None,
    seed: Annotated[list[int] | None, typer.Option(help="Seeds, one lineage per arm and seed (repeatable).")] = None,
    target: Annotated[float | None, typer.Option(help="Field mAP@0.5 at which a lineage stops.")] = None,
    edge: Annotated[bool | None, typer.Option("--edge/--no-edge", help="Main lineage through real edge nodes.")] = None,
    annotators: Annotated[str, typer.Option(help="scripted (simulated annotators) or people.")] = "scripted",
    prefect: Annotated[bool, typer.Option("--prefect/--direct", help="As the Prefect flow closed-loop, or the same "
                                          "stages called directly.")] = True,
) -> None:
    """Run the closed loop: rounds of edge streams → Label Studio batch → fine-tune → gate → release,
    the active arm beside the random control arm; prints each round, writes reports/loop/."""
    root = find_root()
    if prefect:
        from cityloop.flows.loop import closed_loop

        out = closed_loop(rounds=rounds, budget=budget, arms=arm, seeds=seed, target=target, edge=edge,
                          annotators=annotators, root=str(root))
        summary = out["summary"]
    else:
        from cityloop.flows.loop import (  # .fn: the plain function, no Prefect run
            ensure_base,
            labelstudio_task,
            loop_params,
        )
        from cityloop.loop.runner import run_loop

        p = loop_params(str(root), rounds=rounds, budget=budget, arms=arm, seeds=seed, target=target, edge=edge)
        p.base = ensure_base(str(root), p.base)
        labelstudio_task.fn(str(root))
        summary = run_loop(root, p, annotators=annotators, say=console.print)["report"]
    console.print(f"[bold]{summary.get('ratio_text', 'active/random: no ratio (an arm did not reach the target)')}[/]")
    console.print(f"Loop report: {summary['markdown']} (curve {summary['png']})")


def _mount_loop() -> None:
    from cityloop.cli.loop import app as loop_app

    loop_app.command("run")(loop_run)
    app.add_typer(loop_app, name="loop", help="The closed loop: run (Prefect flow closed-loop), report, status.")


_mount_loop()


def _mount_stack() -> None:
    from cityloop.cli.stack import down, status, up

    app.command("up")(up)
    app.command("down")(down)
    app.command("status")(status)


_mount_stack()


def _mount_params() -> None:
    from cityloop.cli.params import app as params_app

    app.add_typer(params_app, name="params", help="params.yaml: check every section, show one's effective values.")


_mount_params()
console = Console(soft_wrap=True)  # messages: one line each in a pipe or a log; tables: print_table
err = Console(stderr=True, soft_wrap=True)

SOURCES = {"sim": "sim", "field": "field", "partner": "partner", "edge": "edge-hard", "edge-hard": "edge-hard"}


@app.callback()
def main() -> None:
    """Set quiet, non-telemetry defaults for the embedded stack; keep the workspace's state dir private."""
    quiet_env()
    from cityloop.core.private import private_state

    private_state(find_root())


@contextmanager
def bar(description: str, total: int | None):
    """A rich progress bar; yields an advance(n) callback."""
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=False) as prog:
        task = prog.add_task(description, total=total)
        yield lambda n=1: prog.advance(task, n)


# ----------------------------------------------------------------------- scenes


@scenes_app.command("generate")
def scenes_generate(
    out: Annotated[Path, typer.Option(help="Output folder.")],
    domain: Annotated[str, typer.Option(help="lab (clear daytime, few cameras) or field (the real mix).")] = "lab",
    frames: Annotated[int, typer.Option(min=1, help="Frames to render (still-image mode).")] = 500,
    seed: Annotated[int, typer.Option(help="Same seed, same bytes.")] = 0,
    size: Annotated[int | None, typer.Option(
        min=64, max=1024, help="Frame width and height in px (default: params generate.size).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="jpg or png.")] = "jpg",
    workers: Annotated[int, typer.Option(min=1, help="Rendering processes.")] = 2,
    video: Annotated[bool, typer.Option("--video", help="Render camera clips instead of still frames.")] = False,
    cameras: Annotated[int, typer.Option(min=1, help="Clips (one per camera) in --video mode.")] = 4,
    seconds: Annotated[float, typer.Option(min=1, help="Clip length in --video mode.")] = 120.0,
    fps: Annotated[float, typer.Option(min=0.1, help="Frames per second in --video mode.")] = 2.0,
    mp4: Annotated[bool, typer.Option(help="Also pack each clip into an MP4 (--video).")] = False,
    condition: Annotated[str | None, typer.Option(help="Force one condition for all clips (--video).")] = None,
    hour: Annotated[float | None, typer.Option(min=0, max=24, help="Local hour the clips start at (--video).")] = None,
    rate: Annotated[list[str] | None, typer.Option(
        help="KEY=EVENTS_PER_MINUTE, a scenario's clip rate (--video, repeatable; `cityloop scenarios show`).")] = None,
    site: Annotated[list[str] | None, typer.Option(
        help="A zone kind every camera gets, e.g. checkpoint (--video, repeatable).")] = None,
    scenario: Annotated[str | None, typer.Option(
        help="Render this scenario's positive clip spec (condition, hour, rates, sites; --video).")] = None,
) -> None:
    """Render frames (or clips) with COCO ground truth and a metadata table."""
    from cityloop.scenes.frames import generate_frames
    from cityloop.scenes.params import frame_size
    from cityloop.scenes.video import generate_video
    from cityloop.scenes.world import DOMAINS

    size = size or frame_size(find_root())
    if domain not in DOMAINS:
        raise typer.BadParameter(f"domain must be one of {', '.join(DOMAINS)}", param_hint="--domain")
    if fmt not in ("jpg", "png"):
        raise typer.BadParameter("format must be jpg or png", param_hint="--format")
    if video:
        rates: dict[str, float] = {}
        sites = list(site or [])
        if scenario:
            from cityloop.scenarios import ScenarioError, registry

            try:
                spec = registry().get(scenario).positive
            except ScenarioError as exc:
                raise typer.BadParameter(str(exc), param_hint="--scenario") from None
            rates, sites = dict(spec.rates), [*spec.sites, *sites]
            condition = condition or spec.condition
            hour = spec.hour if hour is None else hour
        for kv in rate or []:
            key, _, value = kv.partition("=")
            try:
                rates[key] = float(value)
            except ValueError:
                raise typer.BadParameter(f"{kv!r}: expected KEY=NUMBER", param_hint="--rate") from None
        with bar(f"clips {domain}", cameras) as advance:
            try:
                summary = generate_video(domain, cameras, seconds, fps, seed, out, size, fmt, workers, mp4,
                                         rates=rates, condition=condition, hour=hour, sites=tuple(sites),
                                         progress=advance)
            except ValueError as exc:
                raise typer.BadParameter(str(exc), param_hint="--rate") from None
    else:
        with bar(f"frames {domain}", frames) as advance:
            summary = generate_frames(domain, frames, seed, out, size, fmt, workers, progress=advance)
    console.print_json(json.dumps(summary))


@scenes_app.command("season")
def scenes_season(
    out: Annotated[Path | None, typer.Option(help="Season folder (default: params season.out).")] = None,
    weeks: Annotated[int | None, typer.Option(min=1, help="Weeks of days.")] = None,
    cameras: Annotated[int | None, typer.Option(min=1, help="Fixed cameras of the district.")] = None,
    clips_per_day: Annotated[int | None, typer.Option(min=1, help="Clips per camera and day.")] = None,
    seconds: Annotated[float | None, typer.Option(min=1, help="Clip length.")] = None,
    fps: Annotated[float | None, typer.Option(min=0.1, help="Frames per second.")] = None,
    seed: Annotated[int | None, typer.Option(help="Same seed, same season.")] = None,
    enforcement_week: Annotated[int | None, typer.Option(min=1, help="Week (1-based) enforcement starts.")] = None,
    before: Annotated[float | None, typer.Option(min=0, max=1, help="Share of riders without helmet before.")] = None,
    after: Annotated[float | None, typer.Option(min=0, max=1, help="... and after enforcement.")] = None,
    ramp_days: Annotated[int | None, typer.Option(min=0, help="Days compliance takes to climb.")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Rendering processes.")] = None,
) -> None:
    """Render weeks of a district's fixed field cameras (one stream folder per day), helmet compliance
    rising after enforcement starts; season.json holds the true weekly event counts."""
    from cityloop.scenes.params import frame_size
    from cityloop.scenes.season import SeasonParams, generate_season, season_kwargs

    root = find_root()
    p = load_section(root, "season", SeasonParams, weeks=weeks, cameras=cameras, clips_per_day=clips_per_day,
                     seconds=seconds, fps=fps, seed=seed, enforcement_week=enforcement_week,
                     p_no_helmet_before=before, p_no_helmet_after=after, ramp_days=ramp_days, workers=workers)
    dest = out or root / p.out
    clips = p.weeks * 7 * p.clips_per_day * p.cameras
    with bar(f"season {p.weeks} weeks", clips) as advance:
        try:
            s = generate_season(dest, progress=advance, **season_kwargs(p, frame_size(root)))
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    helmet = s["truth"]["helmetless_rider"]
    console.print(f"{len(s['streams'])} days x {p.cameras} cameras, {s['frames']} frames in {s['render_s']} s "
                  f"→ {dest}\ntrue helmetless riders per week {', '.join(map(str, helmet))} "
                  f"({s['true_change_pct']}% first week → last). Play it: cityloop patrol-season --season {dest}")


# ------------------------------------------------------------------------- data


def _repository(root: Path):
    from cityloop.governance.repository import open_repository

    return open_repository(root)


@data_app.command("ingest")
def data_ingest(
    src: Annotated[Path, typer.Argument(exists=True, file_okay=False,
                                        help="Folder of frames (and optional metadata.parquet/csv).")],
    dataset: Annotated[str | None, typer.Option(help="Dataset name; default: the folder's name.")] = None,
    source: Annotated[str, typer.Option(help="sim | field | partner | edge.")] = "sim",
    annotations: Annotated[Path | None, typer.Option(help="COCO file; default SRC/annotations.coco.json.")] = None,
    split: Annotated[str | None, typer.Option(help="auto | train | val | test | pool | bench.")] = None,
    split_by: Annotated[str | None, typer.Option(help="frame | camera (for auto splits).")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Decoding processes.")] = None,
    push: Annotated[bool, typer.Option(help="Push the version to the DVC remote.")] = True,
    report: Annotated[Path | None, typer.Option(help="Write the ingest summary as JSON here.")] = None,
    wait: Annotated[float, typer.Option(min=0, help="Seconds to wait for the workspace lock when another "
                                                    "ingest, publish or registration holds it.")] = 1800,
) -> None:
    """Ingest frames through the Great Expectations gate and publish a DVC-versioned dataset."""
    from cityloop.governance.ingest import list_frames
    from cityloop.governance.repository import GateFailed, IngestParams
    from cityloop.governance.versioning import WorkspaceBusyError

    root = find_root()
    if source not in SOURCES:
        raise typer.BadParameter(f"source must be one of {', '.join(SOURCES)}", param_hint="--source")
    cfg = load_section(root, "ingest", IngestParams)
    repo = _repository(root)
    name = dataset or _slug(src.resolve().name)
    total = len(list_frames(src))
    with bar(f"ingest {name}", total) as advance:
        try:
            res = repo.ingest(src, name, SOURCES[source], split or cfg.split, split_by or cfg.split_by,
                              annotations, workers or cfg.workers, push=push, progress=advance,
                              lock_timeout=wait, on_wait=lambda msg: err.print(f"[yellow]{msg}[/]"))
        except WorkspaceBusyError as exc:
            err.print(f"[red]{exc}[/]")
            raise typer.Exit(3) from None
        except GateFailed as exc:
            err.print(f"[red bold]Gate failed: version not published.[/] Staged input kept in {exc.staging}")
            typer.echo(exc.result.report(), err=True)
            raise typer.Exit(1) from None
        except (FileNotFoundError, ValueError) as exc:
            err.print(f"[red]{exc}[/]")
            raise typer.Exit(2) from None
    for q in res.quarantined:
        err.print(f"[yellow]quarantined[/] {q['file']}: {q['reason']}")
    verb = "published" if res.version.summary.get("ingest", {}).get("id") == res.ingest_id else "unchanged"
    console.print(f"[green]{res.version.id}[/] {verb}: {res.new_frames} new frames, {res.duplicates} duplicates,"
                  f" {len(res.quarantined)} quarantined; gate {res.gate.successful}/{res.gate.evaluated} passed")
    if res.gate.data_docs:
        console.print(f"Data Docs: {res.gate.data_docs}")
    if report:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps({"version": res.version.id, **res.summary}, indent=1))


def _slug(name: str) -> str:
    import re

    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:40] or "dataset"


@data_app.command("versions")
def data_versions(dataset: Annotated[str | None, typer.Option(help="Only this dataset.")] = None,
                  json_out: JsonOption = False) -> None:
    """List dataset versions (the catalog): git revision, DVC hash, counts per class and condition, gate."""
    from cityloop.governance import versioning

    records = versioning.list_versions(find_root(), dataset)
    if json_out:
        echo_json([version_dict(r) for r in records])
        return
    print_table(versions_table(records), console)


def version_dict(rec) -> dict:
    """One catalog entry as JSON: the version's id, tag, commits, creation time and its summary."""
    return {"id": rec.id, "dataset": rec.dataset, "version": rec.version, "tag": rec.tag, "commit": rec.commit,
            "code_commit": rec.code_commit, "created": rec.created, **rec.summary}


SHORT = {"rider_helmet": "helmet", "rider_no_helmet": "no_helmet", "vendor_stall": "stall"}


def versions_table(records) -> Table:
    """The catalog as a rich table: one row per version, counts folded into a few columns."""
    table = Table(title="cityloop data repository", show_lines=True)
    for col in ("version", "git / dvc", "frames", "boxes per class", "conditions", "sources · splits", "gate"):
        table.add_column(col, overflow="fold")
    for r in records:
        s = r.summary
        gate = s.get("gate", {})
        dvc_md5 = str(s.get("dvc", {}).get("data/datasets", {}).get("md5", ""))[:8]
        table.add_row(
            f"[bold]{r.id}[/]\n{r.created[:16]}", f"{r.commit[:8]}\n{dvc_md5}",
            f"{s.get('frames', 0)}\n{s.get('labeled', 0)} labeled",
            _kv({SHORT.get(k, k): v for k, v in s.get("boxes", {}).items()}),
            _kv(s.get("conditions", {})), _kv(s.get("sources", {})) + "\n·\n" + _kv(s.get("splits", {})),
            f"{'[green]pass' if gate.get('success') else '[red]FAIL'}[/] "
            f"{gate.get('successful')}/{gate.get('evaluated')}",
        )
    return table


def _kv(d: dict) -> str:
    return "\n".join(f"{k}:{v}" for k, v in d.items())


@data_app.command("show")
def data_show(version: Annotated[str, typer.Argument(help="name@vN or name@latest.")]) -> None:
    """Show one version's catalog entry and gate result."""
    from cityloop.governance import versioning

    console.print_json(json.dumps(version_dict(versioning.resolve(find_root(), version)), default=str))


@data_app.command("checkout")
def data_checkout(version: Annotated[str, typer.Argument(help="name@vN or name@latest.")]) -> None:
    """Put the workspace's data/ at a version (DVC pointers from its tag, then dvc checkout)."""
    from cityloop.governance import versioning

    versioning.checkout(find_root(), version)
    console.print(f"data/ now at {version}")


# ------------------------------------------------------------------------ train


@app.command("train")
def train_cmd(
    data: Annotated[str | None, typer.Option(help="Dataset version, e.g. lab@v1 (default: params train.data).")] = None,
    parent: Annotated[str | None, typer.Option("--from", help="Model to fine-tune, e.g. cityloop-detector:v2.")] = None,
    promote: Annotated[bool, typer.Option(help="Run the promotion gate after registration.")] = False,
) -> None:
    """Train → export ONNX → parity → register → evaluate, as the Prefect flow `train`.

    Re-running the same command after a kill resumes from the run's last checkpoint.
    """
    from cityloop.flows.training import train_flow
    from cityloop.models.params import TrainSection

    root = find_root()
    data = data or load_section(root, "train", TrainSection).data
    summary = train_flow(data=data, parent=parent, promote=promote, root=str(root))
    console.print_json(json.dumps({k: v for k, v in summary.items() if k != "run"}, default=str))
    decision = summary.get("promotion")
    if decision is not None and not decision["promoted"]:
        raise typer.Exit(1)


# -------------------------------------------------------------------- labeling
# The two label commands that need Prefect live here: domain packages never import it.


def label_run(
    data: Annotated[str | None, typer.Option(help="Unlabeled pool version (default: params labeling.pool).")] = None,
    model: Annotated[str, typer.Option(help="Model that pre-annotates.")] = "cityloop-detector:latest",
    budget: Annotated[int | None, typer.Option(min=1, help="Frames to label.")] = None,
    strategy: Annotated[str | None, typer.Option(help="active | random.")] = None,
    annotators: Annotated[str, typer.Option(help="scripted (needs --truth) | people.")] = "scripted",
    truth: Annotated[list[Path] | None, typer.Option(help="Simulator output folder(s) with ground truth.")] = None,
) -> None:
    """The Prefect flow `label`: select → push → wait until labeled → pull → version."""
    from cityloop.flows.labeling import label_flow
    from cityloop.labeling.params import LabelingParams

    root = find_root()
    params = load_section(root, "labeling", LabelingParams)
    out = label_flow(data=data or params.pool, model=model, budget=budget, strategy=strategy, annotators=annotators,
                     truth=[str(t) for t in truth or []], root=str(root))
    pulled = out["pull"]
    console.print(f"batch {out['push']['batch']}: {len(pulled['accepted'])} accepted, {len(pulled['rejected'])} "
                  f"rejected, {len(pulled['held_back'])} held back → {pulled['version'] or 'no new version'}")


def label_webhook(
    port: Annotated[int | None, typer.Option(help="Receiver port (default: params labeling.webhook_port).")] = None,
    every: Annotated[int | None, typer.Option(min=1, help="Emit cityloop.labels.ready every N new labels.")] = None,
) -> None:
    """Receive Label Studio's annotation webhooks (secret: $CITYLOOP_WEBHOOK_SECRET) and emit Prefect events."""
    from cityloop.flows.labeling import emit_label, emit_ready
    from cityloop.labeling.params import LabelingParams
    from cityloop.labeling.project import open_project
    from cityloop.labeling.webhooks import LabelCounter, WebhookReceiver, register, webhook_secret

    root = find_root()
    params = load_section(root, "labeling", LabelingParams)
    secret = webhook_secret()
    counter = LabelCounter(root / ".cityloop" / "labeling" / "webhook.sqlite", every or params.retrain_after)
    rx = WebhookReceiver(counter, secret, port=port or params.webhook_port, on_label=emit_label,
                         on_threshold=emit_ready)
    project = open_project(root, params)
    register(project.ls, project.id, rx.url, secret)
    console.print(f"receiving Label Studio webhooks for project {project.title} at {rx.url}; Ctrl-C stops")
    try:
        rx.server.serve_forever()
    except KeyboardInterrupt:
        rx.stop()


_mount_labeling()

# ------------------------------------------------------------------ dvc stages

stage_app = typer.Typer(help="The dvc.yaml stages train → export → evaluate (what `dvc repro` runs).",
                        no_args_is_help=True)
app.add_typer(stage_app, name="stage")


@stage_app.command("train")
def stage_train(out: Annotated[Path, typer.Option(help="Stage output folder.")] = Path("artifacts/train")) -> None:
    """Train on params train.data; writes weights.pt, run.json, train.json (metrics), loss.csv (plots)."""
    import shutil
    from dataclasses import asdict

    from cityloop.models.lifecycle import train_step
    from cityloop.models.params import TrainSection
    from cityloop.models.train import read_metrics

    root = find_root()
    ts = load_section(root, "train", TrainSection)
    run = train_step(root, ts.data, asdict(ts.params))
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(run["weights"], out / "weights.pt")
    (out / "run.json").write_text(json.dumps({**run, "weights": str((out / "weights.pt").resolve())}, indent=1))
    metrics = read_metrics(Path(run["run_dir"]))
    per_epoch = metrics.groupby("epoch")[[c for c in ("train/loss_epoch", "val/loss") if c in metrics]].last()
    per_epoch.reset_index().to_csv(out / "loss.csv", index=False)
    (out / "train.json").write_text(json.dumps({"data": run["data"], "epochs": run["epochs"], "steps": run["steps"],
                                                "val_loss": run["val_loss"]}, indent=1))
    console.print(f"trained on {run['data']}: {run['epochs']} epochs, val loss {run['val_loss']}")


@stage_app.command("export")
def stage_export(
    run: Annotated[Path, typer.Option(help="run.json of the train stage.")] = Path("artifacts/train/run.json"),
    out: Annotated[Path, typer.Option(help="Stage output folder.")] = Path("artifacts/model"),
) -> None:
    """Export ONNX + card and check parity; writes model.onnx, card.json, parity.json. Exit 1 on a parity failure."""
    from cityloop.models.lifecycle import ExportParams, export_step, parity_step

    root = find_root()
    info = json.loads(run.read_text())
    path, card = export_step(root, info, out)
    # registry raw: RegistryParams requires benchmark/target/latency_budget_ms, which this stage does not need
    parity = parity_step(root, info, path, card, load_section(root, "export", ExportParams).parity_frames,
                         (load_params(root).get("registry") or {}).get("parity_tolerance", 1e-4))
    (out / "parity.json").write_text(json.dumps(parity, indent=1))
    console.print(f"{path}: parity {'passed' if parity['passed'] else 'FAILED'} {parity['max_abs_diff']}")
    if not parity["passed"]:
        raise typer.Exit(1)


@stage_app.command("evaluate")
def stage_evaluate(
    model: Annotated[Path, typer.Option(help="Folder with model.onnx + card.json.")] = Path("artifacts/model"),
    out: Annotated[Path, typer.Option(help="Stage output folder.")] = Path("artifacts/eval"),
) -> None:
    """mAP on the benchmark set and the training data's test split; metrics.json + per-class/condition CSVs."""
    import pandas as pd

    from cityloop.models.card import ModelCard
    from cityloop.models.lifecycle import evaluate_step

    root = find_root()
    bench = load_params(root).get("registry", {}).get("benchmark", "field-bench@latest")
    res = evaluate_step(root, model / "model.onnx", ModelCard.load(model / "card.json"), bench)
    out.mkdir(parents=True, exist_ok=True)
    b, t = res["benchmark"], res["test"] or {"mAP50": None, "mAP": None, "per_class": {}}
    (out / "metrics.json").write_text(json.dumps({"benchmark": b["benchmark"], "benchmark_mAP50": b["mAP50"],
                                                  "benchmark_mAP": b["mAP"], "test_mAP50": t["mAP50"],
                                                  "test_mAP": t["mAP"],
                                                  "latency_ms": b["latency"]["batch1_median_ms"]}, indent=1))
    classes = sorted(set(b["per_class"]) | set(t["per_class"]))
    pd.DataFrame({"class": classes, "test": [t["per_class"].get(c) for c in classes],
                  "benchmark": [b["per_class"].get(c) for c in classes]}).to_csv(out / "per_class.csv", index=False)
    conds = b.get("by", {}).get("condition", {})
    pd.DataFrame({"condition": list(conds), "mAP50": [v["mAP50"] for v in conds.values()]}).to_csv(
        out / "per_condition.csv", index=False)
    console.print(f"test mAP50 {t['mAP50']}, {b['benchmark']} mAP50 {b['mAP50']}")


# ------------------------------------------------------------------------- demo


@app.command()
def demo(
    frames: Annotated[int | None, typer.Option(help="Frames per dataset (default: params.yaml).")] = None,
    train: Annotated[bool, typer.Option(help="Also train on lab, register, and run the promotion gate.")] = True,
    loop: Annotated[bool, typer.Option(help="Then run the closed loop (Label Studio, edge nodes, rounds).")] = True,
    label: Annotated[bool, typer.Option(help="Without the loop: one labeling batch in Label Studio instead.")] = True,
    stack: Annotated[bool, typer.Option(help="Run against the local stack (cityloop up), so the runs stay in its "
                                        "Prefect UI; off: a temporary Prefect server.")] = True,
    season: Annotated[bool, typer.Option(help="End with four weeks of a district played through the platform "
                                         "(params season:) and their weekly report.")] = True,
) -> None:
    """The main job on embedded defaults: simulate → gate → version, train → ONNX → registry → gate,
    then the closed loop (active arm beside the random control arm) until the field target."""
    root = find_root()
    if stack and not os.environ.get("PREFECT_API_URL"):
        _demo_stack(root)  # before Prefect is imported: it reads PREFECT_API_URL once, at import
    from cityloop.flows.governance import governance_demo
    from cityloop.governance import versioning

    records = governance_demo(root=str(root), frames=frames)
    print_table(versions_table(versioning.list_versions(root)), console)
    ids = ", ".join(r["version"] for r in records)
    console.print(f"Datasets now at {ids}. Data Docs: {root / 'reports' / 'datadocs' / 'index.html'}")
    if not train:
        return
    from cityloop.flows.training import train_flow

    out = train_flow(data="lab@latest", promote=True, root=str(root))
    decision = out["promotion"]
    console.print(f"[bold]{out['model']}[/]: mAP@0.5 {out['test_mAP50']:.3f} on the lab test split, "
                  f"{out['benchmark_mAP50']:.3f} on {out['benchmark']} (the field): the gap the closed loop closes.")
    verdict = "[green]promoted" if decision["promoted"] else "[yellow]not promoted"
    console.print(f"Promotion gate: {verdict}[/]: {decision['reason']}")
    console.print("See: cityloop data versions | cityloop models list | cityloop models show " + out["model"])
    if loop:
        _demo_loop(root)
    elif label:
        _demo_labeling(root, out["model"])
    if season:
        _demo_season(root)


def _demo_stack(root: Path) -> None:
    """Start (or find) the control room and point this process's flows at its Prefect server."""
    from cityloop.stack import Stack, StackError

    st = Stack(root)
    try:
        st.up(say=lambda m: console.print(f"[dim]{m}[/]"))
    except StackError as exc:  # e.g. port 4200 taken: the demo still runs, on a temporary server
        err.print(f"[yellow]the local stack did not start ({exc}); running on a temporary Prefect server[/]")
        return
    os.environ.update(st.client_env())  # the API URL and its auth string (never printed)
    console.print(f"Prefect UI: {st.url} (runs and deployments; its password is PREFECT_API_AUTH_STRING in "
                  f"{st.credentials_file}; stop the stack with: cityloop down)")


def _demo_loop(root: Path) -> None:
    """The closed loop as the Prefect flow closed-loop, then where to look."""
    from cityloop.flows.loop import closed_loop
    from cityloop.labeling.params import LabelingParams
    from cityloop.labeling.server import LabelStudioServer

    out = closed_loop(root=str(root))
    s = out["summary"]
    none = f"active/random: no ratio at the target {s['target']} (no arm reached it)"
    console.print(f"[bold]{s.get('ratio_text', none)}[/]")
    if s.get("matched"):
        console.print(f"[bold]Short of the target: {s['matched']['text']}[/]")
    for arm, a in s["arms"].items():
        console.print(f"  {arm}: final field mAP@0.5 {a['final_mAP50']}, labels {a['labels']}, "
                      f"labels to target {a['labels_to_target']}")
    ls = LabelStudioServer(root, port=load_section(root, "labeling", LabelingParams).port)
    api = os.environ.get("PREFECT_API_URL")
    prefect = (api.removesuffix("/api") + "/runs" if api else
               "a temporary server, gone with the demo (make demo runs against cityloop up's, which stays)")
    console.print(f"Loop report: {s['markdown']} (curve {s['png']})\n"
                  f"Data Docs: {root / 'reports' / 'datadocs' / 'index.html'}\n"
                  f"Label Studio projects: {ls.url}/projects (login in .cityloop/labelstudio/credentials.env)\n"
                  f"Prefect runs: {prefect}\nStop Label Studio with: cityloop labelstudio down"
                  + (" (or all of the stack: cityloop down)" if api else ""))


def _demo_season(root: Path) -> None:
    """The seed's story: four weeks of a district in which helmet compliance rises once enforcement starts,
    patrolled day by day with the production model (else the latest) into the workspace's event store; the
    4-week report's headline is measured from the events the platform raised, printed beside the truth."""
    import logging

    from cityloop.analysis.params import store_url
    from cityloop.analysis.report import ReportParams
    from cityloop.analysis.season import play_season, season_model
    from cityloop.cli.analysis import season_story, snapshots_dir
    from cityloop.scenes.params import frame_size
    from cityloop.scenes.season import SeasonParams, generate_season, read_season, season_kwargs, season_matches

    p = load_section(root, "season", SeasonParams)
    folder, kwargs = root / p.out, season_kwargs(p, frame_size(root))
    if not season_matches(folder, **kwargs):
        with bar(f"season: {p.weeks} weeks x {p.cameras} cameras", p.weeks * 7 * p.clips_per_day * p.cameras) as adv:
            generate_season(folder, progress=adv, **kwargs)
    s, model, url = read_season(folder), season_model(root), store_url(root)
    cfg = load_section(root, "report", ReportParams)
    alerts = logging.getLogger("cityloop.alerts")
    level = alerts.level
    alerts.setLevel(logging.ERROR)  # one ALERT line per event would bury the story
    try:
        with bar(f"season: patrol with {model}", s["frames"]) as adv:
            res = play_season(root, folder, model, url, snapshots_dir(root, url), report_out=root / cfg.out,
                              top=int(cfg.top_hotspots), pdf=cfg.pdf, advance=adv)
    finally:
        alerts.setLevel(level)
    console.print(f"[bold]Four weeks of {len(s['cameras'])} cameras[/] ({', '.join(s['weeks'])}; enforcement from "
                  f"week {s['params']['enforcement_week']}): report {res['report']}")
    for h in [h for h in res["headline"] if "without helmet" in h] or res["headline"][:1]:
        console.print(f"[bold]{h}")
    console.print(season_story(res))
    q = res["quality"].get(s["weeks"][-1]) or {}
    if q:
        console.print(f"  last week's helmetless alerts: {q.get('hits', 0)} true, {q.get('false_alarms', 0)} false "
                      f"(helmeted riders misread: they do not fall with compliance)")


def _demo_labeling(root: Path, model: str) -> None:
    """One labeling round: field pool → Label Studio (pre-annotated by `model`) → scripted annotators → version."""
    from cityloop.flows.labeling import labeling_demo

    out = labeling_demo(root=str(root), model=model)
    pushed, pulled = out["push"], out["pull"]
    console.print(f"Label Studio at [bold]{out['url']}[/]: batch {pushed['batch']}, {len(pushed['task_ids'])} tasks "
                  f"from {pushed['data']} ({pushed['strategy']}: {pushed['reasons']}) + "
                  f"{len(pushed['honeypot_ids'])} honeypots; project {pushed['page']}")
    for name, q in pulled["quality"]["annotators"].items():
        hp = q["honeypot_agreement"]
        console.print(f"  {name}: {q['tasks']} tasks, honeypot agreement {'n/a' if hp is None else f'{hp:.2f}'}"
                      f"{' (held back)' if q['held_back'] else ''}")
    console.print(f"Pulled: {len(pulled['accepted'])} accepted, {len(pulled['rejected'])} rejected, "
                  f"{len(pulled['held_back'])} held back → [green]{pulled['version'] or 'no new version'}[/]. "
                  f"Stop the server with: cityloop labelstudio down")


if __name__ == "__main__":
    app()
