"""Labeling without a server: conversion, the generated label config, selection, agreement,
the labeling-batch gate and the webhook receiver (over real HTTP on 127.0.0.1)."""

from __future__ import annotations

import json
import socket
from collections import Counter
from pathlib import Path

import pytest
import requests

from cityloop.governance.gate import GateParams, run_batch_gate
from cityloop.governance.schema import CLASSES
from cityloop.labeling.annotator import ErrorModel, assign, corrupt
from cityloop.labeling.convert import (
    Box,
    coco_boxes,
    config_classes,
    config_marks_hidden,
    label_config,
    no_objects_result,
    parse_result,
    to_coco,
    to_result,
)
from cityloop.labeling.pull import Chosen, batch_tables
from cityloop.labeling.quality import agreement, assess
from cityloop.labeling.select import Candidate, select, uncertainty
from cityloop.labeling.webhooks import SECRET_HEADER, LabelCounter, WebhookReceiver
from tests.rawhttp import send_raw, status_of


def test_boxes_survive_the_round_trip_through_label_studio_percent_coordinates():
    boxes = [Box("car", 10.5, 20.25, 31.0, 12.5, 0.9), Box("rider_no_helmet", 0.0, 150.0, 8.0, 42.0)]
    parsed = parse_result(to_result(boxes, 192, 192), 192, 192)
    assert [b.cls for b in parsed.boxes] == ["car", "rider_no_helmet"] and not parsed.no_objects
    for a, b in zip(boxes, parsed.boxes):
        assert (a.x, a.y, a.w, a.h) == pytest.approx((b.x, b.y, b.w, b.h), abs=1e-9)
    assert parse_result(no_objects_result(), 192, 192).no_objects


def test_a_mostly_hidden_box_comes_back_hidden_and_becomes_an_ignore_region_in_coco():
    """The "mostly hidden" per-region choice rides on its region's id through Label Studio's result and
    becomes COCO iscrowd 1 (pycocotools' ignore); reading the COCO back keeps the flag."""
    boxes = [Box("car", 10, 20, 30, 12), Box("water", 40, 150, 60, 9, hidden=True), Box("person", 5, 5, 8, 20)]
    result = to_result(boxes, 192, 192)
    assert [r["from_name"] for r in result] == ["label", "label", "visibility", "label"]
    assert result[2]["id"] == result[1]["id"] != result[0]["id"]
    parsed = parse_result(result, 192, 192)
    assert [b.hidden for b in parsed.boxes] == [False, True, False] and not parsed.no_objects
    coco = to_coco([{"file_name": "a.jpg", "sha256": "a", "width": 192, "height": 192}], {"a": parsed.boxes})
    assert [a["iscrowd"] for a in coco["annotations"]] == [0, 1, 0]
    assert [b.hidden for b in coco_boxes(coco)["a"]] == [False, True, False]
    xml = label_config(CLASSES)
    assert config_marks_hidden(xml) and 'perRegion="true"' in xml and 'value="mostly hidden"' in xml
    old = xml[: xml.index('  <Choices name="visibility"')] + "</View>"  # a project made before the choice
    assert config_classes(old) == list(CLASSES) and not config_marks_hidden(old)


def test_coco_uses_the_platform_category_ids_whatever_the_order():
    coco = to_coco([{"file_name": "a.jpg", "sha256": "a", "width": 192, "height": 192}],
                   {"a": [Box("person", 1, 2, 10, 20), Box("rider_helmet", 5, 5, 8, 8)]})
    assert [a["category_id"] for a in coco["annotations"]] == [7, 1]  # not alphabetical (person would be 4)
    assert [c["name"] for c in coco["categories"]] == list(CLASSES)


def test_label_config_is_generated_from_the_class_list_so_a_new_class_needs_no_hand_edit():
    xml = label_config([*CLASSES, "clothes_hanging"])
    assert config_classes(xml) == [*CLASSES, "clothes_hanging"]
    assert 'value="no objects"' in xml and "RectangleLabels" in xml


def cands(n_per: dict[str, int], cams: int = 4) -> list[Candidate]:
    out = []
    for cond, n in n_per.items():
        for i in range(n):
            # the model is unsure on day frames only; night frames get no peaks at all
            scores = [0.5, 0.45] if cond == "day" else []
            out.append(Candidate(f"{cond}-{i}", f"cam{i % cams}", cond, scores))
    return out


def test_active_selection_covers_conditions_instead_of_piling_on_the_uncertain_one():
    picks = select(cands({"day": 60, "night": 30, "dusk": 10}), 20, "active", random_share=0.0)
    per = Counter(p.stratum for p in picks)
    assert per == {"day": 12, "night": 6, "dusk": 2}  # shares of the pool, not all day
    assert all(p.reason == "uncertainty" for p in picks)
    assert uncertainty([0.5]) > uncertainty([0.9]) > uncertainty([])


