"""Checkpoint break-in / break-out (public health, testing sites): a person whose ground point crosses a
checkpoint's fence line outside its gate. Going from the line's left to its right (seen from its first
point towards its second) is "in", the other way "out". People passing through the gate and people
walking along the fence without crossing it are the confusers.

A track's side of each line is remembered with a hysteresis of `margin` person heights (box jitter
near the line does not flip it). A flip is a crossing only when the track walked it: it approached the
line before (at least `min_speed` heights per second across it, seen for a second or more), stepped over
it no faster than `max_speed`, and keeps going on the new side in the next frame; a tracker that swaps
two people standing or walking along the fence makes no such flip. A crossing on the line and outside
the gate is a breach, reported for `hold_s` after the crossing and then let go.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from cityloop.scenarios.base import CameraContext, Candidate, ClipSpec, Scenario, Track, ZoneKind, ground, visible_times
from cityloop.scenes.draw import AA, pt, shade

ORDER = 90
SHARE = 0.25  # field cameras that watch a checkpoint
TAPES = [((220, 30, 30), (245, 245, 245)), ((250, 205, 20), (30, 30, 30)), ((30, 110, 210), (245, 245, 245))]


@dataclass
class Params:
    margin: float = 0.1  # person heights either side of the line that do not count as a side (hysteresis)
    min_speed: float = 0.1  # person heights per second towards the line before, and away from it after
    max_speed: float = 1.5  # person heights per second across the line: faster is a tracker's swap, not a step
    hold_s: float = 2.0  # a breach is reported this long after its crossing


# ------------------------------------------------------------------------------------ the rule


def _lines(ctx: CameraContext) -> list:
    return ctx.zones.lines.get("checkpoint", []) if ctx.zones is not None else []


def _height(b) -> float:
    return max(1.0, b[3] - b[1])


def _crossing(tr: Track, ln, old: int, p: Params) -> tuple[float, float, float] | None:
    """(ts, x, y) where the track's ground point last left side `old` of line ln (interpolated), when
    the track walked over it: approaching it first, one plausible step across. None otherwise."""
    obs = list(tr.history)
    ds = [ln.side(*ground(o.box)) for o in obs]
    for i in range(len(obs) - 1, 0, -1):
        d0, d1 = ds[i - 1], ds[i]
        if not d0 * old > 0 >= d1 * old:
            continue
        a, b = obs[i - 1], obs[i]
        h = (_height(a.box) + _height(b.box)) / 2
        if not 0.6 <= _height(a.box) / _height(b.box) <= 1.67 or abs(d0 - d1) > p.max_speed * h * (b.ts - a.ts):
            return None  # another person's box: a swap
        before = [j for j in range(i) if a.ts - 2.0 <= obs[j].ts and ds[j] * old > 0]
        e = before[0] if before else i - 1
        if a.ts - obs[e].ts < 0.9 or (abs(ds[e]) - abs(d0)) < p.min_speed * h * (a.ts - obs[e].ts):
            return None  # not walking towards the line before
        f = d0 / (d0 - d1)
        g0, g1 = ground(a.box), ground(b.box)
        return a.ts + f * (b.ts - a.ts), g0[0] + f * (g1[0] - g0[0]), g0[1] + f * (g1[1] - g0[1])
    return None


def rule(seen: list[Track], ts: float, p: Params, ctx: CameraContext) -> list[Candidate]:
    """Each person track's side of each checkpoint line; a walked flip outside the gate is a breach."""
    lines = _lines(ctx)
    if not lines:
        return []
    state = ctx.memory.setdefault("checkpoint", {"side": {}, "pending": {}, "open": {}})
    out = []
    for tr in seen:
        if tr.family != "person":
            continue
        g, h = ground(tr.box), _height(tr.box)
        for i, ln in enumerate(lines):
            key, d = (i, tr.track_id), ln.side(*g)
            pend = state["pending"].get(key)
            if pend is not None and ts > pend["ts"]:  # the frame after the flip: still going?
                del state["pending"][key]
                away = d * pend["side"] - pend["d"]
                if away >= p.min_speed * h * (ts - pend["ts"]) and ts - pend["since"] <= p.hold_s + 1.0:
                    state["open"][tr.track_id] = {"since": pend["since"], "until": max(pend["since"] + p.hold_s, ts),
                                                  "direction": "in" if pend["side"] > 0 else "out"}
            if abs(d) <= p.margin * h:
                continue  # on the line: keep the side it was last on
            side = 1 if d > 0 else -1
            prev = state["side"].get(key)
            state["side"][key] = (side, ts)
            if prev is None or prev[0] == side:
                continue
            cross = _crossing(tr, ln, prev[0], p)
            if cross is None:
                continue
            tc, cx, cy = cross
            if ln.spans(cx, cy) and not ln.in_gate(cx, cy):  # on the fence, not through the gate
                state["pending"][key] = {"side": side, "d": abs(d), "ts": ts, "since": tc}
        o = state["open"].get(tr.track_id)
        if o is not None and ts <= o["until"] + 1e-6:
            recent = tr.since(o["since"]) or [tr.history[-1]]
            out.append(Candidate("checkpoint_breach", f"t{tr.track_id}", o["since"], [tr.box],
                                 sum(ob.score for ob in recent) / len(recent), tr.velocity,
                                 detail={"direction": o["direction"]}))
    state["open"] = {k: o for k, o in state["open"].items() if ts <= o["until"] + 1e-6}
    state["pending"] = {k: v for k, v in state["pending"].items() if ts - v["ts"] <= 3.0}
    if len(state["side"]) > 500:  # forget tracks gone for a while
        state["side"] = {k: v for k, v in state["side"].items() if ts - v[1] <= 30.0}
    return out


