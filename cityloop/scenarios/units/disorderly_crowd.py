"""Disorderly crowds (public order, testing sites): at least `n` standing people, each within `link`
person-heights of another, for `t_s`, whose arrangement is a cluster, not a queue. People walking past
together (faster than `max_speed` heights per second) are not a crowd; an orderly queue (its people
along a line: spread across it under `queue_ratio` of the spread along it) is the confuser, and its
events say which form the group took.

This unit also defines the `person` class (pedestrians walk through every clip).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from cityloop.scenarios.base import CameraContext, Candidate, ClipSpec, ObjectClass, Scenario, Track, ground
from cityloop.scenarios.units.helmetless_rider import person_attrs
from cityloop.scenes.draw import AA, Box, Light, Obj, pt, shade

ORDER = 60
GATHER_MIN, GATHER_RADIUS = 4, 0.6  # simulator truth: persons within this many heights of the gathering point


@dataclass
class Params:
    n: int = 4  # at least N standing persons ...
    link: float = 0.8  # ... each within L person-heights of another ...
    t_s: float = 3.0  # ... for T
    max_speed: float = 0.15  # person-heights per second: faster members are walking past
    queue_ratio: float = 0.3  # spread across / along the group's main axis under this ...
    queue_gap: float = 0.25  # ... and neighbours along it at least this many heights apart: a queue (orderly)


def walker_attrs(rng: np.random.Generator) -> dict:
    return {**person_attrs(rng), "walks": True}


def draw_person(img, o: Obj, lights: list[Light], walk: float | None = None) -> Box:
    """A pedestrian, standing or mid-stride."""
    s, x, y, a = o.s * o.attrs["k"], o.x, o.y, o.attrs
    w = max(1, int(0.09 * s))
    stride = 0.12 * s * np.sin(a["phase"] if walk is None else walk)
    hip = (x, y - 0.5 * s)
    cv2.line(img, pt(*hip), pt(x - stride, y), shade(a["pants"]), w, AA)
    cv2.line(img, pt(*hip), pt(x + stride, y), shade(a["pants"], 0.85), w, AA)
    cv2.rectangle(img, pt(x - 0.12 * s, y - 0.84 * s), pt(x + 0.12 * s, y - 0.48 * s),
                  shade(a["shirt"]), -1)
    cv2.line(img, pt(x - 0.12 * s, y - 0.8 * s), pt(x - 0.15 * s - stride * 0.5, y - 0.5 * s),
             shade(a["shirt"], 0.8), max(1, w - 1), AA)
    cv2.line(img, pt(x + 0.12 * s, y - 0.8 * s), pt(x + 0.15 * s + stride * 0.5, y - 0.5 * s),
             shade(a["shirt"], 0.8), max(1, w - 1), AA)
    r = max(1.5, 0.075 * s)
    cv2.circle(img, pt(x, y - 0.92 * s), int(round(r)), shade(a["skin"]), -1, AA)
    cv2.ellipse(img, pt(x, y - 0.93 * s), (int(round(r)), int(round(r * 0.8))), 0, 180, 360,
                shade(a["hair"]), -1, AA)
    return (x - 0.17 * s - abs(stride) * 0.5, y - s, x + 0.17 * s + abs(stride) * 0.5, y)


def _draw(img, o: Obj, lights: list[Light], cond, sky) -> Box:
    return draw_person(img, o, lights, o.attrs.get("walk"))


def groups(persons: list[Track], n: int, link: float) -> list[list[Track]]:
    """Groups of >= n persons, each within `link` heights (ground distance) of another member."""
    left, out = list(persons), []
    while left:
        group, frontier = [left.pop(0)], 0
        while frontier < len(group):
            a = group[frontier]
            ax, ay = ground(a.box)
            reach = link * (a.box[3] - a.box[1])
            near = [b for b in left if ((ground(b.box)[0] - ax) ** 2 + (ground(b.box)[1] - ay) ** 2) ** 0.5 <= reach]
            for b in near:
                left.remove(b)
            group += near
            frontier += 1
        if len(group) >= n:
            out.append(group)
    return out


def form(group: list[Track], queue_ratio: float, min_gap: float = 0.25) -> str:
    """"queue" when the members stand along a line, each a step apart (spread across the line under
    `queue_ratio` of the spread along it, neighbours at least `min_gap` heights apart), else "cluster"."""
    pts = np.array([ground(t.box) for t in group], float)
    h = float(np.mean([t.box[3] - t.box[1] for t in group]))
    vals, vecs = np.linalg.eigh(np.cov(pts.T) + 1e-9 * np.eye(2))
    across, along = float(np.sqrt(max(vals[0], 0.0))), float(np.sqrt(max(vals[1], 0.0)))
    gaps = np.diff(np.sort(pts @ vecs[:, 1]))
    return "queue" if across <= queue_ratio * along and gaps.min() >= min_gap * h else "cluster"


def rule(seen: list[Track], ts: float, p: Params, ctx: CameraContext) -> list[Candidate]:
    """Groups are followed by their centre; a group unseen for 1.5 s starts over."""
    def slow(t: Track) -> bool:  # standing, not walking past together
        return (t.velocity[0] ** 2 + t.velocity[1] ** 2) ** 0.5 <= p.max_speed * (t.box[3] - t.box[1])

    state = ctx.memory.setdefault("crowds", {"open": [], "ids": 0})
    persons = [t for t in seen if t.family == "person" and slow(t)]
    out = []
    for group in groups(persons, p.n, p.link):
        cx = sum(ground(t.box)[0] for t in group) / len(group)
        cy = sum(ground(t.box)[1] for t in group) / len(group)
        h = sum(t.box[3] - t.box[1] for t in group) / len(group)
        crowd = next((c for c in state["open"] if ((c["centre"][0] - cx) ** 2 + (c["centre"][1] - cy) ** 2) ** 0.5
                      <= p.link * h and ts - c["last_ts"] <= 1.5 and c["last_ts"] < ts), None)
        if crowd is None:
            state["ids"] += 1
            crowd = {"key": f"c{state['ids']}", "centre": (cx, cy), "since_ts": ts, "last_ts": ts,
                     "cluster_since": None}
            state["open"].append(crowd)
        crowd["centre"], crowd["last_ts"] = (cx, cy), ts
        shape = form(group, p.queue_ratio, p.queue_gap)
        if shape == "queue":  # orderly now: a cluster must hold for t_s from here on
            crowd["cluster_since"] = None
        elif crowd.get("cluster_since") is None:
            crowd["cluster_since"] = ts
        since = crowd.get("cluster_since")
        if since is not None and ts - since >= p.t_s - 1e-6:
            out.append(Candidate("disorderly_crowd", crowd["key"], since, [t.box for t in group],
                                 sum(t.history[-1].score for t in group) / len(group),
                                 detail={"form": shape, "size": len(group)}))
    state["open"] = [c for c in state["open"] if ts - c["last_ts"] <= 1.5]
    return out


def plan(p, rates: dict) -> None:
    """Pedestrians walk past; crowds walk in and gather in a cluster; queues form in a line (the confuser)."""
    cam = p.cam
    for _ in range(p.count(rates["pedestrians"])):
        keys, d = p.crossing(p.rng.uniform(-5, p.seconds), p.rng.uniform(8, 14), p.walk_y())
        p.add("person", keys, facing=d)
    spots: list[tuple[float, float, float, float, float]] = []
    for kind, rate in (("cluster", rates["crowds"]), ("queue", rates["queues"])):
        for _ in range(p.count(rate)):
            g = len({a.group for a in p.actors if a.group >= 0})
            for _try in range(20):  # two groups at one spot at one time would be one crowd: keep them apart
                t0 = float(p.rng.uniform(0, p.seconds * 0.5))
                py = p.walk_y()
                px, s = float(p.rng.uniform(0.3, 0.7) * cam.size), cam.scale(py)
                t_go = t0 + float(p.rng.uniform(30, 90))
                if not any(t0 < b1 + 10 and a0 < t_go + 10 and abs(px - x) < 3.0 * max(s, h)
                           and abs(py - y) < 1.2 * max(s, h) for a0, b1, x, y, h in spots):
                    break
            else:
                continue  # the place is taken all clip long: this group goes elsewhere
            spots.append((t0, t_go, px, py, s))
            n = int(p.rng.integers(GATHER_MIN + 1, GATHER_MIN + 5))
            gap = float(p.rng.uniform(0.4, 0.55)) * s
            for k in range(n):
                side = p.rng.choice([-1, 1])
                sx = px + side * p.rng.uniform(0.6, 1.0) * cam.size
                if kind == "cluster":
                    tx, ty = px + p.rng.normal(0, 0.3 * s), py + p.rng.normal(0, 0.2 * s)
                else:  # one behind another along the pavement
                    tx, ty = px + (k - (n - 1) / 2) * gap, py + p.rng.normal(0, 0.02 * s)
                walk = abs(tx - sx) / (10 * p.unit)
                ta = t0 + p.rng.uniform(0, 4)
                keys = [(ta, sx, ty), (ta + walk, tx, ty), (t_go, tx, ty), (t_go + walk, sx, ty)]
                p.add("person", keys, "disorderly_crowd" if kind == "cluster" else None, group=g,
                      extra={"point": (px, py), "form": kind})


def truth(cam, actors, frames) -> list[dict]:
    """A crowd is an event while at least GATHER_MIN of its members stand near its gathering point."""
    groups_: dict[int, list] = {}
    for a in actors:
        if a.group >= 0 and a.scenario == "disorderly_crowd":
            groups_.setdefault(a.group, []).append(a)
    out = []
    for members in groups_.values():
        px, py = members[0].extra["point"]
        r = GATHER_RADIUS * cam.scale(py)
        ids = {m.track_id for m in members}
        gathered = [fr["t"] for fr in frames
                    if sum(1 for tid, (x, y, _s) in fr["centres"].items()
                           if tid in ids and np.hypot(x - px, y - py) <= max(r, 6)) >= GATHER_MIN]
        if gathered:
            out.append({"scenario": "disorderly_crowd", "start_s": gathered[0], "end_s": gathered[-1],
                        "track_ids": sorted(ids)})
    return out


SCENARIO = Scenario(
    name="disorderly_crowd", title="Disorderly crowd", agency="public order",
    kind="count + form (cluster, not queue)", alert="Disorderly crowd of {size} on {camera_id} ({district})",
    rule=rule, params=Params,
    classes=(ObjectClass("person", _draw, walker_attrs, where="any", rate=1.4, extent=(0.2, 1.0),
                         confused_with="rider_no_helmet"),),
    uses=("person",), rates={"pedestrians": 4.0, "crowds": 0.6, "queues": 0.3}, plan=plan, truth=truth,
    positive=ClipSpec("day", 11.0, {"crowds": 1.5, "queues": 0.0}, seconds=90),
    confuser=ClipSpec("day", 12.0, {"crowds": 0.0, "queues": 1.5, "pedestrians": 6.0}, seconds=90),
    fps=1.0, min_fps=0.5, priority=2,
)
