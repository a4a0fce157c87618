"""A season of a district: the same cameras every day for several weeks, helmet compliance rising
after enforcement starts.

The platform cityloop is modelled on sent four weekly reports on helmetless riding to the traffic
police, after which such events fell 88.2%. A season replays that story in the simulator so the
demo can end with a 4-week report whose drop is *measured* from the events the platform found.

- The cameras are fixed: drawn once from the seed (field domain: every district, layout and
  mounting height), so every day has the same camera ids, districts and zones.
- Every clip draws its own condition from the field mix (night, rain, fog, blur and low JPEG stay:
  the season never makes the field easier) and a local start hour from that condition's hours;
  night hours past midnight are the small hours of the clip's own date, so a clip never leaves its day.
- The helmetless scenario's clip rate `p_no_helmet` is `before` until `enforcement_week` (1-based)
  starts, falls linearly over `ramp_days` (the week the reports go out), then stays at `after`.
  Every other scenario keeps its clip rates.

Each day's clips are one ordinary stream folder (`<out>/<YYYY-MM-DD>/`, or `<YYYY-MM-DD>-<k>` with
several clips per camera and day): `cameras.json`, `<camera>/frames/*.jpg`, per-camera
`annotations.coco.json`, `events.json` and `metadata.parquet`, with real start times, so
`cityloop patrol` runs each day unchanged. `<out>/season.json` holds the parameters, the stream
folders and the *true* weekly event counts per scenario (read back from each day's events.json).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from cityloop.core.settings import from_section
from cityloop.scenes.frames import EPOCH, HOURS
from cityloop.scenes.video import default_rates, derive_events, plan_clip, render_clip, write_stream
from cityloop.scenes.world import make_camera, sample_condition

DOMAIN = "field"  # a season is the field: the real mix of districts, light and weather
# The four weeks after the clips of `scenes generate --video` (EPOCH + 0..27 days): a season played into
# the workspace's event store never shares a week with the demo's other streams.
SEASON_START = EPOCH + timedelta(days=28)


@dataclass
class SeasonParams:
    """The `season:` section of params.yaml: the district's weeks the demo ends with.

    Sizing (measured on 2 cores, see README "Four weeks of a district"): 4 cameras x 1 clip of 60 s at
    2 fps a day is 480 frames a day, 13,440 in four weeks: rendered in ~40 s and patrolled with the
    ONNX detector in ~80 s. At riders 5/min and p_no_helmet 0.4 that is ~55 true helmetless events in
    week 1, enough that a drop to 0.05 (~7 a week) is not Poisson noise (sd of 55 is 7)."""

    out: str = ".cityloop/season"  # relative to the workspace: run state, re-rendered from the seed
    weeks: int = 4
    cameras: int = 4
    clips_per_day: int = 1
    seconds: float = 60.0
    fps: float = 2.0
    seed: int = 7
    enforcement_week: int = 2  # 1-based: week 1 is the "before" the first report describes
    p_no_helmet_before: float = 0.4  # the helmetless unit's own clip rate (scenarios/units/helmetless_rider.py)
    p_no_helmet_after: float = 0.05  # 0.4 -> 0.05 is an 87.5% drop: the seed's 88.2%
    ramp_days: int = 7  # compliance climbs over the enforcement week (0: overnight)
    workers: int = 2

    @classmethod
    def from_dict(cls, d: dict | None) -> SeasonParams:
        return from_section(cls, d, "season")


def p_no_helmet_on(day: int, enforcement_week: int, before: float, after: float, ramp_days: int = 7) -> float:
    """The share of riders without a helmet on day `day` (0-based) of the season."""
    start = (enforcement_week - 1) * 7
    if day < start:
        return before
    if ramp_days <= 0 or day >= start + ramp_days:
        return after
    return before + (after - before) * (day - start + 1) / ramp_days


def iso_week(ts: datetime) -> str:
    y, w, _ = ts.isocalendar()
    return f"{y}-W{w:02d}"


def season_cameras(seed: int, cameras: int, size: int = 192) -> list:
    """The season's fixed cameras: drawn once from the seed, the same every day."""
    return [make_camera(f"cam{k:02d}", DOMAIN, size, np.random.default_rng([seed, 91, k])) for k in range(cameras)]


