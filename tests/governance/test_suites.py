"""The suites a workspace keeps in data/expectations/ are the ones its gate checks.

A team tightens its gate by editing the reviewable JSON in its workspace, not the package: the
edited copy must change what an ingest checks (and name the new expectation when it fails), while the
unedited copy, the packaged defaults, and the repository's own suites stay as they were.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cityloop.governance.gate import find_suites, load_suite_specs, run_gate
from cityloop.governance.repository import DataRepository, GateFailed

BETWEEN = "expect_column_values_to_be_between"
NOTE = "test-only: this workspace accepts frames at least 1024 px wide"
MIN_WIDTH = 1024  # the simulator renders 192x192


def tighten(frames_json: Path) -> None:
    """Add an expectation every simulator frame fails."""
    entries = json.loads(frames_json.read_text())
    entries.append({"type": BETWEEN, "kwargs": {"column": "width", "min_value": MIN_WIDTH}, "meta": {"notes": NOTE}})
    frames_json.write_text(json.dumps(entries, indent=2))


def test_an_edited_workspace_suite_changes_what_the_gate_checks(workspace: Path, lab_copy: Path):
    packaged = find_suites(None)
    suites = workspace / "data" / "expectations"
    assert packaged.is_dir() and packaged != suites
    shutil.rmtree(suites)  # the workspace's suites: a plain copy of the packaged ones (never a link to them)
    shutil.copytree(packaged, suites)
    assert find_suites(workspace) == suites and not suites.is_symlink()
    originals = {p.name: p.read_bytes() for p in packaged.glob("*.json")}

    repo = DataRepository(workspace)
    cand = repo.prepare(lab_copy, "lab")
    unedited = repo.validate(cand, docs=False)
    assert unedited.success, unedited.report()

    tighten(suites / "frames.json")
    assert len(load_suite_specs(suites)["frames"]) == len(load_suite_specs(packaged)["frames"]) + 1

    with pytest.raises(GateFailed) as info:  # the platform's own path: ingest = prepare → validate → publish
        repo.ingest(lab_copy, "lab", docs=False, push=False)
    result = info.value.result
    assert [(f.suite, f.expectation, f.column) for f in result.failures] == [("frames", BETWEEN, "width")], \
        result.report()
    failure = result.failures[0]
    assert failure.kwargs["min_value"] == MIN_WIDTH and failure.notes == NOTE
    assert failure.unexpected_count == len(cand.manifest)
    assert result.evaluated == unedited.evaluated + 1
    assert NOTE in result.report() and BETWEEN in result.report()
    assert not (workspace / "data" / "datasets" / "lab").exists()  # nothing published

    # the edit lives in the workspace only: the packaged defaults still pass the same candidate
    assert {p.name: p.read_bytes() for p in packaged.glob("*.json")} == originals
    default = run_gate(cand.manifest, cand.annotations, repo.gate_params, suites_dir=packaged)
    assert default.success and default.evaluated == unedited.evaluated, default.report()
