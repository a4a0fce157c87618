"""The `loop:` section of params.yaml."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cityloop.core.settings import from_section

ARMS = ("active", "random")


@dataclass
class LoopParams:
    rounds: int = 5  # labeling rounds after round 0 (the lab-trained model)
    budget: int = 300  # frames labeled per round and lineage
    label_budget: int | None = None  # total labels per lineage (default rounds * budget)
    arms: list[str] = field(default_factory=lambda: ["active", "random"])
    seeds: list[int] = field(default_factory=lambda: [0])
    target: float = 0.9  # field mAP@0.5 at which a lineage stops
    base: str = "cityloop-detector:v1"  # round 0: the lab-trained model every lineage starts from
    pool: str = "field-pool"  # the cameras' unlabeled frames accumulate here (edge hard examples too)
    pool_frames: int = 600  # frames the field cameras deliver per round
    pool_seed: int = 100  # round r renders with seed pool_seed + r
    replay: list[str] = field(default_factory=lambda: ["lab@latest"])  # replayed while fine-tuning
    train: dict[str, Any] = field(default_factory=dict)  # overrides of `train:` for fine-tunes
    edge: bool = True  # main lineage only: edge nodes stream, send hard examples, receive releases
    nodes: int = 2
    # the nodes' hard-example cap per hour (edge.select.budget_per_hour; 0: none): a round stands for
    # a day of streams played in a minute, so the hourly cap of the field would starve round 2 on
    edge_budget_per_hour: int | None = 0
    base_port: int = 8731  # edge node k serves on base_port + k; the inbox on base_port - 1
    cameras: int = 4  # field video streams per round (nightly patrol's clips)
    seconds: float = 60.0
    fps: float = 2.0
    video_seed: int = 200
    # overrides of `release:` for the loop's canary. A candidate far better than production
    # disagrees with it by design, so agreement here only catches a broken deployment; the
    # registry's promotion gate judges accuracy on the benchmark set.
    release: dict[str, Any] = field(default_factory=lambda: {"min_agreement": 0.3})
    # the promotion gate's target while the loop climbs (None: registry.target). A fine-tune that
    # clears it, without a per-condition regression against production, goes to the field, so the
    # edge nodes improve round by round instead of waiting for the final target.
    promote_target: float | None = 0.3
    annotators: list[dict[str, Any]] | None = None  # default: labeling.annotators
    # simulator outputs (relative to the workspace) whose truth the scripted annotators also read:
    # the honeypots' source and frames already in the pool before the loop
    truth: list[str] = field(default_factory=lambda: ["data/raw/lab", "data/raw/field-pool"])
    out: str = "reports/loop"
    tag: str = ""  # names this loop's projects, datasets and models apart from another loop's (benchmarks)

    @classmethod
    def from_dict(cls, d: dict | None) -> LoopParams:
        p = from_section(cls, d, "loop")
        bad = sorted(set(p.arms) - set(ARMS))
        if bad or not p.arms:
            raise ValueError(f"loop.arms must be a non-empty subset of {list(ARMS)}, got {p.arms}")
        if p.rounds < 0 or p.budget < 1:
            raise ValueError("loop.rounds must be >= 0 and loop.budget >= 1")
        return p

    @property
    def total_labels(self) -> int:
        return self.label_budget if self.label_budget is not None else self.rounds * self.budget


@dataclass(frozen=True)
class Lineage:
    """One arm with one seed: its own Label Studio project, labeled dataset and model name."""

    arm: str
    seed: int
    main: bool = False  # the lineage the edge nodes serve (the first active arm)
    tag: str = ""

    @property
    def key(self) -> str:
        return f"{self.arm}-s{self.seed}"

    @property
    def _t(self) -> str:
        return f"{self.tag}-" if self.tag else ""

    @property
    def project(self) -> str:
        return f"cityloop-loop-{self._t}{self.key}"

    @property
    def dataset(self) -> str:
        return f"field-labeled-{self._t}{self.key}"

    @property
    def model(self) -> str:
        return "cityloop-detector" if self.main and not self.tag else f"cityloop-{self._t}{self.key}"


def lineages(p: LoopParams) -> list[Lineage]:
    """Every arm × seed; the first active one (else the first) is the main lineage."""
    out = [Lineage(a, s, tag=p.tag) for s in p.seeds for a in p.arms]
    main = next((x for x in out if x.arm == "active"), out[0])
    return [Lineage(x.arm, x.seed, x == main, p.tag) for x in out]
