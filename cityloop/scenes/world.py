"""The simulated city: districts, cameras, conditions and the two domains (lab and field).

A *camera* is a fixed view of one district: road layout, horizon, the scale at which
people appear, where curbs and no-parking zones lie. A *condition* is the light and weather
a frame is taken in. The `lab` domain is what a vendor trains on (clear daytime, two
districts, a few camera set-ups); the `field` domain is the real mix the platform meets.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np

# district: palette (BGR-free, RGB 0..255) and layout preferences.
DISTRICTS: dict[str, dict] = {
    "longgang-old": dict(sky=(170, 200, 235), road=(92, 92, 96), walk=(168, 160, 150),
                         buildings=[(190, 170, 150), (160, 140, 130), (210, 200, 180)],
                         layouts=("straight",), trees=0.3, lamps=3),
    "bantian-tech": dict(sky=(180, 210, 240), road=(70, 72, 78), walk=(190, 190, 195),
                         buildings=[(140, 160, 190), (200, 210, 220), (110, 130, 160)],
                         layouts=("straight", "perspective"), trees=0.5, lamps=4),
    "buji-market": dict(sky=(200, 205, 210), road=(105, 100, 95), walk=(150, 120, 100),
                        buildings=[(200, 120, 90), (220, 190, 120), (170, 90, 80)],
                        layouts=("straight", "plaza"), trees=0.1, lamps=2),
    "henggang-industrial": dict(sky=(190, 195, 200), road=(120, 118, 110), walk=(135, 135, 125),
                                buildings=[(120, 120, 115), (150, 150, 140), (95, 100, 105)],
                                layouts=("perspective",), trees=0.1, lamps=2),
    "pingdi-village": dict(sky=(160, 195, 230), road=(130, 110, 90), walk=(115, 140, 95),
                           buildings=[(230, 220, 200), (200, 170, 130), (180, 190, 170)],
                           layouts=("straight", "perspective"), trees=0.8, lamps=1),
    "longcheng-plaza": dict(sky=(175, 205, 245), road=(160, 150, 140), walk=(200, 185, 165),
                            buildings=[(230, 230, 235), (90, 110, 140), (180, 60, 60)],
                            layouts=("plaza",), trees=0.4, lamps=5),
    "jihua-residential": dict(sky=(185, 200, 220), road=(85, 88, 92), walk=(175, 170, 160),
                              buildings=[(220, 200, 190), (190, 200, 210), (160, 170, 150)],
                              layouts=("perspective", "straight"), trees=0.6, lamps=3),
    "nanwan-riverside": dict(sky=(150, 185, 215), road=(75, 80, 80), walk=(140, 150, 150),
                             buildings=[(100, 140, 130), (170, 180, 170), (60, 80, 90)],
                             layouts=("straight", "plaza"), trees=0.7, lamps=3),
}

CAMERA_HEIGHTS: dict[str, tuple[float, float]] = {
    # name: (horizon as a fraction of image height, person height in px at the bottom per 192 px)
    "low": (0.42, 62.0),
    "mid": (0.33, 50.0),
    "high": (0.22, 38.0),
}

DOMAINS: dict[str, dict] = {
    "lab": dict(  # a vendor's training set: many streets, every layout and mounting height, in good light
        districts=("longgang-old", "bantian-tech", "buji-market", "jihua-residential"),
        layouts=("straight", "perspective", "plaza"),
        heights=tuple(CAMERA_HEIGHTS),
        conditions={"day": 1.0},
        blur_p=0.0, jpeg=(90, 95), noise=(0.0, 2.0), n_cameras=12,
    ),
    "field": dict(
        districts=tuple(DISTRICTS),
        layouts=("straight", "perspective", "plaza"),
        heights=tuple(CAMERA_HEIGHTS),
        conditions={"day": 0.35, "dusk": 0.15, "night": 0.25, "rain": 0.15, "fog": 0.10},
        blur_p=0.3, jpeg=(30, 85), noise=(2.0, 6.0), n_cameras=48,
    ),
}


@dataclass(frozen=True)
class Camera:
    """A fixed camera: its view geometry never changes between frames."""

    camera_id: str
    district: str
    layout: str
    height: str
    horizon: float  # y of the horizon in px
    s_near: float  # person height in px at the bottom row
    road: tuple[float, float]  # straight: ground-y band of the road; perspective: half-width at bottom
    vanish_x: float
    size: int
    seed: int  # fixes the background (buildings, trees, lamps)
    zones: dict = field(default_factory=dict)  # zone kind -> config, from the scenarios' sites (cameras.json)

    def scale(self, y: float) -> float:
        """Person height in px for an object standing at image row y."""
        return max(0.0, self.s_near * (y - self.horizon) / (self.size - self.horizon))

    def ground_range(self, min_px: float = 12.0) -> tuple[float, float]:
        """Rows where a person would be at least `min_px` tall, down to just below the frame."""
        y0 = self.horizon + min_px / self.s_near * (self.size - self.horizon)
        return y0, self.size * 1.02

    def road_x_range(self, y: float) -> tuple[float, float]:
        """Horizontal extent of the road at row y (whole width for straight/plaza)."""
        if self.layout != "perspective":
            return -0.1 * self.size, 1.1 * self.size
        t = (y - self.horizon) / (self.size - self.horizon)
        half = self.road[1] * t
        return self.vanish_x - half, self.vanish_x + half

    def on_road(self, x: float, y: float) -> bool:
        """Whether ground point (x, y) lies on the carriageway."""
        if self.layout == "plaza":
            return True
        if self.layout == "straight":
            return self.road[0] <= y <= self.road[1]
        lo, hi = self.road_x_range(y)
        return lo <= x <= hi

    def to_dict(self) -> dict:
        """JSON-friendly description (written to cameras.json)."""
        return asdict(self)


def make_camera(camera_id: str, domain: str, size: int, rng: np.random.Generator,
                sites: tuple[str, ...] = ()) -> Camera:
    """Draw a camera set-up of a domain."""
    spec = DOMAINS[domain]
    district = str(rng.choice(spec["districts"]))
    layouts = [lay for lay in spec["layouts"] if lay in DISTRICTS[district]["layouts"]] or list(
        spec["layouts"][:1]
    )
    layout = str(rng.choice(layouts))
    height = str(rng.choice(spec["heights"]))
    hfrac, s_near = CAMERA_HEIGHTS[height]
    jitter = 0.0 if domain == "lab" else rng.uniform(-0.04, 0.04)
    horizon = (hfrac + jitter) * size
    s_near = s_near * size / 192 * (1.0 if domain == "lab" else rng.uniform(0.85, 1.15))
    ground = size - horizon
    if layout == "straight":
        a = horizon + ground * rng.uniform(0.30, 0.40)
        road = (a, a + ground * rng.uniform(0.30, 0.40))
    elif layout == "perspective":
        road = (0.0, size * rng.uniform(0.45, 0.7))
    else:
        road = (horizon, size)
    cam = Camera(
        camera_id=camera_id, district=district, layout=layout, height=height,
        horizon=float(horizon), s_near=float(s_near), road=tuple(map(float, road)),
        vanish_x=float(size * rng.uniform(0.35, 0.65)), size=size,
        seed=int(rng.integers(2**31)),
    )
    return with_sites(cam, domain, sites)


def with_sites(cam: Camera, domain: str, force: tuple[str, ...] = ()) -> Camera:
    """The camera with each registered scenario's site set up (no-parking zones, a checkpoint line...).

    Each unit draws from its own generator (camera seed, unit order), so adding a scenario does not move
    any other unit's zones. `force`: zone kinds every camera must have (a clip made to show one scenario).
    """
    from cityloop.scenarios import registry

    reg, zones = registry(), {}
    for sc in reg.scenarios.values():
        if sc.site is not None:
            rng = np.random.default_rng([cam.seed, reg.order(sc.name), 1])
            zones.update(sc.site(cam, rng, domain, any(z.name in force for z in sc.zones)))
    return replace(cam, zones=zones)


@dataclass(frozen=True)
class Condition:
    """Light and weather of one frame (or one clip)."""

    name: str  # day | dusk | night | rain | fog (the primary condition)
    gain: float  # global illumination
    tint: tuple[float, float, float]  # RGB multipliers
    noise: float  # sensor noise sigma (0..255 scale)
    fog: float  # 0..1 fog density at the horizon
    rain: float  # 0..1 streak density
    blur: int  # motion blur kernel length in px (0 = none)
    jpeg: int  # JPEG quality the camera encodes with
    lights: bool  # headlights, lamps and windows switched on
    extras: tuple[str, ...] = field(default=())

    @property
    def tags(self) -> str:
        """Comma-joined conditions, e.g. "night,blur"."""
        return ",".join((self.name, *self.extras))


def sample_condition(domain: str, rng: np.random.Generator, name: str | None = None) -> Condition:
    """Draw a condition from the domain's mix (or force `name`)."""
    spec = DOMAINS[domain]
    names = list(spec["conditions"])
    if name is None:
        probs = np.array([spec["conditions"][n] for n in names], dtype=float)
        name = str(rng.choice(names, p=probs / probs.sum()))
    noise = float(rng.uniform(*spec["noise"]))
    gain, tint, fog, rain, lights = 1.0, (1.0, 1.0, 1.0), 0.0, 0.0, False
    if name == "day":
        gain = float(rng.uniform(0.9, 1.1)) if domain == "field" else float(rng.uniform(0.97, 1.03))
        tint = tuple(float(v) for v in rng.uniform(0.95, 1.05, 3)) if domain == "field" else tint
    elif name == "dusk":
        gain, tint, lights = float(rng.uniform(0.45, 0.65)), (1.15, 0.9, 0.7), True
        noise += 2.0
    elif name == "night":
        gain, tint, lights = float(rng.uniform(0.2, 0.32)), (0.8, 0.9, 1.25), True
        noise += float(rng.uniform(4.0, 8.0))
    elif name == "rain":
        gain, tint, rain = float(rng.uniform(0.55, 0.75)), (0.9, 0.95, 1.05), float(rng.uniform(0.4, 1.0))
        lights = bool(rng.random() < 0.5)
    elif name == "fog":
        gain, fog = float(rng.uniform(0.8, 1.0)), float(rng.uniform(0.45, 0.8))
    extras: list[str] = []
    blur = 0
    if rng.random() < spec["blur_p"]:
        blur = int(rng.integers(3, 8))
        extras.append("blur")
    jpeg = int(rng.integers(spec["jpeg"][0], spec["jpeg"][1] + 1))
    if jpeg < 60:
        extras.append("jpeg")
    return Condition(name, gain, tint, noise, fog, rain, blur, jpeg, lights, tuple(extras))
