"""Dataset versions: DVC-tracked data, committed on a side branch and tagged.

Layout (under the workspace root, which is both a git and a DVC repository):

* ``data/frames/packs/*.zip`` -> ``data/frames.dvc``
* ``data/datasets/<name>/`` (manifest, COCO, gate, version.json) -> ``data/datasets.dvc``
* ``data/quarantine/<ingest_id>/`` -> ``data/quarantine.dvc`` (when it exists)

A version ``<name>@v<N>`` is a commit on :data:`DATA_BRANCH` holding the DVC pointer
files, made with git plumbing (a temporary index), plus an annotated tag
``data/<name>/v<N>`` whose message is the JSON of the :class:`VersionRecord`. The
user's HEAD, index and checked-out branch are never touched; in the user's worktree
the ``data/*.dvc`` files are simply untracked. They must not be git-ignored: DVC
refuses to write a git-ignored ``.dvc`` file ("bad DVC file name ... is git-ignored").

The version commit is HEAD's tree plus the pointers (``data/*.dvc``, ``dvc.lock`` and
``data/.gitignore`` when present) plus the DVC scaffold (``.dvc/config``,
``.dvc/.gitignore``, ``.dvcignore``): without ``.dvc/config`` in the tree,
``dvc.api.open(rev=...)`` does not see a DVC repo at that revision.

DVC is driven two ways, on purpose:

* Mutations (``init``, ``add``, ``push``, ``checkout``, ``pull``, ``remote add``) go
  through the ``dvc`` CLI in a subprocess (``python -m dvc`` of this interpreter).
  Each call gets its own process, so DVC's repo lock, its global logging/config state
  and its worker threads are released when it exits; two publishes from two threads
  cannot trip over DVC's in-process state; ``--wait-for-lock`` makes a call wait for
  a user's concurrent ``dvc`` command instead of failing after 3 s; and the
  behaviour is exactly what a user gets at the shell. Cost: ~0.5-1 s per call.
* Reads stay in-process: :class:`dvc.config.Config` (default remote, cache dir) and
  :func:`dvc.api.open` with ``rev=`` for bytes as of a version (no lock taken;
  served from the local cache, else streamed from the remote).

The default remote lives in ``.dvc/config.local`` (never committed). A local folder
and an S3 url (``s3://bucket/prefix``, needs the ``dvc-s3`` extra and the usual AWS
credentials) are configured the same way: ``ensure_repo(root, "s3://bucket/prefix")``.

Serialisation: publish, checkout, a whole ingest (``governance.repository``) and every
registry mutation hold an exclusive ``flock`` on ``root/.cityloop/versioning.lock``
(:func:`workspace_lock`, re-entrant per thread), so they queue instead of interleaving or
failing on DVC's own lock. A waiter is told who holds it (pid, command, since when) and gives
up after a bounded wait; the kernel drops a killed holder's flock, and the record it left is
reported as taken over.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from cityloop.core.procs import alive

log = logging.getLogger(__name__)

DATA_BRANCH = "cityloop/data"
TAG_PREFIX = "data"
TRACKED_DIRS: tuple[str, ...] = ("data/frames", "data/datasets", "data/quarantine")
# Committed next to the pointers so that `dvc.api.open(rev=...)` sees a DVC repo.
DVC_SCAFFOLD: tuple[str, ...] = (".dvc/config", ".dvc/.gitignore", ".dvcignore")
EXTRA_POINTERS: tuple[str, ...] = ("dvc.lock", "data/.gitignore")
DEFAULT_REMOTE_NAME = "local"
DEFAULT_REMOTE_DIR = ".cityloop/dvc-remote"
LOCK_FILE = ".cityloop/versioning.lock"
LOCK_TIMEOUT_S = 1800.0

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,40}$")
_VID_RE = re.compile(r"^(?P<name>[^@]+)@(?:v(?P<num>[1-9][0-9]*)|(?P<latest>latest))$")
_TAG_RE = re.compile(rf"^refs/tags/{TAG_PREFIX}/(?P<name>[^/]+)/v(?P<num>[1-9][0-9]*)$")
_FALLBACK_IDENT = {"name": "cityloop", "email": "cityloop@localhost"}


class VersioningError(RuntimeError):
    """A dataset-versioning operation cannot proceed (message says why)."""


class VersionNotFoundError(VersioningError, LookupError):
    """The requested ``name@vN`` does not exist."""


class VersionConflictError(VersioningError):
    """version.json in the workspace declares a different version than publish assigns."""


class CommandError(VersioningError):
    """A git or dvc subprocess failed."""

    def __init__(self, cmd: Sequence[str], returncode: int, stderr: str) -> None:
        self.cmd = list(cmd)
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(f"`{' '.join(self.cmd)}` failed ({returncode}): {stderr.strip()}")


@dataclass
class VersionRecord:
    """One published dataset version, as stored in its annotated tag."""

    dataset: str
    version: int
    tag: str
    commit: str
    code_commit: str | None
    created: str
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """The version id, e.g. ``lab@v3``."""
        return f"{self.dataset}@v{self.version}"

    def to_message(self) -> str:
        """The tag message: one line of JSON (commit and tag are implied by the tag)."""
        data = {"id": self.id, **asdict(self)}
        for key in ("tag", "commit"):
            data.pop(key)
        return json.dumps(data, separators=(",", ":"), sort_keys=False)

    @classmethod
    def from_tag(cls, tag: str, commit: str, message: str) -> VersionRecord:
        """Rebuild a record from a tag name, its peeled commit and its message."""
        data, _ = json.JSONDecoder().raw_decode(message.lstrip())
        if not isinstance(data, dict):
            raise TypeError("tag message is not a JSON object")
        name, num = _tag_parts(tag)
        return cls(
            dataset=name,
            version=num,
            tag=tag,
            commit=commit,
            code_commit=data.get("code_commit"),
            created=str(data.get("created", "")),
            summary=dict(data.get("summary") or {}),
        )


# --------------------------------------------------------------------------- subprocess


def _run(
    cmd: Sequence[str],
    root: Path,
    *,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
) -> str:
    """Run ``cmd`` in ``root``; return stdout, raise :class:`CommandError` on failure."""
    proc = subprocess.run(
        list(cmd),
        cwd=root,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise CommandError(cmd, proc.returncode, proc.stderr or proc.stdout)
    return proc.stdout


def _git(root: Path, *args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> str:
    """Run a git command in ``root``."""
    return _run(["git", *args], root, env=env, stdin=stdin)


def _git_bytes(root: Path, *args: str) -> bytes:
    """Run a git command in ``root`` and return raw stdout bytes."""
    proc = subprocess.run(["git", *args], cwd=root, capture_output=True, check=False)
    if proc.returncode != 0:
        raise CommandError(["git", *args], proc.returncode, proc.stderr.decode(errors="replace"))
    return proc.stdout


def _git_ok(root: Path, *args: str) -> str | None:
    """Run a git query; return stripped stdout, or None when git exits non-zero."""
    proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def _dvc_cmd() -> list[str]:
    """The dvc CLI of this interpreter when importable, else ``dvc`` from PATH."""
    if importlib.util.find_spec("dvc") is not None:
        return [sys.executable, "-m", "dvc"]
    return ["dvc"]


def _dvc(root: Path, *args: str) -> str:
    """Run ``dvc --wait-for-lock <args>`` in ``root`` with analytics off."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    return _run([*_dvc_cmd(), "--wait-for-lock", *args], root, env=env)


