"""Annotation quality: agreement with known answers (honeypots) and between annotators.

Agreement of two box sets is the F1 of a one-to-one matching at IoU >= `min_iou` with equal class
(1.0 when both are empty): cityloop.core.geometry.agreement, shared with the canary comparison.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from cityloop.core import geometry
from cityloop.labeling.convert import Box


def agreement(a: Sequence[Box], b: Sequence[Box], min_iou: float = 0.5) -> float:
    """F1 of matching `a` against `b` (same class, IoU >= min_iou): cityloop.core.geometry.agreement,
    the number the canary comparison uses too."""
    return geometry.agreement([_xyxy(x) for x in a], [_xyxy(y) for y in b], min_iou,
                              a_cls=[x.cls for x in a], b_cls=[y.cls for y in b])


def _xyxy(b: Box) -> geometry.Box:
    return geometry.Box.from_xywh(b.x, b.y, b.w, b.h)


@dataclass
class AnnotatorQuality:
    annotator: str
    tasks: int = 0
    honeypots: int = 0
    honeypot_agreement: float | None = None  # mean F1 against the known answers
    peer_tasks: int = 0
    peer_agreement: float | None = None  # mean F1 against other annotators on shared tasks
    held_back: bool = False
    reason: str = ""


@dataclass
class QualityReport:
    annotators: dict[str, AnnotatorQuality] = field(default_factory=dict)
    min_agreement: float = 0.7

    @property
    def held_back(self) -> set[str]:
        return {a for a, q in self.annotators.items() if q.held_back}

    def to_dict(self) -> dict:
        return {"min_agreement": self.min_agreement,
                "annotators": {a: vars(q) for a, q in sorted(self.annotators.items())}}


def assess(annotations: Mapping[int, Mapping[str, Sequence[Box]]], honeypots: Mapping[int, Sequence[Box]],
           min_agreement: float = 0.7, min_honeypots: int = 1, min_iou: float = 0.5) -> QualityReport:
    """Per annotator: tasks done, agreement with honeypot answers and with peers; hold back the weak.

    annotations: task id -> annotator -> boxes. honeypots: task id -> known boxes.
    An annotator is held back when their honeypot agreement is below `min_agreement`
    (with at least `min_honeypots` honeypots seen); one with no honeypot yet is not judged.
    """
    report = QualityReport(min_agreement=min_agreement)
    hp: dict[str, list[float]] = defaultdict(list)
    peer: dict[str, list[float]] = defaultdict(list)
    for tid, by_ann in annotations.items():
        for name, boxes in by_ann.items():
            q = report.annotators.setdefault(name, AnnotatorQuality(name))
            q.tasks += 1
            if tid in honeypots:
                hp[name].append(agreement(boxes, honeypots[tid], min_iou))
        for (n1, b1), (n2, b2) in combinations(sorted(by_ann.items()), 2):
            f1 = agreement(b1, b2, min_iou)
            peer[n1].append(f1)
            peer[n2].append(f1)
    for name, q in report.annotators.items():
        q.honeypots = len(hp[name])
        q.honeypot_agreement = float(np.mean(hp[name])) if hp[name] else None
        q.peer_tasks = len(peer[name])
        q.peer_agreement = float(np.mean(peer[name])) if peer[name] else None
        if q.honeypots >= min_honeypots and q.honeypot_agreement is not None and q.honeypot_agreement < min_agreement:
            q.held_back = True
            q.reason = (f"honeypot agreement {q.honeypot_agreement:.2f} < {min_agreement:.2f} "
                        f"over {q.honeypots} known-answer tasks")
    return report
