"""The algorithm repository's store: immutable model versions and the events log.

What a version *is* lives here (its files, card, registration, the stage the log gives it); what
may *become* of it (evaluation, promotion, rollback, admission scoring) is decided by
`cityloop.models.gate`, which records its verdicts through this store.

Torch-free on purpose (an edge box has onnxruntime, not torch): never import torch, lightning,
models.export or models.components here.

Layout under `<root>/data/models/` (one DVC-tracked directory, `data/models.dvc`):

    <name>/v<N>/model.onnx card.json [weights.pt ...]   a version: written once, files read-only
    <name>/.tmp-v<N>-*/                                 a registration in progress (staged, renamed to v<N>)
    events.jsonl                                        append-only: who / what / when / why
    admissions/<timestamp>-<name>.json                  partner admission reports (models.admission)

A version id is `"<name>:v<N>"`; `"<name>:latest"`, `"<name>:production"` (and `:staging`,
`:candidate`, `:retired`: the newest version in that stage) resolve to one. Numbers are never
reused, even if a version folder were deleted (the events log remembers it).

Registration is atomic: the files are staged in `<name>/.tmp-v<N>-*`, made read-only and renamed to
`v<N>` whole, then the "registered" event is appended (fsynced, on a fresh line: `core.jsonl`).
That event is the commit record: `get`/`list` (hence `:latest`) see only folders that have one, so
a registration killed half-way resolves as nothing; `leftovers()` lists what it left and
`remove_leftovers()` (`cityloop models leftovers --remove`) deletes it.

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
skipped: `governance.versioning.track_directory`), all under the workspace lock that dataset
publishing uses (`governance.versioning.workspace_lock`), so registrations and publishes queue.
"""

from __future__ import annotations

import dataclasses
import getpass
import hashlib
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

from cityloop.core.jsonl import append_jsonl, read_jsonl
from cityloop.governance import versioning
from cityloop.governance.schema import CLASSES
from cityloop.models.card import STAGES, ModelCard

log = logging.getLogger(__name__)

MODELS_DIR = "data/models"
EVENTS_FILE = "events.jsonl"
ADMISSIONS_DIR = "admissions"
MODEL_FILE = "model.onnx"
CARD_FILE = "card.json"
OWN_VENDOR = "cityloop"
PARTNER_PARITY = "n/a (partner artifact)"
DEFAULT_PARITY_TOLERANCE = 1e-4
RESERVED_NAMES = {ADMISSIONS_DIR}

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_ID_RE = re.compile(r"^(?P<name>[^:]+):(?P<ref>v[1-9][0-9]*|latest|" + "|".join(STAGES) + r")$")
_VERSION_DIR_RE = re.compile(r"^v([1-9][0-9]*)$")


class RegistryError(RuntimeError):
    """An algorithm-repository operation was refused or cannot proceed (the message says why)."""


class ModelNotFoundError(RegistryError, LookupError):
    """The requested model version does not exist."""


# ---------------------------------------------------------------------- versions


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


def max_parity_diff(p: Mapping[str, Any]) -> float | None:
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
        diff = max_parity_diff(p)
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
    at = float(checked_at if checked_at is not None else tolerance)
    scale = " x max(1, |output|)" if checked_at is not None else ""  # export checks relative to the value
    return True, "passed" + shown + f" at tolerance {at:.3g}{scale}", {
        **p, "status": "passed"}


# ---------------------------------------------------------------------- the store


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


class StoreState:
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


