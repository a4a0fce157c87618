"""A plan's inputs, read from a workspace: the cameras (a stream folder's cameras.json, params
`schedule.forecast`), the edge nodes (params `schedule.nodes`, the fleet's status files), the model
versions of the algorithm repository and params.yaml `scenarios:`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cityloop.core.settings import load_params
from cityloop.scenarios import CONDITIONS
from cityloop.scenarios.base import ScenarioError
from cityloop.scenarios.settings import scenario_settings
from cityloop.scenarios.zones import ZoneError, read_cameras
from cityloop.schedule.params import ScheduleParams
from cityloop.schedule.plan import (
    OWN_VENDOR,
    CameraSpec,
    Inputs,
    ModelSpec,
    NodeSpec,
    ScheduleError,
    cameras_from,
    parse_forecast,
    scenario_specs,
)


def camera_specs(streams: Path, forecast: dict[str, Any] | None = None,
                 zones: dict[str, dict[str, Any]] | None = None) -> list[CameraSpec]:
    """The stream folder's cameras, each with its expected condition (params `schedule.forecast` by camera
    id, else by district, else the camera's own cameras.json `condition`) and its zone kinds (cameras.json
    `zones`, params `analysis.zones`)."""
    try:
        cams = cameras_from(read_cameras(Path(streams)), zones)
    except ZoneError as exc:
        raise ScheduleError(f"cameras: {exc}") from None
    forecast = dict(forecast or {})
    ids, districts = {c.camera_id for c in cams}, {c.district for c in cams}
    unknown = [k for k in forecast if k not in ids and k not in districts]
    if unknown:
        raise ScheduleError(f"schedule.forecast: {unknown} name no camera or district of {streams}/cameras.json")
    out = []
    for c in cams:
        key = c.camera_id if c.camera_id in forecast else c.district if c.district in forecast else None
        if key is None:
            out.append(c)
            continue
        cond, spans = parse_forecast(forecast[key], f"schedule.forecast.{key}", CONDITIONS)
        out.append(CameraSpec(c.camera_id, c.district, cond or c.condition, spans, c.fps, c.scenarios, c.zones))
    return out


def node_specs(root: Path, p: ScheduleParams) -> list[NodeSpec]:
    """Nodes named in params `schedule.nodes` and every node that is up; a budget from params, else
    measured (headroom x 1000 / the node's p50 latency in ms, floored to budget_step), else the default."""
    from cityloop.edge.fleet import list_nodes

    status = {n["name"]: n for n in list_nodes(root)}
    names = list(p.nodes) + sorted(n for n, st in status.items() if st.get("up") and n not in p.nodes)
    out = []
    for name in names:
        if p.nodes.get(name) is not None:
            out.append(NodeSpec(name, float(p.nodes[name]), "params"))
            continue
        lat = (status.get(name) or {}).get("latency_p50_ms")
        if lat:
            fps = p.headroom * 1000.0 / float(lat)
            out.append(NodeSpec(name, max(p.budget_step, fps - fps % p.budget_step), "measured"))
        else:
            out.append(NodeSpec(name, p.default_budget_fps, "default"))
    return out


def model_specs(root: Path, p: ScheduleParams) -> list[ModelSpec]:
    """Versions that may serve: cityloop's own model (`schedule.model`: its production version, else its
    latest), the latest non-retired version of each admitted partner model (when `schedule.partners`),
    and every version pinned in `schedule.serve`."""
    from cityloop.models.store import ModelNotFoundError, ModelStore, model_classes

    store = ModelStore(root, track=False)
    versions = [mv for mv in store.list() if mv.stage != "retired"]
    picked = {}
    own = [mv for mv in versions if mv.name == p.model and mv.card.vendor == OWN_VENDOR]
    prod = [mv for mv in own if mv.stage == "production"]
    if prod or own:
        mv = (prod or own)[-1]
        picked[mv.id] = mv
    if p.partners:
        latest: dict[str, Any] = {}
        for mv in versions:
            if mv.card.vendor != OWN_VENDOR:
                latest[mv.name] = mv
        picked.update({mv.id: mv for mv in latest.values()})
    for scenario, ref in p.serve.items():
        try:
            mv = store.get(ref)
        except (ModelNotFoundError, ValueError) as exc:
            raise ScheduleError(f"schedule.serve.{scenario}: {exc}") from None
        picked[mv.id] = mv
    return [ModelSpec(mv.id, tuple(model_classes(mv.card)), mv.card.vendor or OWN_VENDOR, mv.stage)
            for mv in picked.values()]


def resolve_serve(root: Path, serve: dict[str, str]) -> dict[str, str]:
    """`schedule.serve` with each reference (`name:production`, `name:latest`) resolved to a version id."""
    if not serve:
        return {}
    from cityloop.models.store import ModelStore

    store = ModelStore(root, track=False)
    return {k: store.get(v).id for k, v in serve.items()}


def load_inputs(root: Path, p: ScheduleParams, streams: Path | None = None) -> Inputs:
    """Every input of a plan, from the workspace (errors name what is wrong and where)."""
    root = Path(root)
    raw = load_params(root)
    try:
        settings = scenario_settings(raw.get("scenarios"))
    except ScenarioError as exc:
        raise ScheduleError(str(exc)) from None
    streams = Path(streams) if streams else root / p.cameras
    zones = (raw.get("analysis") or {}).get("zones") or {}
    return Inputs(cameras=camera_specs(streams, p.forecast, zones), nodes=node_specs(root, p),
                  scenarios=scenario_specs(settings), models=model_specs(root, p),
                  serve=resolve_serve(root, p.serve), slot_min=p.slot_min, horizon_h=p.horizon_h,
                  partners=p.partners)
