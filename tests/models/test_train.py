"""Training on a shrunk config: loss falls, mAP beats a random model, resume after a kill,
benchmark sets refused, and the `train` flow registers a version end to end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from cityloop.governance.gate import GateParams
from cityloop.governance.repository import DataRepository
from cityloop.models.card import ModelCard
from cityloop.models.components.detector import Detector, DetectorConfig
from cityloop.models.data import BenchmarkLeakError, GovernedDataModule
from cityloop.models.export import export_onnx
from cityloop.models.lifecycle import build_card, evaluate_split
from cityloop.models.train import TrainParams, read_metrics, train
from cityloop.scenes.frames import generate_frames
from tests.conftest import make_workspace

REPO = Path(__file__).resolve().parents[2]
TINY = {"epochs": 20, "batch_size": 8, "width": 8, "lr": 0.01, "seed": 0}


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A workspace with lab@v1 (120 frames, train/val/test) and field-bench@v1 (40 frames)."""
    ws = make_workspace(tmp_path_factory.mktemp("train") / "ws")
    repo = DataRepository(ws, GateParams.from_dict({"min_frames_per_class": 1}), holdout=("field-bench",))
    generate_frames("lab", 120, 0, ws / "raw" / "lab")
    generate_frames("field", 40, 1, ws / "raw" / "field")
    repo.ingest(ws / "raw" / "lab", "lab", docs=False, push=False)
    repo.ingest(ws / "raw" / "field", "field-bench", split="bench", docs=False, push=False)
    return ws


def map50(ws: Path, model: Detector, tmp: Path) -> float:
    card = build_card(ws, "lab@v1", None, {}, score_threshold=0.01)
    path = export_onnx(model.eval(), card, tmp / "m.onnx")
    return evaluate_split(ws, path, card, "lab@v1", "train")["mAP50"]


@pytest.mark.slow
def test_training_lowers_the_loss_and_beats_a_random_model(ws: Path, tmp_path: Path):
    res = train(ws, "lab@v1", TrainParams.from_dict(TINY), runs_dir=tmp_path / "runs", progress=False)
    loss = res.metrics["train/loss_epoch"].dropna()
    assert len(loss) == TINY["epochs"] and loss.iloc[-1] < 0.6 * loss.iloc[0]
    assert (res.run_dir / "checkpoints" / "last.ckpt").exists() and res.weights.exists()
    torch.manual_seed(0)
    random_map = map50(ws, Detector(DetectorConfig(width=8)), tmp_path / "random")
    trained_map = map50(ws, res.model, tmp_path / "trained")
    assert trained_map > random_map + 0.05, (trained_map, random_map)
    # a warm start from those weights begins where training left off, far below a cold start
    warm = train(ws, "lab@v1", TrainParams.from_dict({**TINY, "epochs": 1}), parent="test:v1",
                 parent_weights=res.weights, runs_dir=tmp_path / "runs", progress=False)
    assert warm.metrics["train/loss_epoch"].dropna().iloc[0] < 0.8 * loss.iloc[0]


def test_fine_tuning_replays_earlier_data_but_never_a_benchmark(ws: Path, tmp_path: Path):
    repo = DataRepository(ws, GateParams.from_dict({"min_frames_per_class": 1}), holdout=("field-bench",))
    generate_frames("lab", 30, 9, tmp_path / "new")
    repo.ingest(tmp_path / "new", "round1", split="train", docs=False, push=False)
    train_rows, _, coco = GovernedDataModule(ws, "round1@v1", replay=("lab@v1",), replay_ratio=0.5).frames()
    manifest, _ = repo.load("lab@v1")
    replayed = train_rows["sha256"].isin(set(manifest["sha256"]))
    assert (~replayed).sum() == 30 and replayed.sum() == 30  # half of the training mix is replayed
    old_boxes = {a["sha256"] for a in coco["annotations"]} & set(train_rows.loc[replayed, "sha256"])
    assert len(old_boxes) > 20  # the replayed frames come with their boxes
    with pytest.raises(BenchmarkLeakError):
        GovernedDataModule(ws, "round1@v1", holdout=("field-bench",), replay=("field-bench@v1",)).frames()


