"""Label Studio JSON <-> platform boxes and COCO, and the label config generated from a class list.

Label Studio's own COCO/YOLO exports treat Choices values as classes and sort class ids
alphabetically, so cityloop reads the JSON export and builds COCO with the platform's fixed
category ids (governance.schema.CATEGORY_IDS) itself.

A box the annotator sees only in part (under half of the object shows: the rider behind a bus, the puddle
under a car) is still boxed and marked "mostly hidden", a per-region choice. It becomes COCO `iscrowd: 1`:
an ignore region that neither rewards nor punishes a detection in evaluation (pycocotools) and that
training neither teaches as an object nor as background (CityPersons' and Caltech's practice for heavily
occluded people).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

from cityloop.governance.schema import CATEGORY_IDS, CLASSES

FROM_NAME, TO_NAME, CHOICE_NAME, HIDDEN_NAME = "label", "image", "frame", "visibility"
NO_OBJECTS = "no objects"
HIDDEN = "mostly hidden"  # the per-region choice: under half of the object shows
# distinct, readable colours for the annotators' class buttons
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#17becf", "#8c564b", "#e377c2", "#7f7f7f")


@dataclass(frozen=True)
class Box:
    """One box in pixels (COCO xywh) with its platform class."""

    cls: str
    x: float
    y: float
    w: float
    h: float
    score: float | None = None
    hidden: bool = False  # under half of the object shows: an ignore region (COCO iscrowd 1)


def label_config(classes: Sequence[str]) -> str:
    """The labeling interface for a class list: rectangles per class, an explicit "no objects", and for the
    selected box a "mostly hidden" choice (under half of the object shows: scored and trained as ignore).

    Generated from the model's classes, so a new class appears without editing XML by hand.
    """
    labels = "\n".join(f'    <Label value={quoteattr(c)} background="{COLOURS[i % len(COLOURS)]}"/>'
                       for i, c in enumerate(classes))
    return (f'<View>\n  <Image name="{TO_NAME}" value="$image" zoom="true" zoomControl="true"/>\n'
            f'  <RectangleLabels name="{FROM_NAME}" toName="{TO_NAME}" strokeWidth="2">\n{labels}\n'
            f'  </RectangleLabels>\n'
            f'  <Choices name="{CHOICE_NAME}" toName="{TO_NAME}" choice="single" showInline="true">\n'
            f'    <Choice value="{NO_OBJECTS}" hint="the frame holds none of these classes"/>\n'
            f'  </Choices>\n'
            f'  <Choices name="{HIDDEN_NAME}" toName="{TO_NAME}" perRegion="true" choice="single" showInline="true">\n'
            f'    <Choice value="{HIDDEN}" hint="under half of this object shows (behind a nearer one)"/>\n'
            f'  </Choices>\n</View>')


def config_classes(config: str) -> list[str]:
    """The RectangleLabels values of a label config (to see whether a project needs new classes)."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(config)
    return [lab.get("value", "") for rl in root.iter("RectangleLabels") for lab in rl.iter("Label")]


def config_marks_hidden(config: str) -> bool:
    """Whether a label config has the per-region "mostly hidden" choice (projects made before it lack it)."""
    import xml.etree.ElementTree as ET

    return any(c.get("name") == HIDDEN_NAME for c in ET.fromstring(config).iter("Choices"))


def to_result(boxes: Iterable[Box], width: int, height: int) -> list[dict]:
    """Pixel boxes -> Label Studio result items (percent of the image, as the editor stores them). Each region
    has an id (ten random characters, as the editor makes them: never the same as a prediction's region);
    a hidden box adds the per-region choice under the same id, as the editor writes it."""
    out = []
    for b in boxes:
        geo = {"x": 100.0 * b.x / width, "y": 100.0 * b.y / height, "width": 100.0 * b.w / width,
               "height": 100.0 * b.h / height, "rotation": 0}
        common = {"id": uuid.uuid4().hex[:10], "to_name": TO_NAME, "original_width": width, "original_height": height,
                  "image_rotation": 0}
        item = {**common, "from_name": FROM_NAME, "type": "rectanglelabels",
                "value": {**geo, "rectanglelabels": [b.cls]}}
        if b.score is not None:
            item["score"] = round(float(b.score), 4)
        out.append(item)
        if b.hidden:
            out.append({**common, "from_name": HIDDEN_NAME, "type": "choices", "value": {**geo, "choices": [HIDDEN]}})
    return out


