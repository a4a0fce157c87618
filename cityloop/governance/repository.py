"""The data repository: ingest → gate → version, and reading versions back.

Layout under `<root>/data/` (see README "Data repository"):
    frames/packs/*.zip            immutable packs of content-addressed frames   (dvc add)
    datasets/<name>/              the current version of each named dataset      (dvc add)
        manifest.parquet annotations.coco.json gate.json version.json
    quarantine/<ingest_id>/       rejected input files + reasons.jsonl           (dvc add)
    expectations/*.json           Great Expectations suites                      (git)
Versions are commits on branch `cityloop/data` tagged `data/<name>/v<N>` (governance.versioning).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from cityloop.core.images import image_limit
from cityloop.core.settings import from_section, load_section
from cityloop.governance import versioning
from cityloop.governance.gate import GateParams, GateResult, find_suites, run_gate
from cityloop.governance.ingest import Scan, manifest_rows, scan
from cityloop.governance.schema import ANNOTATION_COLUMNS, CATEGORY_IDS, CLASSES, MANIFEST_COLUMNS, SPLITS
from cityloop.governance.store import FrameStore, write_packs

AUTO_SPLIT = (("train", 0.8), ("val", 0.1), ("test", 0.1))


@dataclass
class IngestParams:
    """The `ingest:` section of params.yaml: `cityloop data ingest`'s defaults and the holdout datasets."""

    workers: int = 1  # decoding processes
    split: str = "auto"  # auto = deterministic 80/10/10 by sha256; or train | val | test | pool | bench
    split_by: str = "frame"  # frame | camera (video frames: keep one camera in one split)
    holdout: tuple[str, ...] = ()  # datasets whose frames no other dataset may contain (benchmarks)

    @classmethod
    def from_dict(cls, d: dict | None) -> IngestParams:
        p = from_section(cls, d, "ingest")
        p.holdout = tuple(p.holdout)
        return p


class StaleCandidateError(versioning.VersioningError):
    """The dataset changed between prepare and publish (another ingest published): prepare again."""


class GateFailed(RuntimeError):
    """The gate rejected a candidate version; nothing was published."""

    def __init__(self, result: GateResult, staging: Path) -> None:
        super().__init__(result.report())
        self.result, self.staging = result, staging


@dataclass
class IngestResult:
    """What one ingest did: counts, the gate's verdict, the version it published."""

    dataset: str
    ingest_id: str
    files: int
    new_frames: int
    duplicates: int
    quarantined: list[dict]
    gate: GateResult
    version: versioning.VersionRecord | None = None
    summary: dict = field(default_factory=dict)


@dataclass
class Candidate:
    """A dataset's next version, staged but not yet gated or published."""

    dataset: str
    ingest_id: str
    staging: Path
    manifest: pd.DataFrame
    coco: dict
    annotations: pd.DataFrame  # the gate's per-box view of `coco`
    quarantined: list[dict]
    files: int
    new_frames: int
    duplicates: int
    relabeled: int = 0  # frames already in the dataset that received their first labels
    base: str = ""  # the dataset state it was built on (DataRepository.base): publish refuses another

    @property
    def changes(self) -> bool:
        return self.new_frames > 0 or self.relabeled > 0


def auto_split(key: str) -> str:
    """Deterministic 80/10/10 split from a key (sha256 or camera id)."""
    u = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    acc = 0.0
    for name, share in AUTO_SPLIT:
        acc += share
        if u <= acc:
            return name
    return AUTO_SPLIT[-1][0]


