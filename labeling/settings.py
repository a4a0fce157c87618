"""The `labeling:` section of params.yaml and the wiring from a workspace to its Label Studio project."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from cityloop.labeling.annotator import ErrorModel
from cityloop.labeling.push import PushParams

from cityloop.core.settings import from_section

WEBHOOK_SECRET_ENV = "CITYLOOP_WEBHOOK_SECRET"
MEDIA_ENV = "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"


@dataclass
class LabelingParams:
    project: str = "cityloop-field"
    port: int = 8089
    pool: str = "field-pool@latest"  # unlabeled frames to draw batches from
    dataset: str = "field-labeled"  # where pulled labels become versions
    split: str = "auto"
    budget: int = 100
    strategy: str = "active"
    random_share: float = 0.2
    max_camera_share: float = 0.25
    prediction_threshold: float = 0.3
    honeypot_dataset: str | None = "lab@latest"
    honeypot_share: float = 0.05
    overlap_share: float = 0.1
    min_agreement: float = 0.7
    iou: float = 0.5
    gate: dict[str, Any] = field(default_factory=dict)  # overrides of the `gate:` section for labeled batches
    webhook_port: int = 8790
    retrain_after: int = 200
    wait_timeout_s: float = 3600.0
    seed: int = 0
    annotators: list[dict[str, Any]] = field(default_factory=lambda: [{"name": "annotator-1"}])

    @classmethod
    def from_dict(cls, d: dict | None) -> LabelingParams:
        return from_section(cls, d, "labeling")

    def push_params(self, **over: Any) -> PushParams:
        base = {f.name: getattr(self, f.name) for f in fields(PushParams)}
        return PushParams(**{**base, **{k: v for k, v in over.items() if v is not None}})

    def error_models(self) -> list[ErrorModel]:
        return [ErrorModel.from_dict({"seed": self.seed, **a}) for a in self.annotators]


def webhook_secret() -> str:
    """The shared secret Label Studio sends with each webhook (environment only)."""
    secret = os.environ.get(WEBHOOK_SECRET_ENV, "")
    if not secret:
        raise RuntimeError(f"set {WEBHOOK_SECRET_ENV} to a shared secret for the webhook receiver")
    return secret


def open_project(root: Path, params: LabelingParams, url: str | None = None, token: str | None = None):
    """The workspace's project on its Label Studio server (URL/token from the environment or the server's state)."""
    from cityloop.labeling.project import LabelingProject, client
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
    from cityloop.core.settings import load_params
    from cityloop.governance.gate import GateParams
    from cityloop.governance.repository import DataRepository

    all_params = load_params(Path(root))
    params = params or LabelingParams.from_dict(all_params.get("labeling", {}))
    gate = GateParams.from_dict({**all_params.get("gate", {}), **params.gate})
    repo = DataRepository(Path(root), gate, tuple(all_params.get("ingest", {}).get("holdout", ())))
    return params, open_project(Path(root), params, url, token), repo, gate
