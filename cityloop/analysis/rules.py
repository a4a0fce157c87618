"""One rule per scenario over a camera's tracks. A rule returns *candidates* (the condition
holds now for a subject); `analysis.engine` turns candidates into deduplicated events.

| scenario | holds when (parameters in params.yaml `analysis.rules`) |
|---|---|
| helmetless_rider | a rider track is classed rider_no_helmet in `helmet_k` of its last `helmet_n` frames |
| illegal_parking | a car stays in a no-parking zone (moving < `parking_max_move` box widths) for `parking_t_s` |
| garbage_pile | a garbage track persists for `garbage_t_s` |
| street_vending | a vendor stall stands in a vending zone for `vending_t_s` during `night_hours` |
| road_waterlogging | a water track covers at least `water_min_area` of the frame for `water_t_s` |
| crowd_gathering | >= `crowd_n` standing persons within `crowd_radius` heights of their centre for `crowd_t_s` |

"Standing": slower than `crowd_max_speed` person-heights per second (people walking past together
are not a gathering). Ground points are box bottom centres.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from cityloop.analysis.params import RuleParams
from cityloop.analysis.tracker import Box, Track
from cityloop.analysis.zones import CameraZones

SCENARIOS = ("helmetless_rider", "illegal_parking", "garbage_pile", "street_vending",
             "road_waterlogging", "crowd_gathering")


@dataclass
class Candidate:
    """The condition of `scenario` holds at `ts` for subject `key` (a track, a crowd)."""

    scenario: str
    key: str
    since_ts: float  # when the condition (or its subject) began: the event's start
    boxes: list[Box]
    score: float
    velocity: tuple[float, float] = (0.0, 0.0)


@dataclass
class _Crowd:
    key: str
    centre: tuple[float, float]
    since_ts: float
    last_ts: float


@dataclass
class CameraContext:
    """What rules know of one camera besides its tracks."""

    camera_id: str
    zones: CameraZones
    frame_area: float = 192.0 * 192.0
    crowds: list[_Crowd] = field(default_factory=list)
    _crowd_ids: int = 0


def ground(b: Box) -> tuple[float, float]:
    """The ground point of an object: its box's bottom centre."""
    return (b[0] + b[2]) / 2, b[3]


def is_night(ts: float, hours: tuple[float, float]) -> bool:
    """Whether unix time ts falls in [from, to) hours of the day (wrapping midnight)."""
    dt = datetime.fromtimestamp(ts, UTC)
    h = dt.hour + dt.minute / 60
    lo, hi = hours
    return lo <= h < hi if lo < hi else h >= lo or h < hi


def _held(tr: Track, ts: float, t: float) -> bool:
    """The track has lived at least t seconds (a little slack for frame spacing)."""
    return ts - tr.first_ts >= t - 1e-6


def helmetless(tr: Track, ts: float, p: RuleParams) -> Candidate | None:
    if tr.family != "rider":
        return None
    last = list(tr.history)[-p.helmet_n:]
    bad = [o for o in last if o.cls == "rider_no_helmet"]
    if len(bad) < p.helmet_k:
        return None
    return Candidate("helmetless_rider", f"t{tr.track_id}", tr.first_ts, [tr.box],
                     sum(o.score for o in bad) / len(bad), tr.velocity)


def parking(tr: Track, ts: float, p: RuleParams, ctx: CameraContext) -> Candidate | None:
    if tr.family != "car" or not _held(tr, ts, p.parking_t_s):
        return None
    window = tr.since(ts - p.parking_t_s)
    if len(window) < 3 or not all(ctx.zones.inside("no_parking", *ground(o.box)) for o in window):
        return None
    gx, gy = ground(tr.box)
    tol = p.parking_max_move * (tr.box[2] - tr.box[0]) + 1.0
    if any(abs(ground(o.box)[0] - gx) > tol or abs(ground(o.box)[1] - gy) > tol for o in window):
        return None
    return Candidate("illegal_parking", f"t{tr.track_id}", window[0].ts, [tr.box],
                     sum(o.score for o in window) / len(window))


def persisting(tr: Track, ts: float, family: str, scenario: str, t: float) -> Candidate | None:
    if tr.family != family or not _held(tr, ts, t):
        return None
    obs = tr.since(ts - t)
    return Candidate(scenario, f"t{tr.track_id}", tr.first_ts, [tr.box], sum(o.score for o in obs) / len(obs))


