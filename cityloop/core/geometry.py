"""Box geometry every wing shares: one pixel box, one IoU, one box-set agreement.

`agreement` (box F1 at an IoU threshold) is the number the canary is judged by against production
(cityloop.edge.selection / rollout) and the number annotators are judged by against honeypots and
peers (cityloop.labeling.quality): one definition, so both give the same value for the same boxes.

Matching rule: greedy one-to-one by descending IoU (ties: lower index of `a`, then of `b`), over the
pairs at IoU >= `min_iou` (and of equal class when classes are given). Why this rule:
- symmetric (agreement(a, b) == agreement(b, a) but for exact IoU ties), which inter-annotator
  agreement needs, and it needs no detection scores (annotators' boxes have none), unlike COCO's
  score-ordered greedy the canary used before;
- the convention of detection evaluation (COCO, VOC match greedily, not optimally); it differs from
  a maximum matching only when one box overlaps two others at >= `min_iou` each (near-duplicates);
- no dependency for the ground floor: the Hungarian alternative needs scipy, which cityloop does
  not declare (it only arrives with great-expectations), and would still need a count-first weight.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import NamedTuple

BoxLike = Sequence[float]  # x0, y0, x1, y1 in pixels: a Box, a tuple, a list


class Box(NamedTuple):
    """An axis-aligned box in pixels, corners (x0, y0) top-left and (x1, y1) bottom-right.

    A NamedTuple, so it is also the plain (x0, y0, x1, y1) tuple the renderer and tracker pass around.
    """

    x0: float
    y0: float
    x1: float
    y1: float

    @classmethod
    def from_xywh(cls, x: float, y: float, w: float, h: float) -> Box:
        """A box from COCO's (x, y, width, height)."""
        return cls(x, y, x + w, y + h)

    @property
    def w(self) -> float:
        return self.x1 - self.x0

    @property
    def h(self) -> float:
        return self.y1 - self.y0

    @property
    def xywh(self) -> tuple[float, float, float, float]:
        """COCO's (x, y, width, height)."""
        return self.x0, self.y0, self.w, self.h

    @property
    def area(self) -> float:
        return area(self)


def area(b: BoxLike) -> float:
    """Area of an x0, y0, x1, y1 box (negative for an inverted one, as IoU's union expects)."""
    return (b[2] - b[0]) * (b[3] - b[1])


def iou(a: BoxLike, b: BoxLike) -> float:
    """Intersection over union of two x0, y0, x1, y1 boxes (0.0 when the union is empty)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def _classes_ok(n_a: int, n_b: int, a_cls: Sequence[Hashable] | None, b_cls: Sequence[Hashable] | None) -> bool:
    """Whether to compare classes; raises when only one side has them or a length is off."""
    if a_cls is None and b_cls is None:
        return False
    if a_cls is None or b_cls is None:
        raise ValueError("give the classes of both box sets or of neither")
    if len(a_cls) != n_a or len(b_cls) != n_b:
        raise ValueError("one class per box")
    return True


def match(a: Sequence[BoxLike], b: Sequence[BoxLike], min_iou: float = 0.5, *,
          a_cls: Sequence[Hashable] | None = None, b_cls: Sequence[Hashable] | None = None) -> list[tuple[int, int]]:
    """One-to-one pairs (i, j) of `a` and `b`, greedy by descending IoU (see the module docstring).

    A pair is a candidate when IoU >= `min_iou` and, if `a_cls` / `b_cls` (one class per box) are
    given, the classes are equal; without them classes are not compared.
    """
    by_cls = _classes_ok(len(a), len(b), a_cls, b_cls)
    cands = sorted((-v, i, j) for i, x in enumerate(a) for j, y in enumerate(b)
                   if not (by_cls and a_cls[i] != b_cls[j]) and (v := iou(x, y)) >= min_iou)
    used_a, used_b, pairs = set(), set(), []
    for _, i, j in cands:
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            pairs.append((i, j))
    return pairs


def f1(matched: int, n_a: int, n_b: int) -> float:
    """Box F1 from a match count and the two set sizes (1.0 when both sets are empty)."""
    return 1.0 if n_a + n_b == 0 else 2.0 * matched / (n_a + n_b)


def agreement(a: Sequence[BoxLike], b: Sequence[BoxLike], min_iou: float = 0.5, *,
              a_cls: Sequence[Hashable] | None = None, b_cls: Sequence[Hashable] | None = None) -> float:
    """Box F1 of `a` against `b`: 2 * matched / (len(a) + len(b)), 1.0 when both are empty.

    Symmetric in `a` and `b` but for exact IoU ties; `a_cls` / `b_cls` as in `match` (class-agnostic without them).
    """
    return f1(len(match(a, b, min_iou, a_cls=a_cls, b_cls=b_cls)), len(a), len(b))
