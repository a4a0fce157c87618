"""The local stack behind `cityloop up | down | status`: a Prefect server (SQLite under
`<root>/.cityloop/prefect/`, the PREFECT_HOME), the process serving every deployment
(`python -m flows.deployments`) and the workspace's Label Studio server.

Plain process lifecycle: start in a new session with a pid file and a log under
`<root>/.cityloop/stack/`, wait for health, stop with SIGTERM then SIGKILL. Idempotent (a second
`up` finds what runs), stale pid files are removed, a port held by someone else is refused.
Nothing here imports Prefect or the flows: they run in the child processes.

Closed by default (SECURITY.md): the API requires its basic-auth string (PREFECT_SERVER_API_AUTH_STRING,
generated on the first `up` into `.cityloop/stack/credentials.env`, 0600, and handed to the serve
process and the CLI's flow runs as PREFECT_API_AUTH_STRING; the UI asks for it once), CORS answers
only the server's own UI origin, the children run under umask 0o077 with an explicit environment.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests

from cityloop.core.private import (
    child_env,
    private_dir,
    private_umask,
    read_env_file,
    sqlite_files,
    stored_secret,
    tighten,
)
from cityloop.core.procs import ManagedProcess, ProcessError
from cityloop.core.settings import QUIET_ENV, load_section
from cityloop.flows.params import READY_FILE, stack_params

HOST = "127.0.0.1"
SERVER_AUTH_ENV, CLIENT_AUTH_ENV = "PREFECT_SERVER_API_AUTH_STRING", "PREFECT_API_AUTH_STRING"
# the user's own settings each child keeps (by prefix); anything else of the parent's env stays behind
SERVER_PREFIXES = ("PREFECT_SERVER_", "PREFECT_API_DATABASE_", "PREFECT_UI_", "PREFECT_LOGGING_")
SERVE_PREFIXES = ("CITYLOOP_", "PREFECT_", "LABEL_STUDIO_", "DVC_", "GX_", "BENTOML_", "AWS_", "GIT_",
                  "SSL_CERT_", "REQUESTS_CA_BUNDLE", "OMP_NUM_THREADS")
_NEVER_PASSED = {"PREFECT_API_URL", "PREFECT_API_KEY", CLIENT_AUTH_ENV, SERVER_AUTH_ENV, "PREFECT_PROFILES_PATH"}


class StackError(RuntimeError):
    """A component could not be started or reached; the message says why and where the log is."""


@dataclass
class Component:
    name: str
    running: bool
    url: str | None = None
    pid: int | None = None
    message: str = ""
    log: str | None = None


@dataclass
class StackStatus:
    components: list[Component]
    deployments: list[dict] = field(default_factory=list)
    api_error: str | None = None

    def get(self, name: str) -> Component:
        return next(c for c in self.components if c.name == name)


# --------------------------------------------------------------------- processes


# ------------------------------------------------------------------------- stack


class Stack:
    """The workspace's local stack. Ports: the arguments, else those of the last `up`
    (`.cityloop/stack/stack.json`), else params.yaml (`stack.prefect_port`, `labeling.port`)."""

    def __init__(self, root: Path, prefect_port: int | None = None, labelstudio_port: int | None = None) -> None:
        self.root = Path(root).resolve()
        self.params = stack_params(self.root)
        self.state = self.root / ".cityloop" / "stack"
        self.prefect_home = self.root / ".cityloop" / "prefect"
        last = self._last()
        self.port = prefect_port or last.get("prefect_port") or self.params.prefect_port
        from cityloop.labeling.params import LabelingParams

        ls_default = load_section(self.root, "labeling", LabelingParams).port
        self.ls_port = labelstudio_port or last.get("labelstudio_port") or ls_default
        self.url = f"http://{HOST}:{self.port}"
        self.api_url = f"{self.url}/api"
        self.credentials_file = self.state / "credentials.env"  # the API's auth string (0600)
        code = self.root  # deployment entrypoints are paths relative to the workspace (flows/x.py:flow)
        prefect = Path(sys.executable).with_name("prefect")
        # environments are set at launch (server_env/serve_env): they carry the auth string
        self.server = ManagedProcess(
            "prefect-server", self.state,
            [str(prefect) if prefect.exists() else (shutil.which("prefect") or "prefect"), "server", "start",
             "--host", HOST, "--port", str(self.port), "--analytics-off"], None, self.state, "prefect")
        self.serve = ManagedProcess(
            "serve", self.state, [sys.executable, "-m", "cityloop.flows.deployments"], None, code,
            "cityloop.flows.deployments")

    # ------------------------------------------------------------- helpers
    def _last(self) -> dict:
        try:
            return json.loads((self.state / "stack.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def auth_string(self, create: bool = False) -> str | None:
        """The API's basic-auth string `user:password`: $PREFECT_SERVER_API_AUTH_STRING, else the state
        dir's credentials.env (generated there, 0600, when `create`); None before the first `up`."""
        if os.environ.get(SERVER_AUTH_ENV):
            return os.environ[SERVER_AUTH_ENV]
        if not create:
            return read_env_file(self.credentials_file).get(CLIENT_AUTH_ENV) or None
        return stored_secret(self.credentials_file, CLIENT_AUTH_ENV, lambda: f"cityloop:{secrets.token_urlsafe(24)}")

    def _env(self, settings: dict[str, str], keep: tuple[str, ...] = ()) -> dict[str, str]:
        """An explicit environment: PATH/HOME/locale, the quiet defaults, the user's own settings of the
        `keep` prefixes (never another server's PREFECT_API_URL or auth string), then `settings`."""
        kept = tuple(k for k in os.environ if k.startswith(keep) and k not in _NEVER_PASSED)
        return child_env({**QUIET_ENV, "PREFECT_HOME": str(self.prefect_home), "CITYLOOP_ROOT": str(self.root),
                          "PYTHONUNBUFFERED": "1", **settings}, keep=kept)

    def server_env(self, auth: str) -> dict[str, str]:
        """The Prefect server's: its database and UI settings, the auth string, CORS for its own UI only."""
        origins = ",".join(f"http://{h}:{self.port}" for h in (HOST, "localhost"))
        return self._env({"PREFECT_UI_API_URL": self.api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                          SERVER_AUTH_ENV: auth, "PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS": origins},
                         keep=SERVER_PREFIXES)

    def serve_env(self, auth: str) -> dict[str, str]:
        """The serve process's (and so its flow runs'): the project's settings and the API's URL and auth."""
        env = self._env({"PREFECT_API_URL": self.api_url, CLIENT_AUTH_ENV: auth,
                         "PREFECT_RUNNER_POLL_FREQUENCY": str(self.params.poll_seconds)}, keep=SERVE_PREFIXES)
        if self.params.dask_address and not env.get("CITYLOOP_DASK_ADDRESS"):
            env["CITYLOOP_DASK_ADDRESS"] = self.params.dask_address
        return env

    def client_env(self) -> dict[str, str]:
        """What a client of this stack sets (the CLI's flow runs, tests): the API URL and its auth string."""
        auth = self.auth_string()
        return {"PREFECT_API_URL": self.api_url, **({CLIENT_AUTH_ENV: auth} if auth else {})}

    def secure(self) -> list[Path]:
        """0700 state folders, 0600 databases and credentials (files made before umask 0o077 was used)."""
        private_dir(self.root / ".cityloop")
        for d in (self.state, self.prefect_home):
            private_dir(d)
        files = [*sqlite_files(self.prefect_home / "prefect.db"), self.credentials_file,
                 *self.state.glob("*.log"), *self.state.glob("*.pid"), self.state / "stack.json"]
        return tighten(files)

    def labelstudio(self):
        from cityloop.labeling.server import LabelStudioServer

        return LabelStudioServer(self.root, port=self.ls_port)

    def healthy(self, timeout: float = 2.0) -> bool:
        try:
            return requests.get(f"{self.api_url}/health", timeout=timeout).ok
        except requests.RequestException:
            return False

    def _basic_auth(self) -> tuple[str, str] | None:
        auth = self.auth_string()
        if not auth:
            return None
        user, _, password = auth.partition(":")
        return user, password

    def api(self, method: str, path: str, json_body: dict | list | None = None, timeout: float = 10.0,
            tries: int = 5) -> requests.Response:
        """A REST call to the stack's server, retried on 503 (SQLite busy) and connection errors."""
        for i in range(tries):
            try:
                r = requests.request(method, f"{self.api_url}{path}", json=json_body, timeout=timeout,
                                     auth=self._basic_auth())
                if r.status_code != 503:
                    r.raise_for_status()
                    return r
            except requests.ConnectionError:
                if i == tries - 1:
                    raise
            time.sleep(0.5 * (i + 1))
        r.raise_for_status()
        return r

    def deployments(self) -> list[dict]:
        """The registered deployments: full name, schedules, paused, tags and their triggers' names."""
        deps = self.api("POST", "/deployments/filter", {}).json()
        flows = {f["id"]: f["name"] for f in self.api("POST", "/flows/filter", {}).json()}
        triggers: dict[str, list[str]] = {}
        for a in self.api("POST", "/automations/filter", {}).json():
            for act in a.get("actions", []):
                if act.get("type") == "run-deployment" and act.get("deployment_id"):
                    triggers.setdefault(act["deployment_id"], []).append(a["name"])
            for rel in (a.get("trigger") or {}).get("match_related") or []:
                rid = rel.get("prefect.resource.id", "") if isinstance(rel, dict) else ""
                if isinstance(rid, str) and rid.startswith("prefect.deployment."):
                    triggers.setdefault(rid.removeprefix("prefect.deployment."), []).append(a["name"])
        out = []
        for d in deps:
            sched = [s.get("schedule", {}).get("cron") or s.get("schedule", {}).get("interval") or "?"
                     for s in d.get("schedules") or []]
            out.append({"id": d["id"], "name": f"{flows.get(d['flow_id'], '?')}/{d['name']}", "schedules": sched,
                        "paused": d.get("paused", False), "tags": d.get("tags", []),
                        "triggers": sorted(set(triggers.get(d["id"], []))), "description": d.get("description")})
        return sorted(out, key=lambda d: d["name"])

    def _expected(self, since: float) -> list[str] | None:
        path = self.state / READY_FILE
        try:
            if path.stat().st_mtime + 1 < since:
                return None
            return json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def _registered(self, since: float) -> bool:
        names = self._expected(since)
        if names is None or not self.healthy():
            return False
        try:  # registered and unpaused (a serve process pauses its deployments when it stops)
            have = {d["name"] for d in self.deployments() if not d["paused"]}
        except requests.RequestException:
            return False
        return set(names) <= have

    # ----------------------------------------------------------- lifecycle
    def up(self, labelstudio: bool | None = None, say: Callable[[str], None] = lambda s: None) -> StackStatus:
        """Start (or find) the Prefect server, Label Studio and the serve process. Idempotent."""
        labelstudio = self.params.labelstudio if labelstudio is None else labelstudio
        timeout = self.params.start_timeout_s
        self.secure()
        auth = self.auth_string(create=True)
        started_server = False
        if self.server.pid() is None:
            if _port_busy(HOST, self.port):
                who = "a Prefect server not started by this workspace" if self.healthy() else "another process"
                raise StackError(f"port {self.port} on {HOST} is taken by {who}; choose another with "
                                 f"`cityloop up --port N` or params stack.prefect_port")
            self.server.env = self.server_env(auth)
            with private_umask():  # the server's database and logs are private from their first byte
                self.server.launch()
            started_server = True
            say(f"starting the Prefect server on {self.url} (database under {self.prefect_home})")
        with private_umask():
            (self.state / "stack.json").write_text(json.dumps({
                "prefect_port": self.port, "labelstudio_port": self.ls_port, "labelstudio": bool(labelstudio)}))
        if labelstudio:
            say(f"starting (or finding) Label Studio on http://{HOST}:{self.ls_port}")
            from cityloop.labeling.server import LabelStudioError

            try:
                self.labelstudio().start()
            except LabelStudioError as exc:
                raise StackError(f"Label Studio: {exc}") from exc
        try:
            self.server.wait(self.healthy, timeout)
        except ProcessError as exc:
            if started_server:
                self.server.stop(self.params.stop_timeout_s)
            raise StackError(str(exc)) from exc
        serve_pid = self.serve.pid()
        if serve_pid is not None and started_server:  # a serve process left from a server that went away
            self.serve.stop(self.params.stop_timeout_s)
            serve_pid = None
        if serve_pid is None:
            since = time.time()
            self.serve.env = self.serve_env(auth)
            with private_umask():
                self.serve.launch()
            say("starting the serve process (python -m cityloop.flows.deployments): registering the deployments")
            try:
                self.serve.wait(lambda: self._registered(since), timeout)
            except ProcessError as exc:
                self.serve.stop(self.params.stop_timeout_s)
                raise StackError(str(exc)) from exc
        self.secure()  # the database the server just created, whatever umask it was made under
        return self.status()

    def down(self) -> dict[str, bool]:
        """Stop serve, Label Studio, the Prefect server (in that order); data stays. Name → was running."""
        t = self.params.stop_timeout_s
        out = {"serve": self.serve.stop(t), "labelstudio": self.labelstudio().stop(t),
               "prefect-server": self.server.stop(t)}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (_port_busy(HOST, self.port) and out["prefect-server"]):
            time.sleep(0.2)
        return out

    def status(self) -> StackStatus:
        spid, vpid = self.server.pid(), self.serve.pid()
        up = spid is not None and self.healthy()
        ls = self.labelstudio().status()
        comps = [Component("prefect-server", up, self.url, spid, "UI at /, API at /api" if up else "",
                           str(self.server.log_file)),
                 Component("serve", vpid is not None, None, vpid, "python -m flows.deployments",
                           str(self.serve.log_file)),
                 Component("labelstudio", ls.running, ls.url, ls.pid, "", str(self.labelstudio().log_file))]
        st = StackStatus(comps)
        if up:
            try:
                st.deployments = self.deployments()
            except requests.RequestException as exc:
                st.api_error = str(exc)
        return st


# ----------------------------------------------------------------------- helpers


def _port_busy(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


def port_busy(port: int, host: str = HOST) -> bool:
    return _port_busy(host, port)
