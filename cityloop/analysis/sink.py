"""`cityloop edge start --sink analysis.sink:edge_sink`: an edge node's detections through the
tracker and rules into the workspace's event store and alert sinks."""

from __future__ import annotations

from pathlib import Path

from cityloop.analysis.alerts import Dispatcher, build_sinks
from cityloop.analysis.engine import Analyzer
from cityloop.analysis.params import analysis_params, store_url
from cityloop.analysis.store import EventStore
from cityloop.core.settings import find_root
from cityloop.scenarios.zones import load_zones


def edge_sink(node_dir: Path) -> Analyzer:
    """The factory edge.node.load_sink calls with the node folder (snapshots go beside it).

    Zones come from params.yaml `analysis.zones` (an edge node has no cameras.json)."""
    root = find_root()
    p = analysis_params(root)
    store = EventStore(store_url(root))
    return Analyzer(p, Dispatcher(store, build_sinks(p.sinks)), load_zones([], p.zones),
                    snapshots=Path(node_dir) / "snapshots")