# --------------------------------------------------------------------------- git helpers


def _require_git_root(root: Path) -> Path:
    """Resolve ``root`` and check it is the top of a git work tree."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise VersioningError(f"{root} is not a directory")
    top = _git_ok(root, "rev-parse", "--show-toplevel")
    if top is None:
        raise VersioningError(f"{root} is not a git repository; run `git init` there first")
    if Path(top).resolve() != root:
        raise VersioningError(f"{root} is inside the git repository {top}; pass its root")
    return root


def _head(root: Path) -> str | None:
    """The commit HEAD points at, or None when the branch is unborn."""
    return _git_ok(root, "rev-parse", "--verify", "-q", "HEAD^{commit}")


def _branch_tip(root: Path, branch: str) -> str | None:
    """The commit at ``refs/heads/<branch>``, or None."""
    return _git_ok(root, "rev-parse", "--verify", "-q", f"refs/heads/{branch}^{{commit}}")


def _git_path(root: Path, name: str) -> Path:
    """Absolute path of a file inside the git dir (``git rev-parse --git-path``)."""
    return (root / _git(root, "rev-parse", "--git-path", name).strip()).resolve()


def _git_env(root: Path, **extra: str) -> dict[str, str]:
    """Environment for commit/tag: a fallback identity when none is configured."""
    env = {**os.environ, **extra}
    for key in ("name", "email"):
        has_env = env.get(f"GIT_COMMITTER_{key.upper()}")
        if not has_env and not _git_ok(root, "config", f"user.{key}"):
            for who in ("AUTHOR", "COMMITTER"):
                env.setdefault(f"GIT_{who}_{key.upper()}", _FALLBACK_IDENT[key])
    return env


@contextlib.contextmanager
def _index_untouched(root: Path) -> Iterator[None]:
    """Restore the user's git index if a DVC command staged anything (dvc init does)."""
    index = _git_path(root, "index")
    before = index.read_bytes() if index.exists() else None
    try:
        yield
    finally:
        after = index.read_bytes() if index.exists() else None
        if after != before:
            if before is None:
                index.unlink(missing_ok=True)
            else:
                _atomic_write(index, before)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file and rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- locking


