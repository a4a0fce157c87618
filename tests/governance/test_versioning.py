"""Tests for governance.versioning: side-branch dataset versions over DVC.

Every test works in a throwaway git repo under tmp_path with a local DVC remote;
nothing touches the network.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cityloop.governance import versioning as v

GITIGNORE = ".cityloop/\n/data/frames\n/data/datasets\n/data/quarantine\n"


def git(root: Path, *args: str) -> str:
    """Run git in ``root`` and return stripped stdout."""
    out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def make_git_repo(root: Path) -> Path:
    """A git repo with one commit (README, .gitignore) and a local identity."""
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.name", "Test User")
    git(root, "config", "user.email", "test@example.com")
    git(root, "config", "commit.gpgsign", "false")
    git(root, "config", "tag.gpgsign", "false")
    (root / "README.md").write_text("cityloop test workspace\n")
    (root / ".gitignore").write_text(GITIGNORE)
    git(root, "add", "README.md", ".gitignore")
    git(root, "commit", "-q", "-m", "init")
    return root


def write_pack(root: Path, name: str, payload: bytes) -> None:
    """Drop a fake frame pack into data/frames/packs."""
    packs = root / "data" / "frames" / "packs"
    packs.mkdir(parents=True, exist_ok=True)
    (packs / f"{name}.zip").write_bytes(payload)


def write_dataset(root: Path, name: str, manifest: bytes, version: int | None) -> None:
    """Write data/datasets/<name>/ with a manifest and (optionally) version.json."""
    folder = root / "data" / "datasets" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.parquet").write_bytes(manifest)
    (folder / "annotations.coco.json").write_text(json.dumps({"images": [], "v": version}))
    if version is None:
        (folder / "version.json").unlink(missing_ok=True)
    else:
        (folder / "version.json").write_text(json.dumps({"dataset": name, "version": version}))


def tree_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, keyed by relative path."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def tracked_status(root: Path) -> str:
    """``git status --porcelain`` restricted to tracked files."""
    return git(root, "status", "--porcelain", "--untracked-files=no")


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A workspace with lab@v1 and lab@v2 published (no push: cache only)."""
    root = make_git_repo(tmp_path_factory.mktemp("ws") / "repo")
    v.ensure_repo(root, remote_url=str(root.parent / "remote"))
    head, status = git(root, "rev-parse", "HEAD"), tracked_status(root)
    write_pack(root, "pack-0001", b"pack one" * 100)
    write_dataset(root, "lab", b"manifest v1", version=1)
    rec1 = v.publish(root, "lab", {"frames": 2, "boxes": {"car": 3}}, push=False)
    write_pack(root, "pack-0002", b"pack two" * 100)
    write_dataset(root, "lab", b"manifest v2 - more rows", version=2)
    rec2 = v.publish(root, "lab", {"frames": 4}, push=False)
    return {"root": root, "head": head, "status": status, "v1": rec1, "v2": rec2}


def test_publish_twice_tags_data_branch_and_leaves_user_branch(published: dict) -> None:
    root, rec1, rec2 = published["root"], published["v1"], published["v2"]
    assert (rec1.id, rec2.id) == ("lab@v1", "lab@v2")
    assert git(root, "tag", "--list", "data/*").split() == ["data/lab/v1", "data/lab/v2"]
    assert git(root, "cat-file", "-t", "data/lab/v1") == "tag"  # annotated
    assert git(root, "rev-parse", "data/lab/v2^{commit}") == rec2.commit
    assert git(root, "rev-parse", f"refs/heads/{v.DATA_BRANCH}") == rec2.commit
    assert git(root, "rev-parse", f"{rec2.commit}^1") == rec1.commit  # previous tip first
    assert published["head"] in git(root, "rev-list", "--parents", "-n1", rec1.commit)
    # the user's branch, HEAD, index and tracked files are untouched
    assert git(root, "symbolic-ref", "HEAD") == "refs/heads/main"
    assert git(root, "rev-parse", "HEAD") == published["head"] == rec2.code_commit
    assert tracked_status(root) == published["status"] == ""
    assert git(root, "diff", "--cached", "--name-only") == ""
    # the version commit carries the pointers and the DVC scaffold, nothing else new
    files = set(git(root, "ls-tree", "-r", "--name-only", rec2.commit).split())
    assert {"data/frames.dvc", "data/datasets.dvc", ".dvc/config", "README.md"} <= files
    assert ".dvc/config.local" not in files
    # summary: the caller's fields plus the dvc hashes
    assert rec1.summary["boxes"] == {"car": 3}
    assert rec1.summary["dvc"]["data/frames"]["md5"].endswith(".dir")
    assert rec1.summary["dvc"]["data/frames"] != rec2.summary["dvc"]["data/frames"]