def _season_clip_job(args: tuple) -> dict:
    """One camera's clip of one day: its own condition and hour, the day's rates (a worker process)."""
    cam, seed, day, slot, k, start_day, seconds, fps, fmt, out, rates = args
    rng = np.random.default_rng([seed, 93, day, slot, k])
    cond = sample_condition(DOMAIN, rng)
    hour = float(rng.uniform(*HOURS[cond.name])) % 24.0  # night past midnight: the small hours of this date
    start = start_day + timedelta(hours=hour)
    actors = plan_clip(cam, cond, seconds, rng, rates)
    truth = render_clip(cam, cond, actors, seconds, fps, int(np.random.default_rng([seed, 94, day, slot, k])
                                                               .integers(2**31)), Path(out) / cam.camera_id / "frames",
                        fmt)
    events = derive_events(cam, actors, truth, fps, start, cond.name)
    return {"camera": cam, "condition": cond, "start": start, "truth": truth, "events": events}


def true_weekly_counts(out: Path, streams: list[str], weeks: list[str]) -> dict[str, list[int]]:
    """Per scenario, the true events of each ISO week, read back from each stream folder's events.json."""
    per: dict[str, Counter] = {}
    for folder in streams:
        for e in json.loads((Path(out) / folder / "events.json").read_text()):
            per.setdefault(e["scenario"], Counter())[iso_week(datetime.fromisoformat(e["start_ts"]))] += 1
    from cityloop.scenarios import registry

    return {s: [per.get(s, Counter())[w] for w in weeks] for s in registry().names}


def change_pct(first: int, last: int) -> float | None:
    """Percent change first -> last (negative: a fall); None when there was nothing at first."""
    return None if first == 0 else round(100.0 * (last - first) / first, 1)


def season_id(params: dict) -> str:
    """A season's identity: its parameters (same parameters, same clips, same id)."""
    return "season-" + hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]