class WorkspaceBusyError(VersioningError, TimeoutError):
    """The workspace lock was still held when the wait ran out (the message names the holder)."""


_HELD: dict[str, list[int]] = {}  # lock path -> [thread id, depth]: re-entry from the holding thread


@contextlib.contextmanager
def workspace_lock(
    root: Path,
    timeout: float = LOCK_TIMEOUT_S,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[None]:
    """Hold an exclusive flock on ``root/.cityloop/versioning.lock``.

    Re-entrant within one thread (an ingest holds it around the publish that takes it again).
    While another process holds it, waits up to ``timeout`` seconds, telling ``on_wait`` (default:
    a log warning) once who holds it (pid, command, since when); then raises
    :class:`WorkspaceBusyError` with the same words. The holder's record is written into the lock
    file and cleared on release, so a record found on acquiring belongs to a process that was
    killed while holding the lock: the kernel released its flock, the lock is taken over and the
    takeover logged. A flock is never left behind by a dead process (unlike a pid file).
    """
    path = Path(root).resolve() / LOCK_FILE
    held = _HELD.get(str(path))
    if held is not None and held[0] == threading.get_ident():
        held[1] += 1
        try:
            yield
        finally:
            held[1] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as fh:
        _acquire(fh, path, timeout, on_wait or log.warning)
        left = _read_holder(fh)
        if left:
            log.warning("took over the workspace lock left by %s: that process ended without releasing it",
                        describe_holder(left))
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps(_holder_record()) + "\n")
        fh.flush()
        _HELD[str(path)] = [threading.get_ident(), 1]
        try:
            yield
        finally:
            del _HELD[str(path)]
            fh.seek(0)
            fh.truncate()  # released cleanly: no holder record left behind
            fh.flush()
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _acquire(fh: Any, path: Path, timeout: float, on_wait: Callable[[str], None]) -> None:
    """Take the flock, polling until ``timeout``; tell ``on_wait`` once who holds it meanwhile."""
    start = time.monotonic()
    deadline = start + timeout
    told = False
    while True:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            record = _read_holder(fh)
            holder = describe_holder(record)
            if time.monotonic() >= deadline:
                raise WorkspaceBusyError(
                    f"workspace busy: {path} is held by {holder}; waited {timeout:.0f}s. Try again when "
                    "it has finished") from None
            # the holder writes its record just after taking the flock: give it a moment to appear
            if not told and (record or time.monotonic() - start >= 1.0):
                on_wait(f"waiting up to {timeout:.0f}s for the workspace lock held by {holder}")
                told = True
            time.sleep(0.05 if not told else 0.2)


