"""Everything that depends on the scenarios derives from the registry, and a bad definition or setting
is refused with a message that names the scenario and the key."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cityloop.scenarios import registry, validate
from cityloop.scenarios.base import ScenarioError, Window
from cityloop.scenarios.settings import scenario_settings
from cityloop.scenarios.zones import ZoneError, camera_zones, load_zones


def units():
    return list(registry().scenarios.values())


def test_the_nine_scenarios_of_the_city_are_registered():
    assert registry().names[:9] == ("helmetless_rider", "illegal_parking", "garbage_pile", "street_vending",
                                    "road_waterlogging", "disorderly_crowd", "outdoor_advertising",
                                    "clothes_drying", "checkpoint_breach")


def test_classes_labels_and_the_detector_head_derive_from_the_registry():
    from cityloop.governance.schema import CATEGORY_IDS, CLASSES
    from cityloop.labeling.annotator import CONFUSIONS
    from cityloop.labeling.convert import config_classes, label_config
    from cityloop.models.components.detector import DetectorConfig

    reg = registry()
    assert CLASSES == reg.classes and list(CATEGORY_IDS.values()) == list(range(1, len(CLASSES) + 1))
    assert CLASSES[:7] == ("rider_helmet", "rider_no_helmet", "car", "garbage", "vendor_stall", "water", "person"), \
        "existing category ids never move: new classes come after"
    assert config_classes(label_config(CLASSES)) == list(CLASSES)
    assert DetectorConfig().num_classes == len(CLASSES)
    assert set(CONFUSIONS) <= set(CLASSES) and set(CONFUSIONS.values()) <= set(CLASSES)


def test_a_rule_reading_an_unknown_class_is_refused():
    bad = replace(units()[0], uses=("unicorn",))
    with pytest.raises(ScenarioError, match=rf"scenario {bad.name}: uses: unknown class 'unicorn'"):
        validate([bad, *units()[1:]])


def test_a_class_defined_twice_is_refused():
    a, b = units()[0], units()[1]
    with pytest.raises(ScenarioError, match=rf"scenario {b.name}: classes: '{a.classes[0].name}' is already defined"):
        validate([a, replace(b, classes=(a.classes[0],))])


def test_the_riders_are_one_cue_group_and_a_lone_or_misplaced_cue_is_refused():
    reg = registry()
    assert reg.cue_groups == (((0, 1), (0.5, 0.08)),), "helmet or not is read at the rider's head"
    rider = reg.scenarios["helmetless_rider"]
    helmet, bare = rider.classes
    lone = replace(rider, classes=(helmet, replace(bare, cue=None)))
    with pytest.raises(ScenarioError, match=r"family rider: a cue tells two or more classes"):
        validate([lone if u is rider else u for u in units()])
    outside = replace(rider, classes=(replace(helmet, cue=(0.5, 1.2)), replace(bare, cue=(0.5, 1.2))))
    with pytest.raises(ScenarioError, match=r"scenario helmetless_rider: classes.rider_helmet.cue: .* not a point"):
        validate([outside if u is rider else u for u in units()])


def test_overlapping_windows_are_refused_in_a_unit_and_in_params():
    bad = replace(units()[0], windows=(Window(hours=(17.0, 6.0)), Window(hours=(20.0, 23.0))))
    with pytest.raises(ScenarioError, match=rf"scenario {bad.name}: windows\[1\]: overlaps"):
        validate([bad, *units()[1:]])
    with pytest.raises(ScenarioError, match=r"scenarios.street_vending.windows\[1\]: overlaps"):
        scenario_settings({"street_vending": {"windows": [{"hours": [17, 6]}, {"hours": [5, 7]}]}})
    # the same hours in different weather do not overlap
    scenario_settings({"road_waterlogging": {"windows": [{"hours": [0, 24], "conditions": ["rain"]},
                                                          {"hours": [6, 9], "conditions": ["fog"]}]}})


def test_bad_settings_name_the_scenario_and_key():
    with pytest.raises(ScenarioError, match=r"unknown scenario\(s\) \['helmetless'\]"):
        scenario_settings({"helmetless": {"k": 3}})
    with pytest.raises(ScenarioError, match=r"scenarios.helmetless_rider.*\['kk'\]"):
        scenario_settings({"helmetless_rider": {"kk": 3}})
    with pytest.raises(ScenarioError, match=r"scenarios.garbage_pile.t_s: expected float"):
        scenario_settings({"garbage_pile": {"t_s": "six"}})
    with pytest.raises(ScenarioError, match=r"scenarios.street_vending.windows\[0\].conditions: unknown \['snow'\]"):
        scenario_settings({"street_vending": {"windows": [{"conditions": ["snow"]}]}})
    with pytest.raises(ScenarioError, match=r"scenarios.street_vending.windows\[0\].hours"):
        scenario_settings({"street_vending": {"windows": [{"hours": [17, 25]}]}})


def test_a_zone_outside_the_frame_is_refused_naming_scenario_camera_and_key():
    with pytest.raises(ZoneError,
                       match=r"scenario illegal_parking: zones.cam01.no_parking: points .* outside the 192x192"):
        load_zones([{"camera_id": "cam01", "size": 192, "zones": {"no_parking": [10, 10, 400, 60]}}])
    with pytest.raises(ZoneError, match=r"cam01.parking_lot: unknown zone kind"):
        camera_zones("cam01", {"parking_lot": [0, 0, 10, 10]})


def test_a_line_of_zero_length_is_refused():
    kinds = registry().zone_kinds
    line_kinds = [k for k, (_s, z) in kinds.items() if z.shape == "line"]
    assert line_kinds, "checkpoint_breach reads a line zone"
    kind = line_kinds[0]
    scenario = kinds[kind][0]
    with pytest.raises(ZoneError, match=rf"scenario {scenario}: zones.cam02.{kind}.line: zero length"):
        load_zones([{"camera_id": "cam02", "size": 192, "zones": {kind: {"line": [[50, 120], [50, 120]]}}}])
