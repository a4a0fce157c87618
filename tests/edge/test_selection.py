"""Hard-example selection and the outbox, as plain functions (no servers)."""

from __future__ import annotations

import cv2
import numpy as np

from cityloop.edge.outbox import HardExample, Outbox
from cityloop.edge.selection import Selector, SelectParams, agreement


def _jpeg(seed: int) -> bytes:
    img = np.random.default_rng(seed).integers(0, 255, (64, 64, 3), np.uint8)
    return cv2.imencode(".jpg", img)[1].tobytes()


def _det(box, score=0.9, cls="car") -> dict:
    return {"box": box, "score": score, "cls": cls}


def test_agreement_is_box_f1_at_iou_half():
    a = [_det([0, 0, 10, 10]), _det([20, 20, 30, 30])]
    assert agreement(a, a) == 1.0 and agreement([], []) == 1.0
    assert agreement(a, [_det([0, 0, 10, 10])]) == 2 / 3
    assert agreement(a, [_det([0, 0, 10, 10], cls="person")]) == 0.0  # same box, other class
    assert agreement([_det([0, 0, 10, 10])], [_det([6, 0, 16, 10])]) == 0.0  # IoU 0.25


def test_selector_reasons():
    sel = Selector(SelectParams(novelty_min=0.35))
    frame = _jpeg(0)
    assert sel.select("c", frame, [_det([0, 0, 9, 9], 0.3)])[0] == "low_confidence"
    assert sel.select("c", frame, [_det([0, 0, 9, 9], 0.95)]) is None  # confident, seen before
    assert sel.select("c", _jpeg(1), [_det([0, 0, 9, 9], 0.95)])[0] == "novelty"  # a new scene
    assert sel.select("c", frame, [_det([0, 0, 9, 9])], other=[])[0] == "disagreement"


def test_outbox_keeps_examples_until_acked_and_counts_the_budget(tmp_path):
    box = Outbox(tmp_path / "outbox.db")
    ex = [HardExample("c", "m:v1", "novelty", 0.5, 1.0, i, _jpeg(i)) for i in range(3)]
    assert [box.add(e) for e in ex] == [True] * 3
    assert not box.add(ex[0])  # same frame selected again: one row
    assert box.ack([ex[0].sha256]) == 1 and box.ack([ex[0].sha256]) == 0
    box.close()
    again = Outbox(tmp_path / "outbox.db")  # a restart sees the same state
    assert {e.sha256 for e in again.pending()} == {ex[1].sha256, ex[2].sha256}
    assert again.stats() == {"pending": 2, "acked": 1, "dead": 0} and again.selected_since(0) == 3


def test_edge_start_refuses_a_negative_hard_example_budget():
    from typer.testing import CliRunner

    from cityloop.cli import app

    r = CliRunner().invoke(app, ["edge", "start", "--name", "n", "--port", "1", "--budget-per-hour", "-1"])
    assert r.exit_code == 2 and "budget-per-hour" in r.output