def test_a_benchmark_set_is_never_read_by_training(ws: Path):
    dm = GovernedDataModule(ws, "field-bench@v1", holdout=("field-bench",))
    with pytest.raises(BenchmarkLeakError, match="benchmark set"):
        dm.setup()
    dm = GovernedDataModule(ws, "field-bench@v1", holdout=())  # even unnamed: its split is "bench"
    with pytest.raises(BenchmarkLeakError, match="benchmark frames"):
        dm.setup()


@pytest.mark.slow
def test_training_resumes_after_a_kill(ws: Path, tmp_path: Path):
    params = {**TINY, "epochs": 8}
    script = (f"from pathlib import Path; from models.train import train, TrainParams; "
              f"r = train(Path({str(ws)!r}), 'lab@v1', TrainParams.from_dict({params!r}), "
              f"runs_dir=Path({str(tmp_path)!r}), progress=False); print('resumed', r.resumed, r.epochs, r.steps)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    ckpts: list[Path] = []
    while time.time() < deadline and proc.poll() is None:  # kill once the second epoch is checkpointed
        ckpts = [p for p in tmp_path.glob("*/checkpoints/epoch*.ckpt") if "epoch00" not in p.name]
        if ckpts:
            break
        time.sleep(0.2)
    assert ckpts and proc.poll() is None, "training finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("resumed")][-1].split()
    assert line[1] == "True" and int(line[2]) == 8
    run_dir = next(tmp_path.glob("lab-v1-*"))
    assert len(list((run_dir / "logs").glob("version_*"))) == 2  # one log before the kill, one after
    after = pd.read_csv(run_dir / "logs" / "version_1" / "metrics.csv")
    resumed_epochs = after.dropna(subset=["train/loss_epoch"])["epoch"]
    # The kill lands once epoch 1's checkpoint file exists, possibly before last.ckpt is rewritten after it
    # (seen under load), so the run resumes at epoch 1 or 2; a fresh start would log epoch 0 again.
    assert resumed_epochs.min() >= 1 and resumed_epochs.max() == 7  # it continued, it did not start over
    assert len(read_metrics(run_dir)) >= len(after)


@pytest.mark.slow
def test_train_flow_registers_a_parity_checked_version(ws: Path, monkeypatch):
    import yaml
    from prefect.testing.utilities import prefect_test_harness

    from cityloop.flows.training import train_flow
    from cityloop.models.store import ModelStore

    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["train"].update({**TINY, "epochs": 2})
    params["registry"].update({"benchmark": "field-bench@latest", "target": 0.0, "latency_budget_ms": 1000})
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    with prefect_test_harness(server_startup_timeout=90):
        state = train_flow(data="lab@v1", promote=True, root=str(ws), return_state=True)
    assert state.is_completed(), state.message
    out = state.result()
    assert out["parity"] is True and out["promotion"]["promoted"] is True
    mv = ModelStore(ws).get(out["model"])
    assert mv.stage == "production" and (mv.path / "weights.pt").exists()
    card = ModelCard.load(mv.path / "card.json")
    assert card.dataset == "lab@v1" and card.classes and card.git_commit
    assert out["benchmark"] == "field-bench@v1" and 0.0 <= out["benchmark_mAP50"] <= 1.0


@pytest.mark.slow
def test_dvc_stages_train_export_evaluate(ws: Path):
    import json

    import yaml

    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["train"].update({**TINY, "epochs": 1, "data": "lab@v1"})
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "CITYLOOP_ROOT": str(ws)}
    run = subprocess.run([sys.executable, "-m", "dvc", "repro", "evaluate"], cwd=ws, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert json.loads((ws / "artifacts" / "model" / "parity.json").read_text())["passed"] is True
    metrics = json.loads((ws / "artifacts" / "eval" / "metrics.json").read_text())
    assert metrics["benchmark"] == "field-bench@v1" and 0.0 <= metrics["test_mAP50"] <= 1.0
    shown = subprocess.run([sys.executable, "-m", "dvc", "metrics", "show", "--json"], cwd=ws, env=env,
                           capture_output=True, text=True)
    assert "benchmark_mAP50" in shown.stdout
    plots = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "-o", str(ws / "plots")], cwd=ws, env=env,
                           capture_output=True, text=True)
    assert plots.returncode == 0 and (ws / "plots" / "index.html").exists(), plots.stderr


