"""Vocabulary and knobs of the synthetic scenes: dimensions, colours, categories, parts, functions, SynthConfig."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from dtwinseg.config import StrictConfig
from dtwinseg.io import DataError

DIMENSIONS = ("recognition", "function", "spatial", "geometric", "multi_step", "group", "part")
SPLITS = ("train", "val", "test")

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "orange": (245, 140, 30),
    "purple": (140, 60, 190),
    "pink": (245, 130, 190),
    "gray": (120, 120, 120),
}
TEXTURES = ("plain", "striped", "dotted")
SIZE_RADIUS = {"small": (13, 18), "medium": (21, 28), "large": (32, 42)}

SHAPES = ("circle", "square", "triangle", "star", "hexagon")
ICONS = ("cup", "chair", "sun", "umbrella")
COMPOSITES = ("house", "tree", "car")
# Parts of composite objects: (part name, colour rule). Colour rule: "main" = the object's colour,
# or a fixed colour name.
PART_COLOURS = {
    "house": (("walls", "main"), ("roof", "red"), ("door", "orange")),
    "tree": (("trunk", "orange"), ("crown", "green")),
    "car": (("body", "main"), ("wheel", "gray"), ("wheel", "gray")),
}
PART_PLURALS = {"wheel": "wheels"}
FUNCTIONS = {
    "cup": ("something to drink from", "I am thirsty and want some tea; which object here would I drink it from?"),
    "chair": ("something to sit on", "My legs are tired after a long walk. What in this picture could I sit on?"),
    "sun": ("what gives light and warmth", "Which thing in the picture gives us light and warmth during the day?"),
    "umbrella": ("something that keeps you dry in the rain",
                 "It is starting to rain and I do not want to get wet. What could I hold over my head?"),
    "house": ("a place where people live", "Where in this picture could a family live and sleep at night?"),
    "tree": ("something that gives shade", "On a hot summer day, what here could I rest under to stay in the shade?"),
    "car": ("something you can drive", "I need to get to work across town. Which object could I drive there?"),
}
PART_FUNCTIONS = {
    "roof": "the part of the house that keeps the rain out",
    "door": "the part of the house you walk in through",
    "crown": "the leafy top of the tree",
    "trunk": "the wooden stem of the tree",
    "wheel": "what the car rolls on",
    "body": "the body of the car",
    "walls": "the walls of the house",
}
PLURALS = {"cup": "cups", "chair": "chairs", "sun": "suns", "umbrella": "umbrellas", "house": "houses",
           "tree": "trees", "car": "cars", "circle": "circles", "square": "squares", "triangle": "triangles",
           "star": "stars", "hexagon": "hexagons"}


PROFILES = ("basic", "realistic")


@dataclass
class RealisticConfig(StrictConfig):
    """Knobs of the realistic profile (``SynthConfig.realistic``; data_builders/synthetic/realistic/).

    min_masks, max_masks: ground-truth instances per scene (background regions, things, groups and parts);
        scenes outside the range are drawn again.
    p_wrong_colour: rate at which the wording model names a wrong colour (a VLM's mistake).
    p_generic: rate of a generic description ("an object", "a piece") instead of a name.
    p_other_noun: rate at which a description departs from the scene's preferred noun for its category.
    p_context: rate of a location phrase ("on the table", "next to the sofa").
    p_size, p_material: rates of the optional size and material words.
    """

    min_masks: int = 15
    max_masks: int = 60
    p_wrong_colour: float = 0.04
    p_generic: float = 0.03
    p_other_noun: float = 0.1
    p_context: float = 0.3
    p_size: float = 0.35
    p_material: float = 0.4

    SECTION = "realistic"

    def __post_init__(self) -> None:
        if self.min_masks < 1:
            raise DataError(None, "realistic.min_masks", f"must be >= 1, got {self.min_masks}")
        if self.max_masks < self.min_masks:
            raise DataError(None, "realistic.max_masks", f"must be >= min_masks ({self.min_masks}), "
                                                          f"got {self.max_masks}")
        for name in ("p_wrong_colour", "p_generic", "p_other_noun", "p_context", "p_size", "p_material"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise DataError(None, f"realistic.{name}", f"a probability in [0, 1], got {getattr(self, name)}")


@dataclass
class SynthConfig(StrictConfig):
    """Knobs of the scene generator.

    profile: "basic" (shapes and icons, 3-12 objects, canonical semantics: quick tests) or "realistic"
        (rooms, kitchens, tabletops and streets with 15-60 instances: background regions, things, groups
        and parts; semantics written by a wording model; train / val / test worded and phrased apart;
        knobs in ``realistic``). min_objects, max_objects, category_pool, colour_pool, p_composite and
        p_icon are the basic profile's.
    size: image side in pixels (square images).
    min_objects, max_objects: objects per scene (composites count once), drawn uniformly.
    category_pool: (min, max) distinct categories per scene; a small pool makes repeated categories, so
        "largest circle" / "all the stars" have something to choose among.
    colour_pool: (min, max) distinct colours per scene.
    p_composite: probability that an object is a composite (house / tree / car).
    p_icon: probability that a non-composite object is an icon rather than a shape.
    min_visible: an object keeps at least this fraction of its pixels visible under later objects.
    p_sentence: probability that a query is a long sentence rather than a short phrase.
    margin_px: centroid offset (pixels) a spatial / extremal comparison needs to count as unambiguous.
    margin_ratio: ratio by which the chosen object must beat the runner-up in area / distance comparisons.
    jpeg_quality: quality of the written JPEG images.
    max_tries: scenes tried per sample before giving up on the requested dimension.
    """

    size: int = 256
    min_objects: int = 3
    max_objects: int = 12
    category_pool: tuple[int, int] = (3, 5)
    colour_pool: tuple[int, int] = (3, 5)
    p_composite: float = 0.2
    p_icon: float = 0.4
    min_visible: float = 0.6
    p_sentence: float = 0.5
    margin_px: float = 10.0
    margin_ratio: float = 1.25
    jpeg_quality: int = 95
    max_tries: int = 200
    profile: str = "basic"
    realistic: RealisticConfig = field(default_factory=RealisticConfig)

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise DataError(None, "profile", f"must be one of {', '.join(PROFILES)}, got {self.profile!r}")
        if isinstance(self.realistic, dict):
            self.realistic = RealisticConfig.from_dict(self.realistic)
        self.category_pool, self.colour_pool = tuple(self.category_pool), tuple(self.colour_pool)
        ints = {"size": 96, "min_objects": 1, "jpeg_quality": 1, "max_tries": 1}  # 96: room for the largest object
        for name, lowest in ints.items():
            if getattr(self, name) < lowest:
                raise DataError(None, name, f"must be >= {lowest}, got {getattr(self, name)}")
        if self.max_objects < self.min_objects:
            raise DataError(None, "max_objects", f"must be >= min_objects ({self.min_objects}), "
                                                 f"got {self.max_objects}")
        if self.jpeg_quality > 100:
            raise DataError(None, "jpeg_quality", f"must be <= 100, got {self.jpeg_quality}")
        for name, top in (("category_pool", len(SHAPES) + len(ICONS) + len(COMPOSITES)),
                          ("colour_pool", len(COLOURS))):
            pool = getattr(self, name)
            if len(pool) != 2 or not 1 <= pool[0] <= pool[1] <= top:
                raise DataError(None, name, f"expected [min, max] with 1 <= min <= max <= {top}, got {list(pool)}")
        for name in ("p_composite", "p_icon", "p_sentence"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise DataError(None, name, f"a probability in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.min_visible <= 1.0:
            raise DataError(None, "min_visible", f"must be in (0, 1], got {self.min_visible}")
        if self.margin_px < 0:
            raise DataError(None, "margin_px", f"must be >= 0, got {self.margin_px}")
        if self.margin_ratio < 1.0:
            raise DataError(None, "margin_ratio", f"must be >= 1, got {self.margin_ratio}")

    def to_dict(self) -> dict:
        return asdict(self)

