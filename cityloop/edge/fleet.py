"""The registry of edge nodes: every node's status file, who is up, waiting for a deployment."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx

from cityloop.core.procs import alive
from cityloop.edge.node import API_TOKEN_ENV, assign, node_dir, read_json


def list_nodes(root: Path) -> list[dict]:
    """Every node's last status, with `up` (fresh heartbeat, process alive, not stopped)."""
    base = Path(root) / ".cityloop" / "edge"
    out = []
    for d in sorted(base.iterdir()) if base.exists() else []:
        st = read_json(d / "status.json")
        if st is None:
            continue
        age = time.time() - float(st.get("heartbeat", 0))
        st["age_s"] = round(age, 1)
        st["assigned"] = (read_json(d / "assignment.json") or {}).get("model_version")
        st["up"] = st.get("state") not in ("stopped",) and age <= float(st.get("stale_s", 10)) \
            and alive(int(st.get("pid") or 0))
        out.append(st)
    return out


def up_nodes(root: Path) -> list[dict]:
    return [n for n in list_nodes(root) if n["up"]]


def served_version(url: str, timeout: float = 5.0) -> str | None:
    """What a node's server says it serves (None when it does not answer)."""
    token = os.environ.get(API_TOKEN_ENV)
    try:
        r = httpx.post(url + "/info", timeout=timeout, headers={"Authorization": f"Bearer {token}"} if token else {})
        return r.json().get("model_version") if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def deploy(root: Path, names: list[str], model_version: str, timeout: float = 180.0) -> dict[str, str]:
    """Assign `model_version` to nodes and wait until each serves it; returns name -> url."""
    for name in names:
        assign(root, name, model_version)
    deadline = time.monotonic() + timeout
    ready: dict[str, str] = {}
    while len(ready) < len(names):
        for name in names:
            if name in ready:
                continue
            st = read_json(node_dir(root, name) / "status.json") or {}
            if st.get("model_version") == model_version and st.get("state") == "serving" \
                    and served_version(st["url"]) == model_version:
                ready[name] = st["url"]
        if len(ready) < len(names):
            if time.monotonic() > deadline:
                missing = sorted(set(names) - set(ready))
                raise TimeoutError(f"nodes {missing} did not serve {model_version} within {timeout:.0f} s")
            time.sleep(0.3)
    return ready
