"""cityloop.core.geometry: one box, one IoU, one agreement, and the two callers that share it."""

from __future__ import annotations

import pytest

from cityloop.core.geometry import Box, agreement, iou, match
from cityloop.edge import selection
from cityloop.labeling import quality
from cityloop.labeling.convert import Box as LabelBox

# P overlaps A (IoU 7/13) and B (8/12); Q overlaps B (9/11) only (Q-A is 6/14 < 0.5)
A, B = Box(5, 0, 15, 10), Box(10, 0, 20, 10)
P, Q = Box(8, 0, 18, 10), Box(9, 0, 19, 10)


def test_box_constructors_and_measures():
    b = Box.from_xywh(1, 2, 3, 4)
    assert b == Box(1, 2, 4, 6) == (1, 2, 4, 6)
    assert (b.w, b.h, b.area, b.xywh) == (3, 4, 12, (1, 2, 3, 4))
    x0, y0, x1, y1 = b
    assert (x0, y0, x1, y1) == (1, 2, 4, 6)


def test_iou_exact_values():
    assert iou(Box(0, 0, 10, 10), Box(0, 0, 10, 10)) == 1.0
    assert iou(Box(0, 0, 10, 10), Box(20, 20, 30, 30)) == 0.0
    assert iou(Box(0, 0, 10, 10), Box(10, 0, 20, 10)) == 0.0  # touching edges
    assert iou(Box(0, 0, 10, 10), Box(5, 0, 15, 10)) == 50 / 150
    assert iou([0, 0, 2, 2], (1, 1, 3, 3)) == 1 / 7  # plain sequences work too
    assert iou(Box(0, 0, 0, 0), Box(0, 0, 0, 0)) == 0.0  # empty union
    assert iou(P, A) == 7 / 13 and iou(P, B) == 8 / 12 and iou(Q, B) == 9 / 11 and iou(Q, A) == 6 / 14


def test_agreement_f1():
    truth = [Box(0, 0, 10, 10), Box(20, 20, 30, 30)]
    assert agreement(truth, truth) == 1.0
    assert agreement(truth, truth[:1]) == 2 / 3  # one missed box
    assert agreement([], []) == 1.0
    assert agreement(truth, []) == 0.0 and agreement([], truth) == 0.0
    assert agreement([Box(0, 0, 10, 10)], [Box(6, 0, 16, 10)]) == 0.0  # IoU 0.25 < 0.5
    assert agreement([Box(0, 0, 10, 10)], [Box(6, 0, 16, 10)], min_iou=0.25) == 1.0  # inclusive threshold


def test_a_box_over_two_truths_is_matched_once():
    truths = [Box(0, 0, 10, 10), Box(1, 0, 11, 10)]  # IoU 9/11 with each other
    assert match([Box(0, 0, 10, 10)], truths) == [(0, 0)]  # the higher IoU wins
    assert agreement([Box(0, 0, 10, 10)], truths) == 2 / 3


def test_matching_is_greedy_by_iou_and_symmetric():
    # Q-B (0.82) is taken first, then P-A (0.54): two matches; a score-ordered greedy letting P take
    # its best B first would leave Q unmatched (F1 0.5)
    assert match([P, Q], [A, B]) == [(1, 1), (0, 0)]
    assert agreement([P, Q], [A, B]) == agreement([A, B], [P, Q]) == 1.0


def test_classes_are_compared_only_when_given():
    box = [Box(0, 0, 10, 10)]
    assert agreement(box, box, a_cls=["car"], b_cls=["person"]) == 0.0
    assert agreement(box, box, a_cls=["car"], b_cls=["car"]) == 1.0
    assert agreement(box, box) == 1.0
    with pytest.raises(ValueError):
        agreement(box, box, a_cls=["car"])
    with pytest.raises(ValueError):
        agreement(box, box, a_cls=["car", "car"], b_cls=["car"])


def _dets(boxes: list[Box], classes: list[str], scores: list[float]) -> list[dict]:
    return [{"box": list(b), "cls": c, "score": s} for b, c, s in zip(boxes, classes, scores, strict=True)]


def _labels(boxes: list[Box], classes: list[str]) -> list[LabelBox]:
    return [LabelBox(c, *b.xywh) for b, c in zip(boxes, classes, strict=True)]


@pytest.mark.parametrize(("a", "a_cls", "b", "b_cls"), [
    ([P, Q], ["car", "car"], [A, B], ["car", "car"]),  # was 0.5 for the canary, 1.0 for annotators
    ([A, B, Box(40, 40, 60, 60)], ["car", "car", "person"], [B, Box(41, 40, 61, 60)], ["car", "person"]),
    ([A], ["car"], [A], ["garbage"]),
    ([], [], [B], ["car"]),
    ([], [], [], []),
])
def test_canary_and_annotator_quality_give_the_same_number(a, a_cls, b, b_cls):
    want = agreement(a, b, a_cls=a_cls, b_cls=b_cls)
    canary = selection.agreement(_dets(a, a_cls, [0.9, 0.8, 0.7][:len(a)]), _dets(b, b_cls, [0.5] * len(b)))
    annotators = quality.agreement(_labels(a, a_cls), _labels(b, b_cls))
    assert canary == pytest.approx(want) and annotators == pytest.approx(want)
    assert selection.match_count(_dets(a, a_cls, [0.9] * len(a)), _dets(b, b_cls, [0.5] * len(b))) == len(
        match(a, b, a_cls=a_cls, b_cls=b_cls))
