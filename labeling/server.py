"""The Label Studio server, run by the project: its own venv, a data dir in the state dir, 127.0.0.1.

Label Studio 1.23 pins packages that clash with Prefect 3 (python-json-logger), so the server
lives in `<root>/.venv-labelstudio` (pinned by labeling/server-constraints.txt) and the main venv
only holds label-studio-sdk. Credentials come from the environment (LABEL_STUDIO_USERNAME,
LABEL_STUDIO_PASSWORD, LABEL_STUDIO_API_KEY); when unset, `up` generates them once into
`<state>/labelstudio/credentials.env` (mode 0600, inside the git-ignored state dir) so a fresh
machine needs no setup. Nothing here prints or logs a secret.

Closed by default (SECURITY.md): the state and data dirs are 0700 and the SQLite database (it holds
the admin token) 0600; the server runs under umask 0o077 with an explicit environment (PATH, HOME,
locale, its own LABEL_STUDIO_*/DJANGO_* settings), never the caller's whole one.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import requests

from cityloop.core.private import child_env, private_dir, private_umask, sqlite_files, tighten
from cityloop.core.procs import ManagedProcess, tail

LS_VERSION = "1.23.2"
ENV_USER, ENV_PASSWORD, ENV_TOKEN, ENV_URL = ("LABEL_STUDIO_USERNAME", "LABEL_STUDIO_PASSWORD",
                                              "LABEL_STUDIO_API_KEY", "LABEL_STUDIO_URL")
# the user's own server settings kept from the caller's environment (by prefix); the rest stays behind
SERVER_PREFIXES = ("LABEL_STUDIO_", "DJANGO_", "POSTGRE_", "SSL_CERT_", "REQUESTS_CA_BUNDLE")


class LabelStudioError(RuntimeError):
    """The server could not be installed, started or reached; the message says why."""



def server_constraints() -> resources.abc.Traversable:
    """The server venv's pins (labeling/server-constraints.txt, shipped in the package)."""
    return resources.files("cityloop.labeling") / "server-constraints.txt"


@dataclass(frozen=True)
class Credentials:
    """Admin login and API token (never printed: repr hides them)."""

    username: str
    password: str
    token: str

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=***, token=***)"


@dataclass
class ServerStatus:
    running: bool
    url: str
    pid: int | None
    data_dir: Path
    database: str
    message: str = ""


