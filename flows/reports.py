"""Prefect flow `weekly-report` and its weekly deployment.

Orchestration only: the task calls analysis.report.weekly_report. Serve the deployment with
`python -m flows.reports` (a `serve` process must run for scheduled runs to start).
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, serve, task
from prefect.artifacts import create_link_artifact

from cityloop.analysis.params import store_url
from cityloop.analysis.report import ReportParams, weekly_report
from cityloop.analysis.store import EventStore
from cityloop.core.settings import find_root, load_section


@task(name="weekly-report", retries=1, retry_delay_seconds=30)
def weekly_report_task(root: str, week: str | None, db: str | None, out: str | None) -> dict:
    """Write the HTML report of one ISO week (default: the latest event's)."""
    cfg = load_section(Path(root), "report", ReportParams)
    store = EventStore(store_url(Path(root), db))
    try:
        return weekly_report(store, Path(out or Path(root) / cfg.out), week, Path(root), int(cfg.top_hotspots))
    finally:
        store.dispose()


@flow(name="weekly-report")
def weekly_report_flow(week: str | None = None, root: str | None = None, db: str | None = None,
                       out: str | None = None) -> dict:
    """The weekly report; its page is linked as an artifact of the run."""
    root = root or str(find_root())
    summary = weekly_report_task(root, week, db, out)
    create_link_artifact(key="weekly-report", link=Path(summary["html"]).resolve().as_uri(),
                         description=f"cityloop weekly report {summary['week']}")
    return summary


def weekly_deployment(root: str | None = None):
    """The deployment on params.yaml `report.cron` (Mondays 07:00 by default)."""
    root = root or str(find_root())
    cron = load_section(Path(root), "report", ReportParams).cron
    return weekly_report_flow.to_deployment(name="weekly", cron=cron, parameters={"root": root})


if __name__ == "__main__":
    serve(weekly_deployment())
