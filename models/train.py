"""Training: from scratch or warm-started from a parent, checkpointed and resumable after a kill.

A run's directory is named by what defines it (dataset version, parent, params), so running
the same command again resumes from its last checkpoint instead of starting over.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from cityloop.models.components.detector import Detector
from cityloop.models.data import Augment, GovernedDataModule
from cityloop.models.module import EMA, DetectorModule, load_weights, use_bf16
from cityloop.models.params import TrainParams


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path
    weights: Path  # plain Detector state_dict, what export and fine-tuning read
    model: Detector
    metrics: pd.DataFrame  # one row per logged step/epoch (CSVLogger)
    resumed: bool
    epochs: int
    steps: int


def read_metrics(run_dir: Path) -> pd.DataFrame:
    """All logged metrics of a run; each resume logs to a new logs/version_N, read in order."""
    parts = sorted((run_dir / "logs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name[8:]))
    return pd.concat([pd.read_csv(p) for p in parts], ignore_index=True) if parts else pd.DataFrame()


def run_id(data: str, parent: str | None, params: TrainParams, replay: tuple[str, ...] = ()) -> str:
    """Stable id of a training run: same inputs (data, parent, replayed versions, params), same run directory."""
    key = json.dumps({"data": data, "parent": parent, **asdict(params), **({"replay": list(replay)} if replay else {})},
                     sort_keys=True)
    slug = data.replace("@", "-").replace(":", "-")
    return f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def train(root: Path, data: str, params: TrainParams, *, parent: str | None = None,
          parent_weights: Path | None = None, replay: tuple[str, ...] = (), holdout: tuple[str, ...] = (),
          runs_dir: Path | None = None, progress: bool = True) -> TrainResult:
    """Train a detector on dataset version `data` (train split; val split for validation).

    parent/parent_weights: warm start from a registered version's weights; `replay` lists the
    earlier dataset versions whose frames are mixed in (replay_ratio) so old conditions stay.
    """
    torch.set_num_threads(params.threads)
    if not progress:  # quiet runs (flows, tests): Lightning's tips and notices stay out of the log
        logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    pl.seed_everything(params.seed, workers=True)
    run_dir = Path(runs_dir or Path(root) / ".cityloop" / "runs") / run_id(data, parent, params, replay)
    last = run_dir / "checkpoints" / "last.ckpt"
    resumed = last.exists()
    dm = GovernedDataModule(root, data, holdout, replay, params.replay_ratio, params.batch_size,
                            params.num_workers, Augment(), params.max_train, params.seed, size=params.size)
    module = DetectorModule(params.width, params.lr, params.weight_decay, params.epochs, params.stage_mult,
                            params.depth, params.giou, params.neck)
    if parent_weights and not resumed:
        load_weights(module.model, parent_weights)
    ckpt = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="epoch{epoch:02d}", save_last=True,
                           save_top_k=1, monitor="val/loss", auto_insert_metric_name=False)
    bf16 = use_bf16(params.precision)
    trainer = pl.Trainer(max_epochs=params.epochs, accelerator="cpu", devices=1, logger=CSVLogger(run_dir, "logs"),
                         precision="bf16-mixed" if bf16 else "32-true",
                         callbacks=[ckpt, *([EMA()] if params.ema else [])], enable_progress_bar=progress,
                         enable_model_summary=False,
                         limit_train_batches=params.limit_train_batches, log_every_n_steps=5,
                         num_sanity_val_steps=0, deterministic=False)
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resumed else None)
    weights = run_dir / "weights.pt"
    torch.save(module.model.state_dict(), weights)
    (run_dir / "run.json").write_text(json.dumps({"data": data, "parent": parent, "replay": list(replay),
                                                  "params": asdict(params), "epochs": trainer.current_epoch,
                                                  "steps": trainer.global_step}, indent=1))
    metrics = read_metrics(run_dir)
    return TrainResult(run_dir, last, weights, module.model.eval(), metrics, resumed, trainer.current_epoch,
                       trainer.global_step)