# ------------------------------------------------------------------------------------ the site


def site(cam, rng: np.random.Generator, domain: str, force: bool) -> dict:
    """A fence across the frame at a ground row in its lower half (people cross it walking towards or
    away from the camera), with a gate gap; on a quarter of the field cameras."""
    watch = rng.random() < SHARE  # drawn first: forcing a site does not move its geometry
    S = float(cam.size)
    y0 = cam.ground_range(16.0 * cam.size / 192)[0]
    yl = y0 + (S - y0) * float(rng.uniform(0.45, 0.55))
    tilt = float(rng.uniform(-1.5, 1.5)) * cam.size / 192
    gx = float(rng.uniform(0.3, 0.7)) * S
    s = cam.scale(yl)
    half = float(rng.uniform(0.45, 0.6)) * s
    if not (force or (domain == "field" and watch)):
        return {}
    gate = [gx - half, yl - 0.6 * s, gx + half, min(S, yl + 0.2 * s)]
    return {"checkpoint": {"line": [[0.0, round(yl + tilt, 2)], [S, round(yl - tilt, 2)]],
                           "gate": [round(v, 2) for v in gate]}}


def _geometry(cam) -> tuple[tuple[float, float, float, float], tuple[float, float, float, float]] | None:
    cfg = cam.zones.get("checkpoint")
    if not cfg:
        return None
    (ax, ay), (bx, by) = cfg["line"]
    return (ax, ay, bx, by), tuple(cfg["gate"])


def _line_y(line: tuple[float, float, float, float], x: float) -> float:
    ax, ay, bx, by = line
    return ay + (by - ay) * (x - ax) / (bx - ax)