class DataRepository:
    """A workspace's governed data: frames, named datasets, their versions and gate results."""

    def __init__(self, root: Path, gate_params: GateParams | None = None,
                 holdout: tuple[str, ...] = ()) -> None:
        self.root = Path(root).resolve()
        self.data = self.root / "data"
        self.store = FrameStore(self.data)
        self.gate_params = gate_params or GateParams()
        self.holdout = holdout  # datasets whose frames no other dataset may hold (benchmarks)

    # ------------------------------------------------------------------ reading
    def dataset_dir(self, name: str) -> Path:
        return self.data / "datasets" / name

    def current(self, name: str) -> tuple[pd.DataFrame, dict]:
        """Workspace manifest and COCO of a dataset (empty if it has no version yet)."""
        d = self.dataset_dir(name)
        if not (d / "manifest.parquet").exists():
            return _empty_manifest(), _empty_coco()
        return pd.read_parquet(d / "manifest.parquet"), json.loads((d / "annotations.coco.json").read_text())

    def load(self, vid: str) -> tuple[pd.DataFrame, dict]:
        """Manifest and COCO of a published version ("lab@v2", "lab@latest")."""
        rec = versioning.resolve(self.root, vid)
        manifest = pd.read_parquet(io.BytesIO(versioning.read_version_file(self.root, rec.id, "manifest.parquet")))
        coco = json.loads(versioning.read_version_file(self.root, rec.id, "annotations.coco.json"))
        return manifest, coco

    def versions(self, dataset: str | None = None) -> list[versioning.VersionRecord]:
        return versioning.list_versions(self.root, dataset)

    # ------------------------------------------------------------------ ingest
    def ingest(self, src: Path, dataset: str, source: str = "sim", split: str = "auto",
               split_by: str = "frame", annotations: Path | None = None, workers: int = 1,
               push: bool = True, docs: bool = True,
               progress: Callable[[int], None] | None = None,
               lock_timeout: float = versioning.LOCK_TIMEOUT_S,
               on_wait: Callable[[str], None] | None = None) -> IngestResult:
        """prepare → validate → publish: the dataset's next version exists only if the gate passed.

        The source folder is read and decoded first, without the lock (it touches nothing in the
        workspace); then building the candidate on the dataset's current state, the gate, the file
        commit and the tag all run under the workspace lock, so two ingests into one dataset queue
        and each version holds exactly its predecessor's frames plus its own. A second ingest waits
        up to `lock_timeout` seconds (`on_wait` hears who holds the lock), then raises
        versioning.WorkspaceBusyError naming the holder.

        Raises GateFailed (with the report) when the gate rejects; the staged packs and the
        quarantine then stay under .cityloop/staging/<ingest_id> and the dataset is unchanged.
        """
        self._check_options(dataset, split, split_by)
        src = Path(src).resolve()
        sc = scan(src, annotations, workers, progress, image_limit(self.root))
        with versioning.workspace_lock(self.root, lock_timeout, on_wait):
            cand = self._stage(sc, src, dataset, source, split, split_by)
            return self.publish(cand, self.validate(cand, docs), push)

    def prepare(self, src: Path, dataset: str, source: str = "sim", split: str = "auto",
                split_by: str = "frame", annotations: Path | None = None, workers: int = 1,
                progress: Callable[[int], None] | None = None) -> Candidate:
        """Read src, deduplicate, stage new packs and quarantine, and build the candidate version.

        Takes no lock: a candidate records the dataset state it was built on, and publish refuses it
        (StaleCandidateError) when another ingest published in between. `ingest` holds the lock
        from here to the tag instead.
        """
        self._check_options(dataset, split, split_by)
        src = Path(src).resolve()
        sc = scan(src, annotations, workers, progress, image_limit(self.root))
        return self._stage(sc, src, dataset, source, split, split_by)

    @staticmethod
    def _check_options(dataset: str, split: str, split_by: str) -> None:
        if split != "auto" and split not in SPLITS:
            raise ValueError(f"split {split!r} not one of auto, {', '.join(SPLITS)}")
        if split_by not in ("frame", "camera"):
            raise ValueError(f"split_by {split_by!r} not one of frame, camera")
        versioning.check_dataset_name(dataset)

    def base(self, dataset: str) -> str:
        """The dataset state a candidate builds on: its latest version and its workspace manifest."""
        try:
            versions = versioning.list_versions(self.root, dataset)
        except versioning.CommandError:  # no git repository yet (a dry run's workspace): nothing published
            versions = []
        manifest = self.dataset_dir(dataset) / "manifest.parquet"
        digest = hashlib.sha256(manifest.read_bytes()).hexdigest()[:16] if manifest.is_file() else "-"
        return f"v{versions[-1].version if versions else 0}:{digest}"

    def _stage(self, sc: Scan, src: Path, dataset: str, source: str, split: str, split_by: str) -> Candidate:
        """Build the candidate from a scanned folder on the dataset's current state; stage its packs."""
        ingest_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        base = self.base(dataset)
        staging = self.root / ".cityloop" / "staging" / ingest_id
        manifest, coco, new_bytes, relabeled = self._candidate(sc, src, dataset, source, split, split_by,
                                                               ingest_id)
        packs = write_packs(((sha, ext, sc.data[sha]) for sha, ext in new_bytes), staging / "packs",
                            f"p-{ingest_id}")
        manifest["path"] = [packs.get(sha, path) for sha, path in zip(manifest["sha256"], manifest["path"])]
        paths = dict(zip(manifest["sha256"], manifest["path"]))
        for im in coco["images"]:  # COCO file_name is the frame's final place in the store
            im["file_name"] = paths.get(im["sha256"], im["file_name"])
        quarantined = self._quarantine(sc, src, staging / "quarantine")
        fresh = int((manifest["ingest_id"] == ingest_id).sum())
        return Candidate(dataset, ingest_id, staging, manifest, coco, _coco_rows(coco, manifest), quarantined,
                         len(sc.probes), fresh, len(sc.good) - fresh, relabeled, base)

    def validate(self, cand: Candidate, docs: bool = True) -> GateResult:
        """Run the Great Expectations gate on a candidate (Data Docs under reports/datadocs)."""
        docs_dir = self.root / "reports" / "datadocs" if docs else None
        result = run_gate(cand.manifest, cand.annotations, self.gate_params,
                          holdout=self._holdout(cand.dataset), docs_dir=docs_dir,
                          suites_dir=find_suites(self.root))
        cand.staging.mkdir(parents=True, exist_ok=True)
        (cand.staging / "gate.json").write_text(json.dumps(result.to_dict(), indent=1, default=str))
        return result

    def publish(self, cand: Candidate, result: GateResult, push: bool = True,
                lock_timeout: float = versioning.LOCK_TIMEOUT_S) -> IngestResult:
        """Move a gated candidate into data/ and record it as a DVC version (tag on cityloop/data).

        Under the workspace lock (re-entered when `ingest` holds it). StaleCandidateError when the
        dataset moved since the candidate was prepared: its files would drop the other version's
        frames, so nothing is written and the staged input stays for a new prepare.
        """
        if not result.success:
            raise GateFailed(result, cand.staging)
        with versioning.workspace_lock(self.root, lock_timeout):
            now = self.base(cand.dataset)
            if cand.base and now != cand.base:
                raise StaleCandidateError(
                    f"{cand.dataset} changed since this candidate was prepared ({cand.base} -> {now}: another "
                    f"ingest published); nothing written, prepare it again (staged input: {cand.staging})")
            return self._publish_locked(cand, result, push)

    def _publish_locked(self, cand: Candidate, result: GateResult, push: bool) -> IngestResult:
        out = IngestResult(cand.dataset, cand.ingest_id, cand.files, cand.new_frames, cand.duplicates,
                           cand.quarantined, result)
        if not cand.changes and not cand.quarantined and versioning.list_versions(self.root, cand.dataset):
            out.version = versioning.resolve(self.root, f"{cand.dataset}@latest")  # nothing new: no new version
            out.summary = out.version.summary
            shutil.rmtree(cand.staging, ignore_errors=True)
            return out
        versioning.ensure_repo(self.root)
        self._commit_files(cand.staging, cand.dataset, cand.manifest, cand.coco, result, cand.ingest_id)
        out.summary = summarize(cand.manifest, cand.coco, result, out)
        out.version = versioning.publish(self.root, cand.dataset, out.summary, push=push)
        shutil.rmtree(cand.staging, ignore_errors=True)
        return out

    def _candidate(self, sc: Scan, src: Path, dataset: str, source: str, split: str, split_by: str,
                   ingest_id: str) -> tuple[pd.DataFrame, dict, list[tuple[str, str]], int]:
        """Previous version + new frames (deduplicated) + their annotations, as one candidate."""
        prev, prev_coco = self.current(dataset)
        rows = manifest_rows(sc, src, source, ingest_id)
        stored = self.store.index()
        in_dataset = set(prev["sha256"])
        fresh = rows[~rows.sha256.isin(in_dataset)].copy() if len(rows) else rows
        if len(fresh):
            key = fresh["camera_id"] if split_by == "camera" else fresh["sha256"]
            fresh["split"] = [auto_split(k) for k in key] if split == "auto" else split
            fresh["path"] = [stored.get(s, "") for s in fresh.sha256]
        new_bytes = [(s, e) for s, e in zip(fresh.get("sha256", []), fresh.get("ext", [])) if s not in stored]
        # frames already in the dataset but unlabeled may receive their first labels now
        relabel = set(prev.loc[~prev.labeled.astype(bool), "sha256"]) & set(rows.get("sha256", []))
        fresh = fresh.drop(columns=["ext"], errors="ignore")
        manifest = pd.concat([prev, fresh], ignore_index=True) if len(prev) else fresh
        labeled_now = set(rows.loc[rows.labeled & rows.sha256.isin(relabel), "sha256"]) if relabel else set()
        manifest.loc[manifest.sha256.isin(labeled_now), "labeled"] = True
        manifest = _typed(manifest)
        sha_by_file = {p.rel: p.sha256 for p in sc.good}
        take = set(fresh.get("sha256", [])) | labeled_now
        coco_new = _merge_coco(prev_coco, sc.annotations, sha_by_file, manifest, take)
        return manifest, coco_new, new_bytes, len(labeled_now)

    def _holdout(self, dataset: str) -> pd.DataFrame | None:
        frames = [self.current(h)[0] for h in self.holdout if h != dataset]
        frames = [f for f in frames if len(f)]
        return pd.concat(frames, ignore_index=True) if frames else None

    def _quarantine(self, sc: Scan, src: Path, qdir: Path) -> list[dict]:
        """Copy each rejected file aside with its reason; the source folder is left as it was."""
        records = []
        for p in sc.bad:
            qdir.mkdir(parents=True, exist_ok=True)
            target = qdir / "files" / p.rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / p.rel, target)
            records.append({"file": p.rel, "sha256": p.sha256, "bytes": p.bytes, "reason": p.reason})
        if records:
            (qdir / "reasons.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        return records

    def _commit_files(self, staging: Path, dataset: str, manifest: pd.DataFrame, coco: dict,
                      result: GateResult, ingest_id: str) -> None:
        """Move staged packs and quarantine into data/, write the dataset's files (each replaced
        whole: a crash leaves the old file or the new one, never half of one; version.json last)."""
        self.store.pack_dir.mkdir(parents=True, exist_ok=True)
        for pack in sorted((staging / "packs").glob("*.zip")) if (staging / "packs").exists() else []:
            shutil.move(str(pack), self.store.pack_dir / pack.name)
        if (staging / "quarantine").exists():
            shutil.move(str(staging / "quarantine"), self.data / "quarantine" / ingest_id)
        self.store._index = None
        d = self.dataset_dir(dataset)
        d.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        manifest.to_parquet(buf, index=False)
        _replace(d / "manifest.parquet", buf.getvalue())
        _replace(d / "annotations.coco.json", json.dumps(coco).encode())
        _replace(d / "gate.json", json.dumps(result.to_dict(), indent=1, default=str).encode())
        version = versioning.next_version(self.root, dataset)
        _replace(d / "version.json", json.dumps({"dataset": dataset, "version": version,
                                                 "id": f"{dataset}@v{version}", "ingest_id": ingest_id}).encode())


# ---------------------------------------------------------------------- helpers


def open_repository(root: Path, **gate_overrides: Any) -> DataRepository:
    """The workspace's data repository on its params.yaml: the `gate:` section (`gate_overrides` on
    top, e.g. require_labels=False for unlabeled pools) and `ingest.holdout`."""
    root = Path(root)
    return DataRepository(root, load_section(root, "gate", GateParams, **gate_overrides),
                          load_section(root, "ingest", IngestParams).holdout)


def _replace(path: Path, data: bytes) -> None:
    """Write `path` whole: a temp file beside it, fsynced, renamed over it."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _empty_manifest() -> pd.DataFrame:
    return _typed(pd.DataFrame({c: [] for c in MANIFEST_COLUMNS}))


def _empty_coco() -> dict:
    return {"images": [], "annotations": [],
            "categories": [{"id": CATEGORY_IDS[c], "name": c, "supercategory": "city"} for c in CLASSES]}


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    for col, dtype in MANIFEST_COLUMNS.items():
        if col not in df:
            df[col] = pd.Series(dtype=dtype)
        elif dtype.startswith("datetime"):
            df[col] = pd.to_datetime(df[col], utc=True)
        else:
            df[col] = df[col].astype(dtype)
    extra = [c for c in df.columns if c not in MANIFEST_COLUMNS]
    return df[list(MANIFEST_COLUMNS) + extra]


def _merge_coco(prev: dict, incoming: dict | None, sha_by_file: dict[str, str], manifest: pd.DataFrame,
                take: set[str]) -> dict:
    """The dataset's COCO: previous images/boxes plus incoming ones for frames in `take`.

    Images are keyed by sha256 (file_name = manifest path); incoming boxes keep their ids
    offset past the previous maximum, so duplicate ids in the input still show at the gate.
    """
    coco = {"images": list(prev["images"]), "annotations": list(prev["annotations"]),
            "categories": _empty_coco()["categories"]}
    if not incoming:
        return coco
    by_sha = manifest.set_index("sha256")
    img_id = {im["sha256"]: im["id"] for im in coco["images"]}
    next_img = max(img_id.values(), default=0) + 1
    offset = max((a["id"] for a in coco["annotations"]), default=0)
    names = {c["id"]: c["name"] for c in incoming.get("categories", [])}
    files = {im["id"]: im["file_name"] for im in incoming["images"]}
    for im in incoming["images"]:
        sha = sha_by_file.get(im["file_name"])
        if sha in take and sha not in img_id:
            row = by_sha.loc[sha]
            img_id[sha] = next_img
            coco["images"].append({"id": next_img, "file_name": row["path"], "sha256": sha,
                                   "width": int(row["width"]), "height": int(row["height"]),
                                   "camera_id": row["camera_id"]})
            next_img += 1
    for a in incoming.get("annotations", []):
        fname = files.get(a["image_id"], f"image_id={a['image_id']}")
        sha = sha_by_file.get(fname)
        if sha is not None and sha not in take:
            continue  # frame already labeled in an earlier version
        name = names.get(a["category_id"], f"category_id={a['category_id']}")
        coco["annotations"].append({
            "id": offset + int(a["id"]), "image_id": img_id.get(sha, -1), "sha256": sha or f"missing:{fname}",
            "category_id": CATEGORY_IDS.get(name, -1), "category_name": name, "bbox": list(a["bbox"]),
            "area": float(a.get("area", a["bbox"][2] * a["bbox"][3])), "iscrowd": int(a.get("iscrowd", 0)),
            "track_id": int(a.get("track_id", -1)),
        })
    return coco


def _coco_rows(coco: dict, manifest: pd.DataFrame) -> pd.DataFrame:
    """The gate's per-box view of the dataset COCO (boxes joined with their frame's size)."""
    sizes = dict(zip(manifest["sha256"], zip(manifest["width"].astype(int), manifest["height"].astype(int))))
    rows = []
    for a in coco["annotations"]:
        x, y, w, h = (float(v) for v in a["bbox"])
        width, height = sizes.get(a["sha256"], (0, 0))
        rows.append({"ann_id": a["id"], "sha256": a["sha256"], "category_id": a["category_id"],
                     "category_name": a["category_name"], "x": x, "y": y, "w": w, "h": h,
                     "img_width": width, "img_height": height, "track_id": a.get("track_id", -1)})
    return pd.DataFrame(rows, columns=list(ANNOTATION_COLUMNS)).astype(ANNOTATION_COLUMNS)


def summarize(manifest: pd.DataFrame, coco: dict, gate: GateResult, res: IngestResult) -> dict:
    """The catalog entry of a version: counts per class, condition, source and split."""
    cats = {c["id"]: c["name"] for c in coco["categories"]}
    boxes = pd.Series([cats.get(a["category_id"], "?") for a in coco["annotations"]], dtype=str).value_counts()
    return {
        "frames": int(len(manifest)), "labeled": int(manifest["labeled"].sum()),
        "boxes": {c: int(boxes.get(c, 0)) for c in CLASSES},
        "conditions": manifest["condition"].value_counts().to_dict(),
        "sources": manifest["source"].value_counts().to_dict(),
        "splits": manifest["split"].value_counts().to_dict(),
        "ingest": {"id": res.ingest_id, "files": res.files, "new_frames": res.new_frames,
                   "duplicates": res.duplicates, "quarantined": len(res.quarantined)},
        "gate": {"success": gate.success, "evaluated": gate.evaluated, "successful": gate.successful},
    }
