"""Per-camera zones (no-parking, vending) from configuration: the stream's cameras.json and
params.yaml `analysis.zones` overrides. A zone is a polygon in frame pixels; `[x0, y0, x1, y1]`
is shorthand for a rectangle."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ZONE_KINDS = ("no_parking", "vending")


class ZoneError(ValueError):
    """A zone configuration that cannot be used (says which camera and key)."""


@dataclass(frozen=True)
class Zone:
    """A polygon; `contains` tests a point (the ground point of a box: its bottom centre)."""

    points: tuple[tuple[float, float], ...]

    def contains(self, x: float, y: float) -> bool:
        inside, pts = False, self.points
        for (x0, y0), (x1, y1) in zip(pts, pts[1:] + pts[:1]):
            if (y0 > y) != (y1 > y) and x < x0 + (y - y0) * (x1 - x0) / (y1 - y0):
                inside = not inside
        return inside


@dataclass
class CameraZones:
    """The zones of one camera; a kind with no zone configured means "the whole frame"."""

    camera_id: str
    zones: dict[str, list[Zone]] = field(default_factory=dict)

    def inside(self, kind: str, x: float, y: float) -> bool:
        zs = self.zones.get(kind)
        return True if zs is None else any(z.contains(x, y) for z in zs)


def parse_zone(spec: Any, where: str) -> Zone:
    """`[x0, y0, x1, y1]` or `[[x, y], ...]` (3+ points) -> Zone; ZoneError otherwise."""
    try:
        if len(spec) == 4 and all(isinstance(v, int | float) for v in spec):
            x0, y0, x1, y1 = map(float, spec)
            if x1 <= x0 or y1 <= y0:
                raise ZoneError(f"{where}: rectangle {spec} has x1 <= x0 or y1 <= y0")
            return Zone(((x0, y0), (x1, y0), (x1, y1), (x0, y1)))
        pts = tuple((float(p[0]), float(p[1])) for p in spec)
        if len(pts) < 3 or any(len(p) != 2 for p in spec):
            raise ZoneError(f"{where}: a polygon needs 3 or more [x, y] points, got {spec!r}")
        return Zone(pts)
    except ZoneError:
        raise
    except (TypeError, ValueError, IndexError) as exc:
        raise ZoneError(f"{where}: expected [x0, y0, x1, y1] or [[x, y], ...], got {spec!r}") from exc


def camera_zones(camera_id: str, config: dict[str, Any], where: str = "") -> CameraZones:
    """Zones of one camera from a mapping {kind: zone | [zone, ...]}."""
    cz = CameraZones(camera_id)
    for kind, spec in (config or {}).items():
        at = f"{where}{camera_id}.{kind}"
        if kind not in ZONE_KINDS:
            raise ZoneError(f"{at}: unknown zone kind (known: {', '.join(ZONE_KINDS)})")
        if not isinstance(spec, list | tuple) or not spec:
            raise ZoneError(f"{at}: expected a zone or a list of zones, got {spec!r}")
        many = isinstance(spec[0], list | tuple) and spec[0] and isinstance(spec[0][0], list | tuple)
        cz.zones[kind] = [parse_zone(s, at) for s in spec] if many else [parse_zone(spec, at)]
    return cz


def load_zones(cameras: list[dict[str, Any]], overrides: dict[str, dict[str, Any]] | None = None
               ) -> dict[str, CameraZones]:
    """Zones of every camera: cameras.json's `no_parking` rectangle, then params overrides."""
    out: dict[str, CameraZones] = {}
    for cam in cameras:
        cfg: dict[str, Any] = {}
        if any(cam.get("no_parking") or []):
            cfg["no_parking"] = list(cam["no_parking"])
        cfg.update((overrides or {}).get(cam["camera_id"], {}))
        out[cam["camera_id"]] = camera_zones(cam["camera_id"], cfg, "zones.")
    for cam_id, cfg in (overrides or {}).items():
        out.setdefault(cam_id, camera_zones(cam_id, cfg, "analysis.zones."))
    return out


def read_cameras(streams: Path) -> list[dict[str, Any]]:
    """A stream folder's cameras.json (the simulator writes it; real sites write the same shape)."""
    path = Path(streams) / "cameras.json"
    try:
        cams = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ZoneError(f"{path}: missing (one entry per camera: camera_id, start_ts, fps, zones)") from exc
    except ValueError as exc:
        raise ZoneError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(cams, list) or not all(isinstance(c, dict) and "camera_id" in c for c in cams):
        raise ZoneError(f"{path}: expected a list of objects with a camera_id")
    return cams
