"""The Prefect flow `replan` plans and applies under a real (temporary) Prefect server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml


@pytest.mark.slow
def test_replan_flow_plans_applies_and_keeps_an_unchanged_plan(workspace: Path):
    from prefect.testing.utilities import prefect_test_harness

    from cityloop.flows.schedule import replan_flow
    from cityloop.scenes.video import generate_video

    generate_video("field", 2, 4.0, 2.0, 1, workspace / "data" / "raw" / "field-video", condition="night", hour=22)
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["schedule"]["nodes"] = {"edge-a": 2.0}
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with prefect_test_harness(server_startup_timeout=90):
        state = replan_flow(root=str(workspace), return_state=True)
        assert state.is_completed(), state.message
        first = state.result()
        again = replan_flow(root=str(workspace))
    assert first["version"] == "v1" and first["created"] and first["applied"]["nodes"] == {"edge-a": 48}
    assert again["version"] == "v1" and not again["created"] and again["change"] == "inputs unchanged"
    data = json.loads((workspace / ".cityloop" / "edge" / "edge-a" / "schedule.json").read_text())
    assert data["version"] == 1 and data["node"] == "edge-a"