def test_list_versions_and_resolve(published: dict) -> None:
    root, rec1, rec2 = published["root"], published["v1"], published["v2"]
    listed = v.list_versions(root)
    assert [r.id for r in listed] == ["lab@v1", "lab@v2"]
    assert listed[0] == rec1 and listed[1] == rec2  # tag message round-trips the record
    assert v.list_versions(root, "other") == []
    assert v.resolve(root, "lab@latest") == rec2
    assert v.resolve(root, "lab@v1") == rec1
    assert v.next_version(root, "lab") == 3
    assert v.next_version(root, "other") == 1
    assert v.parse_version_id("lab@latest", root) == ("lab", 2)
    with pytest.raises(v.VersionNotFoundError, match=r"lab@v9 not found; available: lab@v1, lab@v2"):
        v.resolve(root, "lab@v9")
    with pytest.raises(LookupError, match=r"no published versions.*lab"):
        v.resolve(root, "city@latest")


def test_parse_version_id_errors() -> None:
    assert v.parse_version_id("lab@v3") == ("lab", 3)
    assert v.parse_version_id("night-rain-2@v12") == ("night-rain-2", 12)
    for bad in ("lab", "lab@3", "lab@v0", "Lab@v1", "lab@vx", "@v1"):
        with pytest.raises(ValueError, match="invalid"):
            v.parse_version_id(bad)
    with pytest.raises(ValueError, match="needs a workspace root"):
        v.parse_version_id("lab@latest")


