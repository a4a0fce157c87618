"""The loop report: field accuracy against labels per arm (PNG), the round table, and the measured
gain of active selection (labels each arm needed to reach the target, over its seeds)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from cityloop.loop.params import LoopParams

COLORS = {"active": "#1f77b4", "random": "#ff7f0e"}


def labels_to_target(points: list[tuple[int, float]], target: float) -> float | None:
    """Labels at which a lineage's curve first reaches the target (linear between rounds); None: never."""
    pts = sorted(points)
    for (l0, m0), (l1, m1) in zip(pts, pts[1:]):
        if m0 >= target:
            return float(l0)
        if m1 >= target:
            return l0 + (target - m0) / (m1 - m0) * (l1 - l0)
    return float(pts[0][0]) if pts and pts[0][1] >= target else None


def summarize(records: list[dict], target: float) -> dict[str, Any]:
    """Per arm: labels to target per seed (None when not reached), final mAP, and the ratio random/active."""
    by_lin: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_lin[r["lineage"]].append(r)
    arms: dict[str, dict[str, Any]] = defaultdict(lambda: {"seeds": {}, "final": {}, "max_labels": {}})
    for rs in by_lin.values():
        rs.sort(key=lambda r: r["round"])
        a = arms[rs[0]["arm"]]
        a["seeds"][rs[0]["seed"]] = labels_to_target([(r["labels"], r["mAP50"]) for r in rs], target)
        a["final"][rs[0]["seed"]] = rs[-1]["mAP50"]
        a["max_labels"][rs[0]["seed"]] = rs[-1]["labels"]
    out: dict[str, Any] = {"target": target, "arms": {}}
    for arm, a in arms.items():
        reached = [v for v in a["seeds"].values() if v is not None]
        out["arms"][arm] = {"labels_to_target": a["seeds"], "reached": f"{len(reached)}/{len(a['seeds'])}",
                            "mean_labels_to_target": float(np.mean(reached)) if len(reached) == len(a["seeds"])
                            else None, "final_mAP50": a["final"], "labels": a["max_labels"]}
    act, rnd = out["arms"].get("active"), out["arms"].get("random")
    if act and rnd:
        out["matched"] = matched_accuracy(by_lin)
    if act and rnd and act["mean_labels_to_target"]:
        if rnd["mean_labels_to_target"]:
            out["ratio"] = rnd["mean_labels_to_target"] / act["mean_labels_to_target"]
            out["ratio_text"] = f"random needed {out['ratio']:.2f}x the labels of active to reach {target:.2f}"
        else:  # random never got there: a lower bound from the labels it used
            lb = min(rnd["labels"].values()) / act["mean_labels_to_target"]
            out["ratio"], out["ratio_is_lower_bound"] = lb, True
            out["ratio_text"] = (f"random did not reach {target:.2f} with {min(rnd['labels'].values())} labels: "
                                 f"more than {lb:.2f}x the labels of active")
    return out


def matched_accuracy(by_lin: dict[str, list[dict]]) -> dict[str, Any] | None:
    """Label efficiency short of the target: random's final mAP@0.5 (mean over its seeds) and the
    labels active needed to reach it (mean of its seeds' interpolated curves), and their ratio."""
    rnd = [rs for rs in by_lin.values() if rs[0]["arm"] == "random" and len(rs) > 1]
    act = [rs for rs in by_lin.values() if rs[0]["arm"] == "active" and len(rs) > 1]
    if not rnd or not act:
        return None
    level = float(np.mean([rs[-1]["mAP50"] for rs in rnd]))
    random_labels = float(np.mean([rs[-1]["labels"] for rs in rnd]))
    need = [labels_to_target([(r["labels"], r["mAP50"]) for r in rs], level) for rs in act]
    if any(n is None for n in need):
        return {"mAP50": round(level, 4), "random_labels": random_labels, "active_labels": None, "ratio": None,
                "text": f"active did not reach random's final mAP@0.5 {level:.3f} ({random_labels:.0f} labels)"}
    al = float(np.mean(need))
    ratio = random_labels / al if al > 0 else None
    return {"mAP50": round(level, 4), "random_labels": random_labels, "active_labels": round(al, 1),
            "ratio": ratio, "text": f"active reached random's final mAP@0.5 {level:.3f} with {al:.0f} labels "
            f"against random's {random_labels:.0f}" + (f" ({ratio:.2f}x fewer)" if ratio else "")}


def plot(records: list[dict], target: float, path: Path) -> Path:
    """mAP@0.5 on the field benchmark against labels, one line per lineage (arm × seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    by_lin: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_lin[r["lineage"]].append(r)
    for _, rs in sorted(by_lin.items()):
        rs.sort(key=lambda r: r["round"])
        arm = rs[0]["arm"]
        ax.plot([r["labels"] for r in rs], [r["mAP50"] for r in rs], marker="o", lw=1.4, alpha=0.85,
                color=COLORS.get(arm), label=f"{arm} (seed {rs[0]['seed']})")
    ax.axhline(target, ls="--", color="grey", lw=1)
    ax.text(0, target + 0.01, f"target {target:.2f}", color="grey", fontsize=8)
    ax.set_xlabel("field frames labeled")
    ax.set_ylabel("field mAP@0.5 (benchmark set)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title("cityloop closed loop: active selection vs random control")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def table(records: list[dict]) -> str:
    """Markdown: one row per lineage and round."""
    conds = sorted({c for r in records for c in (r.get("per_condition") or {})})
    head = ["round", "lineage", "labels", "model", "data", "mAP@0.5", *conds, "event P", "event R", "TTD s",
            "released"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    f = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    for r in sorted(records, key=lambda r: (r["round"], r["lineage"])):
        pc = r.get("per_condition") or {}
        lines.append("| " + " | ".join([str(r["round"]), r["lineage"], str(r["labels"]), r["model"],
                                        r.get("data") or "-", f"**{r['mAP50']:.3f}**", *[f(pc.get(c)) for c in conds],
                                        f(r.get("event_precision")), f(r.get("event_recall")),
                                        f(r.get("ttd_median_s")), "yes" if r.get("released") else "no"]) + " |")
    return "\n".join(lines)


def write_report(root: Path, p: LoopParams, records: list[dict], out: Path) -> dict[str, Any]:
    """reports/loop/{curve.png, report.md, summary.json}; returns the summary with the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(records, p.target)
    png = plot(records, p.target, out / "curve.png") if records else None
    bench = next((r.get("benchmark") for r in records if r.get("benchmark")), "the benchmark set")
    md = ["# cityloop closed loop", "", f"Target: field mAP@0.5 ≥ {p.target} on {bench}; "
          f"{p.budget} labels per round and lineage, at most {p.total_labels}.", "",
          f"**{summary.get('ratio_text', 'active/random ratio at the target: no arm reached it yet')}**", "",
          *([f"**Short of the target: {summary['matched']['text']}.**", ""] if summary.get("matched") else []),
          "![curve](curve.png)",
          "", table(records), ""]
    for arm, a in summary["arms"].items():
        md.append(f"- {arm}: reached the target in {a['reached']} seeds; labels to target per seed "
                  f"{a['labels_to_target']}; final mAP@0.5 {a['final_mAP50']}")
    (out / "report.md").write_text("\n".join(md) + "\n")
    summary.update(png=str(png) if png else None, markdown=str(out / "report.md"))
    (out / "summary.json").write_text(json.dumps({**summary, "records": records}, indent=1, default=str))
    return summary