def scenery(img, cam, rng: np.random.Generator) -> None:
    """The checkpoint's fence (posts, rails, barrier tape) along its line but for the gate, and a booth."""
    geo = _geometry(cam)
    if geo is None:
        return
    line, (gx0, _gy0, gx1, _gy1) = geo
    S = cam.size
    s = cam.scale(_line_y(line, (gx0 + gx1) / 2))
    tape, tape2 = TAPES[rng.integers(len(TAPES))]
    post = (170, 170, 175) if rng.random() < 0.6 else (70, 75, 80)
    hf = float(rng.uniform(0.4, 0.5)) * s  # fence height
    # the booth, behind the fence beside the gate
    side = 1 if rng.random() < 0.5 else -1
    bw, bh = 0.7 * s, 0.8 * s
    bx = (gx1 + 0.25 * s + bw / 2) if side > 0 else (gx0 - 0.25 * s - bw / 2)
    by = _line_y(line, bx) - 0.12 * s
    cv2.rectangle(img, pt(bx - bw / 2, by - bh), pt(bx + bw / 2, by), (235, 235, 230), -1)
    roof = np.array([pt(bx - 0.6 * bw, by - bh), pt(bx + 0.6 * bw, by - bh), pt(bx + 0.45 * bw, by - 1.18 * bh),
                     pt(bx - 0.45 * bw, by - 1.18 * bh)], np.int32)
    cv2.fillPoly(img, [roof], (40, 100, 190), AA)
    cv2.rectangle(img, pt(bx - 0.35 * bw, by - 0.8 * bh), pt(bx + 0.1 * bw, by - 0.5 * bh), (90, 120, 140), -1)
    cx, cy, arm = bx + 0.3 * bw, by - 0.65 * bh, max(1.0, 0.08 * bw)
    cv2.line(img, pt(cx - arm, cy), pt(cx + arm, cy), (210, 30, 30), max(1, int(0.05 * bw)))
    cv2.line(img, pt(cx, cy - arm), pt(cx, cy + arm), (210, 30, 30), max(1, int(0.05 * bw)))
    # the fence: posts every ~0.45 person heights, two rails, the top one taped
    wt = max(1, int(round(0.04 * s)))
    for xa, xb in ((0.0, gx0), (gx1, float(S))):
        if xb - xa < 1:
            continue
        n = max(1, int(round((xb - xa) / (0.45 * s))))
        for x in np.linspace(xa, xb, n + 1):
            yy = _line_y(line, x)
            cv2.line(img, pt(x, yy), pt(x, yy - hf), shade(post, 0.8), wt)
        cv2.line(img, pt(xa, _line_y(line, xa) - 0.55 * hf), pt(xb, _line_y(line, xb) - 0.55 * hf),  # middle rail
                 shade(post, 0.9), max(1, wt - 1), AA)
        seg, x, i = max(2.0, 0.18 * s), xa, 0
        while x < xb:  # the striped barrier tape along the top
            xe = min(xb, x + seg)
            cv2.line(img, pt(x, _line_y(line, x) - hf), pt(xe, _line_y(line, xe) - hf),
                     tape if i % 2 == 0 else tape2, wt + 1)
            x, i = xe, i + 1
    for x in (gx0, gx1):  # gate posts, taller, with a lamp-like cap
        yy = _line_y(line, x)
        cv2.line(img, pt(x, yy), pt(x, yy - 1.25 * hf), (60, 60, 65), wt + 1)
        cv2.circle(img, pt(x, yy - 1.25 * hf), max(1, wt), tape, -1)


# ------------------------------------------------------------------------------------ the simulator


def _walk_across(p, line, xc: float, toward: bool, scenario: str | None, taken: list) -> None:
    """A person crossing the line at xc, walking towards the camera (far to near) or away from it, in
    view at least ~3 s either side of the crossing. Two crossers never come or go at the same spot within
    a few seconds of each other (a tracker would take one for the other): `taken` holds the others."""
    S = float(p.cam.size)
    yc = _line_y(line, xc)
    s = p.cam.scale(yc)
    above, below = yc - p.y0, S - yc  # room on the far and the near side
    speed = float(p.rng.uniform(8, 14)) * p.unit
    speed = min(speed, 0.95 * min(above, below) / 3.2)
    far_d = min(float(p.rng.uniform(3.2, 4.5)) * speed, 0.97 * above)
    near_d = min(float(p.rng.uniform(3.2, 4.5)) * speed, below)
    drift = float(p.rng.uniform(-0.3, 0.3))  # a little sideways
    first = far_d / speed if toward else near_d / speed  # seconds from its first key to the crossing
    for _try in range(20):
        tc = float(p.rng.uniform(first, p.seconds - 3.0))
        t0, t1 = tc - first, tc - first + (far_d + near_d) / speed
        if not any(t0 < b1 + 4 and a0 < t1 + 4 and abs(xc - x) < 1.2 * s for a0, b1, x in taken):
            break
    else:
        return  # no room: this one stays home
    taken.append((t0, t1, xc))
    far = (tc - far_d / speed if toward else tc + far_d / speed, xc - drift * far_d, yc - far_d)
    near = (tc + near_d / speed if toward else tc - near_d / speed, xc + drift * near_d, yc + near_d)
    keys = [far, (tc, xc, yc), near] if toward else [near, (tc, xc, yc), far]
    p.add("person", keys, scenario, facing=1 if drift >= 0 else -1, extra={"crossing": tc})