def test_no_camera_takes_more_than_its_share_and_random_is_the_seeded_control_arm():
    pool = cands({"day": 40}, cams=2)
    pool += [Candidate(f"x{i}", "cam-busy", "day", [0.5, 0.5, 0.5]) for i in range(40)]
    picks = select(pool, 20, "active", random_share=0.2, max_camera_share=0.25)
    # three cameras capped at 5 each fill 15 of the 16 uncertainty slots; exploration fills the rest
    assert len(picks) == 20 and Counter(p.reason for p in picks) == {"uncertainty": 15, "explore": 5}
    assert sum(p.sha256.startswith("x") and p.reason == "uncertainty" for p in picks) == 5
    r1, r2 = select(pool, 10, "random", seed=3), select(pool, 10, "random", seed=3)
    assert [p.sha256 for p in r1] == [p.sha256 for p in r2] and {p.strategy for p in r1} == {"random"}
    with pytest.raises(ValueError, match="strategy"):
        select(pool, 5, "greedy")


def test_agreement_and_the_annotator_who_is_held_back():
    truth = [Box("car", 10, 10, 40, 20), Box("person", 100, 50, 10, 30)]
    assert agreement(truth, truth) == 1.0 and agreement([], []) == 1.0
    assert agreement(truth, [Box("car", 11, 10, 40, 20)]) == pytest.approx(2 / 3)
    assert agreement(truth, [Box("garbage", 10, 10, 40, 20)]) == 0.0  # same box, wrong class
    anns = {1: {"good": truth, "bad": [Box("garbage", 10, 10, 40, 20)]}, 2: {"good": truth, "bad": truth}}
    rep = assess(anns, {1: truth}, min_agreement=0.7)
    assert rep.held_back == {"bad"} and rep.annotators["good"].honeypot_agreement == 1.0
    assert rep.annotators["bad"].peer_agreement == pytest.approx(0.5)


def test_the_error_model_misses_flips_and_jitters_inside_the_image():
    import numpy as np

    truth = [Box("rider_helmet", 5, 5, 20, 30)] * 200
    out = corrupt(truth, ErrorModel("x", miss=0.2, flip=0.5, jitter=2.0), np.random.default_rng(0), 192, 192)
    assert 130 < len(out) < 190
    assert 0.3 < sum(b.cls == "rider_no_helmet" for b in out) / len(out) < 0.7
    assert all(b.x >= 0 and b.y >= 0 and b.x + b.w <= 192 and b.y + b.h <= 192 and b.w >= 4 for b in out)


def test_honeypots_go_to_everyone_and_overlap_to_two():
    tasks = [{"id": i, "data": {}, "annotators": []} for i in range(1, 101)] + [{"id": 200, "data": {},
                                                                                "annotators": [9]}]
    plan = assign(tasks, ["a", "b"], honeypots={1, 2}, overlap_share=0.2)
    ids = {n: {t["id"] for t in ts} for n, ts in plan.items()}
    assert {1, 2} <= ids["a"] & ids["b"]
    assert 200 not in ids["a"] | ids["b"]  # somebody (a person) already labeled it
    shared = len(ids["a"] & ids["b"]) - 2
    assert 8 <= shared <= 35 and ids["a"] | ids["b"] == set(range(1, 101))


def chosen(tid: int, boxes: list[Box], no_objects: bool = False) -> Chosen:
    from cityloop.labeling.convert import ParsedAnnotation

    return Chosen(tid, f"{tid:064x}", 192, 192, "a", ParsedAnnotation(boxes, no_objects, [b.cls for b in boxes]))


def test_the_batch_gate_names_each_malformed_task():
    batch = [chosen(1, [Box("car", 10, 10, 30, 20)]),
             chosen(2, [Box("car", 180, 10, 30, 20)]),  # runs 18 px out of the 192 px frame
             chosen(3, [Box("ufo", 10, 10, 30, 20)]),  # not a platform class
             chosen(4, []),  # empty without an explicit "no objects"
             chosen(5, [], no_objects=True),  # an explicit negative: fine
             chosen(6, [Box("car", 10, 10, 30, 20)], no_objects=True)]  # contradicts itself
    ann, tasks = batch_tables(batch)
    res = run_batch_gate(ann, tasks, GateParams())
    bad: dict[int, list[str]] = {}
    for f in res.failures:
        for row in f.rows:
            bad.setdefault(row["task_id"], []).append(f.column)
    assert set(bad) == {2, 3, 4, 6}, res.report()
    assert "right_margin" in bad[2] and "category_name" in bad[3] and "explicit" in bad[4] and "consistent" in bad[6]


