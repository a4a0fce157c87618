"""Processes the project starts detached (servers, edge nodes): is one alive, stop its group.

Each is started with `start_new_session=True`, so its pid is also its process-group id and a
stop reaches the workers it spawned (Label Studio's, the serve process's flow runs).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie does not count; our own exited child is reaped)."""
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def group_alive(pgid: int) -> bool:
    """Any live member of the process group `pgid`."""
    if alive(pgid):
        return True
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def stop_group(pgid: int, timeout: float = 15.0, kill_after: float = 5.0) -> None:
    """SIGTERM to the process group, SIGKILL if any member is left after `timeout` s."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, kill_after)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and group_alive(pgid):
            time.sleep(0.2)
        if not group_alive(pgid):
            return
