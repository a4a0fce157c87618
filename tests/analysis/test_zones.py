"""Zones from configuration; a malformed zone is a clear error naming the camera and key."""

from __future__ import annotations

import pytest

from cityloop.analysis.params import AnalysisParams
from cityloop.scenarios.zones import ZoneError, load_zones


def test_rectangles_and_polygons():
    z = load_zones([{"camera_id": "c1", "zones": {"no_parking": [10, 10, 50, 40]}}],
                   {"c1": {"vending": [[0, 0], [100, 0], [0, 100]]}})["c1"]
    assert z.inside("no_parking", 20, 20) and not z.inside("no_parking", 60, 20)
    assert z.inside("vending", 10, 10) and not z.inside("vending", 90, 90)


@pytest.mark.parametrize("bad, match", [
    ({"c1": {"no_parking": [10, 10, 5, 40]}}, r"c1\.no_parking.*x1 <= x0"),
    ({"c1": {"no_parking": "everywhere"}}, r"c1\.no_parking"),
    ({"c1": {"no_parking": [[0, 0], [1, 1]]}}, r"3 or more"),
    ({"c1": {"parking_lot": [0, 0, 1, 1]}}, r"unknown zone kind"),
])
def test_malformed_zone_config_is_a_clear_error(bad, match):
    with pytest.raises(ZoneError, match=match):
        load_zones([{"camera_id": "c1"}], bad)


def test_the_old_rules_section_points_to_the_scenarios_section():
    with pytest.raises(ValueError, match=r"analysis.rules: .* moved to the `scenarios:` section"):
        AnalysisParams.from_dict({"rules": {"helmet_k": 3}})