def test_read_version_file_old_and_current(published: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    root = published["root"]
    # v1: the workspace moved on to v2, so the bytes come from DVC (local cache, no remote)
    assert v.read_version_file(root, "lab@v1", "manifest.parquet") == b"manifest v1"
    # v2 is the workspace's version: served from disk without asking DVC
    import dvc.api

    def no_dvc(*args: object, **kwargs: object) -> None:
        raise AssertionError("workspace fast path not taken")

    with monkeypatch.context() as patch:
        patch.setattr(dvc.api, "open", no_dvc)
        current = v.read_version_file(root, "lab@v2", "manifest.parquet")
    assert current == b"manifest v2 - more rows"
    coco = json.loads(v.read_version_file(root, "lab@v1", "annotations.coco.json"))
    assert coco["v"] == 1
    with pytest.raises(ValueError, match="inside the dataset folder"):
        v.read_version_file(root, "lab@v1", "../frames/packs/pack-0001.zip")


def test_publish_refuses_mismatched_version_json(published: dict) -> None:
    root = published["root"]
    with pytest.raises(v.VersionConflictError, match="declares v2 but the next version"):
        v.publish(root, "lab", {}, push=False)  # version.json still says v2
    with pytest.raises(ValueError, match="invalid dataset name"):
        v.publish(root, "Bad_Name", {})
    with pytest.raises(v.VersioningError, match="nothing to publish"):
        v.publish(root, "absent", {})
    assert [r.id for r in v.list_versions(root)] == ["lab@v1", "lab@v2"]


def test_ensure_repo_idempotent_and_refuses_non_git(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(v.VersioningError, match="not a git repository"):
        v.ensure_repo(plain)
    assert not (plain / ".dvc").exists()
    root = make_git_repo(tmp_path / "repo")
    v.ensure_repo(root)
    local_cfg = (root / ".dvc" / "config.local").read_text()
    assert "local" in local_cfg and str(root / ".cityloop" / "dvc-remote") in local_cfg
    assert (root / ".cityloop" / "dvc-remote").is_dir()
    assert "remote" not in (root / ".dvc" / "config").read_text()  # committed config stays clean
    assert git(root, "diff", "--cached", "--name-only") == ""  # dvc init's staging undone
    v.ensure_repo(root, remote_url=str(tmp_path / "elsewhere"))  # no-op: a default exists
    assert (root / ".dvc" / "config.local").read_text() == local_cfg
    with pytest.raises(v.VersioningError, match="inside the git repository"):
        v.ensure_repo(root / ".dvc")


def test_refuses_when_data_branch_checked_out(tmp_path: Path) -> None:
    root = make_git_repo(tmp_path / "repo")
    git(root, "checkout", "-q", "-b", v.DATA_BRANCH)
    write_dataset(root, "lab", b"m", version=None)
    with pytest.raises(v.VersioningError, match="is checked out"):
        v.publish(root, "lab", {})


def test_publish_on_unborn_head(tmp_path: Path) -> None:
    root = tmp_path / "fresh"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.name", "Test User")
    git(root, "config", "user.email", "test@example.com")
    write_dataset(root, "lab", b"m", version=1)
    rec = v.publish(root, "lab", {}, push=False)
    assert rec.code_commit is None
    assert git(root, "rev-list", "--parents", "-n1", rec.commit) == rec.commit  # root commit
    assert git(root, "status", "--porcelain", "--untracked-files=no") == ""
    assert subprocess.run(["git", "rev-parse", "-q", "--verify", "HEAD"], cwd=root).returncode
    assert v.read_version_file(root, "lab@v1", "manifest.parquet") == b"m"


def test_dvc_round_trip_and_checkout(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_git_repo(tmp_path / "repo")
    remote = tmp_path / "remote"
    v.ensure_repo(root, remote_url=str(remote))
    write_pack(root, "pack-0001", os.urandom(50_000))
    write_dataset(root, "lab", b"manifest v1", version=1)
    quarantine = root / "data" / "quarantine" / "ingest-1"
    quarantine.mkdir(parents=True)
    (quarantine / "bad.jpg.reason.json").write_text('{"reason": "corrupt"}')
    v.publish(root, "lab", {"n": 1})
    snap1 = {d: tree_digest(root / "data" / d) for d in ("frames", "datasets", "quarantine")}
    write_pack(root, "pack-0002", os.urandom(50_000))
    write_dataset(root, "lab", b"manifest v2", version=2)
    rec2 = v.publish(root, "lab", {"n": 2})
    snap2 = {d: tree_digest(root / "data" / d) for d in ("frames", "datasets", "quarantine")}
    assert rec2.summary["dvc"]["data/quarantine"]["nfiles"] == 1
    assert any(remote.rglob("*")), "push wrote nothing to the remote"

    shutil.rmtree(root / ".dvc" / "cache")
    shutil.rmtree(root / "data" / "frames")
    shutil.rmtree(root / "data" / "datasets")
    # with no cache, reads of an old version stream from the remote
    assert v.read_version_file(root, "lab@v1", "manifest.parquet") == b"manifest v1"
    with caplog.at_level("INFO", logger=v.__name__):
        v.checkout(root, "lab@v1")
    assert "pulling from the remote" in caplog.text  # the cache was empty
    assert {d: tree_digest(root / "data" / d) for d in snap1} == snap1
    v.checkout(root, "lab@latest")
    assert {d: tree_digest(root / "data" / d) for d in snap2} == snap2
    assert tracked_status(root) == ""

    # an edit in progress (version.json still says v2) is not served as v2
    (root / "data" / "datasets" / "lab" / "manifest.parquet").write_bytes(b"draft v3")
    assert v.read_version_file(root, "lab@v2", "manifest.parquet") == b"manifest v2"
    # ... and checkout refuses to throw it away unless forced, leaving the pointers alone
    pointer = (root / "data" / "datasets.dvc").read_bytes()
    with pytest.raises(v.CommandError, match="unsaved"):
        v.checkout(root, "lab@v1")
    assert (root / "data" / "datasets.dvc").read_bytes() == pointer
    v.checkout(root, "lab@v1", force=True)
    assert tree_digest(root / "data" / "datasets") == snap1["datasets"]


def test_concurrent_publishes_serialise(tmp_path: Path) -> None:
    root = make_git_repo(tmp_path / "repo")
    v.ensure_repo(root, remote_url=str(tmp_path / "remote"))
    write_pack(root, "pack-0001", b"frames")
    write_dataset(root, "lab", b"manifest", version=None)
    write_dataset(root, "city", b"manifest city", version=None)
    jobs = ["lab", "lab", "city"]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        records = list(pool.map(lambda name: v.publish(root, name, {"by": name}), jobs))
    assert sorted(r.id for r in records) == ["city@v1", "lab@v1", "lab@v2"]
    assert [r.id for r in v.list_versions(root)] == ["city@v1", "lab@v1", "lab@v2"]
    tip = git(root, "rev-parse", f"refs/heads/{v.DATA_BRANCH}")
    history = git(root, "rev-list", f"refs/heads/{v.DATA_BRANCH}").split()
    assert tip in {r.commit for r in records}
    assert {r.commit for r in records} <= set(history)  # no publish lost from the branch
