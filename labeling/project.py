"""A Label Studio project driven through label-studio-sdk 2.x: creation, storage, users, export.

Local state beside the server's (never inside Label Studio, where annotators could read it):
`<root>/.cityloop/labeling/<slug>/` holds `tasks.jsonl` (how each task was selected),
`honeypots.json` (the known answers) and `pulls/*.json` (what each pull versioned or rejected).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cityloop.labeling.convert import config_classes, config_marks_hidden, label_config

if TYPE_CHECKING:
    from cityloop.labeling.params import LabelingParams


class LabelStudioAPIError(RuntimeError):
    """A Label Studio API call was refused: status and the server's reason (headers, cookies left out)."""


def api_errors(fn):
    """Turn the SDK's ApiError (whose text carries the response headers and session cookie) into a short error."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from label_studio_sdk.core.api_error import ApiError

        try:
            return fn(*args, **kwargs)
        except ApiError as exc:
            body = exc.body if isinstance(exc.body, dict) else {"detail": str(exc.body)[:500]}
            why = body.get("validation_errors") or body.get("detail") or body
            raise LabelStudioAPIError(f"Label Studio refused {fn.__name__} (HTTP {exc.status_code}): {why}") from None

    return wrapper


@dataclass
class TaskRecord:
    """How one task came to be: batch, arm, why it was picked, and whether it is a honeypot."""

    task_id: int
    sha256: str
    batch: str
    strategy: str
    reason: str
    uncertainty: float
    stratum: str
    honeypot: bool = False


def slug(title: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", title.lower()).strip("-") or "project"


def client(url: str, token: str):
    """An SDK client (legacy or personal access token: the SDK handles either)."""
    from label_studio_sdk import LabelStudio

    return LabelStudio(base_url=url, api_key=token, timeout=120)


class LabelingProject:
    """One Label Studio project and cityloop's records about it."""

    def __init__(self, ls, root: Path, title: str, media_root: Path, url: str = "") -> None:
        self.ls, self.root, self.title, self.url = ls, Path(root), title, url
        self.slug = slug(title)
        self.media_root = Path(media_root)
        self.media = self.media_root / self.slug  # frames served by the project's local-files storage
        self.state = self.root / ".cityloop" / "labeling" / self.slug
        self._id: int | None = None

    # ------------------------------------------------------------ project
    @property
    def id(self) -> int:
        if self._id is None:
            found = self.find()
            if found is None:
                raise LookupError(f"Label Studio has no project {self.title!r}: run `cityloop label push` first")
            self._id = found
        return self._id

    def find(self) -> int | None:
        for p in self.ls.projects.list(title=self.title):
            if p.title == self.title:
                return p.id
        return None

    @api_errors
    def ensure(self, classes: Iterable[str], description: str = "") -> int:
        """Create the project, or reuse it and add any class (or the "mostly hidden" choice) it does not have
        yet (never remove one)."""
        classes = list(classes)
        pid = self.find()
        if pid is None:
            p = self.ls.projects.create(title=self.title, description=description, label_config=label_config(classes),
                                        show_collab_predictions=True, evaluate_predictions_automatically=False,
                                        maximum_annotations=1, show_skip_button=True)
            pid = p.id
        else:
            config = self.ls.projects.get(id=pid).label_config
            current = config_classes(config)
            missing = [c for c in classes if c not in current]
            if missing or not config_marks_hidden(config):  # a project made before "mostly hidden" gets it
                self.ls.projects.update(id=pid, label_config=label_config(current + missing))
        self._id = pid
        self.ensure_storage()
        return pid

    @api_errors
    def ensure_storage(self) -> None:
        """A local-files import storage over this project's media folder (serves its frames)."""
        self.media.mkdir(parents=True, exist_ok=True)
        for s in self.ls.import_storage.local.list(project=self.id):
            if Path(s.path) == self.media:
                return
        self.ls.import_storage.local.create(project=self.id, path=str(self.media), title="cityloop frames",
                                            use_blob_urls=True, regex_filter=r"^$")

    def page(self, task_id: int | None = None) -> str:
        """The project's data page (or one task's labeling page) in the browser."""
        return f"{self.url}/projects/{self.id}/data" + (f"?tab=0&task={task_id}" if task_id else "")

    def image_url(self, name: str) -> str:
        return f"/data/local-files/?d={self.slug}/{name}"

    # ------------------------------------------------------------ users
    @api_errors
    def annotator_ids(self, names: Iterable[str]) -> dict[str, int]:
        """Label Studio users for annotator names (created in the organization when missing)."""
        by_email = {u.email: u.id for u in self.ls.users.list()}
        out = {}
        for name in names:
            email = annotator_email(name)
            if email not in by_email:
                by_email[email] = self.ls.users.create(username=name, email=email, first_name=name).id
            out[name] = by_email[email]
        return out

    def annotator_names(self) -> dict[int, str]:
        return {u.id: _name(u.email) for u in self.ls.users.list()}

    # ------------------------------------------------------------ tasks
    @api_errors
    def import_tasks(self, tasks: list[dict], chunk: int = 250) -> list[int]:
        ids: list[int] = []
        for i in range(0, len(tasks), chunk):
            res = self.ls.projects.import_tasks(id=self.id, request=tasks[i : i + chunk], return_task_ids=True)
            ids += list(res.task_ids or [])
        if len(ids) != len(tasks):
            raise RuntimeError(f"Label Studio created {len(ids)} of {len(tasks)} tasks")
        return ids

    @api_errors
    def export(self) -> list[dict]:
        """Every task with its annotations and predictions (the JSON export, not COCO/YOLO)."""
        raw = b"".join(self.ls.projects.exports.download_sync(self.id, export_type="JSON", download_all_tasks=True))
        return json.loads(raw)

    # ------------------------------------------------------------ records
    def records(self) -> dict[int, TaskRecord]:
        path = self.state / "tasks.jsonl"
        if not path.exists():
            return {}
        recs = (TaskRecord(**json.loads(line)) for line in path.read_text().splitlines() if line.strip())
        return {r.task_id: r for r in recs}

    def add_records(self, recs: Iterable[TaskRecord]) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        with open(self.state / "tasks.jsonl", "a") as f:
            f.writelines(json.dumps(vars(r)) + "\n" for r in recs)

    def honeypots(self) -> dict[int, list]:
        from cityloop.labeling.convert import Box

        path = self.state / "honeypots.json"
        raw = json.loads(path.read_text()) if path.exists() else {}
        return {int(t): [Box(**b) for b in boxes] for t, boxes in raw.items()}

    def add_honeypots(self, answers: dict[int, list]) -> None:
        path = self.state / "honeypots.json"
        raw = json.loads(path.read_text()) if path.exists() else {}
        raw.update({str(t): [vars(b) for b in boxes] for t, boxes in answers.items()})
        self.state.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(raw))
        tmp.replace(path)


