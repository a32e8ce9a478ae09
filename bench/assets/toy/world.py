"""The toy world: coloured shapes on plain backgrounds, with captions from a small grammar.

Everything here is a pure function of a seed and a :class:`ToyWorldConfig`; nothing is downloaded.

A *scene* is one shape of a kind (circle, square, ...) with a colour, a size and a position on a
3x3 grid, on a background colour, plus a little continuous jitter of the centre and the radius so
that the image distribution is not a finite set of points. A *caption* names each attribute or
leaves it out, independently, with the configured probability ("a blue shape" fits many images),
so a good generator must cover several modes per prompt, as with real prompts.

Item ``i`` of a draw with seed ``s`` comes from its own generator seeded by ``(s, i)``: a draw of
``n`` items is a prefix of a draw of ``n + k`` items with the same seed, whatever the chunking.

The grammar (attributes in brackets may be left out)::

    a [small|large] [red|green|...] (circle|square|...|shape) [at the top left|...] [on a grey background]
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace
from typing import Sequence

import numpy as np

RGB = tuple[int, int, int]

#: The attributes of a scene, in caption order.
ATTRIBUTES: tuple[str, ...] = ("size", "colour", "shape", "position", "background")


@dataclass(frozen=True)
class ToyWorldConfig:
    """The toy world's vocabulary, geometry and caption grammar.

    Sizes are shape radii and positions are centres, both as fractions of the image side.
    ``omit_probability`` gives, per attribute in :data:`ATTRIBUTES` order, the probability that a
    caption leaves it unspecified (independently per attribute)."""

    resolution: int = 16
    supersample: int = 4  # antialiasing: coverage is averaged over supersample^2 points per pixel
    shapes: tuple[str, ...] = ("circle", "square", "triangle", "cross")
    colours: tuple[tuple[str, RGB], ...] = (
        ("red", (215, 40, 40)),
        ("green", (40, 170, 60)),
        ("blue", (45, 80, 220)),
        ("yellow", (235, 215, 40)),
        ("purple", (150, 55, 190)),
        ("orange", (240, 135, 25)),
    )
    backgrounds: tuple[tuple[str, RGB], ...] = (
        ("black", (15, 15, 15)),
        ("grey", (128, 128, 128)),
        ("white", (240, 240, 240)),
    )
    sizes: tuple[tuple[str, float], ...] = (("small", 0.17), ("large", 0.30))
    positions: tuple[tuple[str, float, float], ...] = (
        ("top left", 0.27, 0.27), ("top", 0.5, 0.27), ("top right", 0.73, 0.27),
        ("left", 0.27, 0.5), ("center", 0.5, 0.5), ("right", 0.73, 0.5),
        ("bottom left", 0.27, 0.73), ("bottom", 0.5, 0.73), ("bottom right", 0.73, 0.73),
    )
    position_jitter: float = 0.03  # centre moves uniformly by up to this fraction of the side
    size_jitter: float = 0.10  # radius scales uniformly by up to +-10 %
    omit_probability: tuple[float, float, float, float, float] = (0.3, 0.2, 0.15, 0.3, 0.3)

    def __post_init__(self) -> None:
        if not 8 <= self.resolution <= 128:
            raise ValueError(f"resolution must be in [8, 128], got {self.resolution}")
        if len(self.omit_probability) != len(ATTRIBUTES):
            raise ValueError(f"omit_probability needs {len(ATTRIBUTES)} values ({', '.join(ATTRIBUTES)})")
        if any(not 0.0 <= p <= 1.0 for p in self.omit_probability):
            raise ValueError("omit_probability values must be in [0, 1]")
        for attr in ATTRIBUTES:
            names = self.values(attr)
            if len(set(names)) != len(names):
                raise ValueError(f"duplicate {attr} names: {names}")

    def values(self, attribute: str) -> tuple[str, ...]:
        """The names an attribute can take, in index order."""
        if attribute == "shape":
            return self.shapes
        table = {"colour": self.colours, "background": self.backgrounds, "size": self.sizes,
                 "position": self.positions}[attribute]
        return tuple(entry[0] for entry in table)

    def omit_rate(self, attribute: str) -> float:
        return self.omit_probability[ATTRIBUTES.index(attribute)]

    def to_dict(self) -> dict:
        """JSON-friendly form (lists for tuples), for fingerprints and checkpoint metadata."""
        def plain(value):
            if isinstance(value, tuple):
                return [plain(v) for v in value]
            return value
        return {f.name: plain(getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True)
class Scene:
    """One image's content: categorical attributes plus the jittered continuous geometry."""

    shape: str
    colour: str
    size: str
    position: str
    background: str
    cx: float  # centre, in pixels (x to the right, y down; pixel k covers [k, k+1))
    cy: float
    radius: float  # in pixels

    def attributes(self) -> dict[str, str]:
        return {attr: getattr(self, attr) for attr in ATTRIBUTES}


# ------------------------------------------------------------------------------------------------
# Sampling scenes and captions
# ------------------------------------------------------------------------------------------------