def _holder_record() -> dict[str, Any]:
    """Who holds the lock: pid, the command (program and its first plain arguments, never option
    values, which may carry secrets) and since when."""
    words = [os.path.basename(sys.argv[0] if sys.argv else "python")]
    words += [a for a in sys.argv[1:5] if not a.startswith("-")][:3]
    return {"pid": os.getpid(), "command": " ".join(words)[:160],
            "since": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}


def _read_holder(fh: Any) -> dict[str, Any]:
    """The holder record in the lock file ({} when empty or unreadable)."""
    fh.seek(0)
    text = fh.read().strip()
    try:
        data = json.loads(text) if text else {}
    except ValueError:
        return {"pid": None, "command": text[:80]}
    return data if isinstance(data, dict) else {}


def describe_holder(holder: dict[str, Any]) -> str:
    """``pid 123 (`cityloop data ingest frames`, since 2026-12-03T21:00:00Z)``, noting a dead pid."""
    if not holder:
        return "another process (no holder record)"
    pid = holder.get("pid")
    words = f"pid {pid} (`{holder.get('command', '?')}`, since {holder.get('since', '?')})"
    if isinstance(pid, int) and not alive(pid):
        words += ", no longer running"
    return words


def track_directory(root: Path, rel: str, log: logging.Logger | None = None) -> bool:
    """`dvc add REL` (+ `dvc push REL.dvc` when a default remote is configured) for a folder the
    platform owns outside the dataset versions (the algorithm repository); the caller holds
    `workspace_lock`. A git workspace without DVC gets `dvc init`; the user's git index is left as
    it was. False (nothing tracked) when `root` is neither a DVC nor a git repository."""
    log = log or logging.getLogger(__name__)
    root = Path(root).resolve()
    git = _git_ok(root, "rev-parse", "--show-toplevel")
    is_git = git is not None and Path(git).resolve() == root
    if not (root / ".dvc").is_dir():
        if not is_git:
            log.warning("%s is neither a DVC nor a git repository: %s is not DVC-tracked", root, rel)
            return False
        with _index_untouched(root):
            _dvc(root, "init", "-q")
    with _index_untouched(root) if is_git else contextlib.nullcontext():
        _dvc(root, "add", rel)
    if _default_remote(root):
        _dvc(root, "push", f"{rel}.dvc")
    else:
        log.info("no default DVC remote configured: %s not pushed", rel)
    return True


# --------------------------------------------------------------------------- DVC config


def _dvc_config(root: Path) -> dict[str, Any]:
    """The merged DVC config (system, global, repo, local) of ``root``."""
    from dvc.config import Config

    return Config(dvc_dir=str(root / ".dvc"))


def _default_remote(root: Path) -> str | None:
    """Name of the configured default remote, or None."""
    return _dvc_config(root)["core"].get("remote") or None


def _cache_dir(root: Path) -> Path:
    """The DVC cache directory of ``root`` (``cache.dir`` or ``.dvc/cache``)."""
    configured = _dvc_config(root)["cache"].get("dir")
    return Path(root / ".dvc" / configured if configured else root / ".dvc" / "cache").resolve()


