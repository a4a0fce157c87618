"""What `pip install cityloop` gives: one top-level package, its data files, a working command.

The wheel is built (non-editable, no build isolation) from a copy of the files git would ship, so the
shared working tree gets no build/ or egg-info. It is installed into a fresh venv that borrows the
already-installed third-party packages of the project's venv through a plain path line in a .pth file
(a path line is added to sys.path without running the .pth files found there, so the project's
editable install is invisible: checked before installing). Everything afterwards runs from a temp
directory outside the repository, without CITYLOOP_ROOT.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from cityloop.governance.gate import SUITE_NAMES, find_suites
from tests.test_layers import modules

REPO = Path(__file__).resolve().parents[1]
DIST_INFO = re.compile(r"cityloop-[^/]+\.dist-info")
PACKAGE_DATA = [
    "cityloop/governance/suites/frames.json",
    "cityloop/governance/suites/annotations.json",
    "cityloop/governance/suites/dataset.json",
    "cityloop/governance/suites/labels.json",
    "cityloop/labeling/server-constraints.txt",
    "cityloop/bento/bentofile.yaml",
    "cityloop/analysis/static/command.js",
    "cityloop/analysis/static/command.css",
]
# Run inside the fresh venv (argv[1]: an empty directory outside the repository).
PROBE = r"""
import importlib.metadata as md, json, sys
from pathlib import Path

import cityloop
from cityloop.governance.gate import find_suites, load_suite_specs
from cityloop.governance.repository import DataRepository
from cityloop.labeling.server import server_constraints
from cityloop.scenes.frames import generate_frames

root = Path(sys.argv[1])
suites = find_suites(root)
specs = load_suite_specs(suites)
generate_frames("lab", 80, 0, root / "raw")
repo = DataRepository(root)
cand = repo.prepare(root / "raw", "lab")
gate = repo.validate(cand, docs=False)
dist = md.distribution("cityloop")
print(json.dumps({
    "cityloop": cityloop.__file__,
    "suites": str(suites),
    "specs": {name: len(entries) for name, entries in specs.items()},
    "frames": len(cand.manifest),
    "gate": {"success": gate.success, "evaluated": gate.evaluated, "report": gate.report()},
    "constraints": server_constraints().read_text(),
    "dist": str(dist.locate_file("")),
    "files": [str(f) for f in dist.files],
    "located": [str(dist.locate_file(f)) for f in dist.files],
}))
"""


def shipped_tree(dst: Path) -> Path:
    """A copy of the files git would ship (tracked and untracked-but-not-ignored), links kept."""
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, names):
        src, out = REPO / name, dst / name
        if not src.exists() and not src.is_symlink():  # deleted in the working tree, not yet in git
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            out.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, out)
    return dst


@dataclass
class Installed:
    wheel: Path
    venv: Path
    site: Path
    env: dict[str, str]
    cwd: Path  # outside the repository, no data/expectations

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run(list(args), cwd=self.cwd, env=self.env, capture_output=True, text=True, timeout=300)
        assert not check or out.returncode == 0, f"{args} exited {out.returncode}\n{out.stdout}\n{out.stderr}"
        return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    tmp = tmp_path_factory.mktemp("packaging")
    src = shipped_tree(tmp / "src")
    dist = tmp / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-q", "-w", str(dist), str(src)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = dist.glob("cityloop-*.whl")

    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "cityloop-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    cwd = tmp / "elsewhere"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CITYLOOP_", "PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    inst = Installed(wheel, venv, site, env, cwd)

    before = inst.run(str(py), "-c", "import cityloop", check=False)
    assert before.returncode != 0 and "No module named 'cityloop'" in before.stderr, \
        f"the fresh venv sees the editable cityloop before the wheel is installed:\n{before.stdout}{before.stderr}"
    inst.run(str(py), "-c", "import numpy, typer, great_expectations")  # the borrowed dependencies are there
    # --ignore-installed: the project venv's (editable) cityloop is on the path; never touch it
    inst.run(sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
             "--ignore-installed", "-q", str(wheel))
    return inst


def test_repository_suites_are_the_packaged_ones():
    """data/expectations in the repository is a link to the suites the package ships."""
    link = REPO / "data" / "expectations"
    assert link.is_symlink(), "data/expectations should link to cityloop/governance/suites"
    assert find_suites(REPO).resolve() == find_suites(None).resolve() == (REPO / "cityloop/governance/suites")


@pytest.mark.slow
def test_wheel_holds_only_cityloop_and_its_data(installed: Installed):
    names = zipfile.ZipFile(installed.wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    stray = sorted(t for t in tops if t != "cityloop" and not DIST_INFO.fullmatch(t))
    assert not stray, f"the wheel installs more than cityloop/ and its dist-info: {stray}"
    assert any(DIST_INFO.fullmatch(t) for t in tops), tops
    missing = [p for p in PACKAGE_DATA if p not in names]
    assert not missing, f"package data missing from the wheel: {missing}"
    for pkg in ("flows", "models", "models/components", "labeling", "bento", "core", "cli", "scenes",
                "governance", "edge", "analysis", "loop"):
        assert f"cityloop/{pkg}/__init__.py" in names, f"cityloop/{pkg} missing from the wheel"
    assert "cityloop/stack.py" in names and "cityloop/flows/training.py" in names
    source = {m.name.replace(".", "/") + ("/__init__.py" if m.is_pkg else ".py") for m in modules().values()}
    left_out = sorted(source - set(names))
    assert not left_out, f"modules of the source tree missing from the wheel (package not declared?): {left_out}"


@pytest.mark.slow
def test_installed_wheel_works_outside_the_repository(installed: Installed):
    help_ = installed.run("cityloop", "--help")
    assert "cityloop" in help_.stdout and "data" in help_.stdout
    assert shutil.which("cityloop", path=installed.env["PATH"]) == str(installed.venv / "bin" / "cityloop")

    workdir = installed.cwd / "ws"  # no data/expectations here: the gate must use the packaged suites
    workdir.mkdir()
    probe = json.loads(installed.run(str(installed.venv / "bin" / "python"), "-c", PROBE, str(workdir)).stdout)
    assert Path(probe["cityloop"]).is_relative_to(installed.site), probe["cityloop"]
    assert not Path(probe["cityloop"]).is_relative_to(REPO)
    assert Path(probe["suites"]) == installed.site / "cityloop" / "governance" / "suites"
    assert probe["specs"] == {name: len(json.loads((find_suites(None) / f"{name}.json").read_text()))
                              for name in SUITE_NAMES}
    assert len(probe["specs"]) == 3 and all(probe["specs"].values())
    assert probe["frames"] == 80
    assert probe["gate"]["success"] and probe["gate"]["evaluated"] > 25, probe["gate"]["report"]
    assert probe["constraints"] == (REPO / "labeling" / "server-constraints.txt").read_text()

    assert Path(probe["dist"]) == installed.site, probe["dist"]
    stray = []
    for name, located in zip(probe["files"], probe["located"]):
        top = Path(name).parts[0]
        if top == "cityloop" or DIST_INFO.fullmatch(top):
            continue
        if Path(os.path.normpath(located)).is_relative_to(installed.venv / "bin"):  # console scripts
            continue
        stray.append(name)
    assert not stray, f"the installed distribution puts more than cityloop/ into the venv: {stray}"
    assert any(Path(os.path.normpath(p)) == installed.venv / "bin" / "cityloop" for p in probe["located"])
