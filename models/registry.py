"""The algorithm repository: immutable model versions, their stages, and the promotion gate.

Torch-free on purpose (an edge box has onnxruntime, not torch): never import torch, lightning,
models.export or models.components here.

Layout under `<root>/data/models/` (one DVC-tracked directory, `data/models.dvc`):

    <name>/v<N>/model.onnx card.json [weights.pt ...]   a version: written once, files read-only
    events.jsonl                                        append-only: who / what / when / why
    admissions/<timestamp>-<name>.json                  partner admission reports (models.admission)

A version id is `"<name>:v<N>"`; `"<name>:latest"`, `"<name>:production"` (and `:staging`,
`:candidate`, `:retired`: the newest version in that stage) resolve to one. Numbers are never
reused, even if a version folder were deleted (the events log remembers it).

The card.json written at registration is immutable and keeps stage "candidate". The effective
stage and the benchmark metrics live in the events log and are merged into the card that
`get()` / `list()` return:

    registered        -> candidate          (data: sha256 of every file, parity, vendor, source)
    evaluated         -> (no stage change)  (data: benchmark version id, metrics)
    promoted          -> staging | production
    retired           -> retired            (the previous production, when another is promoted)
    rolled_back       -> retired (the version rolled back) / production (the one restored)
    rejected          -> (no version)       (a refused registration or admission, with the reason)
    promotion_refused -> (no stage change)  (the failed checks)

Stage choice on promotion: the previous production version becomes "retired" (it no longer
serves), but it stays the rollback target: `rollback(name)` walks the production history
recorded in the log (a stack: promotion to production pushes, rollback pops), not the stages.

Every mutation appends to the log and then runs `dvc add data/models` (and `dvc push
data/models.dvc` when a default DVC remote is configured; none configured: the push is
skipped), all under the workspace lock that dataset publishing uses
(governance.versioning._workspace_lock), so registrations and publishes queue.
"""

from __future__ import annotations

import dataclasses
import getpass
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from cityloop.models.card import STAGES, ModelCard

from cityloop.core.settings import from_section
from cityloop.governance import versioning
from cityloop.governance.schema import CLASSES

log = logging.getLogger(__name__)

MODELS_DIR = "data/models"
EVENTS_FILE = "events.jsonl"
ADMISSIONS_DIR = "admissions"
MODEL_FILE = "model.onnx"
CARD_FILE = "card.json"
OWN_VENDOR = "cityloop"
PARTNER_PARITY = "n/a (partner artifact)"
DEFAULT_PARITY_TOLERANCE = 1e-4
GATE_METRICS = ("mAP50", "mAP")
RESERVED_NAMES = {ADMISSIONS_DIR}

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_ID_RE = re.compile(r"^(?P<name>[^:]+):(?P<ref>v[1-9][0-9]*|latest|" + "|".join(STAGES) + r")$")
_VERSION_DIR_RE = re.compile(r"^v([1-9][0-9]*)$")


class RegistryError(RuntimeError):
    """A registry operation was refused or cannot proceed (the message says why)."""


class ModelNotFoundError(RegistryError, LookupError):
    """The requested model version does not exist."""


# ---------------------------------------------------------------------- params and results


