"""Private files, generated secrets and minimal child environments (cityloop/core/private.py)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from cityloop.core.private import child_env, private_state, private_umask, stored_secret, tighten


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_a_secret_is_generated_once_into_a_private_file_and_reused(tmp_path: Path):
    path = tmp_path / "state" / "credentials.env"
    first = stored_secret(path, "TOKEN")
    assert len(first) >= 32 and mode(path) == 0o600 and mode(path.parent) == 0o700
    path.chmod(0o644)  # e.g. copied by hand
    assert stored_secret(path, "TOKEN") == first and mode(path) == 0o600  # reused, and tightened again
    assert stored_secret(path, "OTHER") != first and f"TOKEN={first}" in path.read_text()  # other keys kept


def test_what_a_child_creates_under_the_private_umask_is_private(tmp_path: Path):
    with private_umask():
        subprocess.run(["sh", "-c", f"mkdir {tmp_path}/d && echo x > {tmp_path}/d/f.sqlite3"], check=True)
    assert mode(tmp_path / "d") == 0o700 and mode(tmp_path / "d" / "f.sqlite3") == 0o600
    probe = tmp_path / "after"
    probe.write_text("x")
    assert mode(probe) == 0o666 & ~_umask()  # the caller's umask is back


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def test_tighten_and_the_state_dir(tmp_path: Path):
    state = tmp_path / ".cityloop"
    (state / "edge").mkdir(parents=True, mode=0o755)
    state.chmod(0o755)
    db = state / "edge" / "events.sqlite"
    db.write_text("")
    db.chmod(0o644)
    link = state / "link"
    link.symlink_to(db)
    assert tighten([db, link, state / "missing"]) == [db] and mode(db) == 0o600
    private_state(tmp_path)
    assert mode(state) == 0o700


def test_a_child_env_holds_only_what_it_needs():
    parent = {"PATH": "/bin", "HOME": "/home/op", "LANG": "C.UTF-8", "CITYLOOP_TEST_SECRET": "s",
              "AWS_SECRET_ACCESS_KEY": "k", "DVC_NO_ANALYTICS": "1"}
    env = child_env({"TOOL_SETTING": "on"}, keep=["DVC_NO_ANALYTICS"], parent=parent)
    assert env == {"PATH": "/bin", "HOME": "/home/op", "LANG": "C.UTF-8", "DVC_NO_ANALYTICS": "1",
                   "TOOL_SETTING": "on"}