def item_rng(seed: int, index: int) -> np.random.Generator:
    """The generator that owns item ``index`` of a draw with ``seed`` (determinism: item i depends on
    (seed, i) only)."""
    return np.random.default_rng([int(seed), int(index)])


def sample_scene(rng: np.random.Generator, config: ToyWorldConfig = ToyWorldConfig(),
                 given: dict[str, str] | None = None) -> Scene:
    """Draw a scene from the world's prior; attributes named in ``given`` are fixed instead.

    Attributes are independent and uniform, so the scene drawn with ``given`` is a draw from the
    world conditioned on a caption that specifies exactly those attributes."""
    given = given or {}
    unknown = set(given) - set(ATTRIBUTES)
    if unknown:
        raise ValueError(f"unknown attributes {sorted(unknown)}")
    chosen: dict[str, str] = {}
    for attr in ATTRIBUTES:  # always draw, so the generator advances the same way either way
        names = config.values(attr)
        drawn = names[int(rng.integers(len(names)))]
        if attr in given and given[attr] not in names:
            raise ValueError(f"{given[attr]!r} is not a {attr} of this world ({', '.join(names)})")
        chosen[attr] = given.get(attr, drawn)
    side = config.resolution
    _, px, py = next(p for p in config.positions if p[0] == chosen["position"])
    radius_fraction = dict(config.sizes)[chosen["size"]]
    jx, jy = rng.uniform(-1.0, 1.0, size=2) * config.position_jitter
    scale = 1.0 + rng.uniform(-1.0, 1.0) * config.size_jitter
    return Scene(cx=float((px + jx) * side), cy=float((py + jy) * side),
                 radius=float(radius_fraction * scale * side), **chosen)


def caption(scene: Scene, rng: np.random.Generator, config: ToyWorldConfig = ToyWorldConfig()) -> str:
    """A caption of ``scene`` that leaves each attribute out with its ``omit_probability``."""
    keep = {attr: bool(rng.random() >= config.omit_rate(attr)) for attr in ATTRIBUTES}
    return caption_from_attributes({a: getattr(scene, a) for a in ATTRIBUTES if keep[a]})


def caption_from_attributes(attributes: dict[str, str]) -> str:
    """The grammar's sentence for the specified attributes (missing keys are left out)."""
    words = ["a"]
    for attr in ("size", "colour"):
        if attr in attributes:
            words.append(attributes[attr])
    words.append(attributes.get("shape", "shape"))
    if "position" in attributes:
        words.append(_position_phrase(attributes["position"]))
    if "background" in attributes:
        words.append(f"on a {attributes['background']} background")
    return " ".join(words)


def _position_phrase(position: str) -> str:
    if position == "center":
        return "in the center"
    if position in ("left", "right"):
        return f"on the {position}"
    return f"at the {position}"


def parse_caption(text: str, config: ToyWorldConfig = ToyWorldConfig()) -> dict[str, str]:
    """The attributes a caption of the grammar specifies (the inverse of
    :func:`caption_from_attributes`). Raises ``ValueError`` on text outside the grammar."""
    pattern = _caption_pattern(config)
    match = pattern.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a toy-world caption: {text!r}")
    found = {k: v for k, v in match.groupdict().items() if v is not None}
    if found.get("shape") == "shape":
        del found["shape"]
    if "position" in found:
        found["position"] = re.sub(r"^(at the|on the|in the) ", "", found["position"])
    return found


def _caption_pattern(config: ToyWorldConfig) -> re.Pattern:
    def alternatives(names: Sequence[str]) -> str:
        return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    phrases = [_position_phrase(p) for p in config.values("position")]
    return re.compile(
        r"a"
        rf"(?: (?P<size>{alternatives(config.values('size'))}))?"
        rf"(?: (?P<colour>{alternatives(config.values('colour'))}))?"
        rf" (?P<shape>{alternatives([*config.values('shape'), 'shape'])})"
        rf"(?: (?P<position>{alternatives(phrases)}))?"
        rf"(?: on a (?P<background>{alternatives(config.values('background'))}) background)?"
    )


# ------------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------------


def render(scene: Scene, config: ToyWorldConfig = ToyWorldConfig()) -> np.ndarray:
    """The scene as a uint8 image of shape (H, W, 3)."""
    return render_batch([scene], config)[0]