@dataclass
class RegistryParams:
    """The `registry:` section of params.yaml (unknown keys raise ValueError)."""

    benchmark: str  # dataset version id the gate scores on, e.g. "field-bench@latest"
    target: float  # the gate's minimum of target_metric on the benchmark
    latency_budget_ms: float  # max median ms per image at batch 1 (preprocess + infer + decode)
    target_metric: str = "mAP50"  # mAP50 | mAP
    max_condition_regression: float = 0.03  # max drop of target_metric on any condition vs production
    parity_tolerance: float = DEFAULT_PARITY_TOLERANCE  # max |torch - onnx| output difference
    admission_fraction: float = 0.9  # a partner model needs target_metric >= fraction * target
    max_model_mb: float = 50.0  # partner package size limit (model.onnx + external data)

    def __post_init__(self) -> None:
        problems = []
        try:
            versioning._split_vid(self.benchmark)
        except ValueError as exc:
            problems.append(f"benchmark: {exc}")
        if self.target_metric not in GATE_METRICS:
            problems.append(f"target_metric must be one of {GATE_METRICS}: {self.target_metric!r}")
        for key in ("target", "max_condition_regression", "latency_budget_ms", "parity_tolerance",
                    "admission_fraction", "max_model_mb"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                problems.append(f"{key} must be a number >= 0: {value!r}")
        if problems:
            raise ValueError("invalid registry params: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> RegistryParams:
        return from_section(cls, d, "registry")


@dataclass
class Check:
    """One check of a gate: what was measured, against what, and whether it passed."""

    name: str
    passed: bool
    value: Any = None
    threshold: Any = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Checked:
    """A verdict made of checks (promotion decisions, admission reports)."""

    checks: list[Check]

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["checks"] = [c.to_dict() for c in self.checks]
        return d


@dataclass
class Decision(Checked):
    """What the promotion gate (or a rollback) decided, and why."""

    promoted: bool
    checks: list[Check]
    reason: str
    id: str = ""
    action: str = "promote"  # promote | rollback
    to: str = "production"
    previous: str | None = None  # the production version before (promote) / rolled back (rollback)

    def render(self) -> str:
        """Plain-text table: one line per check, then the verdict."""
        lines = [f"{self.action} {self.id} -> {self.to}"]
        for c in self.checks:
            lines.append(f"  [{'PASS' if c.passed else 'FAIL'}] {c.name:<22} value={_fmt(c.value):<10} "
                         f"threshold={_fmt(c.threshold):<10} {c.detail}")
        lines.append(("DONE: " if self.promoted else "REFUSED: ") + self.reason)
        return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


@dataclass
class ModelVersion:
    """A registered version, its card merged with its effective stage and evaluations."""

    name: str
    version: int
    path: Path
    card: ModelCard  # stage and metrics merged from the events log
    stage: str
    registered: str = ""  # ISO time of registration
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256 at registration
    parity: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.name}:v{self.version}"

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def size_mb(self) -> float:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file()) / 1e6

    def metrics(self, benchmark: str | None = None) -> dict[str, Any] | None:
        """The latest evaluation on `benchmark` (a resolved version id), or the latest of any."""
        evals = [e for e in self.events if e["event"] == "evaluated"
                 and (benchmark is None or e["data"].get("benchmark") == benchmark)]
        return evals[-1]["data"]["metrics"] if evals else None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "stage": self.stage, "path": str(self.path), "registered": self.registered,
                "files": self.files, "parity": self.parity, "card": self.card.to_dict(), "events": self.events}


# ---------------------------------------------------------------------- parity


def _max_diff(p: Mapping[str, Any]) -> float | None:
    """The worst output difference of a parity record (a number, or per output name)."""
    diff = p.get("max_abs_diff", p.get("max_diff"))
    if isinstance(diff, Mapping):
        values = [float(v) for v in diff.values()]
        return max(values) if values else None
    return float(diff) if diff is not None else None