class ModelStore:
    """The algorithm repository of a workspace (see the module docstring for layout and events).

    `track=False` skips the DVC bookkeeping (`dvc add data/models` after each change), e.g. on an
    edge box without DVC. `parity_tolerance` is the bar a registration's export parity must meet
    (params.yaml `registry.parity_tolerance`, through `cityloop.models.gate.open_gate`).
    """

    def __init__(self, root: Path, track: bool = True,
                 parity_tolerance: float = DEFAULT_PARITY_TOLERANCE) -> None:
        self.root = Path(root).resolve()
        self.track = track
        self.parity_tolerance = parity_tolerance
        self.dir = self.root / MODELS_DIR
        self.events_path = self.dir / EVENTS_FILE

    # ------------------------------------------------------------------ events
    def events(self) -> list[dict[str, Any]]:
        """Every complete event in order (a line torn by a crash is skipped with a warning; see
        `unreadable_lines`)."""
        return [e for e in read_jsonl(self.events_path).records if isinstance(e.get("event"), str)]

    def unreadable_lines(self) -> list[int]:
        """Line numbers of events.jsonl that hold no event (torn by a crash): skipped by every reader."""
        return read_jsonl(self.events_path).skipped

    @staticmethod
    def event(event: str, model_id: str | None, stage: str | None = None, why: str = "",
              **data: Any) -> dict[str, Any]:
        """One entry of the events log (who and when filled in)."""
        return {"ts": _now(), "who": _who(), "event": event, "id": model_id, "stage": stage, "why": why,
                "data": data}

    def _append(self, events: list[dict[str, Any]]) -> None:
        """Append events (caller holds the lock): one write on a fresh line, fsynced (core.jsonl), so
        a line torn by a crash never swallows them."""
        append_jsonl(self.events_path, events)

    def state(self) -> StoreState:
        """The events log folded: stages, production history, registrations."""
        return StoreState(self.events())

    def lock(self):
        """The workspace lock (shared with dataset publishing): hold it around `write`."""
        return versioning.workspace_lock(self.root)

    def _track_locked(self) -> None:
        """`dvc add data/models` (+ push when a default remote exists); caller holds the lock."""
        if self.track and self.dir.is_dir():
            versioning.track_directory(self.root, MODELS_DIR, log)

    def write(self, events: list[dict[str, Any]]) -> None:
        """Append events and track the store; the caller holds `lock()` (a decision that must read
        and write the log atomically, e.g. a promotion)."""
        self._append(events)
        self._track_locked()

    def record(self, events: list[dict[str, Any]], attach: Callable[[], None] | None = None) -> None:
        """Append events (and run `attach`, e.g. writing a report) under the lock, then track."""
        with self.lock():
            if attach:
                attach()
            self._append(events)
            self._track_locked()

    # ------------------------------------------------------------------ reading
    def _registered_dirs(self, state: StoreState) -> list[tuple[str, int, Path]]:
        """The version folders whose registration completed: a "registered" event, written after the
        folder was renamed into place, is the commit record; a folder without one is a leftover of a
        killed registration (see `leftovers`) and resolves as nothing."""
        return [(n, v, p) for n, v, p in self._version_dirs() if f"{n}:v{v}" in state.registered]

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

    def _load(self, name: str, version: int, path: Path, state: StoreState) -> ModelVersion:
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
        state = self.state()
        return [self._load(n, v, p, state) for n, v, p in self._registered_dirs(state) if name is None or n == name]

    def get(self, model_id: str) -> ModelVersion:
        """A version by id: "name:v3", "name:latest", "name:production" (or another stage)."""
        name, ref = split_id(model_id)
        state = self.state()
        versions = [(v, p) for n, v, p in self._registered_dirs(state) if n == name]
        if not versions:
            names = sorted({n for n, _, _ in self._registered_dirs(state)})
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
        prod = self.state().production(check_model_name(name))
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

    # ------------------------------------------------------------------ leftovers
    def leftovers(self) -> list[dict[str, str]]:
        """What killed registrations left behind, invisible to `get`/`list`: staging folders
        (`<name>/.tmp-v<N>-*`) and version folders without a "registered" event. (A registered version
        whose files changed is not a leftover: `verify` reports it.)"""
        out: list[dict[str, str]] = []
        if not self.dir.is_dir():
            return out
        registered = self.state().registered
        for name_dir in sorted(self.dir.iterdir()):
            if not name_dir.is_dir() or not NAME_RE.match(name_dir.name) or name_dir.name in RESERVED_NAMES:
                continue
            for d in sorted(name_dir.iterdir()):
                if d.is_dir() and d.name.startswith(".tmp-v"):
                    out.append({"path": str(d), "why": "staging folder of a registration that never finished"})
                elif d.is_dir() and _VERSION_DIR_RE.match(d.name) and f"{name_dir.name}:{d.name}" not in registered:
                    out.append({"path": str(d), "why": f"{name_dir.name}:{d.name} was never registered "
                                                       "(no 'registered' event: the registration was killed)"})
        return out

    def remove_leftovers(self) -> list[dict[str, str]]:
        """Delete `leftovers()` under the lock (no registration can be half-way then) and log it."""
        with self.lock():
            found = self.leftovers()
            for item in found:
                _remove_tree(Path(item["path"]))
            if found:
                self.write([self.event("leftovers_removed", None, why="half-written registrations removed",
                                       paths=[i["path"] for i in found])])
        return found

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
        ok, why, pinfo = parity_status(card, parity, self.parity_tolerance)
        if not ok:
            self.record([self.event("rejected", None, why=why, name=name, vendor=card.vendor,
                                    source=source or str(model_path), action="register")])
            raise RegistryError(f"refused to register {name}: {why}")
        with self.lock():
            model_sha = _sha256(model_path)
            for same in self.list(name):  # the same artifact again (a re-run): that version, not a copy
                if same.files.get(MODEL_FILE) == model_sha and same.card.variant == card.variant:
                    return same
            version = max(self.state().max_version(name),
                          max((v for n, v, _ in self._version_dirs() if n == name), default=0)) + 1
            mid = f"{name}:v{version}"
            _remove_staging(self.dir / name)  # we hold the lock: any staging folder is a dead one's
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
                _make_read_only(tmp)
                os.rename(tmp, final)  # the folder appears whole; the "registered" event below commits it
            except BaseException:
                _remove_tree(tmp)
                raise
            events = [self.event("registered", mid, "candidate", why=f"registered from {source or model_path}",
                                 vendor=card.vendor, sha256=digests, parity=pinfo,
                                 size_bytes=sum((final / r).stat().st_size for r in digests),
                                 source=source or str(model_path))]
            if evaluation is not None:
                events.append(self.event("evaluated", mid, why=f"benchmark {evaluation.get('benchmark')}",
                                         benchmark=evaluation.get("benchmark"), metrics=evaluation))
            self._append(events)
            if attach:
                attach(mid)
            self._track_locked()
        return self.get(mid)


def _remove_tree(path: Path) -> None:
    """Delete a folder, read-only version files included."""
    if not path.exists():
        return
    for p in [path, *path.rglob("*")]:
        if p.is_dir():
            p.chmod(0o755)
    shutil.rmtree(path, ignore_errors=True)


def _remove_staging(name_dir: Path) -> None:
    """Remove the staging folders killed registrations left under `name_dir` (caller holds the lock)."""
    for d in name_dir.glob(".tmp-v*") if name_dir.is_dir() else []:
        log.warning("removing %s: the staging folder of a registration that never finished", d)
        _remove_tree(d)


def model_classes(card: ModelCard) -> list[str]:
    """Platform classes a card's outputs map onto (what the model is scored on)."""
    out = {card.platform_class(i) for i in range(len(card.classes))}
    return sorted(c for c in out if c in CLASSES)


def _make_read_only(path: Path) -> None:
    """Files 0444, folders 0555: a version is never written again."""
    for p in sorted(path.rglob("*"), reverse=True):
        p.chmod(0o555 if p.is_dir() else 0o444)
    path.chmod(0o555)