def generate_season(out: Path, weeks: int = 4, cameras: int = 4, clips_per_day: int = 1, seconds: float = 60.0,
                    fps: float = 2.0, seed: int = 7, enforcement_week: int = 2,
                    p_no_helmet: tuple[float, float] = (0.4, 0.05), ramp_days: int = 7,
                    start: datetime | None = None, size: int = 192, fmt: str = "jpg", workers: int = 1,
                    rates: dict[str, float] | None = None,
                    progress: Callable[[int], None] | None = None) -> dict:
    """Render `weeks` x 7 days x `clips_per_day` clips of `cameras` fixed field cameras into stream folders
    under `out`, and `out/season.json` (parameters, folders, true weekly counts). `progress(n)`: n clips done
    (weeks * 7 * clips_per_day * cameras in all). Same arguments, same bytes, whatever `workers`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if weeks < 1 or cameras < 1 or clips_per_day < 1:
        raise ValueError("weeks, cameras and clips_per_day must be at least 1")
    if not 1 <= enforcement_week <= weeks + 1:
        raise ValueError(f"enforcement_week must be within 1..{weeks + 1} (weeks + 1: never)")
    if not all(0.0 <= p <= 1.0 for p in p_no_helmet):
        raise ValueError(f"p_no_helmet must be shares within 0..1, got {p_no_helmet}")
    defaults = default_rates()
    unknown = sorted(set(rates or {}) - set(defaults))
    if unknown:
        raise ValueError(f"unknown clip rates {unknown} (the scenarios' rates: {', '.join(defaults)})")
    if "p_no_helmet" in (rates or {}):
        raise ValueError("p_no_helmet is the season's own (p_no_helmet=(before, after)), not a fixed rate")
    base = {**defaults, **(rates or {})}
    start = (start or SEASON_START).astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    before, after = p_no_helmet
    cams = season_cameras(seed, cameras, size)
    days, jobs, folders = [], [], []
    for day in range(weeks * 7):
        date = start + timedelta(days=day)
        p = p_no_helmet_on(day, enforcement_week, before, after, ramp_days)
        for slot in range(clips_per_day):
            folder = date.strftime("%Y-%m-%d") + (f"-{slot + 1}" if clips_per_day > 1 else "")
            folders.append(folder)
            days.append({"folder": folder, "date": date.strftime("%Y-%m-%d"), "week": iso_week(date),
                         "p_no_helmet": round(p, 4)})
            jobs += [(cam, seed, day, slot, k, date, seconds, fps, fmt, str(out / folder), {**base, "p_no_helmet": p})
                     for k, cam in enumerate(cams)]
    t = time.perf_counter()
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    results = pool.map(_season_clip_job, jobs, chunksize=max(1, cameras)) if pool else map(_season_clip_job, jobs)
    per_folder: list[dict] = []
    it = iter(folders)
    try:
        for res in results:
            per_folder.append(res)
            if progress:
                progress(1)
            if len(per_folder) == cameras:
                write_stream(out / next(it), per_folder, fps, size, seed, DOMAIN)
                per_folder = []
    finally:
        if pool:
            pool.shutdown()
    render_s = time.perf_counter() - t
    week_labels = [iso_week(start + timedelta(days=7 * w)) for w in range(weeks)]
    truth = true_weekly_counts(out, folders, week_labels)
    params = {"weeks": weeks, "cameras": cameras, "clips_per_day": clips_per_day, "seconds": seconds, "fps": fps,
              "seed": seed, "enforcement_week": enforcement_week, "p_no_helmet": [before, after],
              "ramp_days": ramp_days, "start": start.isoformat(), "size": size, "format": fmt,
              "rates": {k: v for k, v in base.items() if k != "p_no_helmet"}, "domain": DOMAIN}
    helmet = truth.get("helmetless_rider", [0] * weeks)
    summary = {
        "id": season_id(params), "params": params,
        "cameras": [{"camera_id": c.camera_id, "district": c.district, "layout": c.layout, "height": c.height}
                    for c in cams],
        "weeks": week_labels, "streams": days, "frames": len(jobs) * int(round(seconds * fps)),
        "render_s": round(render_s, 1), "workers": workers,
        "truth": truth,
        "true_change_pct": change_pct(helmet[0], helmet[-1]),  # helmetless riders, first week -> last
    }
    (out / "season.json").write_text(json.dumps(summary, indent=1))
    return summary


def read_season(season_dir: Path) -> dict:
    """`season.json` of a season folder (ValueError when it is not one)."""
    path = Path(season_dir) / "season.json"
    if not path.exists():
        raise ValueError(f"{season_dir} is not a season folder (no season.json; cityloop scenes season writes one)")
    return json.loads(path.read_text())


def season_matches(season_dir: Path, **kwargs) -> bool:
    """Whether `season_dir` already holds the season generate_season(**kwargs) would render (same bytes:
    the demo renders it once per workspace)."""
    try:
        have = read_season(season_dir)["params"]
    except (ValueError, KeyError, json.JSONDecodeError):
        return False
    want = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items() if k not in ("workers", "progress")}
    return all(have.get(k) == v for k, v in want.items())


def season_kwargs(p: SeasonParams, size: int = 192) -> dict:
    """generate_season's arguments from the `season:` section and the frame contract (`generate.size`)."""
    d = asdict(p)
    return {"weeks": d["weeks"], "cameras": d["cameras"], "clips_per_day": d["clips_per_day"],
            "seconds": d["seconds"], "fps": d["fps"], "seed": d["seed"], "enforcement_week": d["enforcement_week"],
            "p_no_helmet": (d["p_no_helmet_before"], d["p_no_helmet_after"]), "ramp_days": d["ramp_days"],
            "workers": d["workers"], "size": int(size)}


__all__ = ["SeasonParams", "generate_season", "read_season", "season_kwargs", "season_matches", "p_no_helmet_on",
           "change_pct", "iso_week", "SEASON_START"]
