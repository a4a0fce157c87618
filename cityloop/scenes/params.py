"""The `generate:` section of params.yaml: the demo datasets the simulator renders (dvc.yaml's
`generate@<set>` stages and the governance demo flow read it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cityloop.core.settings import from_section, load_section


@dataclass
class SetSpec:
    """One demo dataset, `generate.sets.<name>`: rendered into data/raw/<name>, ingested as <name>."""

    domain: str  # lab | field (cityloop.scenes.world.DOMAINS)
    frames: int
    seed: int | None = None  # None: generate.seed
    split: str = "auto"  # the ingest split: auto | train | val | test | pool | bench


@dataclass
class VideoParams:
    """`generate.video`: the camera clips of `cityloop scenes generate --video`."""

    cameras: int = 4
    seconds: float = 120.0
    fps: float = 2.0


@dataclass
class GenerateParams:
    """The `generate:` section: frame size and format, and the demo datasets."""

    seed: int = 0
    size: int = 192
    format: str = "jpg"  # jpg | png
    sets: dict[str, SetSpec] = field(default_factory=dict)
    video: VideoParams = field(default_factory=VideoParams)

    @classmethod
    def from_dict(cls, d: dict | None) -> GenerateParams:
        """Unknown and missing keys are errors naming their section (generate, generate.sets.<name>, ...)."""
        d = dict(d or {})
        sets = {str(name): from_section(SetSpec, spec, f"generate.sets.{name}")
                for name, spec in (d.pop("sets", None) or {}).items()}
        video = from_section(VideoParams, d.pop("video", None), "generate.video")
        top = from_section(cls, d, "generate")
        top.sets, top.video = sets, video
        return top


def frame_size(root: Path) -> int:
    """The frame contract: width and height in px of every frame the workspace's simulator renders
    (`generate.size`: datasets, the loop's pool and streams, the season). The gate's `allowed_sizes` and
    the detector's `train.size` follow it in params.yaml."""
    return int(load_section(root, "generate", GenerateParams).size)
