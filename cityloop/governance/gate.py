"""The data quality gate: Great Expectations suites over a dataset version.

Three reviewable suites live as JSON in ``data/expectations/`` (one per level; a workspace without
that folder uses the defaults shipped in the package, see :func:`find_suites`):

* ``frames.json`` validates the manifest (one row per frame, ``MANIFEST_COLUMNS``);
* ``annotations.json`` validates the boxes (one row per box, ``ANNOTATION_COLUMNS``);
* ``dataset.json`` validates small summary frames derived from both (class balance,
  class coverage, split leakage); each entry names its summary frame in ``batch``.

Each entry is ``{"type", "kwargs", "meta": {"notes"}}`` (plus ``batch`` in
dataset.json). Tunable values are written ``{"$PARAMETER": "name"}`` and supplied
at run time by :func:`expectation_parameters` from :class:`GateParams` and from
the contracts in :mod:`governance.schema`.

Derived columns (computed here, never stored):

* frames: ``size`` = ``f"{width}x{height}"``; ``timestamp`` parsed as UTC
  (unparseable values become null).
* annotations: ``x2 = x + w``, ``y2 = y + h``, ``right_margin = img_width - x2``,
  ``bottom_margin = img_height - y2``, ``box_finite`` (x, y, w, h all finite),
  ``known_image`` (sha256 is in the manifest), ``category_consistent``
  (``CATEGORY_IDS[category_name] == category_id``).
* dataset: ``class_balance`` (class_name, boxes, share), ``class_coverage``
  (class_name, frames; one row per required class), ``leakage`` (sha256,
  n_splits, splits; manifest plus holdout, whose split counts as ``bench``).
"""

from __future__ import annotations

import json
import math
import re
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from cityloop.core.settings import from_section
from cityloop.governance.schema import (
    ANNOTATION_COLUMNS,
    CATEGORY_IDS,
    CLASSES,
    MANIFEST_COLUMNS,
    SOURCES,
    SPLITS,
)

if TYPE_CHECKING:  # great_expectations takes ~2 s to import: only when a gate runs
    from great_expectations.core import ExpectationSuite
    from great_expectations.core.expectation_validation_result import (
        ExpectationSuiteValidationResult,
        ExpectationValidationResult,
    )
    from great_expectations.data_context import AbstractDataContext
    from great_expectations.datasource.fluent import PandasDatasource



def find_suites(root: Path | None = None) -> Path:
    """Where the gate's suites are: the workspace's `data/expectations/` when it has one (the
    reviewable, DVC-declared copy a team edits), else the defaults shipped in the package."""
    if root is not None and (Path(root) / "data" / "expectations").is_dir():
        return Path(root) / "data" / "expectations"
    return Path(str(resources.files("cityloop.governance") / "suites"))
SUITE_NAMES: tuple[str, ...] = ("frames", "annotations", "dataset")
CLASS_BATCHES: tuple[str, ...] = ("class_balance", "class_coverage")
HOLDOUT_SPLIT = "bench"
MAX_EXAMPLES = 5
_SPEC_KEYS = {"type", "kwargs", "meta", "batch"}
_BOX_COLUMNS = ["x", "y", "w", "h"]
# Columns copied into each example row so a reviewer can find the offending record.
INDEX_COLUMNS: dict[str, list[str]] = {
    "frames": ["sha256", "path"],
    "annotations": ["ann_id", "sha256", "category_id", "category_name", *_BOX_COLUMNS, "img_width", "img_height"],
    "class_balance": ["class_name", "boxes"],
    "class_coverage": ["class_name"],
    "leakage": ["sha256", "splits"],
}
# GX contexts register themselves in a process-global project manager: one gate at a time.
_GX_LOCK = threading.Lock()