def vending(tr: Track, ts: float, p: RuleParams, ctx: CameraContext) -> Candidate | None:
    if not is_night(ts, p.night_hours) or not ctx.zones.inside("vending", *ground(tr.box)):
        return None
    return persisting(tr, ts, "vendor_stall", "street_vending", p.vending_t_s)


def waterlogging(tr: Track, ts: float, p: RuleParams, ctx: CameraContext) -> Candidate | None:
    if tr.family != "water":
        return None
    def area(b: Box) -> float:
        return (b[2] - b[0]) * (b[3] - b[1]) / ctx.frame_area
    big = [o for o in tr.history if area(o.box) >= p.water_min_area]
    if not big or ts - big[0].ts < p.water_t_s - 1e-6 or area(tr.box) < p.water_min_area:
        return None
    return Candidate("road_waterlogging", f"t{tr.track_id}", tr.first_ts, [tr.box],
                     sum(o.score for o in big) / len(big))


def _clusters(persons: list[Track], n: int, radius: float) -> list[list[Track]]:
    """Greedy groups of >= n persons whose ground points lie within radius x height of the group's centre."""
    left, groups = list(persons), []

    def within(c: tuple[float, float], h: float) -> list[Track]:
        return [b for b in left if ((ground(b.box)[0] - c[0]) ** 2 + (ground(b.box)[1] - c[1]) ** 2) ** 0.5
                <= radius * h]

    while len(left) >= n:
        best: list[Track] = []
        for a in left:
            h = a.box[3] - a.box[1]
            group = within(ground(a.box), h)
            if len(group) >= n:  # re-centre once on the group's centroid
                c = (sum(ground(t.box)[0] for t in group) / len(group),
                     sum(ground(t.box)[1] for t in group) / len(group))
                group = within(c, sum(t.box[3] - t.box[1] for t in group) / len(group))
            if len(group) > len(best):
                best = group
        if len(best) < n:
            break
        groups.append(best)
        left = [t for t in left if t not in best]
    return groups


def crowd(seen: list[Track], ts: float, p: RuleParams, ctx: CameraContext) -> list[Candidate]:
    """Crowds are followed by their centre; a crowd unseen for 1.5 s starts over."""
    def slow(t: Track) -> bool:  # standing, not walking past together
        return (t.velocity[0] ** 2 + t.velocity[1] ** 2) ** 0.5 <= p.crowd_max_speed * (t.box[3] - t.box[1])

    persons = [t for t in seen if t.family == "person" and slow(t)]
    out = []
    for group in _clusters(persons, p.crowd_n, p.crowd_radius):
        cx = sum(ground(t.box)[0] for t in group) / len(group)
        cy = sum(ground(t.box)[1] for t in group) / len(group)
        h = sum(t.box[3] - t.box[1] for t in group) / len(group)
        state = next((c for c in ctx.crowds if ((c.centre[0] - cx) ** 2 + (c.centre[1] - cy) ** 2) ** 0.5
                      <= p.crowd_radius * h and ts - c.last_ts <= 1.5 and c.last_ts < ts), None)
        if state is None:
            ctx._crowd_ids += 1
            state = _Crowd(f"c{ctx._crowd_ids}", (cx, cy), ts, ts)
            ctx.crowds.append(state)
        state.centre, state.last_ts = (cx, cy), ts
        if ts - state.since_ts >= p.crowd_t_s - 1e-6:
            out.append(Candidate("crowd_gathering", state.key, state.since_ts, [t.box for t in group],
                                 sum(t.history[-1].score for t in group) / len(group)))
    ctx.crowds = [c for c in ctx.crowds if ts - c.last_ts <= 1.5]
    return out


def evaluate_rules(seen: list[Track], ts: float, p: RuleParams, ctx: CameraContext) -> list[Candidate]:
    """Every rule over the tracks seen in this frame."""
    out: list[Candidate] = []
    for tr in seen:
        for c in (helmetless(tr, ts, p), parking(tr, ts, p, ctx),
                  persisting(tr, ts, "garbage", "garbage_pile", p.garbage_t_s),
                  vending(tr, ts, p, ctx), waterlogging(tr, ts, p, ctx)):
            if c is not None:
                out.append(c)
    return out + crowd(seen, ts, p, ctx)
