"""Build the bento of a registry version and export it as a `.bento` archive for ops.

The bento holds the service code, the version's model.onnx + card.json and the exact Python
pins; `bentoml build` also writes the Dockerfile (`env/docker/Dockerfile`) that
`bentoml containerize` uses on a machine with a Docker engine (none runs here).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import yaml

from cityloop.models.store import ModelStore

# The modules the bento carries, found in the installed package (editable or not), and where they go
# in the build context: the same import paths as here (`cityloop.bento.service:DetectorService`).
CODE = (("cityloop", "__init__.py"), ("cityloop.bento", "__init__.py"), ("cityloop.bento", "service.py"),
        ("cityloop.models", "__init__.py"), ("cityloop.models", "card.py"), ("cityloop.models", "runtime.py"))


def _code_files() -> list[tuple[str, bytes]]:
    """(path in the bento, bytes) of each module in CODE."""
    return [(f"{pkg.replace('.', '/')}/{name}", (resources.files(pkg) / name).read_bytes()) for pkg, name in CODE]


def _bentofile() -> bytes:
    return (resources.files("cityloop.bento") / "bentofile.yaml").read_bytes()


@dataclass
class BentoBuild:
    """What `build_bento` made: the bento's tag, its folder in the store and the exported archive."""

    model_id: str
    tag: str
    path: Path
    archive: Path
    reused: bool

    def to_dict(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def bento_env(root: Path) -> dict[str, str]:
    """The environment for bentoml commands: the store inside the workspace, no telemetry."""
    env = dict(os.environ)
    env["BENTOML_HOME"] = str(Path(root).resolve() / ".cityloop" / "bentoml")
    env["BENTOML_DO_NOT_TRACK"] = "true"
    env.setdefault("PYTHONPATH", "")
    return env


def bentoml_bin() -> str:
    """The bentoml command of this interpreter's environment."""
    return str(Path(sys.executable).with_name("bentoml"))


def bento_tag(model_id: str, model_dir: Path) -> str:
    """`cityloop-detector:v3-<hash>`: the version number plus a hash of the model and the code."""
    name, ref = model_id.split(":", 1)
    h = hashlib.sha256()
    for p in [model_dir / "model.onnx", model_dir / "card.json"]:
        h.update(p.read_bytes())
    h.update(_bentofile())
    for _, code in _code_files():
        h.update(code)
    return f"{name}:{ref}-{h.hexdigest()[:10]}"


def build_context(model_dir: Path, ctx: Path) -> Path:
    """A build folder with only what the bento needs; returns its bentofile.yaml."""
    if ctx.exists():
        shutil.rmtree(ctx)
    for rel, code in _code_files():
        (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
        (ctx / rel).write_bytes(code)
    model = ctx / "cityloop" / "bento" / "model"
    model.mkdir()
    for f in ("model.onnx", "card.json"):
        shutil.copyfile(model_dir / f, model / f)
    (ctx / "bentofile.yaml").write_bytes(_bentofile())
    return ctx / "bentofile.yaml"


def _bentoml(root: Path, *args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([bentoml_bin(), *args], env=bento_env(root), capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"bentoml {args[0]} failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
    return out


def bento_path(root: Path, tag: str) -> Path:
    """Where a bento lives in the workspace's store."""
    name, version = tag.split(":", 1)
    return Path(bento_env(root)["BENTOML_HOME"]) / "bentos" / name / version


def build_bento(root: Path, model_id: str, out_dir: Path | None = None) -> BentoBuild:
    """Build (or reuse, same tag = same model and code) the bento of `model_id` and export it."""
    root = Path(root).resolve()
    mv = ModelStore(root, track=False).get(model_id)
    tag = bento_tag(mv.id, mv.path)
    path = bento_path(root, tag)
    out_dir = Path(out_dir or root / "artifacts" / "bentos")
    archive = out_dir / f"{tag.replace(':', '-')}.bento"
    with _build_lock(root):  # nodes starting together build the same bento once
        reused = (path / "bento.yaml").exists()
        if not reused:
            ctx = root / ".cityloop" / "bento-build" / tag.replace(":", "-")
            bentofile = build_context(mv.path, ctx)
            name, version = tag.split(":", 1)
            _bentoml(root, "build", "-f", str(bentofile), "--name", name, "--version", version,
                     "--label", f"model_version={mv.id}", str(ctx))
            shutil.rmtree(ctx, ignore_errors=True)
        if not archive.exists():
            out_dir.mkdir(parents=True, exist_ok=True)
            tmp = archive.with_suffix(".partial.bento")
            _bentoml(root, "export", tag, str(tmp))
            os.replace(tmp, archive)
    return BentoBuild(mv.id, tag, path, archive, reused)


@contextmanager
def _build_lock(root: Path):
    """An exclusive lock on the workspace's bento store (flock: released if the holder dies)."""
    lock = Path(root) / ".cityloop" / "bento-build.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def bento_manifest(path: Path) -> dict:
    """bento.yaml of a built bento (its tag, labels, APIs and Python packages)."""
    return yaml.safe_load((Path(path) / "bento.yaml").read_text())


def containerize_hint(tag: str) -> str:
    """The command ops run where a Docker engine exists."""
    return f"bentoml import <archive>.bento && bentoml containerize {tag} -t {tag.replace(':', '-')}"


if __name__ == "__main__":  # pragma: no cover - python -m bento.build ROOT MODEL_ID
    print(json.dumps(build_bento(Path(sys.argv[1]), sys.argv[2]).to_dict(), indent=1))