@dataclass
class GateParams:
    """Tunable thresholds of the gate (the ``gate`` section of params.yaml).

    Defaults suit the 192x192 simulator frames.
    """

    allowed_sizes: list[str] = field(default_factory=lambda: ["192x192"])
    min_box: float = 4.0
    box_tolerance: float = 0.5
    timestamp_min: str | date = "2000-01-01"  # ISO date (YAML turns a bare date into a date; stored as str)
    timestamp_future_slack_days: float = 1.0
    require_labels: bool = True
    min_frames_per_class: int = 5
    max_class_share: float = 0.6
    required_classes: list[str] = field(default_factory=lambda: list(CLASSES))

    def __post_init__(self) -> None:
        self.allowed_sizes = [str(s) for s in self.allowed_sizes]
        self.required_classes = [str(c) for c in self.required_classes]
        if isinstance(self.timestamp_min, (date, datetime)):  # YAML parses bare dates
            self.timestamp_min = self.timestamp_min.isoformat()
        _check_params(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> GateParams:
        """Build params from a params.yaml section; unknown keys raise ValueError."""
        return from_section(cls, d, "gate")


def _check_params(p: GateParams) -> None:
    """Raise ValueError for thresholds that cannot be meant."""
    bad_sizes = [s for s in p.allowed_sizes if not re.fullmatch(r"\d+x\d+", s)]
    bad_classes = [c for c in p.required_classes if c not in CLASSES]
    problems = [
        f"allowed_sizes must look like '192x192': {bad_sizes}" if bad_sizes else "",
        f"required_classes not in CLASSES: {bad_classes}" if bad_classes else "",
        "min_box must be >= 0" if p.min_box < 0 else "",
        "box_tolerance must be >= 0" if p.box_tolerance < 0 else "",
        "min_frames_per_class must be >= 0" if p.min_frames_per_class < 0 else "",
        "max_class_share must be in (0, 1]" if not 0 < p.max_class_share <= 1 else "",
    ]
    try:
        _utc(p.timestamp_min)
    except (ValueError, TypeError):
        problems.append(f"timestamp_min is not a date: {p.timestamp_min!r}")
    problems = [m for m in problems if m]
    if problems:
        raise ValueError("invalid gate params: " + "; ".join(problems))


@dataclass
class GateFailure:
    """One failed expectation, with up to MAX_EXAMPLES offending rows."""

    suite: str
    expectation: str
    column: str | None
    kwargs: dict[str, Any]
    unexpected_count: int
    examples: list[dict[str, Any]]
    notes: str = ""
    rows: list[dict[str, Any]] = field(default_factory=list)  # every offending row (complete checks only)

    def describe(self) -> str:
        """Multi-line human text for this failure."""
        where = f"(column={self.column})" if self.column else "(table)"
        kw = {k: v for k, v in self.kwargs.items() if k != "column"}
        lines = [
            f"- [{self.suite}] {self.expectation}{where}: {self.unexpected_count} unexpected",
            f"    kwargs: {json.dumps(kw, sort_keys=True)}",
        ]
        if self.notes:
            lines.append(f"    why: {self.notes}")
        lines += [f"    e.g. {json.dumps(e, sort_keys=True)}" for e in self.examples]
        return "\n".join(lines)


@dataclass
class GateResult:
    """Outcome of :func:`run_gate`; ``to_dict`` is stored as gate.json."""

    success: bool
    failures: list[GateFailure]
    evaluated: int
    successful: int
    data_docs: str | None

    def report(self) -> str:
        """Readable text naming each failed expectation, column, counts and examples."""
        if self.success:
            return f"Gate passed: {self.successful}/{self.evaluated} expectations"
        head = (
            f"Gate FAILED: {len(self.failures)} of {self.evaluated} expectations failed "
            f"({self.successful}/{self.evaluated} passed)"
        )
        body = [f.describe() for f in self.failures]
        tail = [f"Data Docs: {self.data_docs}"] if self.data_docs else []
        return "\n".join([head, *body, *tail])

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (all values already plain)."""
        return _jsonable(asdict(self))


@dataclass
class _Batch:
    """One DataFrame validated against one named (sub)suite."""

    suite: str
    name: str
    frame: pd.DataFrame
    specs: list[dict[str, Any]]


# ---------------------------------------------------------------- suites


def load_suite_specs(suites_dir: Path | None = None) -> dict[str, list[dict[str, Any]]]:
    """Read frames/annotations/dataset JSON suites and check their shape."""
    suites_dir = Path(suites_dir or find_suites())
    specs: dict[str, list[dict[str, Any]]] = {}
    for name in SUITE_NAMES:
        path = suites_dir / f"{name}.json"
        entries = json.loads(path.read_text())
        if not isinstance(entries, list):
            raise ValueError(f"{path}: expected a list of expectations")
        for i, e in enumerate(entries):
            extra = set(e) - _SPEC_KEYS
            if "type" not in e or "kwargs" not in e or extra:
                raise ValueError(f"{path}[{i}]: need type+kwargs, unknown keys {sorted(extra)}")
        specs[name] = entries
    return specs


def build_suite(name: str, specs: list[dict[str, Any]]) -> ExpectationSuite:
    """Turn JSON entries into a GX ExpectationSuite (meta.notes become GX notes)."""
    import great_expectations as gx
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )

    suite = gx.ExpectationSuite(name=name)
    for spec in specs:
        meta = dict(spec.get("meta") or {})
        config = ExpectationConfiguration(type=spec["type"], kwargs=spec["kwargs"], meta=meta, notes=meta.get("notes"))
        # add_expectation, not add_expectation_configuration: the latter upserts by
        # domain and would silently replace a second check on the same column.
        suite.add_expectation(config.to_domain_obj())
    if len(suite.expectations) != len(specs):
        raise ValueError(f"suite {name!r} has duplicate expectations")
    return suite


def expectation_parameters(params: GateParams, now: datetime | None = None) -> dict[str, Any]:
    """Values for every ``$PARAMETER`` used by the suites."""
    now = now or datetime.now(UTC)
    return {
        "allowed_sizes": list(params.allowed_sizes),
        "timestamp_min": _utc(params.timestamp_min),
        "timestamp_max": now + timedelta(days=params.timestamp_future_slack_days),
        "sources": list(SOURCES),
        "splits": list(SPLITS),
        "classes": list(CLASSES),
        "min_box": float(params.min_box),
        "box_min_margin": -float(params.box_tolerance),
        "max_class_share": float(params.max_class_share),
        "min_frames_per_class": int(params.min_frames_per_class),
    }


# ---------------------------------------------------------------- derived frames


def derive_frames(manifest: pd.DataFrame) -> pd.DataFrame:
    """Manifest plus ``size`` ("WxH") and ``timestamp`` coerced to UTC."""
    _require_columns(manifest, MANIFEST_COLUMNS, "manifest")
    df = manifest.copy()
    df["size"] = _dim_text(df["width"]) + "x" + _dim_text(df["height"])
    df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True, errors="coerce")
    return df


def derive_annotations(annotations: pd.DataFrame, manifest: pd.DataFrame) -> pd.DataFrame:
    """Boxes plus geometry, ``known_image`` and ``category_consistent`` columns."""
    ann = _annotation_frame(annotations)
    box = ann[_BOX_COLUMNS].apply(pd.to_numeric, errors="coerce").astype(float)
    ann["x2"] = box["x"] + box["w"]
    ann["y2"] = box["y"] + box["h"]
    ann["right_margin"] = pd.to_numeric(ann["img_width"], errors="coerce") - ann["x2"]
    ann["bottom_margin"] = pd.to_numeric(ann["img_height"], errors="coerce") - ann["y2"]
    ann["box_finite"] = np.isfinite(box.to_numpy()).all(axis=1)
    ann["known_image"] = ann["sha256"].isin(set(manifest["sha256"].dropna()))
    expected_id = ann["category_name"].map(CATEGORY_IDS).astype(float)
    actual_id = pd.to_numeric(ann["category_id"], errors="coerce").astype(float)
    ann["category_consistent"] = (expected_id == actual_id).to_numpy(dtype=bool)
    return ann


def derive_class_frames(annotations: pd.DataFrame, params: GateParams) -> dict[str, pd.DataFrame]:
    """``class_balance`` (share of boxes) and ``class_coverage`` (frames per class)."""
    ann = _annotation_frame(annotations)
    boxes = ann.groupby("category_name").size()
    balance = pd.DataFrame(
        {
            "class_name": boxes.index.astype(str),
            "boxes": boxes.to_numpy(dtype="int64"),
            "share": boxes.to_numpy(dtype=float) / max(len(ann), 1),
        }
    )
    per_class = ann.groupby("category_name")["sha256"].nunique()
    required = list(params.required_classes)
    coverage = pd.DataFrame(
        {
            "class_name": required,
            "frames": [int(per_class.get(c, 0)) for c in required],
        }
    )
    return {"class_balance": balance, "class_coverage": coverage}


def derive_leakage(manifest: pd.DataFrame, holdout: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per sha256: distinct splits holding it (holdout frames count as bench)."""
    parts = [manifest[["sha256", "split"]]]
    if holdout is not None and len(holdout):
        _require_columns(holdout, {"sha256": "string"}, "holdout")
        parts.append(pd.DataFrame({"sha256": holdout["sha256"], "split": HOLDOUT_SPLIT}))
    pairs = pd.concat(parts, ignore_index=True).astype(object).dropna().drop_duplicates()
    pairs = pairs.sort_values(["sha256", "split"])
    grouped = pairs.groupby("sha256", sort=True)["split"]
    return pd.DataFrame(
        {
            "sha256": grouped.size().index.astype(str),
            "n_splits": grouped.size().to_numpy(dtype="int64"),
            "splits": grouped.agg(",".join).to_numpy(dtype=object),
        }
    )


def _annotation_frame(annotations: pd.DataFrame | None) -> pd.DataFrame:
    """A copy of the boxes; an empty input becomes a typed empty frame."""
    if annotations is None or len(annotations) == 0:
        return pd.DataFrame(
            {c: pd.Series(dtype="object" if t == "string" else t) for c, t in ANNOTATION_COLUMNS.items()}
        )
    _require_columns(annotations, ANNOTATION_COLUMNS, "annotations")
    return annotations.copy()


def _require_columns(df: pd.DataFrame, columns: Mapping[str, str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} is missing columns {missing}")


def _dim_text(values: pd.Series) -> pd.Series:
    """Integer-looking sizes as "192"; anything else keeps its repr ("nan", "1.5")."""
    num = pd.to_numeric(values, errors="coerce").astype(float)
    whole = np.isfinite(num) & (num == np.round(num))
    text = num.astype(str)
    text[whole] = num[whole].astype("int64").astype(str)
    return text.astype(object)


def _utc(value: str | date | datetime) -> datetime:
    ts = pd.Timestamp(value)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.to_pydatetime()


# ---------------------------------------------------------------- running


def run_batch_gate(
    annotations: pd.DataFrame,
    tasks: pd.DataFrame,
    params: GateParams,
    *,
    suites_dir: Path | None = None,
) -> GateResult:
    """Validate one labeling batch before it may join a dataset: every box through the same
    ``annotations`` suite as a dataset version, every task through ``labels.json``.

    ``annotations`` has ANNOTATION_COLUMNS plus ``task_id``; ``tasks`` has ``task_id``,
    ``sha256``, ``boxes`` (count) and ``no_objects`` (the annotator's explicit "no objects").
    Failures carry every offending row (with its ``task_id``) in ``GateFailure.rows``.
    """
    suites_dir = Path(suites_dir or find_suites())
    specs = load_suite_specs(suites_dir)["annotations"]
    label_specs = json.loads((suites_dir / "labels.json").read_text())
    ann = derive_annotations(annotations.drop(columns=["task_id"]), tasks)
    ann.insert(0, "task_id", annotations["task_id"].to_numpy() if len(annotations) else [])
    t = tasks.copy()
    t["explicit"] = (t["boxes"] > 0) | t["no_objects"].astype(bool)
    t["consistent"] = ~((t["boxes"] > 0) & t["no_objects"].astype(bool))
    batches = [(_Batch("labels", "annotations", ann, specs), ["task_id", *INDEX_COLUMNS["annotations"]]),
               (_Batch("labels", "tasks", t, label_specs), ["task_id", "sha256", "boxes", "no_objects"])]
    values = expectation_parameters(params)
    with _GX_LOCK, _gx_context(None) as ctx:
        source = ctx.data_sources.add_pandas("cityloop-labels")
        results = [_validate(ctx, source, b, values, docs=False, index_columns=cols, complete=True)
                   for b, cols in batches]
    failures = [_failure(b.suite, r) for (b, _), res in zip(batches, results) for r in res.results if not r.success]
    evaluated = sum(int(res.statistics["evaluated_expectations"]) for res in results)
    successful = sum(int(res.statistics["successful_expectations"]) for res in results)
    return GateResult(not failures, failures, evaluated, successful, None)


def run_gate(
    manifest: pd.DataFrame,
    annotations: pd.DataFrame,
    params: GateParams,
    *,
    holdout: pd.DataFrame | None = None,
    suites_dir: Path | None = None,
    docs_dir: Path | None = None,
) -> GateResult:
    """Validate a dataset version; with ``docs_dir`` also build Data Docs there.

    Without ``docs_dir`` an ephemeral GX context is used and nothing is written.
    """
    batches = _batches(manifest, annotations, params, holdout, load_suite_specs(suites_dir))
    values = expectation_parameters(params)
    with _GX_LOCK, _gx_context(docs_dir) as ctx:
        source = ctx.data_sources.add_pandas("cityloop")
        docs = docs_dir is not None
        results = [_validate(ctx, source, b, values, docs=docs) for b in batches]
    failures = [
        _failure(b.suite, r) for b, res in zip(batches, results, strict=True) for r in res.results if not r.success
    ]
    evaluated = sum(int(res.statistics["evaluated_expectations"]) for res in results)
    successful = sum(int(res.statistics["successful_expectations"]) for res in results)
    index = str(Path(docs_dir).resolve() / "index.html") if docs_dir is not None else None
    return GateResult(not failures, failures, evaluated, successful, index)


def _batches(
    manifest: pd.DataFrame,
    annotations: pd.DataFrame,
    params: GateParams,
    holdout: pd.DataFrame | None,
    specs: dict[str, list[dict[str, Any]]],
) -> list[_Batch]:
    """Pair each derived frame with its expectations (class checks need labels)."""
    frames = {
        "frames": derive_frames(manifest),
        "annotations": derive_annotations(annotations, manifest),
        "leakage": derive_leakage(manifest, holdout),
    }
    if params.require_labels:
        frames |= derive_class_frames(annotations, params)
    batches = []
    for suite, entries in specs.items():
        grouped: dict[str, list[dict[str, Any]]] = {}
        for e in entries:
            grouped.setdefault(e.get("batch", suite), []).append(e)
        for name, group in grouped.items():
            if name in CLASS_BATCHES and not params.require_labels:
                continue
            if name not in frames:
                raise ValueError(f"suite {suite!r}: unknown batch {name!r}")
            batches.append(_Batch(suite, name, frames[name], group))
    return batches


@contextmanager
def _gx_context(docs_dir: Path | None) -> Iterator[AbstractDataContext]:
    """Ephemeral context, or a throw-away file context whose docs site is docs_dir."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    if docs_dir is None:
        ctx = gx.get_context(mode="ephemeral")
        ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        yield ctx
        return
    site_dir = Path(docs_dir).resolve()
    site_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cityloop-gx-") as tmp:
        ctx = gx.get_context(mode="file", project_root_dir=tmp)
        ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        ctx.update_data_docs_site(
            "local_site",
            {
                "class_name": "SiteBuilder",
                "show_how_to_buttons": False,
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(site_dir),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
        yield ctx


def _validate(
    ctx: AbstractDataContext,
    source: PandasDatasource,
    batch: _Batch,
    values: dict[str, Any],
    *,
    docs: bool,
    index_columns: list[str] | None = None,
    complete: bool = False,
) -> ExpectationSuiteValidationResult:
    """Register asset, suite, validation definition and checkpoint; run it.

    ``complete`` asks GX for every offending row (COMPLETE), not just the first few.
    """
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction

    name = f"{batch.suite}.{batch.name}" if batch.suite != batch.name else batch.name
    definition = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
    suite = ctx.suites.add(build_suite(name, batch.specs))
    vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=name, data=definition, suite=suite))
    checkpoint = ctx.checkpoints.add(
        gx.Checkpoint(
            name=name,
            validation_definitions=[vd],
            actions=[UpdateDataDocsAction(name="update_data_docs")] if docs else [],
            result_format={
                "result_format": "COMPLETE" if complete else "SUMMARY",
                "partial_unexpected_count": MAX_EXAMPLES,
                "unexpected_index_column_names": index_columns or INDEX_COLUMNS[batch.name],
            },
        )
    )
    result = checkpoint.run(batch_parameters={"dataframe": batch.frame}, expectation_parameters=values)
    return next(iter(result.run_results.values()))


# ---------------------------------------------------------------- results


def _failure(suite: str, res: ExpectationValidationResult) -> GateFailure:
    """Flatten one failed GX result into a GateFailure."""
    cfg = res.expectation_config
    kwargs = {k: v for k, v in cfg.kwargs.items() if k != "batch_id"}
    result = res.result or {}
    return GateFailure(
        suite=suite,
        expectation=cfg.type,
        column=kwargs.get("column"),
        kwargs=_jsonable(kwargs),
        unexpected_count=int(result.get("unexpected_count") or 0),
        examples=_jsonable(_examples(res)),
        notes=str((cfg.meta or {}).get("notes", "")),
        rows=_jsonable([dict(r) for r in result.get("unexpected_index_list") or []]),
    )


def _examples(res: ExpectationValidationResult) -> list[dict[str, Any]]:
    """Offending rows (index columns + value), an observed value, or the error."""
    info = res.exception_info or {}
    if info.get("raised_exception"):
        return [{"error": str(info.get("exception_message"))}]
    result = res.result or {}
    column = res.expectation_config.kwargs.get("column")
    if result.get("partial_unexpected_index_list"):
        rows = result["partial_unexpected_index_list"]
    elif result.get("partial_unexpected_list"):
        rows = [{column: v} for v in result["partial_unexpected_list"]]
    elif "observed_value" in result:
        rows = [{"observed_value": result["observed_value"]}]
    else:
        rows = []
    return [dict(r) for r in rows[:MAX_EXAMPLES]]


def _jsonable(value: Any) -> Any:
    """Plain JSON types: timestamps as ISO text, numpy scalars unwrapped, NaN as text."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
