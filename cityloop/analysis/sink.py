"""`cityloop edge start --sink analysis.sink:edge_sink`: an edge node's detections through the
tracker and rules into the workspace's event store and alert sinks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cityloop.analysis.alerts import Dispatcher, build_sinks
from cityloop.analysis.engine import Analyzer
from cityloop.analysis.params import analysis_params, store_url
from cityloop.analysis.store import EventStore
from cityloop.core.settings import find_root
from cityloop.edge.streams import parse_spec
from cityloop.scenarios.zones import ZoneError, load_zones, read_cameras


def stream_cameras(streams: list[str]) -> list[dict[str, Any]]:
    """The cameras.json entries of the node's recorded streams (zones, condition, district, size), where a
    folder stream has one beside it (`<streams>/cameras.json`, `<streams>/<camera>/frames`)."""
    out: dict[str, dict[str, Any]] = {}
    for spec in streams:
        camera_id, uri = parse_spec(spec)
        folder = Path(uri)
        for d in (folder, folder.parent, folder.parent.parent):
            path = d / "cameras.json"
            if folder.is_dir() and path.is_file():
                try:
                    cams = read_cameras(d)
                except ZoneError:
                    break
                for c in cams:
                    if c["camera_id"] in (camera_id, folder.name, folder.parent.name):
                        out[camera_id] = {**c, "camera_id": camera_id}
                break
    return list(out.values())


def edge_sink(node_dir: Path, streams: list[str] | None = None) -> Analyzer:
    """The factory edge.node.load_sink calls with the node folder (snapshots go beside it) and its streams.

    Zones, conditions and districts come from the streams' cameras.json where they have one, then
    params.yaml `analysis.zones` (a live camera's zones are configured there)."""
    root = find_root()
    p = analysis_params(root)
    store = EventStore(store_url(root))
    cams = stream_cameras(streams or [])
    return Analyzer(p, Dispatcher(store, build_sinks(p.sinks)), load_zones(cams, p.zones),
                    {c["camera_id"]: c for c in cams}, snapshots=Path(node_dir) / "snapshots")
