"""Dashboard benchmark: how fast the command center's JSON API (`GET /api/state`) answers over an event
store of 1,000 and of 10,000 events, against the 200 ms budget (issue 18) of the screen's poll.

For each size: a temporary SQLite event store filled with that many events spread over 4 weeks across
24 cameras in 4 districts and every registered scenario (boxes, snapshot paths and a review on some, as
the real store holds them), the Dashboard started on 127.0.0.1, one warm-up GET, then `--requests` GETs
of /api/state over one keep-alive httpx client: median and p95 milliseconds, and the median's share of
the budget. The workspace has no registry, so the accuracy curve costs nothing here (the dashboard
reads it at most every 30 s in any case).

    .venv/bin/python benchmarks/bench_dashboard.py [--sizes 1000 10000] [--requests 50]

Prints a table and replaces the "## Dashboard" section of ``--out`` (other sections are kept).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import httpx  # noqa: E402
from benchkit import Row, command_line, finish, loadavg, log, machine_facts  # noqa: E402

from cityloop.analysis.dashboard import Dashboard  # noqa: E402
from cityloop.analysis.store import EVENTS, EventStore  # noqa: E402
from cityloop.scenarios import registry  # noqa: E402

SECTION = "## Dashboard"
BUDGET_MS = 200.0
END = 1792000000.0  # 2026-10-14: the simulated weeks end here (the screen replays as of the latest event)
DISTRICTS = ("longgang-old", "bantian-tech", "buji-market", "jihua-residential")


def fill(store: EventStore, n: int, cameras: int = 24, seed: int = 0) -> None:
    """`n` events over the 4 weeks before END, in one insert."""
    rng, names = random.Random(seed), list(registry().scenarios)
    rows = []
    for i in range(n):
        t = END - rng.random() * 28 * 86400
        cam = rng.randrange(cameras)
        first = t + rng.uniform(0.5, 6)
        extra = {"frame": f"/data/frames/{i}.jpg", "frame_index": i}
        if i % 7 == 0:
            extra["review"] = {"verdict": rng.choice(["confirmed", "dismissed"]), "by": "dashboard", "ts": t + 600,
                               "note": ""}
        rows.append({"id": f"ev-{i:06d}", "scenario": rng.choice(names), "camera_id": f"cam-{cam:02d}",
                     "district": DISTRICTS[cam % len(DISTRICTS)], "start_ts": t, "end_ts": t + rng.uniform(5, 900),
                     "first_detected_ts": first, "alerted_ts": first + rng.uniform(0.5, 3),
                     "model_version": f"cityloop-detector:v{1 + i * 6 // n}", "score": rng.uniform(0.3, 0.99),
                     "boxes": [[rng.uniform(0, 600), rng.uniform(0, 300), 40.0, 80.0]],
                     "snapshot": f"/data/snaps/ev-{i:06d}.jpg", "extra": extra})
    with store.engine.begin() as c:
        c.execute(EVENTS.insert(), rows)


def measure(n: int, requests: int) -> dict[str, float]:
    """Median / p95 / first-request milliseconds of GET /api/state over `n` events."""
    with tempfile.TemporaryDirectory() as tmp:
        store = EventStore(f"sqlite:///{tmp}/events.db")
        fill(store, n)
        dash = Dashboard(store, Path(tmp), token="bench").start()
        try:
            with httpx.Client(timeout=30) as client:
                t = time.perf_counter()
                body = client.get(f"{dash.url}/api/state")
                first = (time.perf_counter() - t) * 1000
                assert body.status_code == 200 and body.json()["totals"]["events"] == n, body.text[:200]
                took = []
                for _ in range(requests):
                    t = time.perf_counter()
                    client.get(f"{dash.url}/api/state").raise_for_status()
                    took.append((time.perf_counter() - t) * 1000)
        finally:
            dash.stop()
            store.dispose()
    took.sort()
    return {"median": statistics.median(took), "p95": took[min(len(took) - 1, round(0.95 * len(took)) - 1)],
            "first": first, "bytes": len(body.content)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000], help="events in the store")
    p.add_argument("--requests", type=int, default=50, help="timed GETs per size")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results.md")
    args = p.parse_args(argv)
    cmd, load = command_line(), loadavg()
    t0 = time.perf_counter()
    rows = []
    for n in args.sizes:
        log(f"{n} events: filling the store, {args.requests} GETs of /api/state")
        m = measure(n, args.requests)
        rows += [Row(f"/api/state, {n:,} events: median", m["median"], "ms", f"{args.requests} GETs, keep-alive"),
                 Row(f"/api/state, {n:,} events: p95", m["p95"], "ms", ""),
                 Row(f"/api/state, {n:,} events: median / budget", m["median"] / BUDGET_MS, "x",
                     f"budget {BUDGET_MS:.0f} ms; first request {m['first']:.0f} ms; "
                     f"answer {m['bytes'] / 1024:.0f} KiB")]
    seconds = time.perf_counter() - t0
    finish("cityloop dashboard benchmark", SECTION, rows, machine_facts(load), cmd, seconds, args.out,
           "Store: SQLite, events over 4 weeks across 24 cameras in 4 districts and every scenario; the answer holds "
           "the latest 20 alerts plus aggregates (counts, 24 h and 4-week bins per scenario, per-camera state), "
           "never every event")


if __name__ == "__main__":
    main()
