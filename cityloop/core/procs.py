"""Processes the project starts detached (servers, edge nodes): one managed process, and the
liveness and stop rules everything else uses.

Each is started with `start_new_session=True`, so its pid is also its process-group id and a
stop reaches the workers it spawned (Label Studio's, the serve process's flow runs). A pid file
names it with the process's start time (`start_time`, from /proc); a pid whose start time differs
is a recycled pid of someone else's process and is never taken (or signalled) for ours. A marker
its command line must contain covers pid files written without a start time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


class ProcessError(RuntimeError):
    """A managed process exited or was not ready in time; the message holds its log's tail."""


def alive(pid: int | None) -> bool:
    """True while `pid` runs (a zombie does not count; our own exited child is reaped)."""
    if not pid:
        return False
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


def start_time(pid: int | None) -> int | None:
    """When `pid` started, in clock ticks after boot (field 22 of /proc/<pid>/stat); None when it is gone.
    A pid and its start time name one process for good: a recycled pid has a later start time."""
    if not pid:
        return None
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def is_ours(pid: int | None, started: int | None) -> bool:
    """Whether `pid` still runs the process that started at `started` (None: unknown, any live pid counts)."""
    if not alive(pid):
        return False
    return started is None or start_time(pid) == started


def cmdline(pid: int) -> str:
    """The command line of `pid` ("" when it is gone or unreadable)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


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


def stop_group(pgid: int, timeout: float = 15.0, kill_after: float = 5.0, started: int | None = None) -> bool:
    """SIGTERM to the process group, SIGKILL if any member is left after `timeout` s.

    `started`: the leader's recorded start time. When a process with that pid runs but started at
    another time, the pid was recycled and that group is someone else's: nothing is signalled
    (False). A leader that is gone leaves its group reachable (the kernel keeps the id while any
    member lives, so no one else can hold it)."""
    now = start_time(pgid)
    if started is not None and now is not None and now != started:
        return False
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, kill_after)):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return True
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and group_alive(pgid):
            time.sleep(0.2)
        if not group_alive(pgid):
            return True
    return True


def tail(path: Path, n: int = 25) -> str:
    """The last `n` lines of a log ("" when there is none)."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


class ManagedProcess:
    """One detached child: `<state>/<name>.pid` and its log (default `<state>/<name>.log`).

    `marker`: a string its command line must contain for a recorded pid to count as ours.
    """

    def __init__(self, name: str, state: Path, cmd: Sequence[str], env: Mapping[str, str] | None = None,
                 cwd: Path | None = None, marker: str | None = None, log_file: Path | None = None) -> None:
        self.name, self.state, self.cmd = name, Path(state), list(cmd)
        self.env = dict(env) if env is not None else None
        self.cwd, self.marker = cwd, marker if marker is not None else Path(self.cmd[0]).name
        self.pid_file = self.state / f"{name}.pid"
        self.log_file = Path(log_file) if log_file else self.state / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def _recorded(self) -> tuple[int, int | None] | None:
        """(pid, start time) from the pid file ("PID START"; an older file holds the pid alone)."""
        try:
            fields = self.pid_file.read_text().split()
            return int(fields[0]), int(fields[1]) if len(fields) > 1 else None
        except (FileNotFoundError, ValueError, IndexError):
            return None

    def pid(self) -> int | None:
        """The recorded pid if that process is alive and ours; a stale pid file is removed."""
        rec = self._recorded()
        if rec is None:
            self.pid_file.unlink(missing_ok=True)
            return None
        pid, started = rec
        if not is_ours(pid, started) or self.marker not in cmdline(pid):
            self.pid_file.unlink(missing_ok=True)
            return None
        return pid

    def launch(self) -> int:
        """Start the child in its own session, its output appended to the log; its pid."""
        self.state.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(self.cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid_file.write_text(f"{self.proc.pid} {start_time(self.proc.pid) or ''}".strip())
        return self.proc.pid

    def exited(self) -> int | None:
        """The exit code of the child this object launched, None while it runs (or was not launched here)."""
        return self.proc.poll() if self.proc is not None else None

    def wait(self, ready: Callable[[], bool], timeout: float, poll_s: float = 0.5) -> None:
        """Until ready(); ProcessError (the log's tail included) when the child exits or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.exited() is not None:
                raise ProcessError(f"{self.name} exited with {self.proc.returncode}; see {self.log_file}:\n"
                                   f"{tail(self.log_file)}")
            if ready():
                return
            time.sleep(poll_s)
        raise ProcessError(f"{self.name} was not ready within {timeout:.0f} s; see {self.log_file}:\n"
                           f"{tail(self.log_file)}")

    def stop(self, timeout: float = 15.0) -> bool:
        """SIGTERM to the process group, SIGKILL after `timeout`. True if one was running."""
        pid = self.pid()
        if pid is None:
            return False
        stop_group(pid, timeout, started=(self._recorded() or (pid, None))[1])
        self.pid_file.unlink(missing_ok=True)
        return True