def _remote_url(remote_url: str | None, root: Path) -> str:
    """The url to configure: given one (local paths made absolute) or the default folder."""
    url = remote_url or str(root / DEFAULT_REMOTE_DIR)
    if "://" in url:
        return url
    path = Path(url).expanduser()
    path = (path if path.is_absolute() else root / path).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def ensure_repo(root: Path, remote_url: str | None = None) -> None:
    """Make ``root`` ready for publishing; safe to call any number of times.

    ``root`` must be the top of a git work tree. Runs ``dvc init`` when ``.dvc/`` is
    missing (the files dvc init would stage stay unstaged: the user's index is
    restored). When no default DVC remote is configured at any level, adds one named
    ``local`` to ``.dvc/config.local`` (not the committed ``.dvc/config``) pointing at
    ``remote_url`` or ``root/.cityloop/dvc-remote``; an ``s3://bucket/prefix`` url
    works the same way. An existing default remote is left alone.
    """
    root = _require_git_root(root)
    if not (root / ".dvc").is_dir():
        with _index_untouched(root):
            _dvc(root, "init", "-q")
    current = _default_remote(root)
    if current is None:
        url = _remote_url(remote_url, root)
        _dvc(
            root,
            "remote",
            "add",
            "--local",
            "--default",
            "--force",
            DEFAULT_REMOTE_NAME,
            url,
        )
    elif remote_url is not None:
        log.warning("default DVC remote %r already configured; ignoring %s", current, remote_url)


# --------------------------------------------------------------------------- version ids


def check_dataset_name(name: str) -> str:
    """Return ``name`` if it is a valid dataset name, else raise ValueError."""
    if not NAME_RE.match(name):
        raise ValueError(f"invalid dataset name {name!r}: must match {NAME_RE.pattern}")
    return name


def _tag_name(dataset: str, version: int) -> str:
    """Tag for a version: ``data/<name>/v<N>``."""
    return f"{TAG_PREFIX}/{dataset}/v{version}"


def _tag_parts(tag: str) -> tuple[str, int]:
    """``data/lab/v3`` (or ``refs/tags/data/lab/v3``) -> ("lab", 3)."""
    ref = tag if tag.startswith("refs/tags/") else f"refs/tags/{tag}"
    match = _TAG_RE.match(ref)
    if not match:
        raise ValueError(f"{tag!r} is not a dataset version tag")
    return match["name"], int(match["num"])


def split_version_id(vid: str) -> tuple[str, int | None]:
    """``lab@v3`` -> ("lab", 3); ``lab@latest`` -> ("lab", None); ValueError otherwise."""
    match = _VID_RE.match(vid.strip())
    if not match:
        raise ValueError(f"invalid version id {vid!r}: expected '<name>@v<N>' (e.g. 'lab@v3') or '<name>@latest'")
    return check_dataset_name(match["name"]), int(match["num"]) if match["num"] else None


def parse_version_id(vid: str, root: Path | None = None) -> tuple[str, int]:
    """Split ``name@vN`` into ``(name, N)``.

    ``name@latest`` is resolved against ``root``'s tags (ValueError without ``root``).
    A bare ``name`` is rejected: a version must always be explicit.
    """
    name, num = split_version_id(vid)
    if num is not None:
        return name, num
    if root is None:
        raise ValueError(f"{vid!r} needs a workspace root to resolve 'latest' (pass root=)")
    return name, resolve(root, vid).version


# --------------------------------------------------------------------------- listing


def list_versions(root: Path, dataset: str | None = None) -> list[VersionRecord]:
    """All published versions (of ``dataset`` when given), sorted by dataset then version."""
    root = Path(root).resolve()
    pattern = f"refs/tags/{TAG_PREFIX}/" + (f"{check_dataset_name(dataset)}/" if dataset else "")
    fmt = "%(refname)%00%(*objectname)%00%(contents)%1e"
    out = _git(root, "for-each-ref", f"--format={fmt}", pattern)
    records = [rec for chunk in out.split("\x1e") if (rec := _parse_ref(chunk.lstrip("\n")))]
    return sorted(records, key=lambda r: (r.dataset, r.version))


def _parse_ref(chunk: str) -> VersionRecord | None:
    """Parse one for-each-ref record; None (with a warning) for foreign or broken tags."""
    if not chunk.strip():
        return None
    ref, commit, message = (chunk.split("\x00", 2) + ["", ""])[:3]
    if not _TAG_RE.match(ref) or not commit:
        log.warning("ignoring %s: not an annotated dataset version tag", ref)
        return None
    try:
        return VersionRecord.from_tag(ref.removeprefix("refs/tags/"), commit, message)
    except (TypeError, ValueError) as exc:
        log.warning("ignoring %s: unreadable tag message (%s)", ref, exc)
        return None