def parity_status(card: ModelCard, parity: Any = None,
                  tolerance: float = DEFAULT_PARITY_TOLERANCE) -> tuple[bool, str, dict[str, Any]]:
    """(passed, why, normalised record) for a model's export parity.

    A parity result (from the export step: `parity` — a dict or models.export.ParityResult —,
    or else `card.gates["parity"]`) carries `"passed": bool`, and optionally `"tolerance"` (the
    tolerance it was checked at: it must not be looser than `tolerance`) and `"max_abs_diff"`
    (a number, or one per output). When only a plain-number max_abs_diff and no tolerance is
    given, the number itself is compared with `tolerance`. Partner models carry
    "n/a (partner artifact)" instead: their ONNX file *is* the artifact, there is nothing to
    compare with; cityloop's own models may not use it.
    """
    p = parity if parity is not None else card.gates.get("parity")
    if hasattr(p, "to_dict"):
        p = p.to_dict()
    if p is None:
        if card.vendor != OWN_VENDOR:
            return False, (f"partner model ({card.vendor}) without a parity record: partner models are "
                           "registered through admission (`cityloop models admit`)"), {}
        return False, "no parity result (run the export parity check: the ONNX must match the trained model)", {}
    if isinstance(p, str):
        p = {"status": p}
    if not isinstance(p, Mapping):
        return False, f"unreadable parity result: {p!r}", {}
    p = dict(p)
    if p.get("status") == PARTNER_PARITY:
        if card.vendor == OWN_VENDOR:
            return False, f"cityloop models need a real parity check, not {PARTNER_PARITY!r}", p
        return True, PARTNER_PARITY, {**p, "passed": None}
    try:
        diff = _max_diff(p)
    except (TypeError, ValueError):
        return False, f"unreadable max_abs_diff in the parity result: {p.get('max_abs_diff')!r}", p
    shown = f" (max |diff| {diff:.3g})" if diff is not None else ""
    if p.get("passed") is not True:
        return False, "parity failed" + shown + (f": {p['reason']}" if p.get("reason") else ""), p
    checked_at = p.get("tolerance")
    if checked_at is not None and float(checked_at) > tolerance:
        return False, f"parity was checked at tolerance {float(checked_at):.3g}, looser than {tolerance:.3g}", p
    if checked_at is None and diff is not None and not isinstance(p.get("max_abs_diff"), Mapping) \
            and diff > tolerance:
        return False, f"parity failed: max |diff| {diff:.3g} > tolerance {tolerance:.3g}", p
    return True, "passed" + shown + f" at tolerance {float(checked_at if checked_at is not None else tolerance):.3g}", {
        **p, "status": "passed"}


# ---------------------------------------------------------------------- the registry


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _who() -> str:
    if os.environ.get("CITYLOOP_USER"):
        return os.environ["CITYLOOP_USER"]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_model_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name) or name in RESERVED_NAMES:
        raise RegistryError(f"invalid model name {name!r}: must match {NAME_RE.pattern} "
                            f"and not be one of {sorted(RESERVED_NAMES)}")
    return name


def safe_relpath(rel: str) -> str:
    """A relative posix path that stays inside its folder (no absolute paths, no `..`)."""
    pure = PurePosixPath(str(rel).replace("\\", "/"))
    if not str(rel) or pure.is_absolute() or ".." in pure.parts or not pure.parts or ":" in str(rel):
        raise RegistryError(f"file name must be a relative path inside the version folder: {rel!r}")
    return pure.as_posix()


def split_id(model_id: str) -> tuple[str, str]:
    """`"name:v3"` -> ("name", "v3"); also :latest and :<stage>."""
    m = _ID_RE.match(model_id.strip())
    if not m:
        raise RegistryError(f"invalid model id {model_id!r}: expected '<name>:v<N>', '<name>:latest' "
                            f"or '<name>:<stage>' ({', '.join(STAGES)})")
    return m["name"], m["ref"]


