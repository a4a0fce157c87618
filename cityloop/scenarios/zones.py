"""Per-camera zones from configuration: the stream's cameras.json (`zones:` of each camera) and
params.yaml `analysis.zones` overrides. The zone kinds are the registered scenarios' (`no_parking`,
`vending`, `no_ads`, `checkpoint`, ...); each error names the scenario, the camera and the key.

A polygon zone is `[x0, y0, x1, y1]` (a rectangle) or `[[x, y], ...]` (3+ points) in frame pixels,
or a list of them. A line zone is `{line: [[x, y], [x, y]], gate: [x0, y0, x1, y1]}`: walking from the
line's left side to its right (seen from its first point towards its second) is "in"; a crossing
whose ground point lies in the gate rectangle (optional) is the allowed way through.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cityloop.scenarios import Registry, registry


class ZoneError(ValueError):
    """A zone configuration that cannot be used (says which scenario, camera and key)."""


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


@dataclass(frozen=True)
class Line:
    """A directed line with an optional gate: `side` is > 0 right of it (the "in" side), < 0 left."""

    a: tuple[float, float]
    b: tuple[float, float]
    gate: Zone | None = None

    def side(self, x: float, y: float) -> float:
        """Signed distance in px of (x, y) from the line (positive: right of a->b in image coordinates)."""
        (ax, ay), (bx, by) = self.a, self.b
        length = ((bx - ax) ** 2 + (by - ay) ** 2) ** 0.5
        return ((bx - ax) * (y - ay) - (by - ay) * (x - ax)) / length

    def spans(self, x: float, y: float) -> bool:
        """Whether the foot of (x, y) on the line falls between its end points (a crossing of the line itself)."""
        (ax, ay), (bx, by) = self.a, self.b
        t = ((x - ax) * (bx - ax) + (y - ay) * (by - ay)) / ((bx - ax) ** 2 + (by - ay) ** 2)
        return 0.0 <= t <= 1.0

    def in_gate(self, x: float, y: float) -> bool:
        return self.gate is not None and self.gate.contains(x, y)


@dataclass
class CameraZones:
    """The zones of one camera. A polygon kind with no zone means the whole frame when its spec says so."""

    camera_id: str
    zones: dict[str, list[Zone]] = field(default_factory=dict)
    lines: dict[str, list[Line]] = field(default_factory=dict)

    def inside(self, kind: str, x: float, y: float) -> bool:
        zs = self.zones.get(kind)
        if zs is None:
            spec = registry().zone_kinds.get(kind)
            return spec is None or spec[1].default_whole
        return any(z.contains(x, y) for z in zs)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: [[list(p) for p in z.points] for z in zs] for k, zs in self.zones.items()}
        for k, ls in self.lines.items():
            out[k] = [{"line": [list(ln.a), list(ln.b)], "gate": ln.gate and [list(p) for p in ln.gate.points]}
                      for ln in ls]
        return out


def _in_frame(pts: tuple[tuple[float, float], ...], size: tuple[float, float] | None, where: str) -> None:
    if size is None:
        return
    w, h = size
    out = [p for p in pts if not (-0.5 <= p[0] <= w + 0.5 and -0.5 <= p[1] <= h + 0.5)]
    if out:
        raise ZoneError(f"{where}: points {out} lie outside the {w:g}x{h:g} frame")


def parse_zone(spec: Any, where: str, size: tuple[float, float] | None = None) -> Zone:
    """`[x0, y0, x1, y1]` or `[[x, y], ...]` (3+ points) -> Zone; ZoneError otherwise."""
    try:
        if len(spec) == 4 and all(isinstance(v, int | float) for v in spec):
            x0, y0, x1, y1 = map(float, spec)
            if x1 <= x0 or y1 <= y0:
                raise ZoneError(f"{where}: rectangle {spec} has x1 <= x0 or y1 <= y0")
            zone = Zone(((x0, y0), (x1, y0), (x1, y1), (x0, y1)))
        else:
            pts = tuple((float(p[0]), float(p[1])) for p in spec)
            if len(pts) < 3 or any(len(p) != 2 for p in spec):
                raise ZoneError(f"{where}: a polygon needs 3 or more [x, y] points, got {spec!r}")
            zone = Zone(pts)
    except ZoneError:
        raise
    except (TypeError, ValueError, IndexError) as exc:
        raise ZoneError(f"{where}: expected [x0, y0, x1, y1] or [[x, y], ...], got {spec!r}") from exc
    _in_frame(zone.points, size, where)
    return zone


def parse_line(spec: Any, where: str, size: tuple[float, float] | None = None) -> Line:
    """`{line: [[x, y], [x, y]], gate: [x0, y0, x1, y1] | null}` -> Line; ZoneError otherwise."""
    if not isinstance(spec, dict) or set(spec) - {"line", "gate"} or "line" not in spec:
        raise ZoneError(f"{where}: expected {{line: [[x, y], [x, y]], gate: [x0, y0, x1, y1]}}, got {spec!r}")
    try:
        (ax, ay), (bx, by) = ((float(p[0]), float(p[1])) for p in spec["line"])
    except (TypeError, ValueError, IndexError) as exc:
        raise ZoneError(f"{where}.line: expected two [x, y] points, got {spec['line']!r}") from exc
    if ((bx - ax) ** 2 + (by - ay) ** 2) ** 0.5 < 1.0:
        raise ZoneError(f"{where}.line: zero length ({spec['line']!r}): a line needs two distinct points")
    _in_frame(((ax, ay), (bx, by)), size, f"{where}.line")
    gate = parse_zone(spec["gate"], f"{where}.gate", size) if spec.get("gate") else None
    return Line((ax, ay), (bx, by), gate)


def camera_zones(camera_id: str, config: dict[str, Any], where: str = "", size: tuple[float, float] | None = None,
                 reg: Registry | None = None) -> CameraZones:
    """Zones of one camera from a mapping {kind: zone | [zone, ...]} (polygons) or {kind: line | [line, ...]}."""
    kinds = (reg or registry()).zone_kinds
    cz = CameraZones(camera_id)
    for kind, spec in (config or {}).items():
        if kind not in kinds:
            raise ZoneError(f"{where}{camera_id}.{kind}: unknown zone kind (known: {', '.join(kinds)})")
        scenario, zk = kinds[kind]
        at = f"scenario {scenario}: {where}{camera_id}.{kind}"
        if zk.shape == "line":
            items = spec if isinstance(spec, list) else [spec]
            if not items:
                raise ZoneError(f"{at}: expected a line or a list of lines, got {spec!r}")
            cz.lines[kind] = [parse_line(s, at, size) for s in items]
            continue
        if not isinstance(spec, list | tuple) or not spec:
            raise ZoneError(f"{at}: expected a zone or a list of zones, got {spec!r}")
        many = isinstance(spec[0], list | tuple) and spec[0] and isinstance(spec[0][0], list | tuple)
        cz.zones[kind] = [parse_zone(s, at, size) for s in spec] if many else [parse_zone(spec, at, size)]
    return cz


def load_zones(cameras: list[dict[str, Any]], overrides: dict[str, dict[str, Any]] | None = None
               ) -> dict[str, CameraZones]:
    """Zones of every camera: cameras.json's `zones`, then params `analysis.zones` overrides (kind by kind)."""
    out: dict[str, CameraZones] = {}
    for cam in cameras:
        cfg = {k: v for k, v in (cam.get("zones") or {}).items()}
        cfg.update((overrides or {}).get(cam["camera_id"], {}))
        side = float(cam.get("size", 192))  # square frames (cameras.json `size`)
        size = (side, side)
        out[cam["camera_id"]] = camera_zones(cam["camera_id"], cfg, "zones.", size)
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