def post(url: str, body: dict, secret: str | None) -> requests.Response:
    """As Label Studio delivers a webhook: a JSON body (requests' json=) with the secret header."""
    headers = {SECRET_HEADER: secret} if secret is not None else {}
    return requests.post(url, json=body, headers=headers, timeout=5)


def test_webhook_receiver_checks_the_secret_counts_each_label_once_and_fires_every_n(tmp_path: Path):
    seen, ready = [], []
    rx = WebhookReceiver(LabelCounter(tmp_path / "w.sqlite", every=3), "s3cret", on_label=seen.append,
                         on_threshold=lambda n, info: ready.append(n)).start()
    try:
        body = lambda i: {"action": "ANNOTATION_CREATED", "annotation": {"id": i, "task": 7}, "project": {"id": 1}}
        assert post(rx.url, body(1), None).status_code == 401
        assert post(rx.url, body(1), "wrong").status_code == 401
        assert post(rx.url, {"no": "action"}, "s3cret").status_code == 400
        for i in (1, 1, 2, 3, 4, 5, 6):  # a redelivered webhook (1 twice) counts once
            assert post(rx.url, body(i), "s3cret").status_code == 200
        assert [s["annotation_id"] for s in seen] == [1, 2, 3, 4, 5, 6] and ready == [3, 6]
        assert not seen[0].get("secret") and "s3cret" not in json.dumps(seen)
    finally:
        rx.stop()
    # a restarted receiver keeps its count: nothing counted twice, the next trigger at 9
    again = WebhookReceiver(LabelCounter(tmp_path / "w.sqlite", every=3), "s3cret")
    assert again.handle({"action": "ANNOTATION_CREATED", "annotation": {"id": 6}})["new"] == 0
    assert again.counter.counts()["ANNOTATION_CREATED"] == 6


def _raw(address: tuple[str, int], head: str, timeout: float = 3.0) -> tuple[int, float]:
    """One raw request (headers only, the body never sent): (status, seconds until the server closed)."""
    reply, took = send_raw(address, head.encode(), timeout)
    return status_of(reply), took


def test_webhook_receiver_refuses_hostile_deliveries_at_once_without_reading_the_body(tmp_path: Path):
    rx = WebhookReceiver(LabelCounter(tmp_path / "w.sqlite"), "s3cret").start()
    try:
        assert rx.server.server_address[0] == "127.0.0.1"
        head = "POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        # Content-Length: -1 once made the receiver read to EOF: now a 4xx before any read
        status, took = _raw(rx.server.server_address, head + f"{SECRET_HEADER}: s3cret\r\nContent-Length: -1\r\n\r\n")
        assert 400 <= status < 500 and took < 2.0
        status, took = _raw(rx.server.server_address, head + f"{SECRET_HEADER}: s3cret\r\nContent-Length: "
                                                      f"{100 * 1024 * 1024}\r\n\r\n")
        assert status == 413 and took < 2.0  # over the limit: refused on the announced size
        status, took = _raw(rx.server.server_address, head + f"{SECRET_HEADER}: guess\r\nContent-Length: 50\r\n\r\n")
        assert status == 401 and took < 2.0  # the secret is checked before a byte of the body is awaited
        body = json.dumps({"action": "ANNOTATION_CREATED", "annotation": {"id": 1, "task": 7}})
        r = requests.post(rx.url, data=body, headers={SECRET_HEADER: "s3cret", "Content-Type": "text/plain"}, timeout=5)
        assert r.status_code == 415 and "access-control-allow-origin" not in r.headers
        assert r.headers["x-content-type-options"] == "nosniff"
        assert rx.counter.counts().get("ANNOTATION_CREATED", 0) == 0  # nothing refused was counted
    finally:
        rx.stop()


def test_server_credentials_come_from_the_environment_or_a_private_file_and_a_taken_port_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import os

    from cityloop.labeling.server import LabelStudioError, LabelStudioServer

    for k in ("LABEL_STUDIO_USERNAME", "LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_API_KEY"):
        monkeypatch.delenv(k, raising=False)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        srv = LabelStudioServer(tmp_path, port=busy.getsockname()[1], venv=tmp_path / "no-venv")
        with pytest.raises(LabelStudioError, match="set LABEL_STUDIO_USERNAME"):
            srv.credentials()
        with pytest.raises(LabelStudioError, match="taken by another process"):
            srv.start()
    made = srv.credentials()  # the refused start generated them once, privately
    assert os.stat(srv.state / "credentials.env").st_mode & 0o077 == 0 and len(made.token) == 40
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "from-env")
    assert srv.credentials().token == "from-env" and srv.credentials().password == made.password
    assert "from-env" not in repr(srv.credentials())