def next_version(root: Path, dataset: str) -> int:
    """The version number the next publish of ``dataset`` will get (1 for a new one)."""
    versions = list_versions(root, dataset)
    return versions[-1].version + 1 if versions else 1


def resolve(root: Path, vid: str) -> VersionRecord:
    """The record for ``name@vN`` or ``name@latest``; VersionNotFoundError lists what exists."""
    name, num = split_version_id(vid)
    versions = list_versions(root, name)
    if versions and num is None:
        return versions[-1]
    found = [r for r in versions if r.version == num]
    if found:
        return found[0]
    raise VersionNotFoundError(_not_found_message(root, vid, name, versions))


def _not_found_message(root: Path, vid: str, name: str, versions: list[VersionRecord]) -> str:
    """Explain a failed lookup: the versions of ``name``, or the datasets that exist."""
    if versions:
        return f"{vid} not found; available: {', '.join(r.id for r in versions)}"
    known = sorted({r.dataset for r in list_versions(root)})
    return f"{vid} not found: dataset {name!r} has no published versions" + (
        f" (datasets with versions: {', '.join(known)})" if known else " (nothing published yet)"
    )


# --------------------------------------------------------------------------- publish


def publish(
    root: Path,
    dataset: str,
    summary: dict[str, Any],
    *,
    push: bool = True,
    lock_timeout: float = LOCK_TIMEOUT_S,
) -> VersionRecord:
    """Publish the workspace's ``data/datasets/<dataset>`` as the next version.

    Under the workspace lock: ``dvc add`` the existing tracked dirs (one call),
    ``dvc push`` them (when ``push``), commit the pointer files on
    :data:`DATA_BRANCH` via plumbing, and tag it ``data/<dataset>/v<N>`` with the
    record as JSON. ``summary`` is copied and gets ``summary["dvc"]`` =
    ``{"data/frames": {"md5", "size", "nfiles"}, ...}``. If the dataset's
    ``version.json`` declares a version, it must be the one assigned
    (:class:`VersionConflictError` otherwise, before anything is changed).
    """
    check_dataset_name(dataset)
    json.dumps(summary)  # fail early on values the tag message cannot hold
    root = _require_git_root(root)
    _refuse_data_branch_checked_out(root)
    if not (root / "data" / "datasets" / dataset).is_dir():
        raise VersioningError(f"nothing to publish: {root / 'data/datasets' / dataset} is missing")
    with workspace_lock(root, lock_timeout):
        ensure_repo(root)
        version = next_version(root, dataset)
        _check_declared_version(root, dataset, version)
        targets = [t for t in TRACKED_DIRS if (root / t).is_dir()]
        with _index_untouched(root):
            _dvc(root, "add", *targets)
        if push:
            _dvc(root, "push", *[f"{t}.dvc" for t in targets])
        return _record_version(root, dataset, version, summary, targets)


def _refuse_data_branch_checked_out(root: Path) -> None:
    """Versions must never land on the user's branch."""
    if _git_ok(root, "symbolic-ref", "-q", "HEAD") == f"refs/heads/{DATA_BRANCH}":
        raise VersioningError(f"{DATA_BRANCH} is checked out; switch to your own branch first")


def _declared_version(root: Path, dataset: str) -> int | None:
    """The version ``data/datasets/<dataset>/version.json`` claims, if any.

    Reads ``"version"`` (3, "v3" or "lab@v3") or else ``"id"`` ("lab@v3").
    """
    path = root / "data" / "datasets" / dataset / "version.json"
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict):
        return None
    for key in ("version", "id"):
        value = meta.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and (m := re.fullmatch(r"(?:[^@]+@)?v?([1-9][0-9]*)", value)):
            return int(m[1])
    return None


def _check_declared_version(root: Path, dataset: str, version: int) -> None:
    """Raise VersionConflictError when version.json names a different version."""
    declared = _declared_version(root, dataset)
    if declared is not None and declared != version:
        raise VersionConflictError(
            f"data/datasets/{dataset}/version.json declares v{declared} but the next version "
            f"of {dataset!r} is v{version} (see next_version()); rewrite it and publish again"
        )


