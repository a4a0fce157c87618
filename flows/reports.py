"""Prefect flow `weekly-report` and its weekly deployment.

Orchestration only: one task writes the reports (analysis.report.weekly_report: one per recipient,
HTML + PDF), the next delivers them to params `report.sinks` (analysis.report.deliver). A failing
sink is a warning in the run and a row in the returned summary; the reports stay on disk. Serve the
deployment with `python -m flows.reports` (a `serve` process must run for scheduled runs to start).
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, serve, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from cityloop.analysis.params import store_url
from cityloop.analysis.report import ReportParams, deliver, weekly_report
from cityloop.analysis.store import EventStore
from cityloop.core.settings import find_root, load_section


@task(name="weekly-report", retries=1, retry_delay_seconds=30)
def weekly_report_task(root: str, week: str | None, db: str | None, out: str | None) -> dict:
    """Write the reports of one ISO week (default: the latest event's), one per recipient."""
    cfg = load_section(Path(root), "report", ReportParams)
    store = EventStore(store_url(Path(root), db))
    try:
        return weekly_report(store, Path(out or Path(root) / cfg.out), week, Path(root), int(cfg.top_hotspots),
                             recipients=cfg.recipients, pdf=cfg.pdf, pdf_timeout_s=float(cfg.pdf_timeout_s))
    finally:
        store.dispose()


@task(name="deliver-weekly-report")
def deliver_task(summary: dict, root: str) -> list[dict]:
    """Copy / post every recipient's report to each configured sink (never raises for a sink)."""
    return deliver(summary, load_section(Path(root), "report", ReportParams).sinks, Path(root))


@flow(name="weekly-report")
def weekly_report_flow(week: str | None = None, root: str | None = None, db: str | None = None,
                       out: str | None = None, deliver_reports: bool = True) -> dict:
    """The weekly reports; the index page is linked as an artifact, deliveries are a markdown one."""
    root = root or str(find_root())
    summary = weekly_report_task(root, week, db, out)
    create_link_artifact(key="weekly-report", link=Path(summary["index"]).resolve().as_uri(),
                         description=f"cityloop weekly reports {summary['week']}")
    logger = get_run_logger()
    for w in summary.get("warnings", []):
        logger.warning(w)
    if deliver_reports:
        rows = deliver_task(summary, root)
        summary["deliveries"] = rows
        lines = [f"| {r['sink']} | {'ok' if r['ok'] else 'FAILED'} | {len(r['files'])} | {r['error'] or ''} |"
                 for r in rows]
        create_markdown_artifact(key="weekly-report-deliveries", markdown="| sink | state | files | error |\n"
                                 "|---|---|---|---|\n" + "\n".join(lines),
                                 description=f"weekly report {summary['week']}: deliveries")
        for r in rows:
            if not r["ok"]:
                logger.warning("sink %s failed (the reports are kept): %s", r["sink"], r["error"])
    return summary


def weekly_deployment(root: str | None = None):
    """The deployment on params.yaml `report.cron` (Mondays 07:00 by default)."""
    root = root or str(find_root())
    cron = load_section(Path(root), "report", ReportParams).cron
    return weekly_report_flow.to_deployment(name="weekly", cron=cron, parameters={"root": root})


if __name__ == "__main__":
    serve(weekly_deployment())