def plan(p, rates: dict) -> None:
    """On cameras that watch a checkpoint: people slipping through the fence (breaches), people passing
    through the gate, and people walking along the fence (the confusers)."""
    geo = _geometry(p.cam)
    if geo is None:
        return
    line, (gx0, _gy0, gx1, _gy1) = geo
    S = float(p.cam.size)
    s = p.cam.scale(_line_y(line, (gx0 + gx1) / 2))
    taken: list[tuple[float, float, float]] = []
    for _ in range(p.count(rates["breaches"])):
        for _try in range(30):
            xc = float(p.rng.uniform(0.08, 0.92)) * S
            if not gx0 - 0.6 * s <= xc <= gx1 + 0.6 * s:
                break
        else:
            continue
        _walk_across(p, line, xc, bool(p.rng.random() < 0.5), "checkpoint_breach", taken)
    for _ in range(p.count(rates["gate_passes"])):
        xc = (gx0 + gx1) / 2 + float(p.rng.uniform(-0.15, 0.15)) * (gx1 - gx0)
        _walk_across(p, line, xc, bool(p.rng.random() < 0.5), None, taken)
    for _ in range(p.count(rates["line_walkers"])):  # along the fence, a little in front of or behind it
        off = float(p.rng.choice([-1, 1])) * float(p.rng.uniform(0.3, 0.6)) * s
        keys, d = p.crossing(p.rng.uniform(-5, p.seconds), p.rng.uniform(8, 14), _line_y(line, S / 2) + off)
        keys = [(t, x, _line_y(line, x) + off) for t, x, _y in keys]
        p.add("person", keys, facing=d)


def truth(cam, actors, frames) -> list[dict]:
    """A breach is an event from its crossing (the keys interpolated to the line) for 2 s, or to the
    breacher's last visible frame, when the breacher is in view either side of the crossing."""
    from cityloop.scenarios.zones import parse_line

    cfg = cam.zones.get("checkpoint")
    if not cfg:
        return []
    ln = parse_line(cfg, "checkpoint")
    seen = visible_times(frames)
    out = []
    for a in actors:
        if a.scenario != "checkpoint_breach" or not seen.get(a.track_id):
            continue
        for (t0, x0, y0), (t1, x1, y1) in zip(a.keys, a.keys[1:]):
            d0, d1 = ln.side(x0, y0), ln.side(x1, y1)
            if d0 != 0 and (d0 > 0) != (d1 > 0):
                tc = t0 + d0 / (d0 - d1) * (t1 - t0)
                break
        else:
            continue
        ts = seen[a.track_id]
        if not (any(tc - 1.5 <= t < tc for t in ts) and any(tc < t <= tc + 1.5 for t in ts)):
            continue  # not in view around its crossing
        out.append({"scenario": "checkpoint_breach", "start_s": round(tc, 3), "end_s": round(min(tc + 2.0, ts[-1]), 3),
                    "track_ids": [a.track_id], "direction": "in" if d0 < 0 else "out"})
    return out


SCENARIO = Scenario(
    name="checkpoint_breach", title="Checkpoint break-in / break-out", agency="public health",
    kind="line crossing outside the gate",
    alert="Checkpoint breach ({direction}) on {camera_id} ({district})",
    rule=rule, params=Params, uses=("person",),
    zones=(ZoneKind("checkpoint", shape="line", default_whole=False,
                    doc="a checkpoint's fence line and its gate; none configured: no checkpoint"),),
    rates={"breaches": 0.5, "gate_passes": 1.5, "line_walkers": 1.0}, plan=plan, truth=truth, site=site,
    scenery=scenery,
    positive=ClipSpec("day", 10.0, {"breaches": 4.0, "gate_passes": 1.5, "line_walkers": 1.0},
                      sites=("checkpoint",)),
    confuser=ClipSpec("dusk", 18.0, {"breaches": 0.0, "gate_passes": 4.0, "line_walkers": 4.0},
                      sites=("checkpoint",)),
    fps=2.0, min_fps=1.0, priority=3,
)