def _dvc_hashes(root: Path, targets: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{"data/frames": {"md5": "<hash>.dir", "size": ..., "nfiles": ...}}`` from pointers."""
    hashes: dict[str, dict[str, Any]] = {}
    for target in targets:
        out = _pointer_out(Path(root / f"{target}.dvc").read_text(encoding="utf-8"))
        hashes[target] = {k: out.get(k) for k in ("md5", "size", "nfiles")}
    return hashes


def _pointer_out(text: str) -> dict[str, Any]:
    """The single ``outs`` entry of a .dvc pointer file."""
    outs = (yaml.safe_load(text) or {}).get("outs") or []
    if len(outs) != 1:
        raise VersioningError(f"unexpected .dvc pointer (expected one out): {text[:200]!r}")
    return dict(outs[0])


def _record_version(
    root: Path,
    dataset: str,
    version: int,
    summary: dict[str, Any],
    targets: Sequence[str],
) -> VersionRecord:
    """Commit the pointers, tag the commit, then advance DATA_BRANCH to it.

    The tag is written before the branch moves: tags are the source of truth
    (:func:`list_versions`), so a failure in between never leaves an untagged commit
    on the branch.
    """
    head = _head(root)
    record = VersionRecord(
        dataset=dataset,
        version=version,
        tag=_tag_name(dataset, version),
        commit="",
        code_commit=head,
        created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        summary={**summary, "dvc": _dvc_hashes(root, targets)},
    )
    paths = [f"{t}.dvc" for t in targets] + [p for p in (*EXTRA_POINTERS, *DVC_SCAFFOLD) if (root / p).is_file()]
    previous = _branch_tip(root, DATA_BRANCH)
    message = f"cityloop: publish {record.id}"
    record.commit = _commit_pointers(root, paths, head, [previous, head], message)
    _write_tag(root, record)
    _git(root, "update-ref", "-m", message, f"refs/heads/{DATA_BRANCH}", record.commit, previous or "")
    return record


def _commit_pointers(
    root: Path,
    paths: Sequence[str],
    head: str | None,
    parents: Sequence[str | None],
    message: str,
) -> str:
    """Commit HEAD's tree (empty if unborn) + ``paths`` via a temporary index.

    Returns the new commit's sha. Parents are deduplicated, missing ones (None)
    skipped. No ref is moved and the user's index is never read or written.
    """
    with tempfile.TemporaryDirectory(prefix="cityloop-index-") as tmp:
        env = _git_env(root, GIT_INDEX_FILE=str(Path(tmp) / "index"))
        _git(root, "read-tree", *([head] if head else ["--empty"]), env=env)
        _git(root, "add", "-f", "--", *paths, env=env)
        tree = _git(root, "write-tree", env=env).strip()
        args = [a for p in dict.fromkeys(p for p in parents if p) for a in ("-p", p)]
        out = _git(root, "commit-tree", tree, *args, "-F", "-", env=env, stdin=message)
    return out.strip()


def _write_tag(root: Path, record: VersionRecord) -> None:
    """Create the annotated tag ``record.tag`` on ``record.commit`` (fails if it exists)."""
    msg = record.to_message() + "\n"
    args = ["tag", "-a", "--cleanup=verbatim", "-F", "-", record.tag, record.commit]
    _git(root, *args, env=_git_env(root), stdin=msg)


# --------------------------------------------------------------------------- reading


def read_version_file(root: Path, vid: str, relpath: str) -> bytes:
    """Bytes of ``data/datasets/<name>/<relpath>`` as of version ``vid``.

    Served from the workspace when its ``version.json`` says it is that version *and*
    the file's md5 matches the one recorded in that version (so in-progress edits are
    never mistaken for the published file); otherwise via
    ``dvc.api.open(path, repo=root, rev=<version commit>)``, which reads the local
    cache and falls back to the default remote.
    """
    root = Path(root).resolve()
    record = resolve(root, vid)
    inner = _safe_relpath(relpath)
    path = f"data/datasets/{record.dataset}/{inner}"
    if _declared_version(root, record.dataset) == record.version:
        local = _verified_workspace_bytes(root, record, f"{record.dataset}/{inner}")
        if local is not None:
            return local
    import dvc.api

    with dvc.api.open(path, repo=str(root), rev=record.commit, mode="rb") as fh:
        return fh.read()


def _safe_relpath(relpath: str) -> str:
    """Normalise a path inside a dataset folder; refuse absolute paths and ``..``."""
    pure = PurePosixPath(relpath.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        raise ValueError(f"relpath must stay inside the dataset folder: {relpath!r}")
    return pure.as_posix()


def _verified_workspace_bytes(root: Path, record: VersionRecord, inner: str) -> bytes | None:
    """Workspace bytes of ``data/datasets/<inner>`` if they match the version's md5."""
    local = root / "data" / "datasets" / inner
    expected = _recorded_md5(root, record, inner)
    if expected is None or not local.is_file():
        return None
    data = local.read_bytes()
    return data if hashlib.md5(data).hexdigest() == expected else None