def test_ema_follows_the_weights_early_and_averages_them_later():
    """The kept weights: after the warm-up they move a small step toward the trained ones, not all the way."""
    from cityloop.models.module import ema_model

    net = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        net.weight.zero_()
    ema = ema_model(net, decay=0.999, warmup=10.0)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema.update_parameters(net)  # the first update copies; the next ones average
    ema.update_parameters(net)
    assert torch.allclose(ema.module.weight, torch.ones(1, 2))
    for _ in range(200):  # far past the warm-up: decay ~0.999
        ema.update_parameters(net)
    with torch.no_grad():
        net.weight.fill_(2.0)
    ema.update_parameters(net)
    step = ema.module.weight[0, 0].item() - 1.0
    assert 0.0005 < step < 0.01, step  # ~1 - 0.999 of the way to the new weights


def test_precision_is_checked_and_auto_follows_the_cpu(monkeypatch):
    from cityloop.models import module

    with pytest.raises(ValueError, match="train.precision must be auto, 32 or bf16, not 'fp16'"):
        module.use_bf16("fp16")
    monkeypatch.setattr(module, "native_bf16", lambda: False)
    assert module.use_bf16("auto") is False and module.use_bf16("bf16") is True
    monkeypatch.setattr(module, "native_bf16", lambda: True)
    assert module.use_bf16("auto") is True and module.use_bf16("32") is False


