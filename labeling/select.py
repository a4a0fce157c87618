"""Which unlabeled frames go to annotators: `active` (uncertainty with diversity) or `random` (the control arm).

Pure uncertainty loses to random on this problem (STACK-NOTES: a model unsure of a dusk frame
emits few peaks and so looks certain, and the batch fills with one condition). `active`
therefore ranks by uncertainty *inside* strata (condition, else camera), gives each stratum
its share of the budget, round-robins cameras inside a stratum, caps any camera's share, and
keeps `random_share` of the batch random for exploration.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

STRATEGIES = ("active", "random")
DISMISSED_ALERT = "dismissed alert"  # a hard example's reason when people dismissed the alert it raised


@dataclass
class Candidate:
    """An unlabeled frame with the model's scores on it."""

    sha256: str
    camera_id: str
    condition: str
    scores: Sequence[float]  # detection scores above the model's threshold
    uncertainty: float = 0.0
    first: str | None = None  # a reason that puts the frame in the batch before any selection (people's feedback)


@dataclass
class Pick:
    sha256: str
    strategy: str  # active | random (the batch's arm)
    reason: str  # uncertainty | explore | random
    uncertainty: float
    stratum: str


def uncertainty(scores: Sequence[float], k: int = 3) -> float:
    """Mean of the k largest per-box uncertainties 1 - |2p - 1| (1 at p = 0.5, 0 at p in {0, 1}).

    A frame with no detection above the threshold scores 0: ranking inside strata keeps such
    frames (dark, foggy) from being starved by the frames the model is merely unsure of.
    """
    if len(scores) == 0:
        return 0.0
    u = np.sort(1.0 - np.abs(2.0 * np.asarray(scores, float) - 1.0))[::-1][:k]
    return float(u.sum() / k)


def select(cands: Sequence[Candidate], budget: int, strategy: str = "active", random_share: float = 0.2,
           max_camera_share: float = 0.25, seed: int = 0) -> list[Pick]:
    """Choose up to `budget` frames. Deterministic for a seed.

    Frames marked `first` (an alert people dismissed) go in before either arm's selection, in both arms
    alike: what the people acting on the alerts said is labeled whatever the selector would pick."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r} not one of {', '.join(STRATEGIES)}")
    if budget < 0:
        raise ValueError("budget must be >= 0")
    for c in cands:
        c.uncertainty = uncertainty(c.scores)
    firsts = sorted((c for c in cands if c.first), key=lambda c: c.sha256)[:budget]
    if firsts:
        taken = {c.sha256 for c in firsts}
        rest = select([c for c in cands if c.sha256 not in taken], budget - len(firsts), strategy, random_share,
                      max_camera_share, seed)
        return [Pick(c.sha256, strategy, str(c.first), c.uncertainty, "feedback") for c in firsts] + rest
    rng = np.random.default_rng(seed)
    budget = min(budget, len(cands))
    if strategy == "random":
        idx = rng.permutation(len(cands))[:budget]
        return [Pick(cands[i].sha256, "random", "random", cands[i].uncertainty, _stratum(cands[i])) for i in idx]
    n_explore = int(round(budget * random_share))
    picks = _stratified(cands, budget - n_explore, max(1, int(np.ceil(budget * max_camera_share))))
    taken = {p.sha256 for p in picks}
    rest = [c for c in cands if c.sha256 not in taken]
    for i in rng.permutation(len(rest))[: budget - len(picks)]:
        picks.append(Pick(rest[i].sha256, "active", "explore", rest[i].uncertainty, _stratum(rest[i])))
    return picks


def _stratum(c: Candidate) -> str:
    return c.condition if c.condition and c.condition != "unknown" else f"camera:{c.camera_id}"


def _stratified(cands: Sequence[Candidate], n: int, camera_cap: int) -> list[Pick]:
    """Largest-remainder quotas per stratum (by size); inside one, cameras in turn by uncertainty."""
    if n <= 0:
        return []
    strata: dict[str, list[Candidate]] = defaultdict(list)
    for c in cands:
        strata[_stratum(c)].append(c)
    sizes = {s: len(v) for s, v in strata.items()}
    total = sum(sizes.values())
    raw = {s: n * k / total for s, k in sizes.items()}
    quota = {s: int(v) for s, v in raw.items()}
    for s in sorted(raw, key=lambda s: raw[s] - quota[s], reverse=True)[: n - sum(quota.values())]:
        quota[s] += 1
    per_camera: dict[str, int] = defaultdict(int)
    picks: list[Pick] = []
    for s in sorted(strata):
        by_cam: dict[str, list[Candidate]] = defaultdict(list)
        for c in sorted(strata[s], key=lambda c: (-c.uncertainty, c.sha256)):
            by_cam[c.camera_id].append(c)
        queues = sorted(by_cam.values(), key=lambda q: (-q[0].uncertainty, q[0].sha256))
        got = 0
        while got < quota[s] and any(queues):
            for q in queues:
                if got >= quota[s]:
                    break
                while q and per_camera[q[0].camera_id] >= camera_cap:
                    q.clear()
                if q:
                    c = q.pop(0)
                    per_camera[c.camera_id] += 1
                    picks.append(Pick(c.sha256, "active", "uncertainty", c.uncertainty, s))
                    got += 1
    return picks
