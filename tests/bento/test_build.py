"""`cityloop bento build`: the bento, its Dockerfile and the .bento archive ops receive.

No Docker engine runs on these machines, so `bentoml containerize` itself is not run: the test
checks what it would build from (the generated Dockerfile and the archive's contents).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile

import pytest
from typer.testing import CliRunner

from cityloop.bento.build import bento_manifest, build_bento
from cityloop.bento.serving import DetectorClient, free_port, start_server, stop_server

from .conftest import field_images


@pytest.mark.slow
def test_build_exports_an_archive_that_serves(ws_copy, monkeypatch):
    from cityloop.cli import app

    monkeypatch.setenv("CITYLOOP_ROOT", str(ws_copy))
    res = CliRunner().invoke(app, ["bento", "build", "cityloop-detector:v1", "--json"])
    assert res.exit_code == 0, res.output
    built = json.loads(res.stdout)
    assert built["tag"].startswith("cityloop-detector:v1-")
    with tarfile.open(built["archive"]) as tar:
        names = set(tar.getnames())
        dockerfile = tar.extractfile("./env/docker/Dockerfile").read().decode()
        reqs = tar.extractfile("./env/python/requirements.txt").read().decode()
    assert {"./bento.yaml", "./src/cityloop/bento/service.py", "./src/cityloop/bento/model/model.onnx",
            "./src/cityloop/bento/model/card.json", "./src/cityloop/models/runtime.py"} <= names
    assert not any("torch" in n or "weights.pt" in n or "/governance/" in n for n in names), names
    assert "FROM python:3.11" in dockerfile and "onnxruntime==" in reqs and "torch" not in reqs
    manifest = bento_manifest(built["path"])
    assert manifest["labels"]["model_version"] == "cityloop-detector:v1"
    assert {r["name"] for r in manifest["schema"]["routes"]} >= {"detect", "detect_unbatched"}
    again = build_bento(ws_copy, "cityloop-detector:v1")  # same model, same code: same bento
    assert again.reused and again.tag == built["tag"]
    srv = start_server(ws_copy, free_port(), target=built["tag"])  # the bento itself serves
    try:
        out = DetectorClient(srv.url).detect(field_images(ws_copy, 2))
        assert [o["model_version"] for o in out] == ["cityloop-detector:v1"] * 2
    finally:
        stop_server(srv)


def test_bento_and_edge_import_without_torch_or_prefect():
    code = ("import sys, cityloop.bento.service, cityloop.bento.build, cityloop.bento.serving, cityloop.edge.node, "
            "cityloop.edge.outbox, cityloop.edge.inbox, cityloop.edge.rollout; bad = [m for m in ('torch', "
            "'lightning', 'pytorch_lightning', 'prefect') if m in sys.modules]; assert not bad, bad")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"CITYLOOP_MODEL_DIR": "/nonexistent", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
