"""Prefect flow `train`: train → export → parity → register → evaluate (→ promote).

Orchestration only: `cityloop.models.lifecycle.build_version` is the sequence (each of its steps
a task run here, through `as_task`); evaluation, INT8 and promotion are plain functions of models.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event

from cityloop.core.settings import find_root, load_section
from cityloop.flows.steps import as_task
from cityloop.models.card import ModelCard
from cityloop.models.gate import open_gate
from cityloop.models.lifecycle import ExportParams, build_version, evaluate_version, int8_step
from cityloop.models.params import TrainSection


@task(name="int8")
def int8_task(root: str, run: dict, onnx_path: str, card: dict, fp32: dict, max_delta: float) -> dict:
    """Quantize (static INT8) and register the variant only if its mAP delta is within tolerance."""
    res = int8_step(Path(root), run, Path(onnx_path), ModelCard.from_dict(card), fp32, max_delta)
    if res["passed"]:
        parity = {"passed": True, "status": "int8 within mAP tolerance of the parity-checked FP32",
                  "reason": res["reason"]}
        mv = open_gate(Path(root)).store.register(Path(res["path"]), ModelCard.from_dict(res["card"]),
                                                  {"weights.pt": Path(run["weights"])}, parity,
                                                  evaluation=res["metrics"])
        res["model"] = mv.id
    return {k: v for k, v in res.items() if k not in ("metrics", "card")}


MODEL_PROMOTED_EVENT = "cityloop.model.promoted"  # resource cityloop.model.<name>, payload model (re-plan trigger)


@task(name="promote")
def promote_task(root: str, model_id: str) -> dict:
    """The promotion gate: target, no condition regression, parity, latency; a promotion emits
    `cityloop.model.promoted` (the schedule re-plans on it)."""
    decision = open_gate(Path(root)).promote(model_id).to_dict()
    if decision.get("promoted"):
        name = model_id.split(":", 1)[0]
        emit_event(event=MODEL_PROMOTED_EVENT, resource={"prefect.resource.id": f"cityloop.model.{name}",
                                                         "prefect.resource.name": name},
                   payload={"model": model_id, "stage": decision.get("to")})
    return decision


def report(model_id: str, run: dict, parity: dict, metrics: dict, decision: dict | None) -> str:
    """Markdown for the Prefect artifact: metrics per class and condition, parity, decision."""
    bench, test = metrics["benchmark"], metrics["test"]
    lines = [f"# {model_id}", "", f"trained {run['epochs']} epochs / {run['steps']} steps, val loss "
             f"{run['val_loss']}, resumed: {run['resumed']}", "",
             "| set | mAP@0.5 | mAP@0.5:0.95 |", "|---|---|---|",
             f"| {test['dataset']} test | {test['mAP50']:.3f} | {test['mAP']:.3f} |",
             f"| {bench.get('benchmark')} | {bench['mAP50']:.3f} | {bench['mAP']:.3f} |", "",
             "| class | test AP50 | benchmark AP50 |", "|---|---|---|"]
    for cls, ap in bench.get("per_class", {}).items():
        lines.append(f"| {cls} | {test['per_class'].get(cls, float('nan')):.3f} | {ap:.3f} |")
    lines += ["", "| condition | benchmark mAP@0.5 |", "|---|---|"]
    for cond, m in bench.get("by", {}).get("condition", {}).items():
        lines.append(f"| {cond} | {m['mAP50'] if m['mAP50'] is None else round(m['mAP50'], 3)} |")
    lines += ["", f"parity: passed={parity['passed']} max abs diff {parity['max_abs_diff']}"]
    if decision:
        lines += ["", f"promotion: {'promoted' if decision['promoted'] else 'refused'}: {decision['reason']}"]
    return "\n".join(lines)


@flow(name="train", log_prints=False)  # libraries print (pycocotools): keep that out of the run log
def train_flow(data: str = "lab@latest", parent: str | None = None, promote: bool = False,
               root: str | None = None) -> dict:
    """Train a detector on a governed dataset version and register it in the algorithm repository.

    Args:
        data: dataset version to train on, e.g. "lab@v2" or "field-pool@latest" (never a benchmark set).
        parent: registered model to fine-tune, e.g. "cityloop-detector:production" (warm start + replay).
        promote: run the promotion gate after registration.
        root: workspace (default: the git top level of the working directory).
    """
    root = root or str(find_root())
    tp = load_section(Path(root), "train", TrainSection).params
    ex = load_section(Path(root), "export", ExportParams)
    built = build_version(Path(root), data, asdict(tp), parent=parent, step=as_task)
    model_id, run, parity, onnx_path, card = (built[k] for k in ("model", "run", "parity", "onnx", "card"))
    metrics = as_task("evaluate", evaluate_version, Path(root), model_id, run["data"])
    int8 = int8_task(root, run, onnx_path, card, metrics["benchmark"], ex.int8_max_delta) if ex.int8 else None
    decision = promote_task(root, model_id) if promote else None
    create_markdown_artifact(key="train-report", markdown=report(model_id, run, parity, metrics, decision),
                             description=f"{model_id} trained on {data}")
    summary = {"model": model_id, "run": run, "parity": parity["passed"],
               "test_mAP50": metrics["test"]["mAP50"], "benchmark_mAP50": metrics["benchmark"]["mAP50"],
               "benchmark": metrics["benchmark"].get("benchmark"), "int8": int8, "promotion": decision}
    get_run_logger().info(json.dumps({k: v for k, v in summary.items() if k != "run"}, default=str))
    return summary
