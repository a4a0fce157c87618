"""The schedule plan: windows, budgets, degrade/drop order, model choice, versions, bad inputs, the CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cityloop.scenarios.base import Window
from cityloop.schedule.params import ScheduleParams
from cityloop.schedule.plan import (
    CameraSpec,
    Inputs,
    ModelSpec,
    NodeSchedule,
    NodeSpec,
    Plan,
    Sampler,
    ScenarioSpec,
    ScheduleError,
    assignment_for,
    make_plan,
    scenario_specs,
)
from cityloop.schedule.store import PlanStore

REPO = Path(__file__).resolve().parents[2]
DAY = datetime(2026, 5, 4, tzinfo=UTC)  # plans start at midnight: slot k is hour k
runner = CliRunner(env={"COLUMNS": "200"})

# the issue's scenarios, as the planner sees them (independent of the units' current numbers)
RIDER = ScenarioSpec("helmetless_rider", (), fps=2.0, min_fps=1.0, priority=3, uses=("rider_helmet", "rider_no_helmet"))
VENDING = ScenarioSpec("street_vending", (Window((17.0, 6.0)),), 0.5, 0.25, 1, ("vendor_stall",))
PARKING = ScenarioSpec("illegal_parking", (Window((5.0, 10.0)),), 0.5, 0.25, 2, ("car",))
WATER = ScenarioSpec("road_waterlogging", (Window(None, ("rain",)),), 1.0, 0.25, 2, ("water",))
DRYING = ScenarioSpec("clothes_drying", (Window((7.0, 18.0), ("day",)),), 0.5, 0.25, 1, ("clothes",))
GARBAGE = ScenarioSpec("garbage_pile", (), 0.5, 0.25, 1, ("garbage",))
ALL = [RIDER, VENDING, PARKING, WATER, DRYING, GARBAGE]


def cams(*conditions: str, fps: float = 2.0) -> list[CameraSpec]:
    return [CameraSpec(f"cam{i:02d}", "d", c, (), fps) for i, c in enumerate(conditions)]


def plan_of(cameras, nodes, scenarios=ALL, **kw) -> Plan:
    return make_plan(Inputs(cameras, nodes, list(scenarios), **kw), DAY)


def scheduled(plan: Plan, scenario: str) -> set[tuple[int, str]]:
    """(slot index = hour, camera) pairs whose task runs `scenario`."""
    return {(s.index, t.camera) for s in plan.slots for t in s.tasks if scenario in t.scenarios}


# ------------------------------------------------------------------------------ windows


def test_windows_are_respected():
    plan = plan_of(cams("day", "rain", "night", "fog"), [NodeSpec("a", 100.0)])
    vending = scheduled(plan, "street_vending")
    assert not any(h == 12 for h, _ in vending), "vending scheduled at noon"
    assert {h for h, _ in vending} == set(range(17, 24)) | set(range(0, 6))
    assert {h for h, _ in scheduled(plan, "illegal_parking")} == set(range(5, 10))  # the early morning
    assert {c for _, c in scheduled(plan, "road_waterlogging")} == {"cam01"}  # the rainy camera only
    drying = scheduled(plan, "clothes_drying")
    assert {c for _, c in drying} == {"cam00"} and {h for h, _ in drying} == set(range(7, 18))  # sunny days
    assert len(scheduled(plan, "helmetless_rider")) == 4 * 24  # no window: always, everywhere


def test_forecast_spans_and_no_active_scenario_means_no_task():
    rain_at_night = CameraSpec("cam00", "d", "day", ((20.0, 4.0, "rain"),), 2.0)
    plan = plan_of([rain_at_night], [NodeSpec("a", 10.0)], [WATER, DRYING])
    assert {h for h, _ in scheduled(plan, "road_waterlogging")} == set(range(20, 24)) | set(range(0, 4))
    idle = [s.index for s in plan.slots if not s.tasks]
    assert idle == [4, 5, 6, 18, 19]  # neither rain nor a sunny day: the camera is not sampled at all


def test_a_scenario_needing_a_zone_runs_only_where_one_is_configured():
    checkpoint = ScenarioSpec("checkpoint_breach", (), 2.0, 1.0, 3, ("person",), requires=("checkpoint",))
    at_gate = CameraSpec("gate", "d", "day", (), 2.0, None, ("checkpoint",))
    plan = plan_of([at_gate, *cams("day")], [NodeSpec("a", 10.0)], [checkpoint, GARBAGE])
    assert {c for _, c in scheduled(plan, "checkpoint_breach")} == {"gate"}
    assert {t.fps for t in plan.slots[0].tasks if t.camera == "cam00"} == {0.5}  # garbage alone: 0.5 fps


def test_the_projects_scenarios_follow_their_windows():
    from cityloop.scenarios.settings import scenario_settings

    specs = scenario_specs(scenario_settings(yaml.safe_load((REPO / "params.yaml").read_text()).get("scenarios")))
    plan = plan_of(cams("day", "rain"), [NodeSpec("a", 100.0)], specs)
    assert not any(h == 12 for h, _ in scheduled(plan, "street_vending"))
    assert {c for _, c in scheduled(plan, "road_waterlogging")} == {"cam01"}


# ------------------------------------------------------------------------------ budgets


def test_node_budgets_are_never_exceeded():
    conditions = ("day", "rain", "night", "fog", "dusk") * 4
    nodes = [NodeSpec("a", 4.0), NodeSpec("b", 2.5), NodeSpec("c", 1.0)]
    plan = plan_of(cams(*conditions), nodes)
    for s in plan.slots:
        for n in nodes:
            assert s.load().get(n.name, 0.0) <= n.budget_fps + 1e-9, (s.index, n.name, s.load())
        for t in s.tasks:
            need = [x for x in ALL if x.name in t.scenarios]
            assert t.fps >= max(x.min_fps for x in need) - 1e-9  # every scenario kept gets at least its minimum
    assert plan.summary()["unserved"] > 0  # 20 cameras on 7.5 frames/s: something had to give


def test_an_unloaded_node_gives_each_camera_what_its_scenarios_need_capped_by_the_stream():
    plan = plan_of(cams("rain", "day") + [CameraSpec("slow", "d", "day", (), 0.5)], [NodeSpec("a", 100.0)])
    at = {t.camera: t for t in plan.slots[12].tasks}
    assert at["cam00"].fps == 2.0 and at["slow"].fps == 0.5 and not at["slow"].degraded


def test_degrade_first_then_drop_the_lowest_priority_and_record_it():
    cameras = cams("day", "day")
    degraded = plan_of(cameras, [NodeSpec("a", 3.0)], [RIDER, GARBAGE])  # needs 4, minimum 2: degrade
    assert [t.fps for t in degraded.slots[12].tasks] == [1.5, 1.5]
    assert all(t.degraded for t in degraded.slots[12].tasks) and not degraded.slots[12].unserved

    only_garbage = CameraSpec("pile", "d", "day", (), 2.0, ("garbage_pile",))
    full = plan_of([*cameras, only_garbage], [NodeSpec("a", 2.0)], [RIDER, GARBAGE])
    slot = full.slots[12]
    # minimum 1 + 1 + 0.25 > 2: the lowest priority that frees budget goes first (garbage on `pile`, priority 1);
    # still 2.0 >= 2.0 fits, riders (priority 3) keep their minimum
    assert [(u.camera, u.scenario) for u in slot.unserved] == [("pile", "garbage_pile")]
    assert "node a full" in slot.unserved[0].reason and "priority 1" in slot.unserved[0].reason
    assert {t.camera: t.fps for t in slot.tasks} == {"cam00": 1.0, "cam01": 1.0}
    assert all("garbage_pile" in t.scenarios for t in slot.tasks)  # rides along for free at 1 fps

    tight = plan_of(cameras, [NodeSpec("a", 1.5)], [RIDER, GARBAGE])
    slot = tight.slots[12]
    assert [(u.camera, u.scenario) for u in slot.unserved] == [("cam00", "helmetless_rider")]
    # minimum 0.25 + 1 leaves 0.25 to share in proportion to what each still lacks (0.25 and 1)
    assert {t.camera: (t.fps, t.scenarios) for t in slot.tasks} == {
        "cam00": (0.3, ("garbage_pile",)), "cam01": (1.2, ("helmetless_rider", "garbage_pile"))}


def test_cameras_go_to_the_least_loaded_node_that_fits_and_stay_there():
    plan = plan_of(cams("day", "day", "day", "day"), [NodeSpec("a", 4.0), NodeSpec("b", 4.0)], [RIDER])
    for s in plan.slots:
        assert s.load() == {"a": 4.0, "b": 4.0}
    placement = [{t.camera: t.node for t in s.tasks} for s in plan.slots]
    assert all(p == placement[0] for p in placement)  # no camera hops between nodes from slot to slot


# ------------------------------------------------------------------------------ models


def test_a_partner_model_serves_a_scenario_its_classes_cover():
    own = ModelSpec("cityloop-detector:v3", ("rider_helmet", "rider_no_helmet", "garbage"), "cityloop", "production")
    old = ModelSpec("cityloop-detector:v2", ("rider_helmet", "rider_no_helmet", "garbage", "clothes"), "cityloop",
                    "candidate")
    partner = ModelSpec("acme-drying:v1", ("clothes",), "acme", "candidate")
    scenarios = [RIDER, GARBAGE, DRYING]
    plan = plan_of(cams("day"), [NodeSpec("a", 10.0)], scenarios, models=[own, partner])
    assert plan.models["helmetless_rider"]["id"] == "cityloop-detector:v3"
    assert plan.models["clothes_drying"] == {"id": "acme-drying:v1", "vendor": "acme", "stage": "candidate"}
    noon = {t.model: t.scenarios for t in plan.slots[12].tasks}
    assert noon == {"cityloop-detector:v3": ("helmetless_rider", "garbage_pile"), "acme-drying:v1": ("clothes_drying",)}

    no_partners = plan_of(cams("day"), [NodeSpec("a", 10.0)], scenarios, models=[own, partner], partners=False)
    assert no_partners.models["clothes_drying"] is None
    (u,) = no_partners.slots[12].unserved
    assert u.scenario == "clothes_drying" and "no serving model" in u.reason

    # cityloop's own model is preferred when it covers the scenario (production before a candidate)
    both = plan_of(cams("day"), [NodeSpec("a", 10.0)], scenarios, models=[old, own, partner])
    assert both.models["clothes_drying"]["id"] == "cityloop-detector:v2"
    pinned = plan_of(cams("day"), [NodeSpec("a", 10.0)], scenarios, models=[old, own, partner],
                     serve={"clothes_drying": "acme-drying:v1"})
    assert pinned.models["clothes_drying"]["vendor"] == "acme"
    with pytest.raises(ScheduleError, match="serve.helmetless_rider: model acme-drying:v1 does not detect"):
        plan_of(cams("day"), [NodeSpec("a", 10.0)], scenarios, models=[own, partner],
                serve={"helmetless_rider": "acme-drying:v1"})


# ------------------------------------------------------------------------------ versions


def test_same_inputs_same_version_a_changed_budget_a_new_one_with_its_diff(tmp_path: Path):
    store = PlanStore(tmp_path)
    inputs = Inputs(cams("day", "rain", "night"), [NodeSpec("a", 3.0), NodeSpec("b", 2.0)], ALL)
    v1, created = store.save(make_plan(inputs, DAY))
    assert created and v1.version == 1 and (tmp_path / ".cityloop/schedule/plan-v1.json").exists()
    again, created = store.save(make_plan(inputs, datetime(2026, 5, 9, 13, 0, tzinfo=UTC)))  # later, same inputs
    assert not created and again.version == 1 and store.versions() == [1]
    inputs.nodes[1] = NodeSpec("b", 6.0)
    v2, created = store.save(make_plan(inputs, DAY))
    assert created and v2.version == 2 and v2.parent == 1 and store.get("current").version == 2
    d = store.diff(2)
    assert d["nodes"] == {"b": [2.0, 6.0]} and d["changed"] > 0 and d["examples"]
    assert [r["version"] for r in store.history()] == ["v1", "v2"]
    assert json.loads(store.path(2).read_text())["digest"] == v2.content_digest()


def test_bad_inputs_are_refused_naming_the_culprit(tmp_path: Path):
    with pytest.raises(ScheduleError, match="node b: budget must be > 0"):
        plan_of(cams("day"), [NodeSpec("a", 2.0), NodeSpec("b", 0.0)])
    with pytest.raises(ValueError, match="schedule.nodes.edge-b"):
        ScheduleParams.from_dict({"nodes": {"edge-b": 0}})
    with pytest.raises(ScheduleError, match="camera cam00: scenarios: unknown \\['vendng'\\]"):
        plan_of([CameraSpec("cam00", scenarios=("vendng",))], [NodeSpec("a", 2.0)])

    from cityloop.schedule.inputs import load_inputs

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(
        {"scenarios": {"street_vendng": {"windows": [{"hours": [17, 6]}]}}}))
    with pytest.raises(ScheduleError, match="street_vendng"):
        load_inputs(tmp_path, ScheduleParams())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(
        {"scenarios": {"street_vending": {"windows": [{"hours": [17, 6], "conditions": ["sunny"]}]}}}))
    with pytest.raises(ScheduleError, match=r"scenarios.street_vending.windows\[0\].conditions: unknown \['sunny'\]"):
        load_inputs(tmp_path, ScheduleParams())


# ------------------------------------------------------------------------------ on a node


def test_a_node_runs_its_share_at_the_planned_rate():
    plan = plan_of(cams("day", "night"), [NodeSpec("a", 2.5), NodeSpec("b", 2.0)], [RIDER, VENDING])
    a_cams = {t.camera for _, t in plan.tasks_of("a")}
    mine, theirs = sorted(a_cams)[0], ({"cam00", "cam01"} - a_cams).pop()
    assignment = assignment_for(plan, "a")
    noon, night = DAY.timestamp() + 12 * 3600, DAY.timestamp() + 22 * 3600
    assert assignment(mine, noon) == {"helmetless_rider"} and assignment(theirs, noon) == frozenset()
    assert assignment(mine, night) == {"helmetless_rider", "street_vending"}
    assert assignment(mine, night + 86400 * 30) == assignment(mine, night)  # the plan repeats day by day

    sched = NodeSchedule(plan.for_node("a"), "a")
    rate = {t.camera: t.fps for t in plan.slots[12].tasks if t.node == "a"}[mine]
    frames = [noon + i / 2.0 for i in range(40)]  # 20 s of a 2 fps stream
    taken = [sched.take(mine, ts) for ts in frames]
    assert sum(taken) == pytest.approx(20 * rate, abs=1)
    assert not any(sched.take(theirs, ts) for ts in frames)  # not this node's camera: every frame skipped
    rep = sched.report()["cameras"]
    assert rep[mine]["processed"] == sum(taken) and rep[theirs]["skipped"] == 40
    assert rep[mine]["scenarios"] == ["helmetless_rider"]


def test_the_sampler_keeps_every_frame_at_the_source_rate_and_restarts_with_a_stream():
    s = Sampler(lambda cam, ts: 2.0)
    assert all(s.take("c", i / 2.0) for i in range(10))
    s = Sampler(lambda cam, ts: 0.5)
    assert [s.take("c", i / 2.0) for i in range(9)] == [True, False, False, False] * 2 + [True]
    assert s.take("c", 0.0)  # a replayed stream starts over


def test_an_edge_node_loads_its_schedule_and_reports_what_it_ran(tmp_path: Path):
    from cityloop.edge.node import EdgeNode, NodeConfig, read_json
    from cityloop.edge.streams import Frame

    node = EdgeNode(NodeConfig(root=tmp_path, name="a", port=1))
    assert node.scenarios_for("cam00", DAY.timestamp()) is None  # no schedule: every scenario
    plan = plan_of(cams("day"), [NodeSpec("a", 1.0)], [RIDER, GARBAGE])
    plan.version = 7
    (node.cfg.dir / "schedule.json").write_text(json.dumps(plan.for_node("a").to_dict()))
    node.load_schedule()
    ts = DAY.timestamp() + 12 * 3600
    assert node.scenarios_for("cam00", ts) == {"helmetless_rider", "garbage_pile"}
    frames = [Frame("cam00", i, ts + i / 2.0, b"") for i in range(8)]
    took = [node.schedule.take(f.camera_id, f.ts) for f in frames]
    assert sum(took) == 4  # 1 frame/s of a 2 fps stream
    node.write_status()
    st = read_json(node.cfg.dir / "status.json")
    assert st["schedule"]["plan"] == "v7" and st["schedule"]["cameras"]["cam00"]["processed"] == 4
    (node.cfg.dir / "schedule.json").unlink()
    node.load_schedule()
    assert node.schedule is None and node.scenarios_for("cam00", ts) is None


# ------------------------------------------------------------------------------ the CLI


def test_plan_and_apply_through_the_cli(workspace: Path):
    from cityloop.cli import app
    from cityloop.scenes.video import generate_video

    generate_video("field", 3, 4.0, 2.0, 0, workspace / "data" / "raw" / "field-video", condition="rain")
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["schedule"]["nodes"] = {"edge-a": 2.5, "edge-b": None}  # edge-b: params' default budget
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    res = runner.invoke(app, ["schedule", "plan", "--at", "2026-05-04T00:00", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["version"] == "v1" and out["created"] and out["plan"]["nodes"]["edge-b"]["source"] == "default"
    res = runner.invoke(app, ["schedule", "plan"])
    assert res.exit_code == 0 and "inputs unchanged" in res.output, res.output
    res = runner.invoke(app, ["schedule", "apply"])
    assert res.exit_code == 0 and "applied v1" in res.output, res.output

    data = json.loads((workspace / ".cityloop/edge/edge-a/schedule.json").read_text())
    mine = Plan.from_dict(data)
    assert data["node"] == "edge-a" and mine.version == 1 and mine.tasks_of("edge-a")
    assert all(t.node == "edge-a" for s in mine.slots for t in s.tasks)
    assert all("road_waterlogging" in t.scenarios for s in mine.slots for t in s.tasks)  # rainy cameras
    for s in mine.slots:
        assert s.load().get("edge-a", 0.0) <= 2.5

    res = runner.invoke(app, ["schedule", "history", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)[0]["applied"] is True, res.output
    res = runner.invoke(app, ["schedule", "show", "v1", "--at", "2026-05-04T12:30"])
    assert res.exit_code == 0 and "tasks 12:00-13:00" in res.output, res.output
    res = runner.invoke(app, ["schedule", "show", "v9"])
    assert res.exit_code == 1 and "no plan v9" in res.output


def test_the_repository_offers_cityloops_production_version_and_admitted_partners(tmp_path: Path):
    from cityloop.models.card import ModelCard
    from cityloop.scenarios import registry
    from cityloop.schedule.inputs import model_specs

    def card(name: str, version: str, vendor: str, classes: list[str]) -> None:
        d = tmp_path / "data" / "models" / name / version
        d.mkdir(parents=True)
        ModelCard(name, version, vendor, classes=classes).save(d / "card.json")
        registered.append({"ts": "2026-05-01T00:00:00", "who": "t", "event": "registered", "id": f"{name}:{version}",
                           "stage": "candidate", "why": "", "data": {}})  # the registration's commit record

    registered: list[dict] = []

    everything = list(registry().classes)
    card("cityloop-detector", "v1", "cityloop", everything)
    card("cityloop-detector", "v2", "cityloop", everything)  # a newer candidate: production still wins
    card("cityloop-random-s0", "v1", "cityloop", everything)  # another lineage of cityloop's: not offered
    card("acme-drying", "v1", "acme", ["clothes"])
    (tmp_path / "data" / "models" / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in [
        *registered, {"ts": "2026-05-01T00:00:00", "who": "t", "event": "promoted", "id": "cityloop-detector:v1",
                      "stage": "production", "why": "", "data": {}}]))
    specs = {m.id: m for m in model_specs(tmp_path, ScheduleParams())}
    assert set(specs) == {"cityloop-detector:v1", "acme-drying:v1"}
    assert specs["cityloop-detector:v1"].stage == "production" and specs["acme-drying:v1"].vendor == "acme"
    assert specs["acme-drying:v1"].classes == ("clothes",)
    assert set(m.id for m in model_specs(tmp_path, ScheduleParams(partners=False))) == {"cityloop-detector:v1"}
    with pytest.raises(ScheduleError, match="schedule.serve.clothes_drying"):
        model_specs(tmp_path, ScheduleParams(serve={"clothes_drying": "acme-drying:v7"}))
