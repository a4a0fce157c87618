"""Edge fixtures: private workspace copies, real `cityloop edge start` nodes (killed in teardown)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cityloop.edge.node import node_dir, read_json
from tests.conftest import wait_for  # noqa: F401  (the edge tests import it from here)

CLI = str(Path(sys.executable).with_name("cityloop"))


def copy_workspace(src: Path, dst: Path, params: dict | None = None) -> Path:
    """A private copy of a workspace with params.yaml sections overridden (section -> dict)."""
    shutil.copytree(src, dst, symlinks=True)
    if params:
        cur = yaml.safe_load((dst / "params.yaml").read_text())
        for section, values in params.items():
            cur[section] = {**cur.get(section, {}), **values}
        (dst / "params.yaml").write_text(yaml.safe_dump(cur, sort_keys=False))
    return dst


class Nodes:
    """Starts edge nodes as real `cityloop edge start` processes; kills everything on close."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, port: int, *args: str) -> subprocess.Popen:
        env = {**os.environ, "CITYLOOP_ROOT": str(self.root)}
        node_dir(self.root, name).mkdir(parents=True, exist_ok=True)
        log = open(node_dir(self.root, name) / "node.out", "ab")
        proc = subprocess.Popen([CLI, "edge", "start", "--name", name, "--port", str(port), *args], env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def status(self, name: str) -> dict:
        return read_json(node_dir(self.root, name) / "status.json") or {}

    def kill(self, name: str) -> None:
        """SIGKILL the node process (its bento server, in its own session, lives on)."""
        proc = self.procs[name]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def close(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
            server = read_json(node_dir(self.root, name) / "server.json") or {}
            for rec in (server, server.get("next") or {}):  # a node killed without a graceful stop leaves
                if rec.get("pid"):  # its server behind (and one it was starting, under "next")
                    try:
                        os.killpg(rec["pid"], signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass


@pytest.fixture
def nodes_factory():
    made: list[Nodes] = []

    def make(root: Path) -> Nodes:
        n = Nodes(root)
        made.append(n)
        return n

    yield make
    for n in made:
        n.close()