class _State:
    """The events log folded: stages, production history, registrations, per-id events."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = events
        self.stage: dict[str, str] = {}
        self.stack: dict[str, list[str]] = {}  # name -> production history (promotions pushed, rollbacks popped)
        self.registered: dict[str, dict[str, Any]] = {}
        self.by_id: dict[str, list[dict[str, Any]]] = {}
        for e in events:
            mid = e.get("id")
            if not mid:
                continue
            self.by_id.setdefault(mid, []).append(e)
            name = mid.split(":", 1)[0]
            if e["event"] == "registered":
                self.registered[mid] = e
            if e.get("stage"):
                self.stage[mid] = e["stage"]
            stack = self.stack.setdefault(name, [])
            if e["event"] == "promoted" and e.get("stage") == "production":
                stack.append(mid)
            elif e["event"] == "rolled_back" and e.get("stage") == "retired" and stack and stack[-1] == mid:
                stack.pop()

    def production(self, name: str) -> str | None:
        stack = self.stack.get(name) or []
        return stack[-1] if stack and self.stage.get(stack[-1]) == "production" else None

    def max_version(self, name: str) -> int:
        nums = [int(mid.split(":v", 1)[1]) for mid in self.registered if mid.split(":", 1)[0] == name]
        return max(nums, default=0)


class Registry:
    """The algorithm repository of a workspace (see the module docstring for layout and events).

    `params` (the registry: section of params.yaml) is needed by evaluate/promote/admission;
    reading (list, get, show) works without. `track=False` skips the DVC bookkeeping
    (`dvc add data/models` after each change), e.g. on an edge box without DVC.
    """

    def __init__(self, root: Path, params: RegistryParams | None = None, track: bool = True) -> None:
        self.root = Path(root).resolve()
        self.params = params
        self.track = track
        self.dir = self.root / MODELS_DIR
        self.events_path = self.dir / EVENTS_FILE

    # ------------------------------------------------------------------ events
    def events(self) -> list[dict[str, Any]]:
        """Every event in order (a torn last line from a crash is skipped with a warning)."""
        if not self.events_path.exists():
            return []
        out = []
        for n, line in enumerate(self.events_path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except ValueError:
                log.warning("%s:%d is not JSON; skipped", self.events_path, n)
        return out

    def _event(self, event: str, model_id: str | None, stage: str | None = None, why: str = "",
               **data: Any) -> dict[str, Any]:
        return {"ts": _now(), "who": _who(), "event": event, "id": model_id, "stage": stage, "why": why,
                "data": data}

    def _append(self, events: list[dict[str, Any]]) -> None:
        """Append events (caller holds the lock); one write, flushed to disk."""
        self.dir.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(e, default=str, separators=(",", ":")) + "\n" for e in events)
        with open(self.events_path, "a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    def _state(self) -> _State:
        return _State(self.events())

    def _lock(self):
        return versioning._workspace_lock(self.root)

    def _track_locked(self) -> None:
        """`dvc add data/models` (+ push when a default remote exists); caller holds the lock."""
        if not self.track or not self.dir.is_dir():
            return
        git = versioning._git_ok(self.root, "rev-parse", "--show-toplevel")
        is_git = git is not None and Path(git).resolve() == self.root
        if not (self.root / ".dvc").is_dir():
            if not is_git:
                log.warning("%s is neither a DVC nor a git repository: data/models is not DVC-tracked", self.root)
                return
            with versioning._index_untouched(self.root):
                versioning._dvc(self.root, "init", "-q")
        if is_git:
            with versioning._index_untouched(self.root):
                versioning._dvc(self.root, "add", MODELS_DIR)
        else:
            versioning._dvc(self.root, "add", MODELS_DIR)
        if versioning._default_remote(self.root):
            versioning._dvc(self.root, "push", f"{MODELS_DIR}.dvc")
        else:
            log.info("no default DVC remote configured: %s not pushed", MODELS_DIR)

    def record(self, events: list[dict[str, Any]], attach: Callable[[], None] | None = None) -> None:
        """Append events (and run `attach`, e.g. writing a report) under the lock, then track."""
        with self._lock():
            if attach:
                attach()
            self._append(events)
            self._track_locked()

    def refuse(self, model_id: str, why: str, to: str = "production", **data: Any) -> None:
        """Record that a version was refused a stage by a check outside the promotion gate (a canary)."""
        self.record([self._event("promotion_refused", self.get(model_id).id, why=why, to=to, **data)])

    # ------------------------------------------------------------------ reading
    def _version_dirs(self) -> list[tuple[str, int, Path]]:
        out = []
        if not self.dir.is_dir():
            return out
        for name_dir in sorted(self.dir.iterdir()):
            if not name_dir.is_dir() or not NAME_RE.match(name_dir.name) or name_dir.name in RESERVED_NAMES:
                continue
            for vdir in name_dir.iterdir():
                m = _VERSION_DIR_RE.match(vdir.name)
                if m and (vdir / CARD_FILE).is_file():
                    out.append((name_dir.name, int(m[1]), vdir))
        return sorted(out, key=lambda t: (t[0], t[1]))

    def _load(self, name: str, version: int, path: Path, state: _State) -> ModelVersion:
        mid = f"{name}:v{version}"
        card = ModelCard.load(path / CARD_FILE)
        events = state.by_id.get(mid, [])
        stage = state.stage.get(mid, card.stage)
        metrics = dict(card.metrics)
        for e in events:
            if e["event"] == "evaluated":
                metrics[e["data"]["benchmark"]] = e["data"]["metrics"]
        reg = state.registered.get(mid, {}).get("data", {})
        merged = dataclasses.replace(card, stage=stage, metrics=metrics)
        return ModelVersion(name, version, path, merged, stage, state.registered.get(mid, {}).get("ts", ""),
                            dict(reg.get("sha256", {})), dict(reg.get("parity") or card.gates.get("parity") or {}),
                            list(events))

    def list(self, name: str | None = None) -> list[ModelVersion]:
        """Every registered version (of `name` when given), by name then version."""
        state = self._state()
        return [self._load(n, v, p, state) for n, v, p in self._version_dirs() if name is None or n == name]

    def get(self, model_id: str) -> ModelVersion:
        """A version by id: "name:v3", "name:latest", "name:production" (or another stage)."""
        name, ref = split_id(model_id)
        state = self._state()
        versions = [(v, p) for n, v, p in self._version_dirs() if n == name]
        if not versions:
            names = sorted({n for n, _, _ in self._version_dirs()})
            raise ModelNotFoundError(f"{model_id} not found: no model {name!r} is registered"
                                     + (f" (models: {', '.join(names)})" if names else " (registry is empty)"))
        available = ", ".join(f"{name}:v{v} ({state.stage.get(f'{name}:v{v}', 'candidate')})" for v, _ in versions)
        pick: tuple[int, Path] | None = None
        if ref == "latest":
            pick = versions[-1]
        elif ref.startswith("v") and ref[1:].isdigit():
            pick = next(((v, p) for v, p in versions if v == int(ref[1:])), None)
        elif ref == "production":
            prod = state.production(name)
            pick = next(((v, p) for v, p in versions if f"{name}:v{v}" == prod), None)
        else:
            staged = [(v, p) for v, p in versions if state.stage.get(f"{name}:v{v}", "candidate") == ref]
            pick = staged[-1] if staged else None
        if pick is None:
            raise ModelNotFoundError(f"{model_id} not found; available: {available}")
        return self._load(name, pick[0], pick[1], state)

    def production(self, name: str) -> ModelVersion | None:
        """The version of `name` in production, or None."""
        prod = self._state().production(check_model_name(name))
        return self.get(prod) if prod else None

    def verify(self, model_id: str) -> list[str]:
        """Integrity problems of a version (files changed, missing or added since registration)."""
        mv = self.get(model_id)
        problems = []
        present = {p.relative_to(mv.path).as_posix(): p for p in mv.path.rglob("*") if p.is_file()}
        for rel, digest in mv.files.items():
            if rel not in present:
                problems.append(f"{rel}: missing")
            elif _sha256(present[rel]) != digest:
                problems.append(f"{rel}: content changed since registration")
        problems += [f"{rel}: not part of the registered version" for rel in present if rel not in mv.files]
        return problems

    # ------------------------------------------------------------------ register
    def register(self, model_path: Path, card: ModelCard, extra_files: Mapping[str, Path] | None = None,
                 parity: Any = None, *, evaluation: dict[str, Any] | None = None,
                 attach: Callable[[str], None] | None = None, source: str | None = None) -> ModelVersion:
        """Copy a model into the store as the next version of `card.name` (immutable, read-only).

        Registering an artifact already stored (same model.onnx bytes and variant) returns that
        version instead of a duplicate, so re-running a finished training flow is idempotent.

        Refused (RegistryError, and a "rejected" event) without a passing parity result (see
        parity_status); partner models carry "n/a (partner artifact)", set by admission.
        extra_files: relative name in the version folder -> file (e.g. {"weights.pt": path}),
        copied as opaque bytes. evaluation: metrics already measured (recorded as an
        "evaluated" event); attach(id): called under the lock before DVC tracking (admission
        writes its report there).
        """
        name = check_model_name(card.name)
        model_path = Path(model_path)
        if not model_path.is_file():
            raise RegistryError(f"{model_path} is not a file")
        extras: dict[str, Path] = {}
        for rel, path in (extra_files or {}).items():
            rel = safe_relpath(rel)
            if rel in (MODEL_FILE, CARD_FILE):
                raise RegistryError(f"extra file name {rel!r} is reserved")
            if not Path(path).is_file():
                raise RegistryError(f"extra file {rel}: {path} is not a file")
            extras[rel] = Path(path)
        tolerance = self.params.parity_tolerance if self.params else DEFAULT_PARITY_TOLERANCE
        ok, why, pinfo = parity_status(card, parity, tolerance)
        if not ok:
            self.record([self._event("rejected", None, why=why, name=name, vendor=card.vendor,
                                     source=source or str(model_path), action="register")])
            raise RegistryError(f"refused to register {name}: {why}")
        with self._lock():
            model_sha = _sha256(model_path)
            for same in self.list(name):  # the same artifact again (a re-run): that version, not a copy
                if same.files.get(MODEL_FILE) == model_sha and same.card.variant == card.variant:
                    return same
            version = max(self._state().max_version(name),
                          max((v for n, v, _ in self._version_dirs() if n == name), default=0)) + 1
            mid = f"{name}:v{version}"
            final = self.dir / name / f"v{version}"
            if final.exists():
                raise RegistryError(f"{mid} already exists: versions are immutable")
            tmp = self.dir / name / f".tmp-v{version}-{uuid.uuid4().hex[:8]}"
            try:
                tmp.mkdir(parents=True)
                shutil.copyfile(model_path, tmp / MODEL_FILE)
                for rel, path in extras.items():
                    (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, tmp / rel)
                stored = dataclasses.replace(card, version=f"v{version}", stage="candidate",
                                             gates={**card.gates, "parity": pinfo})
                stored.save(tmp / CARD_FILE)
                digests = {p.relative_to(tmp).as_posix(): _sha256(p)
                           for p in sorted(tmp.rglob("*")) if p.is_file()}
                os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            _make_read_only(final)
            events = [self._event("registered", mid, "candidate", why=f"registered from {source or model_path}",
                                  vendor=card.vendor, sha256=digests, parity=pinfo,
                                  size_bytes=sum((final / r).stat().st_size for r in digests),
                                  source=source or str(model_path))]
            if evaluation is not None:
                events.append(self._event("evaluated", mid, why=f"benchmark {evaluation.get('benchmark')}",
                                          benchmark=evaluation.get("benchmark"), metrics=evaluation))
            self._append(events)
            if attach:
                attach(mid)
            self._track_locked()
        return self.get(mid)

    # ------------------------------------------------------------------ evaluate
    def _need_params(self, what: str) -> RegistryParams:
        if self.params is None:
            raise RegistryError(f"{what} needs the registry: section of params.yaml (benchmark, target, "
                                "latency_budget_ms, ...)")
        return self.params

    def evaluate(self, model_id: str) -> dict[str, Any]:
        """Run a version on params.benchmark (onnxruntime) and record the metrics in the events log."""
        params = self._need_params("evaluate")
        mv = self.get(model_id)
        metrics = self._evaluate(mv, params.benchmark)
        self.record([self._event("evaluated", mv.id, why=f"benchmark {metrics['benchmark']}",
                                 benchmark=metrics["benchmark"], metrics=metrics)])
        return metrics

    def _evaluate(self, mv: ModelVersion, benchmark: str) -> dict[str, Any]:
        from cityloop.models.evaluate import evaluate_onnx

        return evaluate_onnx(mv.model_path, mv.card, self.root, benchmark, classes=model_classes(mv.card) or None)

    def _metrics_on(self, mv: ModelVersion, benchmark: str) -> dict[str, Any]:
        """Stored metrics of mv on a resolved benchmark version, else evaluate now (and record)."""
        found = mv.metrics(benchmark)
        if found is not None:
            return found
        metrics = self._evaluate(mv, benchmark)
        self.record([self._event("evaluated", mv.id, why=f"benchmark {benchmark} (for the promotion gate)",
                                 benchmark=metrics["benchmark"], metrics=metrics)])
        return metrics

    # ------------------------------------------------------------------ promote / rollback
    def gate(self, mv: ModelVersion, metrics: dict[str, Any], prod: ModelVersion | None,
             prod_metrics: dict[str, Any] | None) -> list[Check]:
        """The promotion gate's checks (see promote)."""
        p = self._need_params("the promotion gate")
        metric = p.target_metric
        bench = metrics.get("benchmark")
        value = metrics.get(metric)
        checks = [Check("target", value is not None and value >= p.target, value, p.target,
                        f"{metric} on {bench}" + ("" if value is not None else " (no boxes to score)"))]
        if prod is None or prod_metrics is None:
            checks.append(Check("condition_regression", True, None, p.max_condition_regression,
                                f"no production version of {mv.name} to compare with"))
        else:
            cand = (metrics.get("by") or {}).get("condition", {})
            base = (prod_metrics.get("by") or {}).get("condition", {})
            drops = {}
            for cond in sorted(set(cand) | set(base)):
                b, c = (base.get(cond) or {}).get(metric), (cand.get(cond) or {}).get(metric)
                if b is not None:
                    drops[cond] = (b - (c if c is not None else 0.0), b, c)
            worst = max(drops.items(), key=lambda kv: kv[1][0], default=None)
            bad = [f"{k}: {c if c is not None else 0:.3f} vs {b:.3f}" for k, (d, b, c) in drops.items()
                   if d > p.max_condition_regression]
            value = worst[1][0] if worst else 0.0
            detail = (f"{metric} drop vs production {prod.id} per condition; "
                      + ("regressed: " + "; ".join(bad) if bad else f"worst: {worst[0] if worst else '-'}"))
            checks.append(Check("condition_regression", value <= p.max_condition_regression + 1e-12, value,
                                p.max_condition_regression, detail))
        ok, why, _ = parity_status(mv.card, mv.parity or None, p.parity_tolerance)
        value = _max_diff(mv.parity) if mv.parity and mv.parity.get("status") != PARTNER_PARITY else None
        checks.append(Check("parity", ok, value if value is not None else (mv.parity or {}).get("status"),
                            p.parity_tolerance, why))
        lat = (metrics.get("latency") or {}).get("batch1_median_ms")
        checks.append(Check("latency", lat is not None and lat <= p.latency_budget_ms, lat, p.latency_budget_ms,
                            "median ms per image at batch 1 (preprocess + infer + decode, onnxruntime CPU, "
                            f"{(metrics.get('latency') or {}).get('threads', '?')} thread)"))
        return checks

    def promote(self, model_id: str, to: str = "production") -> Decision:
        """The promotion gate. Passes only if all of:

        target                metric >= params.target on params.benchmark (resolved version)
        condition_regression  no condition's metric below production's by more than
                              max_condition_regression (passes when there is no production)
        parity                the export parity recorded at registration passed (partner: n/a)
        latency               median ms per image at batch 1 <= latency_budget_ms

        Metrics come from the events log when this version was evaluated on that benchmark
        version, else it (and the production version) are evaluated now. On promotion to
        production the previous production becomes "retired" (and stays the rollback target).
        A refusal is recorded as a "promotion_refused" event.
        """
        if to not in ("staging", "production"):
            raise RegistryError(f"cannot promote to {to!r}: staging or production")
        params = self._need_params("promote")
        mv = self.get(model_id)
        if mv.stage in (to, "production"):
            return Decision(False, [], f"{mv.id} is already in {mv.stage}", mv.id, "promote", to)
        bench = versioning.resolve(self.root, params.benchmark).id
        metrics = self._metrics_on(mv, bench)
        prod = self.production(mv.name)
        prod = prod if prod is not None and prod.id != mv.id else None
        prod_metrics = self._metrics_on(prod, bench) if prod else None
        checks = self.gate(mv, metrics, prod, prod_metrics)
        failed = [c for c in checks if not c.passed]
        if failed:
            reason = f"{mv.id} not promoted to {to}: failed " + "; ".join(
                f"{c.name} ({_fmt(c.value)} vs {_fmt(c.threshold)}: {c.detail})" for c in failed)
            self.record([self._event("promotion_refused", mv.id, why=reason, to=to, benchmark=bench,
                                     checks=[c.to_dict() for c in checks])])
            return Decision(False, checks, reason, mv.id, "promote", to, prod.id if prod else None)
        with self._lock():
            state = self._state()
            current = state.production(mv.name)
            if prod is not None and current != prod.id or prod is None and current not in (None, mv.id):
                raise RegistryError(f"production of {mv.name} changed while the gate ran ({current}); try again")
            events = []
            if to == "production" and prod is not None:
                events.append(self._event("retired", prod.id, "retired", why=f"superseded by {mv.id}",
                                          superseded_by=mv.id))
            reason = f"{mv.id} promoted to {to} on {bench}: all {len(checks)} checks passed" + (
                f"; {prod.id} retired (kept as the rollback target)" if to == "production" and prod else "")
            events.append(self._event("promoted", mv.id, to, why=reason, benchmark=bench,
                                      previous=prod.id if prod else None, checks=[c.to_dict() for c in checks]))
            self._append(events)
            self._track_locked()
        return Decision(True, checks, reason, mv.id, "promote", to, prod.id if prod else None)

    def rollback(self, name: str, why: str = "") -> Decision:
        """Put the previous production version (from the events log) back in production."""
        check_model_name(name)
        with self._lock():
            state = self._state()
            current = state.production(name)
            stack = state.stack.get(name) or []
            if current is None:
                reason = f"{name} has no production version to roll back"
                return Decision(False, [Check("production", False, None, None, reason)], reason, name, "rollback")
            if len(stack) < 2:
                reason = f"{current} is the first production version of {name}: nothing to roll back to"
                return Decision(False, [Check("previous_production", False, None, None, reason)], reason,
                                current, "rollback", previous=current)
            target = stack[-2]
            problems = self.verify(target)
            checks = [Check("previous_production", True, target, None, f"production before {current}"),
                      Check("integrity", not problems, len(problems), 0,
                            "; ".join(problems) or "files match their registration sha256")]
            if problems:
                reason = f"cannot roll back {name} to {target}: " + "; ".join(problems)
                return Decision(False, checks, reason, target, "rollback", previous=current)
            reason = f"{name} rolled back: {current} -> {target}" + (f" ({why})" if why else "")
            self._append([self._event("rolled_back", current, "retired", why=reason, to=target),
                          self._event("rolled_back", target, "production", why=reason, **{"from": current})])
            self._track_locked()
        return Decision(True, checks, reason, target, "rollback", "production", current)


def model_classes(card: ModelCard) -> list[str]:
    """Platform classes a card's outputs map onto (what the model is scored on)."""
    out = {card.platform_class(i) for i in range(len(card.classes))}
    return sorted(c for c in out if c in CLASSES)


def _make_read_only(path: Path) -> None:
    """Files 0444, folders 0555: a version is never written again."""
    for p in sorted(path.rglob("*"), reverse=True):
        p.chmod(0o555 if p.is_dir() else 0o444)
    path.chmod(0o555)