def no_objects_result() -> list[dict]:
    """The result of an annotator who says the frame holds nothing to box."""
    return [{"from_name": CHOICE_NAME, "to_name": TO_NAME, "type": "choices", "value": {"choices": [NO_OBJECTS]}}]


@dataclass
class ParsedAnnotation:
    """One Label Studio annotation read back: boxes in pixels, the explicit choice, problems."""

    boxes: list[Box]
    no_objects: bool
    labels: list[str]  # every rectangle label as written (unknown ones included, for the gate)


def parse_result(result: list[dict], width: int, height: int) -> ParsedAnnotation:
    """Label Studio result items -> pixel boxes. Unknown labels are kept (the gate rejects them). A region
    whose per-region choice (same id) says "mostly hidden" comes back as a hidden box."""
    boxes, labels, no_objects = [], [], False
    hidden = {item.get("id") for item in result or [] if item.get("type") == "choices"
              and item.get("from_name") == HIDDEN_NAME and HIDDEN in item.get("value", {}).get("choices", [])}
    hidden.discard(None)
    for item in result or []:
        value = item.get("value", {})
        if item.get("type") == "choices":
            no_objects |= item.get("from_name", CHOICE_NAME) == CHOICE_NAME and NO_OBJECTS in value.get("choices", [])
            continue
        if item.get("type") not in ("rectanglelabels", "rectangle"):
            continue
        w0 = float(item.get("original_width") or width)
        h0 = float(item.get("original_height") or height)
        names = value.get("rectanglelabels") or ["(no label)"]
        for name in names[:1]:
            labels.append(name)
            boxes.append(Box(name, value.get("x", 0.0) * w0 / 100.0, value.get("y", 0.0) * h0 / 100.0,
                             value.get("width", 0.0) * w0 / 100.0, value.get("height", 0.0) * h0 / 100.0,
                             hidden=item.get("id") in hidden))
    return ParsedAnnotation(boxes, no_objects, labels)


def to_coco(frames: Sequence[dict], boxes: dict[str, list[Box]]) -> dict:
    """COCO with the platform's category ids. frames: dicts with file_name, sha256, width, height."""
    images, annotations = [], []
    for i, f in enumerate(frames, 1):
        images.append({"id": i, "file_name": f["file_name"], "sha256": f["sha256"], "width": int(f["width"]),
                       "height": int(f["height"])})
        for b in boxes.get(f["sha256"], []):
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": CATEGORY_IDS.get(b.cls, -1),
                                "bbox": [round(b.x, 3), round(b.y, 3), round(b.w, 3), round(b.h, 3)],
                                "area": round(b.w * b.h, 3), "iscrowd": int(b.hidden)})
    categories = [{"id": CATEGORY_IDS[c], "name": c, "supercategory": "city"} for c in CLASSES]
    return {"images": images, "annotations": annotations, "categories": categories}


def coco_boxes(coco: dict) -> dict[str, list[Box]]:
    """Boxes per frame sha256 from a COCO file whose images carry sha256 (dataset versions do)."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    sha = {im["id"]: im.get("sha256") for im in coco["images"]}
    out: dict[str, list[Box]] = {s: [] for s in sha.values() if s}
    for a in coco["annotations"]:
        s = a.get("sha256") or sha.get(a["image_id"])
        x, y, w, h = a["bbox"]
        out.setdefault(s, []).append(Box(names[a["category_id"]], x, y, w, h, hidden=bool(a.get("iscrowd", 0))))
    return out
