"""`cityloop up | down | status`: a real Prefect server, the served deployments, triggers, the UI.

The stack tests start the stack with `--no-labelstudio` to keep this module fast: Label Studio's
own lifecycle (the same `LabelStudioServer.start/stop` that `up`/`down` call) has its integration
tests in tests/labeling/. Every REST call here is what the Prefect UI itself sends (no Prefect
client), retried on 503 (SQLite busy, see STACK-NOTES).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import socket
import stat
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests
import yaml
from typer.testing import CliRunner

from tests.conftest import REPO, free_port, git, make_workspace, wait_for

EXPECTED = {"ingest/manual", "hard-examples/inbox", "label/on-hard-examples", "train/on-new-labels",
            "release/manual", "patrol/nightly", "weekly-report/weekly", "closed-loop/manual", "replan/hourly"}
ARTIFACTS = REPO / "reports" / "test-artifacts"


def _cli(*args: str):
    from cityloop.cli import app

    return CliRunner().invoke(app, list(args), catch_exceptions=False)


AUTH: dict[str, tuple[str, str]] = {}  # API URL -> the stack's basic auth (the stack fixture fills it)
SECRET, STRANGER = "CITYLOOP_TEST_SECRET", "OTHER_TOOL_TOKEN"  # set in the shell that runs `cityloop up`


def _api(api: str, method: str, path: str, body=None, tries: int = 8):
    for i in range(tries):
        r = requests.request(method, f"{api}{path}", json=body, timeout=15, auth=AUTH.get(api))
        if r.status_code != 503:
            r.raise_for_status()
            return r.json() if r.content else None
        time.sleep(0.5 * (i + 1))
    r.raise_for_status()


def _deployment(api: str, name: str) -> dict:
    flow, dep = name.split("/")
    return _api(api, "POST", "/deployments/filter", {"flows": {"name": {"any_": [flow]}},
                                                     "deployments": {"name": {"any_": [dep]}}})[0]


def _cancel(api: str, run: dict) -> None:
    state = _api(api, "GET", f"/flow_runs/{run['id']}")["state"]["type"]
    if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
        return
    target = "CANCELLING" if state == "RUNNING" else "CANCELLED"
    _api(api, "POST", f"/flow_runs/{run['id']}/set_state",
         {"state": {"type": target, "name": target.title()}, "force": True})


# ------------------------------------------------------------------ the stack (one per module)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    """`cityloop up --no-labelstudio` in a temporary workspace on free ports; `down` at the end."""
    ws = make_workspace(tmp_path_factory.mktemp("stack") / "ws")
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["gate"]["min_frames_per_class"] = 0  # the ingest test feeds 8 frames: not every class is in them
    params["stack"]["poll_seconds"] = 1
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(ws, "commit", "-qam", "test params")
    port = free_port()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CITYLOOP_ROOT", str(ws))
        mp.setenv(SECRET, "parent-shell-secret-not-for-servers")
        mp.setenv(STRANGER, "another-tools-token")
        t0 = time.monotonic()
        res = _cli("up", "--port", str(port), "--no-labelstudio")
        assert res.exit_code == 0, res.output
        print(json.dumps({"up_seconds": round(time.monotonic() - t0, 1)}))
        from cityloop.stack import Stack

        st = Stack(ws)
        api = f"http://127.0.0.1:{port}/api"
        user, _, password = st.auth_string().partition(":")
        AUTH[api] = (user, password)
        yield {"root": ws, "port": port, "api": api, "url": f"http://127.0.0.1:{port}",
               "up_output": res.output, "stack": st}
        st.down()  # idempotent: a no-op after test_down_stops_everything


@pytest.mark.slow
def test_up_prints_urls_and_a_second_up_finds_the_running_stack(stack):
    out = stack["up_output"]
    assert stack["url"] in out and f"{stack['url']}/deployments" in out
    st = stack["stack"].status()
    server, serve = st.get("prefect-server"), st.get("serve")
    assert server.running and serve.running and not st.get("labelstudio").running
    assert (stack["root"] / ".cityloop" / "prefect" / "prefect.db").exists()  # SQLite in the workspace's PREFECT_HOME
    t0 = time.monotonic()
    again = _cli("up", "--no-labelstudio")  # the port of the last `up` (stack.json)
    assert again.exit_code == 0, again.output
    st2 = stack["stack"].status()
    assert (st2.get("prefect-server").pid, st2.get("serve").pid) == (server.pid, serve.pid)  # found, not restarted
    assert time.monotonic() - t0 < 15
    assert {d["name"] for d in st2.deployments} == EXPECTED


@pytest.mark.slow
def test_the_run_button_ingests_frames_into_a_new_dataset_version(stack, tmp_path: Path):
    from cityloop.governance import versioning
    from cityloop.scenes.frames import generate_frames

    api, root = stack["api"], stack["root"]
    src = tmp_path / "frames"
    generate_frames("lab", 8, 0, src)
    dep = _deployment(api, "ingest/manual")
    assert dep["parameters"]["root"] == str(root)  # the UI's run form starts from the workspace
    t0 = time.monotonic()
    run = _api(api, "POST", f"/deployments/{dep['id']}/create_flow_run",  # what the UI's Run button sends
               {"parameters": {"src": str(src), "dataset": "lab", "push": False}})

    def finished():
        s = _api(api, "GET", f"/flow_runs/{run['id']}")["state"]
        return s if s["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None

    state = wait_for(finished, 150, "the ingest run to finish", every=1.0)
    assert state["type"] == "COMPLETED", state.get("message")
    print(json.dumps({"ingest_run_seconds": round(time.monotonic() - t0, 1)}))
    versions = versioning.list_versions(root, "lab")
    assert [v.id for v in versions] == ["lab@v1"] and versions[0].summary["frames"] == 8

    def versioned_event():  # the flow announced the version (the event a train trigger listens to)
        ev = _api(api, "POST", "/events/filter", {"filter": {"event": {"name": ["cityloop.dataset.versioned"]}}})
        return [e for e in ev["events"] if e["payload"].get("version") == "lab@v1"]

    ev = wait_for(versioned_event, 30, "the cityloop.dataset.versioned event", every=1.0)[0]
    assert ev["resource"]["prefect.resource.id"] == "cityloop.dataset.lab"


@pytest.mark.slow
def test_events_trigger_runs_with_templated_parameters(stack):
    api, root = stack["api"], str(stack["root"])
    now = dt.datetime.now(dt.UTC).isoformat()
    events = [
        {"id": str(uuid.uuid4()), "occurred": now, "event": "cityloop.dataset.versioned",
         "resource": {"prefect.resource.id": "cityloop.dataset.field-labeled"},
         "payload": {"version": "field-labeled@v7", "dataset": "field-labeled"}},
        {"id": str(uuid.uuid4()), "occurred": now, "event": "cityloop.hard-examples.ready",
         "resource": {"prefect.resource.id": "cityloop.dataset.edge-hard"},
         "payload": {"version": "edge-hard@v3", "count": 320}},
        {"id": str(uuid.uuid4()), "occurred": now, "event": "cityloop.dataset.versioned",  # not the labeled
         "resource": {"prefect.resource.id": "cityloop.dataset.lab"}, "payload": {"version": "lab@v9"}},
    ]
    _api(api, "POST", "/events", events)
    expect = {"train/on-new-labels": {"data": "field-labeled@v7", "parent": "cityloop-detector:latest", "root": root},
              "label/on-hard-examples": {"data": "edge-hard@v3", "annotators": "people", "root": root}}
    for name, params in expect.items():
        dep = _deployment(api, name)
        runs = wait_for(lambda d=dep: _api(api, "POST", "/flow_runs/filter",
                                           {"flow_runs": {"deployment_id": {"any_": [d["id"]]}}}),
                        45, f"a run of {name}", every=0.5)
        try:
            assert len(runs) == 1, [r["parameters"] for r in runs]  # lab@v9 started no training
            assert {k: runs[0]["parameters"].get(k) for k in params} == params
        finally:
            for r in runs:  # a cheap check: the real batch / fine-tune is not what this test is about
                _cancel(api, r)


@pytest.mark.slow
def test_the_ui_deployments_page_shows_every_deployment(stack):
    from playwright.sync_api import sync_playwright

    from cityloop.labeling.browser import CHROMIUM, FLAGS

    out = ARTIFACTS / "prefect-deployments.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            # what the UI's login page stores once the operator types the auth string
            password = base64.b64encode(stack["stack"].auth_string().encode()).decode()
            context.add_init_script(f"localStorage.setItem('prefect-password', '{password}')")
            page = context.new_page()
            page.goto(f"{stack['url']}/deployments", timeout=60_000)
            page.get_by_text("on-new-labels").first.wait_for(timeout=60_000)
            page.wait_for_timeout(1000)
            page.screenshot(path=str(out), full_page=True)
            text = page.inner_text("body")
        finally:
            browser.close()
    assert f"{len(EXPECTED)} Deployments" in text
    for name in EXPECTED:
        flow, dep = name.split("/")
        assert flow in text and dep in text, name
    assert "At 02:00 AM every day" in text  # the nightly patrol's schedule
    assert out.stat().st_size > 10_000


@pytest.mark.slow
def test_status_lists_components_and_deployments(stack):
    res = _cli("status", "--json")
    assert res.exit_code == 0, res.output
    st = json.loads(res.output)
    comps = {c["name"]: c for c in st["components"]}
    assert comps["prefect-server"]["running"] and comps["prefect-server"]["url"] == stack["url"]
    assert comps["serve"]["running"] and comps["serve"]["pid"]
    deps = {d["name"]: d for d in st["deployments"]}
    assert set(deps) == EXPECTED
    assert deps["patrol/nightly"]["schedules"] == ["0 2 * * *"]
    assert deps["weekly-report/weekly"]["schedules"] == ["0 7 * * 1"]
    assert deps["train/on-new-labels"]["triggers"] == ["new labeled version → train"]
    assert deps["label/on-hard-examples"]["triggers"] == ["enough hard examples → label"]
    assert not any(d["paused"] for d in deps.values())
    # the run form gets described parameters (Google-style Args: parsed into the schema)
    dep = _deployment(stack["api"], "train/on-new-labels")
    props = dep["parameter_openapi_schema"]["properties"]
    assert props["data"]["description"].startswith("dataset version to train on")
    assert props["promote"]["type"] == "boolean"


@pytest.mark.slow
def test_the_api_refuses_strangers_and_other_origins(stack):
    """A web page the operator opens cannot start `weekly-report` with out=/any/dir: no auth, no run."""
    api, url = stack["api"], stack["url"]
    dep = _deployment(api, "weekly-report/weekly")
    runs_before = len(_api(api, "POST", "/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [dep["id"]]}}}))
    run = f"{api}/deployments/{dep['id']}/create_flow_run"
    hostile = {"parameters": {"out": "/tmp/anywhere"}}
    assert requests.post(run, json=hostile, timeout=10).status_code == 401  # no credentials
    assert requests.post(run, json=hostile, timeout=10, auth=("cityloop", "guess")).status_code == 401
    assert requests.post(run, json=hostile, timeout=10, headers={"Origin": "http://evil.example"}).status_code == 401
    assert requests.post(f"{api}/flow_runs/filter", json={}, timeout=10).status_code == 401
    assert requests.get(f"{api}/health", timeout=10).ok  # the liveness probe stays open
    runs_after = _api(api, "POST", "/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [dep["id"]]}}})
    assert len(runs_after) == runs_before  # nothing was started
    # CORS: the browser lets only the server's own UI read answers or send credentials
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    evil = requests.options(run, headers={"Origin": "http://evil.example", **preflight}, timeout=10)
    assert "access-control-allow-origin" not in evil.headers, dict(evil.headers)
    plain = requests.get(f"{api}/health", headers={"Origin": "http://evil.example"}, timeout=10)
    assert "access-control-allow-origin" not in plain.headers, dict(plain.headers)
    own = requests.options(run, headers={"Origin": url, **preflight}, timeout=10)
    assert own.headers.get("access-control-allow-origin") == url, dict(own.headers)


@pytest.mark.slow
def test_the_control_room_files_are_private_and_children_get_a_minimal_env(stack):
    root, st = stack["root"], stack["stack"]
    state = root / ".cityloop"
    for d in (state, state / "stack", state / "prefect"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    files = [state / "prefect" / "prefect.db", st.credentials_file, st.server.log_file, st.serve.log_file,
             st.server.pid_file]
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    auth = st.auth_string()
    assert auth and auth.startswith("cityloop:") and len(auth) > 30
    for log in (st.server.log_file, st.serve.log_file):
        assert auth.split(":", 1)[1] not in log.read_text(errors="replace"), log  # the secret is never logged
    server, serve = _group_environs(st.server.pid()), _group_environs(st.serve.pid())
    assert server and serve
    for env in server:  # the server and every worker it spawned
        assert SECRET not in env and STRANGER not in env and "PREFECT_API_URL" not in env
        assert env["PREFECT_SERVER_API_AUTH_STRING"] == auth and "PATH" in env
    for env in serve:  # the serve process gets the project's settings, not another tool's token
        assert STRANGER not in env
        assert env["PREFECT_API_AUTH_STRING"] == auth and env["PREFECT_API_URL"] == stack["api"]


def _group_environs(pgid: int | None) -> list[dict[str, str]]:
    """The environment of every live process in the process group `pgid`."""
    out = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[2] != str(pgid):
                continue
            raw = (proc / "environ").read_bytes()
        except (OSError, IndexError):
            continue
        out.append(dict(kv.split("=", 1) for kv in raw.decode(errors="replace").split("\0") if "=" in kv))
    return out


@pytest.mark.slow
def test_down_stops_everything_and_keeps_the_data(stack):
    st = stack["stack"].status()
    pids = [c.pid for c in st.components if c.pid]
    assert len(pids) == 2
    res = _cli("down")
    assert res.exit_code == 0 and "prefect-server: stopped" in res.output, res.output
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    with socket.socket() as s:  # the port is free again (nothing listens; TIME_WAIT leftovers allowed)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", stack["port"]))
    after = _cli("status", "--json")
    comps = json.loads(after.output)["components"]
    assert not any(c["running"] for c in comps)
    assert (stack["root"] / ".cityloop" / "prefect" / "prefect.db").exists()  # run history kept
    from cityloop.governance import versioning

    assert [v.id for v in versioning.list_versions(stack["root"], "lab")] == ["lab@v1"]
    assert "not running" in _cli("down").output  # a second down is a no-op
    # up again on the same database: history kept, the deployments unpaused (serve pauses them when it stops)
    res = _cli("up", "--no-labelstudio")
    assert res.exit_code == 0, res.output
    api = stack["api"]
    assert not any(d["paused"] for d in stack["stack"].status().deployments)
    runs = _api(api, "POST", "/flow_runs/filter", {"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}})
    assert any(r["parameters"].get("dataset") == "lab" for r in runs)
    assert _cli("down").exit_code == 0


# ------------------------------------------------------------------------- no server needed


def test_deployments_have_names_schedules_triggers_and_described_parameters(workspace: Path):
    from prefect.client.schemas.schedules import CronSchedule

    from cityloop.flows.deployments import build_deployments

    deps = {f"{d.flow_name}/{d.name}": d for d in build_deployments(workspace)}
    assert set(deps) == EXPECTED
    for name, d in deps.items():
        assert d.parameters["root"] == str(workspace), name
        assert "cityloop" in d.tags and d.description, name
        props = d._parameter_openapi_schema.properties
        missing = [p for p, v in props.items() if not v.get("description")]
        assert not missing, f"{name}: parameters without a description: {missing}"
    sched = {n: [s.schedule for s in d.schedules] for n, d in deps.items() if d.schedules}
    assert set(sched) == {"patrol/nightly", "weekly-report/weekly", "replan/hourly"}
    assert sched["replan/hourly"] == [CronSchedule(cron="0 * * * *", timezone="UTC")]  # params schedule.cron
    assert sched["patrol/nightly"] == [CronSchedule(cron="0 2 * * *", timezone="UTC")]
    assert sched["weekly-report/weekly"][0].cron == "0 7 * * 1"  # params report.cron
    assert deps["patrol/nightly"].parameters["streams"] == str(workspace / "data" / "raw" / "field-video")
    trig = {n: d.triggers for n, d in deps.items() if d.triggers}
    assert set(trig) == {"label/on-hard-examples", "train/on-new-labels", "replan/hourly"}
    (replan,) = trig["replan/hourly"]
    assert replan.expect == {"cityloop.model.promoted"}
    (train,), (label,) = trig["train/on-new-labels"], trig["label/on-hard-examples"]
    assert train.expect == {"cityloop.dataset.versioned"}
    assert train.match.model_dump() == {"prefect.resource.id": "cityloop.dataset.field-labeled"}
    assert train.parameters["data"] == "{{ event.payload.version }}" and train.threshold == 1
    assert label.expect == {"cityloop.hard-examples.ready"}
    assert label.parameters["data"] == "{{ event.payload.version }}"
    assert deps["train/on-new-labels"]._parameter_openapi_schema.properties["data"]["type"] == "string"


def test_children_get_only_the_environment_they_need(workspace: Path, monkeypatch: pytest.MonkeyPatch):
    from cityloop.stack import Stack

    for key, value in ((SECRET, "x"), (STRANGER, "y"), ("PREFECT_API_URL", "http://elsewhere:4200/api"),
                       ("PREFECT_API_DATABASE_CONNECTION_URL", "postgresql+asyncpg://db/prefect"),
                       ("LABEL_STUDIO_API_KEY", "ls-token")):
        monkeypatch.setenv(key, value)
    st = Stack(workspace, prefect_port=free_port())
    auth = st.auth_string(create=True)
    server, serve = st.server_env(auth), st.serve_env(auth)
    assert not {SECRET, STRANGER, "LABEL_STUDIO_API_KEY", "PREFECT_API_URL"} & set(server)
    assert server["PREFECT_API_DATABASE_CONNECTION_URL"] == "postgresql+asyncpg://db/prefect"  # the user's own
    assert server["PREFECT_SERVER_API_AUTH_STRING"] == auth
    assert server["PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS"].split(",") == [f"http://127.0.0.1:{st.port}",
                                                                            f"http://localhost:{st.port}"]
    assert STRANGER not in serve and serve["PREFECT_API_URL"] == st.api_url  # never another server's
    assert serve["PREFECT_API_AUTH_STRING"] == auth and serve["LABEL_STUDIO_API_KEY"] == "ls-token"  # flows need it
    assert stat.S_IMODE(st.credentials_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(st.state.stat().st_mode) == 0o700
    assert Stack(workspace).auth_string(create=True) == auth  # generated once, then reused
    monkeypatch.setenv("PREFECT_SERVER_API_AUTH_STRING", "ops:from-the-vault")
    assert st.auth_string() == "ops:from-the-vault"  # the environment overrides the file


def test_stale_pid_files_are_removed(workspace: Path):
    from cityloop.stack import Stack

    st = Stack(workspace, prefect_port=free_port())
    st.state.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    st.server.pid_file.write_text(str(dead.pid))  # a process that is gone
    st.serve.pid_file.write_text(str(os.getpid()))  # alive, but not a serve process (a recycled pid)
    status = st.status()
    assert not any(c.running for c in status.components)
    assert not st.server.pid_file.exists() and not st.serve.pid_file.exists()


def test_up_refuses_a_port_taken_by_someone_else(workspace: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = _cli("up", "--port", str(port), "--no-labelstudio")
    assert res.exit_code == 1
    assert f"port {port}" in res.output and "taken by another process" in res.output
    assert not (workspace / ".cityloop" / "stack" / "prefect-server.pid").exists()


# ------------------------------------------------------------------------------ the scale path


@pytest.mark.parametrize("name", ["prefect.yaml", "prefect-process.yaml"])
def test_prefect_yaml_matches_the_served_deployments(name: str, workspace: Path, monkeypatch: pytest.MonkeyPatch):
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.events import DeploymentEventTrigger
    from prefect.flows import load_flow_from_entrypoint

    from cityloop.flows.deployments import build_deployments

    served = {f"{d.flow_name}/{d.name}": d for d in build_deployments(workspace)}
    spec = yaml.safe_load((REPO / "deploy" / name).read_text())
    monkeypatch.chdir(REPO)  # entrypoints are relative to the repository (the pull step's directory)
    pool = "cityloop-k8s" if name == "prefect.yaml" else "cityloop-process"
    names = set()
    for d in spec["deployments"]:
        flow = load_flow_from_entrypoint(d["entrypoint"])
        full = f"{flow.name}/{d['name']}"
        names.add(full)
        s = served[full]
        assert d["entrypoint"] == s.entrypoint, full
        assert d["work_pool"]["name"] == pool
        assert set(d["parameters"]) <= set(flow.parameters.properties), full
        assert sorted(d.get("tags", [])) == sorted(s.tags), full
        assert [CronSchedule(**sc).cron for sc in d.get("schedules", [])] == [x.schedule.cron for x in s.schedules]
        triggers = [DeploymentEventTrigger(**t) for t in d.get("triggers", [])]
        assert [(t.name, t.expect, t.match, set(t.parameters)) for t in triggers] == \
               [(t.name, t.expect, t.match, set(t.parameters)) for t in s.triggers], full
    assert names == EXPECTED
    if name == "prefect.yaml":
        jv = spec["definitions"]["work_pool"]["job_variables"]
        assert jv["image"] == "cityloop:latest" and jv["env"]["CITYLOOP_DASK_ADDRESS"].startswith("tcp://")


def test_k8s_bento_manifest_probes_the_service_endpoints():
    docs = list(yaml.safe_load_all((REPO / "deploy" / "k8s" / "bento.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"Deployment", "Service"}
    c = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    service_src = (REPO / "bento" / "service.py").read_text()
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/livez")):
        assert c[probe]["httpGet"]["path"] == path and f'"{path}"' in service_src
    assert c["ports"][0]["containerPort"] == 3000  # BentoML's port
    assert kinds["Service"]["spec"]["selector"] == kinds["Deployment"]["spec"]["selector"]["matchLabels"]


def test_an_s3_dvc_remote_is_configuration_only(tmp_path: Path):
    ws = make_workspace(tmp_path / "ws")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    for cmd in (["remote", "add", "-d", "s3", "s3://bucket/cityloop"],
                ["remote", "modify", "s3", "endpointurl", "http://127.0.0.1:9000"]):
        subprocess.run([str(Path(os.sys.executable).with_name("dvc")), *cmd], cwd=ws, env=env, check=True,
                       capture_output=True)
    config = (ws / ".dvc" / "config").read_text()
    assert "remote = s3" in config
    assert "['remote \"s3\"']" in config and "url = s3://bucket/cityloop" in config
    assert "endpointurl = http://127.0.0.1:9000" in config


def test_the_scale_env_example_names_every_engine():
    text = (REPO / "deploy" / "env.scale.example").read_text()
    for key in ("PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://", "CITYLOOP_LS_DATABASE_URL=postgresql://",
                "CITYLOOP_DASK_ADDRESS=tcp://", "PREFECT_API_URL=", "AWS_ACCESS_KEY_ID="):
        assert key in text, key
