"""The governance flow runs under a real (temporary) Prefect server and publishes a version."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect.testing.utilities import prefect_test_harness

from cityloop.flows.governance import ingest
from cityloop.governance import versioning
from cityloop.governance.repository import GateFailed


@pytest.fixture(scope="module", autouse=True)
def prefect_harness():
    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.mark.slow
def test_ingest_flow_gates_and_versions(workspace: Path, lab_copy: Path):
    state = ingest(str(lab_copy), "lab", root=str(workspace), return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["version"] == "lab@v1" and summary["gate"]["success"]
    assert summary["frames"] == len(list((lab_copy / "images").iterdir()))
    assert [r.id for r in versioning.list_versions(workspace)] == ["lab@v1"]


@pytest.mark.slow
def test_ingest_flow_fails_on_a_gate_failure(workspace: Path, lab_copy: Path):
    meta = lab_copy / "metadata.parquet"
    import pandas as pd

    df = pd.read_parquet(meta)
    df["timestamp"] = pd.Timestamp("1971-01-01", tz="UTC")  # a camera with its clock reset
    df.to_parquet(meta)
    state = ingest(str(lab_copy), "lab", root=str(workspace), return_state=True)
    assert state.is_failed()
    with pytest.raises(GateFailed, match="timestamp"):
        state.result()
    assert versioning.list_versions(workspace) == []