def render_batch(scenes: Sequence[Scene], config: ToyWorldConfig = ToyWorldConfig(),
                 chunk: int = 512) -> np.ndarray:
    """Render scenes to uint8 (N, H, W, 3), antialiased by supersampling the shape's coverage."""
    side, ss = config.resolution, config.supersample
    out = np.empty((len(scenes), side, side, 3), dtype=np.uint8)
    fg_table = dict(config.colours)
    bg_table = dict(config.backgrounds)
    grid = (np.arange(side * ss, dtype=np.float64) + 0.5) / ss  # supersample point coordinates
    for start in range(0, len(scenes), chunk):
        part = scenes[start:start + chunk]
        cx = np.array([s.cx for s in part])[:, None, None]
        cy = np.array([s.cy for s in part])[:, None, None]
        r = np.array([s.radius for s in part])[:, None, None]
        kind = np.array([config.shapes.index(s.shape) for s in part])[:, None, None]
        dx = grid[None, None, :] - cx
        dy = grid[None, :, None] - cy
        inside = np.zeros((len(part), side * ss, side * ss), dtype=bool)
        for index, name in enumerate(config.shapes):
            inside |= (kind == index) & _shape_mask(name, dx, dy, r)
        coverage = inside.reshape(len(part), side, ss, side, ss).mean(axis=(2, 4))[..., None]
        fg = np.array([fg_table[s.colour] for s in part], dtype=np.float64)[:, None, None, :]
        bg = np.array([bg_table[s.background] for s in part], dtype=np.float64)[:, None, None, :]
        image = bg * (1.0 - coverage) + fg * coverage
        out[start:start + len(part)] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return out


def _shape_mask(name: str, dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Points inside a shape of radius ``r`` centred at the origin (y grows downwards). The
    polygons are scaled to roughly the area of the circle of the same radius."""
    if name == "circle":
        return dx * dx + dy * dy <= r * r
    if name == "square":
        half = 0.886 * r  # (2 * half)^2 = pi r^2
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if name == "triangle":
        top, base, half_base = -1.15 * r, 0.85 * r, 1.15 * r  # apex up, base down
        return (dy <= base) & (np.abs(dx) <= (dy - top) * half_base / (base - top))
    if name == "cross":
        arm, half_width = 1.05 * r, 0.38 * r
        return (((np.abs(dx) <= half_width) & (np.abs(dy) <= arm))
                | ((np.abs(dy) <= half_width) & (np.abs(dx) <= arm)))
    if name == "diamond":
        return np.abs(dx) + np.abs(dy) <= 1.25 * r
    raise ValueError(f"no renderer for shape {name!r} (known: circle, square, triangle, cross, diamond)")


# ------------------------------------------------------------------------------------------------
# Draws: pairs, suite prompts, references
# ------------------------------------------------------------------------------------------------


def draw_scenes(seed: int, n: int, config: ToyWorldConfig = ToyWorldConfig(),
                start: int = 0) -> tuple[list[Scene], list[str]]:
    """Scenes and captions of items ``start .. start + n - 1`` of the draw with ``seed``."""
    scenes, captions = [], []
    for index in range(start, start + n):
        rng = item_rng(seed, index)
        scene = sample_scene(rng, config)
        scenes.append(scene)
        captions.append(caption(scene, rng, config))
    return scenes, captions


def draw_pairs(seed: int, n: int, config: ToyWorldConfig = ToyWorldConfig(),
               start: int = 0) -> tuple[np.ndarray, list[str]]:
    """``n`` (image, caption) pairs of the world: uint8 (n, H, W, 3) and a list of captions."""
    scenes, captions = draw_scenes(seed, n, config, start)
    return render_batch(scenes, config), captions


def redraw_for_captions(captions: Sequence[str], seed: int,
                        config: ToyWorldConfig = ToyWorldConfig()) -> np.ndarray:
    """A fresh image for each caption, drawn from the world conditioned on that caption (the
    attributes it leaves out and the jitter are drawn anew): what a perfect generator makes."""
    scenes = [sample_scene(item_rng(seed, i), config, given=parse_caption(text, config))
              for i, text in enumerate(captions)]
    return render_batch(scenes, config)


@dataclass(frozen=True)
class ToySuiteConfig:
    """The ``toy`` suite: prompts are the captions of a draw with ``prompt_seed``; the reference
    images for FID/Coverage are that draw's images; the floor images are a second, independent
    draw conditioned on the same prompts (``floor_seed``), which measures the real-vs-real floor
    of every metric at the suite's N."""

    n: int = 1000
    prompt_seed: int = 20240
    floor_seed: int = 20241
    world: ToyWorldConfig = field(default_factory=ToyWorldConfig)

    def __post_init__(self) -> None:
        if self.prompt_seed == self.floor_seed:
            raise ValueError("prompt_seed and floor_seed must differ (the floor draw must be independent)")


def toy_suite_prompts(seed: int = ToySuiteConfig.prompt_seed, n: int = ToySuiteConfig.n,
                      config: ToyWorldConfig = ToyWorldConfig()) -> list[str]:
    """The fixed prompt list of the ``toy`` suite."""
    return draw_scenes(seed, n, config)[1]


def toy_suite_references(suite: ToySuiteConfig = ToySuiteConfig()) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(prompts, reference_images, floor_images)`` of the ``toy`` suite; the images are uint8
    (n, H, W, 3) and image ``i`` of each set fits prompt ``i``."""
    reference, prompts = draw_pairs(suite.prompt_seed, suite.n, suite.world)
    floor = redraw_for_captions(prompts, suite.floor_seed, suite.world)
    return prompts, reference, floor


def with_resolution(config: ToyWorldConfig, resolution: int) -> ToyWorldConfig:
    """The same world rendered at another resolution (geometry is relative to the side)."""
    return replace(config, resolution=resolution)