class LabelStudioServer:
    """One Label Studio server per workspace: `<root>/.cityloop/labelstudio/` holds its data, pid and log."""

    def __init__(self, root: Path, port: int = 8089, host: str = "127.0.0.1", state_dir: Path | None = None,
                 venv: Path | None = None, database_url: str | None = None) -> None:
        self.root = Path(root).resolve()
        self.host, self.port = host, port
        self.state = Path(state_dir or self.root / ".cityloop" / "labelstudio").resolve()
        self.venv = Path(venv or os.environ.get("CITYLOOP_LS_VENV") or self.root / ".venv-labelstudio")
        self.database_url = database_url or os.environ.get("CITYLOOP_LS_DATABASE_URL")
        self.data_dir = self.state / "data"
        self.media = self.state / "media"  # local-files document root (frames served to annotators)
        self.pid_file, self.log_file = self.state / "server.pid", self.state / "server.log"

    def process(self, env: dict[str, str] | None = None) -> ManagedProcess:
        """The server as a managed process (`server.pid`, `server.log` in the state dir)."""
        return ManagedProcess("server", self.state, [str(self.executable), "start", "--no-browser", "--internal-host",
                                                     self.host, "--port", str(self.port), "--data-dir",
                                                     str(self.data_dir)], env, cwd=self.state, marker="label-studio")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def executable(self) -> Path:
        return self.venv / "bin" / "label-studio"

    # ------------------------------------------------------------------ install
    def ensure_installed(self, python: str | None = None) -> Path:
        """Create the server's own venv and install the pinned Label Studio (about 75 s, once)."""
        if self.executable.exists():
            return self.executable
        python = python or shutil.which("python3.11") or sys.executable
        subprocess.run([python, "-m", "venv", str(self.venv)], check=True)
        with resources.as_file(server_constraints()) as constraints:
            cmd = [str(self.venv / "bin" / "pip"), "install", "-q", f"label-studio=={LS_VERSION}",
                   "-c", str(constraints)]
            done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise LabelStudioError(f"installing label-studio=={LS_VERSION} into {self.venv} failed:\n"
                                   f"{done.stderr[-2000:]}")
        return self.executable

    # --------------------------------------------------------------- credentials
    def credentials(self, create: bool = False) -> Credentials:
        """From the environment, else the state dir's credentials.env (generated when `create`)."""
        env = {k: os.environ.get(k) for k in (ENV_USER, ENV_PASSWORD, ENV_TOKEN)}
        stored = _read_env_file(self.state / "credentials.env")
        merged = {k: env[k] or stored.get(k) for k in env}
        if not all(merged.values()):
            if not create:
                raise LabelStudioError(f"no Label Studio credentials: set {ENV_USER}, {ENV_PASSWORD} and "
                                       f"{ENV_TOKEN}, or run `cityloop labelstudio up` once")
            merged = {ENV_USER: merged[ENV_USER] or "admin@cityloop.local",
                      ENV_PASSWORD: merged[ENV_PASSWORD] or secrets.token_urlsafe(18),
                      ENV_TOKEN: merged[ENV_TOKEN] or secrets.token_hex(20)}
            _write_env_file(self.state / "credentials.env", merged)
        return Credentials(merged[ENV_USER], merged[ENV_PASSWORD], merged[ENV_TOKEN])

    def server_env(self, creds: Credentials) -> dict[str, str]:
        """The environment that makes Label Studio start non-interactively, offline, on 127.0.0.1."""
        xdg = self.data_dir / "xdg"
        kept = tuple(k for k in os.environ if k.startswith(SERVER_PREFIXES) and k != ENV_TOKEN)
        env = {**child_env({}, keep=kept),
               "LABEL_STUDIO_USERNAME": creds.username, "LABEL_STUDIO_PASSWORD": creds.password,
               "LABEL_STUDIO_USER_TOKEN": creds.token, "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
               "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
               "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
               "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(self.media),
               "LOCAL_FILES_SERVING_ENABLED": "true", "LOCAL_FILES_DOCUMENT_ROOT": str(self.media),
               "SSRF_PROTECTION_ENABLED": "false",  # webhooks go to the project's own 127.0.0.1 receiver
               "LATEST_VERSION_CHECK": "false", "COLLECT_ANALYTICS": "false",
               "XDG_DATA_HOME": str(xdg / "data"), "XDG_CONFIG_HOME": str(xdg / "config"),
               "XDG_CACHE_HOME": str(xdg / "cache"), "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir),
               "DJANGO_DB": "sqlite", "PYTHONUNBUFFERED": "1"}
        env.pop(ENV_TOKEN, None)
        if self.database_url:  # PostgreSQL at scale: postgresql://user:pass@host:5432/db
            env.update(_postgres_env(self.database_url))
        return env

    # ------------------------------------------------------------------ lifecycle
    def pid(self) -> int | None:
        """The recorded pid if that process is alive and Label Studio (a stale pid file is removed)."""
        return self.process().pid()

    def healthy(self, timeout: float = 2.0) -> bool:
        try:
            return requests.get(f"{self.url}/health", timeout=timeout).ok
        except requests.RequestException:
            return False

    def start(self, timeout: float = 180.0) -> ServerStatus:
        """Start (or find running) and wait until the API answers with the admin's token. Idempotent."""
        creds = self.credentials(create=True)
        if self.pid() is not None and self.healthy():
            self.wait_api(creds, timeout)
            self.secure()
            return self.status("already running")
        if _port_busy(self.host, self.port):
            raise LabelStudioError(f"port {self.port} on {self.host} is taken by another process; "
                                   f"choose another with --port")
        self.ensure_installed()
        self.secure()
        proc = self.process(self.server_env(creds))
        with private_umask():  # the database (admin token inside) and the log are private from their first byte
            proc.launch()
        try:
            self.wait_api(creds, timeout, proc)
        except LabelStudioError:
            self.stop()
            raise
        self.secure()
        return self.status("started")

    def secure(self) -> list[Path]:
        """0700 state, data and media dirs; 0600 database, credentials and log (older files tightened)."""
        for d in (self.state, self.data_dir, self.media):
            private_dir(d)
        return tighten([*sqlite_files(self.data_dir / "label_studio.sqlite3"), self.state / "credentials.env",
                        self.log_file, self.pid_file])

    def wait_api(self, creds: Credentials, timeout: float, proc: ManagedProcess | None = None) -> None:
        """Block until GET /api/current-user/whoami answers 200 with the token."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.exited() is not None:
                raise LabelStudioError(f"Label Studio exited with {proc.exited()}; see {self.log_file}:\n"
                                       f"{tail(self.log_file, 30)}")
            try:
                r = requests.get(f"{self.url}/api/current-user/whoami",
                                 headers={"Authorization": f"Token {creds.token}"}, timeout=3)
                if r.status_code == 200:
                    return
                if r.status_code in (401, 403) and self.healthy():
                    raise LabelStudioError(
                        "Label Studio answers but refuses the token: the data dir was created with other "
                        f"credentials ({self.data_dir}); set {ENV_TOKEN} to that token or remove the data dir")
            except requests.RequestException:
                pass
            time.sleep(1.0)
        raise LabelStudioError(f"Label Studio did not answer within {timeout:.0f} s; see {self.log_file}")

    def stop(self, timeout: float = 20.0) -> bool:
        """Stop the server (SIGTERM to its process group, then SIGKILL). True if one was running."""
        return self.process().stop(timeout)

    def status(self, message: str = "") -> ServerStatus:
        pid = self.pid()
        db = self.database_url.split("@")[-1] if self.database_url else str(self.data_dir / "label_studio.sqlite3")
        return ServerStatus(pid is not None and self.healthy(), self.url, pid, self.data_dir, db, message)


# ---------------------------------------------------------------------- helpers


def _port_busy(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


def _read_env_file(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def _write_env_file(path: Path, values: dict[str, str]) -> None:
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("# generated by `cityloop labelstudio up`; environment variables override these\n")
        f.writelines(f"{k}={v}\n" for k, v in values.items())


def _postgres_env(url: str) -> dict[str, str]:
    """Label Studio's PostgreSQL settings from a postgresql:// URL."""
    from urllib.parse import urlparse

    u = urlparse(url)
    if u.scheme not in ("postgres", "postgresql"):
        raise LabelStudioError(f"database URL must be postgresql://…, got {u.scheme}://")
    return {"DJANGO_DB": "default", "POSTGRE_NAME": u.path.lstrip("/"), "POSTGRE_USER": u.username or "",
            "POSTGRE_PASSWORD": u.password or "", "POSTGRE_HOST": u.hostname or "localhost",
            "POSTGRE_PORT": str(u.port or 5432)}
