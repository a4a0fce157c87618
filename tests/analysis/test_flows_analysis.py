"""Prefect flows: `patrol` fans cameras out over a 2-process Dask LocalCluster; `weekly-report`
runs on the store it filled, and its deployment carries the weekly schedule."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from prefect.testing.utilities import prefect_test_harness


@pytest.fixture(scope="module")
def prefect_harness():
    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.mark.slow
def test_patrol_fans_out_then_the_weekly_report_runs(prefect_harness, clips, tmp_path: Path):
    from cityloop.flows.patrol import patrol_flow
    from cityloop.flows.reports import weekly_deployment, weekly_report_flow

    streams = tmp_path / "streams"
    for name in ("busy-rain", "busy-night"):  # four cameras
        shutil.copytree(clips[name], tmp_path / name)
    shutil.copytree(tmp_path / "busy-rain", streams)
    for cam in ("cam00", "cam01"):  # the night clip's cameras join as cam02/cam03
        shutil.copytree(tmp_path / "busy-night" / cam, streams / f"night-{cam}")
    import json

    cams = json.loads((streams / "cameras.json").read_text())
    night = json.loads((tmp_path / "busy-night" / "cameras.json").read_text())
    cams += [{**c, "camera_id": f"night-{c['camera_id']}"} for c in night]
    (streams / "cameras.json").write_text(json.dumps(cams))
    truth = json.loads((streams / "events.json").read_text())
    truth += [{**e, "camera_id": f"night-{e['camera_id']}"} for e in
              json.loads((tmp_path / "busy-night" / "events.json").read_text())]
    (streams / "events.json").write_text(json.dumps(truth))

    db = f"sqlite:///{tmp_path}/events.db"
    state = patrol_flow(str(streams), "truth", str(tmp_path), db, return_state=True)
    assert state.is_completed()
    res = state.result()
    assert len(res["cameras"]) == 4 and len({r["pid"] for r in res["cameras"]}) == 2  # two worker processes
    assert res["metrics"]["all"]["recall"] >= 0.7 and res["metrics"]["street_vending"]["hits"] >= 1

    rep = weekly_report_flow(root=str(tmp_path), db=db, out=str(tmp_path / "weekly"), return_state=True)
    assert rep.is_completed()
    assert Path(rep.result()["html"]).exists() and rep.result()["total"] > 0
    delivered = rep.result()["deliveries"]  # params' default sink: a folder under the workspace
    assert delivered[0]["ok"] and (tmp_path / "reports" / "outbox" / rep.result()["week"]).is_dir()
    dep = weekly_deployment(str(tmp_path))
    assert dep.schedules[0].schedule.cron == "0 7 * * 1"


def test_the_patrol_cluster_admits_only_its_own_run():
    from distributed import Client, LocalCluster

    from cityloop.flows.patrol import task_runner

    kwargs = {**task_runner(workers=1).cluster_kwargs, "processes": False}  # the same settings, in-process
    with LocalCluster(**kwargs) as cluster:
        assert cluster.scheduler_address.startswith("tls://127.0.0.1:")
        with Client(cluster) as own:  # the run holds the temporary credentials
            assert own.submit(sum, [1, 2]).result() == 3
        with pytest.raises((OSError, TimeoutError)):  # anyone else: refused at the handshake
            Client(cluster.scheduler_address.replace("tls://", "tcp://"), timeout=3)