def annotator_email(name: str) -> str:
    return f"{slug(name)}@annotators.cityloop.local"


def _name(email: str) -> str:
    return email.split("@")[0] if email.endswith("@annotators.cityloop.local") else email


# ------------------------------------------------------------------ a workspace's project
MEDIA_ENV = "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"


def open_project(root: Path, params: LabelingParams, url: str | None = None,
                 token: str | None = None) -> LabelingProject:
    """The workspace's project on its Label Studio server (URL/token from the environment or the server's state)."""
    from cityloop.labeling.server import ENV_TOKEN, ENV_URL, LabelStudioServer

    server = LabelStudioServer(root, port=params.port)
    url = url or os.environ.get(ENV_URL) or server.url
    token = token or os.environ.get(ENV_TOKEN) or server.credentials().token
    # frames must land inside the server's local-files document root (its own setting, for an external server)
    media = Path(os.environ.get(MEDIA_ENV) or server.media)
    return LabelingProject(client(url, token), root, params.project, media, url)


def open_workspace(root: Path, params: LabelingParams | None = None, url: str | None = None,
                   token: str | None = None):
    """(params, project, data repository, gate params) of a workspace: what push and pull need."""
    from cityloop.core.settings import load_section
    from cityloop.governance.repository import open_repository
    from cityloop.labeling.params import LabelingParams

    params = params or load_section(Path(root), "labeling", LabelingParams)
    repo = open_repository(Path(root), **params.gate)
    return params, open_project(Path(root), params, url, token), repo, repo.gate_params