def test_a_rider_is_told_apart_at_its_head():
    """The two rider classes share one heat channel; each member's heat is p(rider) x softmax(cue read
    at the head): a cell whose box puts the head on a 'helmet' cue scores rider_helmet, and the same cell
    with a box that puts the head elsewhere does not."""
    from cityloop.scenarios import registry

    (idx, (u, v)), = registry().cue_groups
    m = Detector(DetectorConfig(width=8)).eval()
    b, h, w = 1, 48, 48
    heat = torch.full((b, len(registry().classes), h, w), -10.0)
    heat[0, idx[0], 24, 24] = 4.0  # a rider at cell (24, 24): p = 0.982
    off = torch.zeros(b, 2, h, w)
    wh = torch.full((b, 2, h, w), 32.0)  # a 32 px box: the head 0.42 x 32 = 13.4 px above the centre
    cue = torch.zeros(b, len(idx), h, w)
    head_y = int((24 * 4 + (v - 0.5) * 32) // 4)
    cue[0, 0, head_y, 24] = 8.0  # "helmet" at the head cell only
    out = m.compose(heat, wh, off, cue, (192, 192))
    p = torch.sigmoid(out[0, :, 24, 24])
    assert p[idx[0]] > 0.9 and p[idx[1]] < 0.05, "read at the head: a helmet"
    wh_flat = torch.full((b, 2, h, w), 4.0)  # a box whose head point falls on the centre cell: no cue there
    p = torch.sigmoid(m.compose(heat, wh_flat, off, cue, (192, 192))[0, :, 24, 24])
    assert abs(float(p[idx[0]] - p[idx[1]])) < 0.01, "no cue at that point: an even split"
    others = [c for c in range(len(registry().classes)) if c not in idx]
    assert torch.equal(out[:, others], heat[:, others]), "other classes pass through"


def test_targets_regress_every_central_cell_and_keep_the_cue():
    """Each object's dense regression weights sum to 1 and point back at its centre; a rider is drawn on
    its group's channel with its head as the cue point."""
    import numpy as np

    from cityloop.governance.schema import CLASSES
    from cityloop.models.data import draw_targets

    boxes = np.array([[40, 40, 80, 72], [100, 100, 112, 130]], np.float32)  # a no-helmet rider, a person
    labels = np.array([CLASSES.index("rider_no_helmet"), CLASSES.index("person")])
    t = draw_targets(boxes, labels, len(CLASSES), (192, 192), 4, 16.0)
    assert t["heat"][CLASSES.index("rider_helmet")].max() == 1.0, "the group's first channel holds the rider"
    assert t["heat"][CLASSES.index("rider_no_helmet")].max() == 0.0
    assert t["cue_mask"][0] == 1 and t["cue_cls"][0] == 1 and t["cue_mask"][1] == 0
    assert np.allclose((t["cue_pt"][0] + 1) / 2 * 192, [60, 40 + 0.08 * 32])
    ys, xs = np.nonzero(t["reg_w"])
    assert np.isclose(t["reg_w"].sum(), 2.0) and len(xs) > 2, "two objects, weights summing to 1 each"
    cx = (xs + t["reg_off"][0, ys, xs]) * 4
    cy = (ys + t["reg_off"][1, ys, xs]) * 4
    centres = {(60.0, 56.0), (106.0, 115.0)}
    assert all(min(abs(a - x) + abs(b - y) for x, y in centres) < 1e-4 for a, b in zip(cx, cy))


def test_a_hidden_box_is_taught_neither_as_object_nor_as_background():
    """A box the truth marks hidden (label IGNORED + class) draws no peak and no regression; its cells on its
    class's channel are ignored by the focal loss, so a confident detection there costs nothing, while the
    same detection on plain background costs a lot; other classes' channels there are still background."""
    import numpy as np

    from cityloop.governance.schema import CLASSES
    from cityloop.models.data import IGNORED, class_index, draw_targets
    from cityloop.models.module import focal_loss

    water, car = CLASSES.index("water"), CLASSES.index("car")
    boxes = np.array([[40, 100, 120, 112], [130, 20, 170, 50]], np.float32)
    t = draw_targets(boxes, np.array([water + IGNORED, car]), len(CLASSES), (192, 192), 4, 16.0)
    assert t["heat"][water].max() == 0.0 and t["heat"][car].max() == 1.0, "no peak for the hidden box"
    assert t["mask"].sum() == 1 and np.isclose(t["reg_w"].sum(), 1.0), "only the car is regressed"
    assert t["ignore"][water, 25:28, 10:30].all() and t["ignore"].sum() == t["ignore"][water].sum() == 20 * 3
    assert list(class_index(np.array([water + IGNORED, car]))) == [water, car]
    heat, ign = torch.from_numpy(t["heat"])[None], torch.from_numpy(t["ignore"])[None]
    logits = torch.full_like(heat, -9.0)
    logits[0, car, 8, 37] = 9.0  # the car found at its centre cell (150 / 4, 35 / 4)
    logits[0, water, 26, 20] = 3.0  # a confident water detection inside the hidden puddle
    assert float(focal_loss(logits, heat, ign)) < 0.01
    assert float(focal_loss(logits, heat)) > 1.0, "without the flag it is punished as background"
    logits[0, car, 26, 20] = 3.0  # a car detection there is still a false positive
    assert float(focal_loss(logits, heat, ign)) > 1.0


def test_zoom_moves_boxes_with_the_pixels_and_drops_what_leaves_the_frame():
    """A scale-and-shift augmentation: a box still frames its object's pixels afterwards, and an
    object pushed more than half out of the frame loses its label (the simulator's own rule)."""
    import numpy as np

    from cityloop.models.data import Augment

    img = np.zeros((192, 192, 3), np.uint8)
    img[80:100, 60:90] = 255  # a white object in the middle
    img[10:30, 2:12] = 255  # a small one at the left edge
    boxes = np.array([[60, 80, 90, 100], [2, 10, 12, 30]], np.float32)
    aug = Augment(flip=0, zoom=1.0, zoom_range=(1.3, 1.3), shift=0.0, dark=0, tint=0, noise=0, blur=0, jpeg=0, fog=0)
    out, b, lab = aug(img, boxes, np.random.default_rng(0), np.array([2, 6]))
    assert list(lab) == [2], "the edge object left the frame and its label with it"
    ys, xs = np.nonzero(out[..., 0] > 127)
    x0, y0, x1, y1 = b[0]
    assert abs(xs.min() - x0) <= 1 and abs(xs.max() + 1 - x1) <= 1 and abs(ys.min() - y0) <= 1 \
        and abs(ys.max() + 1 - y1) <= 1, "the box frames the object's pixels after the zoom"
    assert x1 - x0 > 30 * 1.25, "and it grew with the zoom"


def test_pasted_objects_are_labeled_where_their_pixels_land_and_hide_no_object():
    """Copy-paste: each pasted crop's box frames its pixels (the crop less its margin), its class comes
    with it, no object already in the frame is hidden by more than the visibility rule allows, and its
    light follows the spot it lands on."""
    import numpy as np

    from cityloop.models.data import Augment, donor_crop

    frame = np.full((192, 192, 3), 40, np.uint8)  # a dark street
    frame[60:140, 60:140] = 90  # one big object in the middle
    boxes, labels = np.array([[60, 60, 140, 140]], np.float32), np.array([2])
    donor = np.full((192, 192, 3), 160, np.uint8)  # a day frame
    donor[50:80, 50:70] = 250
    crop = donor_crop(donor, np.array([50, 50, 70, 80], np.float32))
    assert crop.shape == (34, 24, 3), "the crop keeps a 2 px margin"
    aug = Augment(flip=0, zoom=0, dark=0, tint=0, noise=0, blur=0, jpeg=0, fog=0, paste=1.0)
    for seed in range(20):
        out, b, lab = aug(frame, boxes, np.random.default_rng(seed), labels, [(crop, 5), (crop, 7)])
        assert list(lab[:1]) == [2] and set(lab[1:]) <= {5, 7} and len(lab) == len(b)
        assert np.array_equal(b[0], boxes[0]), "the frame's own box is untouched"
        for x0, y0, x1, y1 in b[1:].astype(int):
            inter = max(0, min(x1, 140) - max(x0, 60)) * max(0, min(y1, 140) - max(y0, 60))
            assert inter <= 0.2 * 80 * 80
            patch = out[y0:y1, x0:x1, 0].astype(int)
            assert (x1 - x0, y1 - y0) == (20, 30) and patch.std() == 0, "the box is the object, no margin"
            assert patch.mean() < 160, "a day object pasted into a dark frame is dimmed"
    assert len(Augment(paste=0.0)(frame, boxes, np.random.default_rng(0), labels, [(crop, 5)])[1]) == 1
    edge = donor_crop(donor, np.array([0, 0, 20, 30], np.float32))
    assert edge.shape == (34, 24, 3), "an object at the frame's edge keeps its margin too (edge pixels)"


def test_giou_loss_is_zero_on_the_truth_and_weighs_a_flat_box_by_its_overlap():
    """A flat box (water, 10 px tall) one cell off vertically loses most of its overlap; a tall box the
    same cell off keeps most of it. The L1 offset loss charges both the same; the GIoU loss does not."""
    import numpy as np

    from cityloop.governance.schema import CLASSES
    from cityloop.models.data import draw_targets
    from cityloop.models.module import detection_loss, giou_loss

    def loss_one_cell_down(box, cls):
        t = draw_targets(np.array([box], np.float32), np.array([CLASSES.index(cls)]), len(CLASSES), (192, 192),
                         4, 16.0)
        t = {k: torch.from_numpy(v)[None] for k, v in t.items()}
        exact = (giou_loss(t["reg_wh"], t["reg_off"], t) * t["reg_w"]).sum()
        off = t["reg_off"].clone()
        off[:, 1] += 1.0  # every cell's box one cell (4 px) too low
        return float(exact), float((giou_loss(t["reg_wh"], off, t) * t["reg_w"]).sum()), t

    exact, flat, t = loss_one_cell_down([40, 100, 120, 110], "water")
    assert exact < 1e-5
    _, tall, _ = loss_one_cell_down([100, 40, 140, 120], "person")
    assert flat > 0.5 and tall < 0.1, (flat, tall)
    outs = (torch.zeros(1, len(CLASSES), 48, 48), t["reg_wh"], t["reg_off"])
    assert float(detection_loss(outs, t, (), giou=2.0)["giou"]) < 1e-5
    assert float(detection_loss(outs, t, ())["giou"]) == 0.0, "off unless asked for"


def test_repeat_factors_draw_frames_of_rare_classes_more_often():
    """LVIS repeat-factor sampling: a frame holding a class seen in a fifth of the frames is drawn twice as
    often at t=0.8 (sqrt(0.8 / 0.2)); a class in every frame, or a frame with no object, keeps factor 1."""
    import numpy as np

    from cityloop.models.data import repeat_factors

    labels = [np.array([0])] * 7 + [np.array([0, 1, 1])] * 2 + [np.array([], np.int64)]
    r = repeat_factors(labels, 3, 0.8)
    assert np.allclose(r, [1.0] * 7 + [2.0] * 2 + [1.0]), r
    assert np.allclose(repeat_factors(labels, 3, 0.01), 1.0), "a low threshold changes nothing"


def test_a_deeper_detector_round_trips_through_its_train_params(tmp_path: Path):
    """stage_mult, depth and neck (train params) build the same network when a run's weights are loaded
    for export and parity; a wrong shape is refused with the rule."""
    from cityloop.models.lifecycle import load_detector

    params = {"width": 8, "stage_mult": [2, 4, 8, 12], "depth": [0, 1, 1, 1], "neck": 4}
    torch.manual_seed(0)
    model = Detector(DetectorConfig(width=8, stage_mult=(2, 4, 8, 12), depth=(0, 1, 1, 1), neck=4)).eval()
    assert model.trunk[0].out_channels == 32 and model.heat.in_channels == 32  # the neck: 4 x width
    for m in (model, Detector(DetectorConfig(width=8))):  # a saved state_dict tells its own shape (benchmarks)
        assert DetectorConfig.from_state_dict(m.state_dict()) == m.cfg
    assert sum(p.numel() for p in model.parameters()) > 2 * sum(
        p.numel() for p in Detector(DetectorConfig(width=8)).parameters())
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    loaded = load_detector(tmp_path / "weights.pt", params)
    x = torch.rand(2, 3, 192, 192)
    with torch.no_grad():
        assert all(torch.allclose(a, b) for a, b in zip(model(x), loaded(x)))
    with pytest.raises(RuntimeError):  # the defaults' network cannot take these weights
        load_detector(tmp_path / "weights.pt", {"width": 8})
    with pytest.raises(RuntimeError):  # nor one without the wider neck
        load_detector(tmp_path / "weights.pt", {**params, "neck": 0})
    with pytest.raises(ValueError, match="neck takes a whole number"):
        DetectorConfig(neck=-1)
    with pytest.raises(ValueError, match="depth takes 4 whole numbers"):
        DetectorConfig(depth=(1, 1))
    assert TrainParams.from_dict({"depth": [0, 1, 1, 1]}).depth == [0, 1, 1, 1]


def test_a_warm_start_keeps_its_parents_network_whatever_params_yaml_says_now(model_ws, tmp_path: Path, caplog):
    """A lineage born before params.yaml's train.stage_mult/depth/neck changed goes on with its own network:
    the fine-tune takes the shape from the parent's card, so the parent's weights load and the run's
    weights build again from the run's params (export, parity)."""
    import shutil

    from cityloop.models.lifecycle import load_detector, train_step
    from tests.conftest import TINY_TRAIN

    root = tmp_path / "ws"
    shutil.copytree(model_ws.root, root, symlinks=True)
    today = {**TINY_TRAIN, "width": 16, "stage_mult": [2, 4, 8, 12], "depth": [0, 1, 1, 1], "neck": 4,
             "epochs": 1, "limit_train_batches": 0.1}
    with caplog.at_level("INFO", logger="cityloop.models.lifecycle"):
        run = train_step(root, "lab@v1", today, parent=model_ws.model_id, runs_dir=tmp_path / "runs")
    assert "keeps its network: width 8 (params ask 16)" in caplog.text  # said, not silent
    assert run["params"]["width"] == 8 and run["params"]["neck"] == 0
    assert run["params"]["stage_mult"] == [2, 4, 6, 8] and run["params"]["depth"] == [0, 0, 0, 0]
    model = load_detector(Path(run["weights"]), run["params"])
    assert model.cfg.width == 8 and model.cfg.stage_mult == (2, 4, 6, 8)
    with pytest.raises(RuntimeError):  # today's network could not have taken the parent's weights
        load_detector(Path(run["weights"]), today)