def _recorded_md5(root: Path, record: VersionRecord, inner: str) -> str | None:
    """md5 of ``data/datasets/<inner>`` in the version's .dir listing, if in the local cache."""
    try:
        out = _pointer_out(_git(root, "cat-file", "blob", f"{record.commit}:data/datasets.dvc"))
    except (CommandError, VersioningError):
        return None
    dir_md5 = str(out.get("md5") or "")
    if out.get("hash") != "md5" or not dir_md5.endswith(".dir"):
        return None
    listing = _cache_dir(root) / "files" / "md5" / dir_md5[:2] / dir_md5[2:]
    try:
        entries = json.loads(listing.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return next((e.get("md5") for e in entries if e.get("relpath") == inner), None)


# --------------------------------------------------------------------------- checkout


def checkout(root: Path, vid: str, *, force: bool = False, lock_timeout: float = LOCK_TIMEOUT_S) -> None:
    """Put the workspace's ``data/*.dvc`` and tracked data at version ``vid``.

    Writes each ``data/*.dvc`` of the version commit into the worktree and runs
    ``dvc checkout`` on them; when the cache lacks objects, ``dvc pull`` fetches them
    from the default remote. Unsaved workspace changes make DVC refuse unless
    ``force``; on any failure the previous pointer files are put back. Pointer files
    the version does not have are left as they are.
    """
    root = _require_git_root(root)
    record = resolve(root, vid)
    with workspace_lock(root, lock_timeout):
        pointers = _version_pointers(root, record.commit)
        saved = {p: (root / p).read_bytes() if (root / p).is_file() else None for p in pointers}
        try:
            for path in pointers:
                _atomic_write(root / path, _git_bytes(root, "cat-file", "blob", f"{record.commit}:{path}"))
            _materialise(root, pointers, force)
        except BaseException:
            _restore_files(root, saved)
            raise


def _materialise(root: Path, pointers: Sequence[str], force: bool) -> None:
    """``dvc checkout`` the pointers; ``dvc pull`` them when the cache misses objects."""
    flags = ["--force"] if force else []
    with _index_untouched(root):
        try:
            _dvc(root, "checkout", *flags, *pointers)
        except CommandError as exc:
            log.info("dvc checkout incomplete (%s); pulling from the remote", exc.returncode)
            _dvc(root, "pull", *flags, *pointers)


def _restore_files(root: Path, saved: dict[str, bytes | None]) -> None:
    """Write back saved file contents (None: the file did not exist)."""
    for path, data in saved.items():
        if data is None:
            (root / path).unlink(missing_ok=True)
        else:
            _atomic_write(root / path, data)


def _version_pointers(root: Path, commit: str) -> list[str]:
    """The ``data/*.dvc`` pointer files in a version commit."""
    names = _git(root, "ls-tree", "--name-only", commit, "data/").splitlines()
    return [n for n in names if n.endswith(".dvc")]
