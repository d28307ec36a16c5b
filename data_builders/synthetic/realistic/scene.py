"""One realistic scene: a setting's background regions, things placed in its slots (furniture on the floor,
cups on the table, cars on the road, stacks of books), drawn in painter's order, and every instance SAM
could return: background regions, whole things, groups (a stack of books: the union of its books) and the
parts of things (a mug's handle and body), each with its visible mask.

Instances (``RealisticScene.instances``) list level-1 instances first (background regions, things, groups)
then the parts (level 2, ``parent`` = the owner's index), so the oracle perception source reads them like
the basic profile's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from dtwinseg.data_builders.synthetic.geometry import polygon_roundtrip_iou, rasterise_polygons
from dtwinseg.data_builders.synthetic.realistic.catalogue import (
    BACKGROUNDS,
    CATEGORIES,
    SETTINGS,
    Box,
    Parts,
    _flip,
)

from dtwinseg.twin import encode_rles

RGB: dict[str, tuple[int, int, int]] = {
    "red": (205, 40, 40), "orange": (240, 135, 30), "yellow": (238, 205, 45), "green": (55, 150, 60),
    "blue": (45, 90, 205), "purple": (130, 60, 175), "pink": (240, 140, 185), "brown": (130, 85, 45),
    "black": (35, 35, 38), "white": (238, 238, 232), "gray": (130, 130, 135),
}
SKIN = (224, 172, 125)


@dataclass
class Thing:
    """One instance of the scene (before indexing): a background region, a thing, a group or a part."""

    role: str  # "background" | "object" | "group" | "part"
    category: str  # the category; a part's name for parts; the members' category for groups
    colour: str
    size: str | None = None  # "small" | "medium" | "large" within its category
    material: str | None = None
    state: str | None = None
    owner: int | None = None  # parts: the owning thing (position in RealisticScene.things)
    members: list[int] = field(default_factory=list)  # groups: their things
    group: int | None = None  # things in a group: the group
    support: int | None = None  # the thing (or background region) it stands on
    mask: np.ndarray | None = None  # visible mask
    area: int = 0
    cx: float = 0.0
    cy: float = 0.0
    bbox: tuple[int, int, int, int] = (0, 0, 0, 0)


@dataclass
class RealisticScene:
    """A rendered realistic scene: the image and its instances (``things``, instance order)."""

    image: np.ndarray
    setting: str
    things: list[Thing]

    def instance_mask(self, index: int) -> np.ndarray:
        return self.things[index].mask

    def level1(self) -> list[int]:
        return [k for k, t in enumerate(self.things) if t.role != "part"]

    def holefree(self, index: int) -> bool:
        """Whether instance ``index`` can be a target: not a background region, and its visible mask is
        what its outer polygons draw (the target format has no holes). Computed once, on demand."""
        memo = self.__dict__.setdefault("_holefree", {})
        if index not in memo:
            t = self.things[index]
            memo[index] = t.role != "background" and t.area > 0 and polygon_roundtrip_iou(t.mask) >= 0.98
        return memo[index]


class _Canvas:
    """Painter's order bookkeeping: a label map of draw operations, a label map of things and, per thing,
    its visible and full pixel counts, so a placement that would hide an earlier thing too much is refused
    by looking only at the pixels it covers."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.label = np.full((size, size), -1, dtype=np.int32)  # draw op at each pixel
        self.thing_label = np.full((size, size), -1, dtype=np.int32)  # thing at each pixel
        self.op_thing: list[int] = []
        self.op_rgb: list[np.ndarray] = []
        self.op_pattern: list[str | None] = []
        self.visible: dict[int, int] = {}  # thing -> pixels it shows now
        self.full: dict[int, int] = {}  # thing -> pixels it showed when drawn (its full area)

    def fits(self, new: np.ndarray, min_visible: float, exempt: set[int]) -> bool:
        """Whether drawing ``new`` on top keeps every earlier thing (but ``exempt``) at least ``min_visible``
        of its full area visible."""
        under = self.thing_label[new]
        under = under[under >= 0]
        if not len(under):
            return True
        hidden = np.bincount(under)
        for k in np.flatnonzero(hidden):
            k = int(k)
            if k not in exempt and self.visible[k] - int(hidden[k]) < min_visible * self.full[k]:
                return False
        return True

    def draw(self, thing: int, mask: np.ndarray, rgb: np.ndarray, pattern: str | None) -> int:
        """Paint ``mask`` as the next draw operation of ``thing``; returns the operation's index."""
        under = self.thing_label[mask]
        under = under[under >= 0]
        for k, n in enumerate(np.bincount(under)) if len(under) else ():
            if n:
                self.visible[k] -= int(n)
        self.label[mask] = len(self.op_thing)
        self.thing_label[mask] = thing
        self.visible[thing] = self.visible.get(thing, 0) + int(mask.sum())
        self.op_thing.append(thing)
        self.op_rgb.append(rgb)
        self.op_pattern.append(pattern)
        return len(self.op_thing) - 1

    def finish_thing(self, thing: int) -> None:
        self.full[thing] = self.visible.get(thing, 0)


def _rgb(rng: np.random.Generator, colour: str) -> np.ndarray:
    base = np.array(SKIN if colour == "skin" else RGB[colour], dtype=float)
    return np.clip(base + rng.normal(0, 9, 3), 0, 255)


def _pattern(kind: str | None, h: int, w: int, phase: int) -> np.ndarray | None:
    if kind not in ("striped", "dotted"):
        return None
    yy, xx = np.ogrid[0:h, 0:w]
    if kind == "striped":
        return ((xx + yy + phase) // 4) % 2 == 0
    return ((xx + phase) % 7 < 3) & ((yy + phase) % 7 < 3)


def _size_word(t: float) -> str:
    return "small" if t < 0.34 else ("large" if t > 0.66 else "medium")


class _Builder:
    """Places things slot by slot (see catalogue.Setting) and draws them on a _Canvas."""

    def __init__(self, rng: np.random.Generator, size: int, min_visible: float) -> None:
        self.rng, self.size, self.min_visible = rng, size, min_visible
        self.canvas = _Canvas(size)
        self.things: list[Thing] = []
        self.parts: list[list[tuple[str, int]]] = []  # per thing: (part name, op index) of its parts
        self.bands: dict[str, tuple[float, float]] = {}
        self.surfaces: list[tuple[int, float, float, float]] = []  # (thing, x0, x1, top y)

    def u(self, lo: float, hi: float) -> float:
        return float(self.rng.uniform(lo, hi))

    # --- backgrounds -------------------------------------------------------------------------------
    def backgrounds(self, setting: str) -> None:
        s = self.size
        top = 0.0
        bands = SETTINGS[setting].bands
        for k, (name, (lo, hi)) in enumerate(bands):
            bottom = s if k == len(bands) - 1 else round(self.u(lo, hi) * s)
            colours, materials = BACKGROUNDS[name]
            colour = colours[int(self.rng.integers(len(colours)))]
            material = materials[0] if materials and self.rng.random() < 0.7 else None
            idx = len(self.things)
            self.things.append(Thing("background", name, colour, material=material))
            self.parts.append([])
            m = np.zeros((s, s), dtype=bool)
            m[int(top):int(bottom)] = True
            self.canvas.draw(idx, m, _rgb(self.rng, colour), None)
            self.canvas.finish_thing(idx)
            self.bands[name] = (top, float(bottom))
            if name == "tabletop":
                self.surfaces.append((idx, 0.0, float(s), top))
            top = bottom

    # --- things ------------------------------------------------------------------------------------
    def box_for(self, place: str, cat: str, width: float, height: float) -> tuple[Box, int | None] | None:
        s, u = self.size, self.u
        b = self.bands
        if place == "wall":
            y0, y1 = b["wall"]
            if y1 - y0 - 10 < height:
                return None
            x, y = u(3, s - width - 3), u(y0 + 4, y1 - height - 6)
            return (x, y, x + width, y + height), None
        if place == "sky":
            y0, y1 = b["sky"]
            if y1 - y0 - 8 < height:
                return None
            x, y = u(3, s - width - 3), u(y0 + 3, y1 - height - 4)
            return (x, y, x + width, y + height), None
        if place in ("floor", "ground", "road", "anywhere"):
            band = {"floor": "floor", "ground": "grass", "road": "road", "anywhere": "tabletop"}[place]
            y0, y1 = b[band]
            if cat == "door":
                bottom = y0 + u(2, 8)
            elif cat == "rug":
                bottom = u(y0 + 0.5 * (y1 - y0), min(s - 2, y1))
            elif place == "ground":
                bottom = u(y0 + 6, y1 + 6)
            else:
                bottom = u(y0 + 0.25 * (y1 - y0) + 8, min(s - 2, y1 - 1))
            if bottom - height < 2:
                return None
            x = u(2, s - width - 2)
            support = self._band_thing(band) if cat != "door" else None
            return (x, bottom - height, x + width, bottom), support
        if place == "surface":
            if not self.surfaces:
                return None
            idx, sx0, sx1, top = self.surfaces[int(self.rng.integers(len(self.surfaces)))]
            if sx1 - sx0 < width + 4 or top - height < 2:
                return None
            x = u(sx0 + 2, sx1 - width - 2)
            bottom = top + (u(4, 30) if self.things[idx].role == "background" else u(1, 3))
            return (x, bottom - height, x + width, bottom), idx
        raise ValueError(place)

    def _band_thing(self, band: str) -> int | None:
        for k, t in enumerate(self.things):
            if t.role == "background" and t.category == band:
                return k
        return None

    def place(self, cat_name: str, place: str, tries: int = 25) -> int | None:
        """Draw one thing of ``cat_name`` somewhere its place allows; its index, or None."""
        cat = CATEGORIES[cat_name]
        for _ in range(tries):
            t = self.u(-0.25, 1.25)
            width = (cat.width[0] + min(max(t, 0.0), 1.0) * (cat.width[1] - cat.width[0])) * self.size
            height = width * cat.aspect
            got = self.box_for(place, cat_name, width, height)
            if got is None:
                continue
            box, support = got
            parts = cat.draw(box)
            if cat.flips and self.rng.random() < 0.5:
                parts = _flip(parts, box)
            idx = self.draw_thing(cat_name, parts, _size_word(t), support)
            if idx is not None:
                return idx
        return None

    def draw_thing(self, cat_name: str, parts: Parts, size: str, support: int | None,
                   colour: str | None = None, exempt: set[int] | None = None) -> int | None:
        cat = CATEGORIES[cat_name]
        s = self.size
        pmasks = [rasterise_polygons(polys, s, s) for _, polys in parts]
        whole = np.logical_or.reduce(pmasks)
        if whole.sum() < 30 or not self.canvas.fits(whole, self.min_visible, set(self._background_ids()) | (exempt or set())):
            return None
        rng = self.rng
        colour = colour or cat.colours[int(rng.integers(len(cat.colours)))]
        material = None
        if cat.materials and rng.random() < 0.5:
            material = cat.materials[int(rng.integers(len(cat.materials)))]
        state = cat.states[int(rng.integers(len(cat.states)))] if cat.states and rng.random() < 0.7 else None
        idx = len(self.things)
        self.things.append(Thing("object", cat_name, colour, size=size, material=material, state=state,
                                 support=support))
        fixed = dict(cat.part_colours)
        pattern = material if material in ("striped", "dotted") else None
        own: list[tuple[str, int]] = []
        for (pname, _), pm in zip(parts, pmasks, strict=True):
            rule = fixed.get(pname or "", "main")
            pcol = colour if rule == "main" else rule
            if rule == "any":
                pcol = tuple(RGB)[int(rng.integers(len(RGB)))]
            rgb = _rgb(rng, pcol)
            op = self.canvas.draw(idx, pm, rgb, pattern if rule == "main" else None)
            if pname is not None:
                own.append((pname, op))
        self.canvas.finish_thing(idx)
        self.parts.append(own)
        if cat_name in ("table", "counter"):
            top = [pm for (pname, _), pm in zip(parts, pmasks, strict=True) if pname == "top"][0]
            ys, xs = np.nonzero(top)
            if len(xs):
                self.surfaces.append((idx, float(xs.min()), float(xs.max()), float(ys.min()) + 2))
        return idx

    def _background_ids(self) -> list[int]:
        return [k for k, t in enumerate(self.things) if t.role == "background"]

    def group(self, cat_name: str, place: str) -> int | None:
        """A stack of books, a pile of apples or a bunch of bananas: 2-4 touching things and their group."""
        cat = CATEGORIES[cat_name]
        n = int(self.rng.integers(2, 5 if cat_name == "book" else 4))
        width = self.u(*cat.width) * self.size
        height = width * cat.aspect
        total_h = height * n if cat_name == "book" else height
        total_w = width if cat_name == "book" else width * (0.75 * n + 0.25)
        got = self.box_for(place, cat_name, total_w, total_h)
        if got is None:
            return None
        (x0, y0, x1, y1), support = got
        members: list[int] = []
        colour = cat.colours[int(self.rng.integers(len(cat.colours)))]
        for k in range(n):
            if cat_name == "book":
                w = width * self.u(0.85, 1.05)
                off = self.u(-0.06, 0.06) * width
                box = (x0 + off, y1 - (k + 1) * height, x0 + off + w, y1 - k * height)
                c = cat.colours[int(self.rng.integers(len(cat.colours)))]
            else:
                box = (x0 + 0.75 * k * width, y0 + self.u(-0.05, 0.05) * height,
                       x0 + 0.75 * k * width + width, y1)
                c = colour
            idx = self.draw_thing(cat_name, cat.draw(box), "medium", support if k == 0 or cat_name != "book"
                                  else members[-1], colour=c, exempt=set(members))
            if idx is None:
                break
            members.append(idx)
        if len(members) < 2:
            return None
        g = len(self.things)
        self.things.append(Thing("group", cat_name, colour if cat_name != "book" else "mixed", members=members,
                                 support=support))
        self.parts.append([])
        for m in members:
            self.things[m].group = g
        return g


def render_realistic(rng: np.random.Generator, size: int, min_visible: float,
                     max_masks: int) -> RealisticScene | None:
    """Draw one scene; None when it came out unusable (the caller retries with the same generator)."""
    setting = tuple(SETTINGS)[int(rng.integers(len(SETTINGS)))]
    b = _Builder(rng, size, min_visible)
    b.backgrounds(setting)
    for place, cats, (lo, hi) in SETTINGS[setting].slots:
        for _ in range(int(rng.integers(lo, hi + 1))):
            cat = cats[int(rng.integers(len(cats)))]
            if cat in ("book", "apple", "banana") and rng.random() < 0.45:
                b.group(cat, place)
            else:
                b.place(cat, place)
    return _finish(b, setting, max_masks)


def _finish(b: _Builder, setting: str, max_masks: int) -> RealisticScene | None:
    s = b.size
    rng = b.rng
    c = b.canvas
    image = np.stack(c.op_rgb)[c.label]  # every pixel belongs to a background region at least
    for op, (rgb, pattern) in enumerate(zip(c.op_rgb, c.op_pattern, strict=True)):
        pat = _pattern(pattern, s, s, op % 8)
        if pat is not None:
            image[(c.label == op) & pat] = rgb * 0.6
    image += rng.normal(0, 3, image.shape)
    image = np.clip(image, 0, 255).astype(np.uint8)

    thing_label = c.thing_label
    things = b.things
    for k, t in enumerate(things):
        if t.role == "group":
            t.mask = np.logical_or.reduce([thing_label == m for m in t.members])
        else:
            t.mask = thing_label == k
    # parts become instances of their own (level 2), after every level-1 instance
    parts: list[Thing] = []
    for k, own in enumerate(b.parts):
        for name, op in own:
            parts.append(Thing("part", name, "", owner=k, mask=c.label == op))
    for p in parts:
        rgb = c.op_rgb[int(np.bincount(c.label[p.mask].ravel()).argmax())] if p.mask.any() else None
        p.colour = _nearest_colour(rgb) if rgb is not None else ""
    # a thing hidden under later ones makes the scene unusable; a part with almost nothing visible is no instance
    if any(t.mask.sum() < 25 for t in things if t.role in ("object", "group")):
        return None
    parts = [p for p in parts if p.mask.sum() >= 12]
    everything = things + parts
    if len(everything) > max_masks:
        return None
    for t in everything:
        m8 = t.mask.view(np.uint8)
        mom = cv2.moments(m8, binaryImage=True)
        t.area = int(round(mom["m00"]))
        if t.area:
            t.cx, t.cy = mom["m10"] / mom["m00"], mom["m01"] / mom["m00"]
            x, y, w, h = cv2.boundingRect(m8)
            t.bbox = (x, y, x + w - 1, y + h - 1)
    return RealisticScene(image=image, setting=setting, things=everything)


def _nearest_colour(rgb: np.ndarray) -> str:
    names = [n for n in RGB]
    d = [float(np.sum((np.asarray(RGB[n], dtype=float) - rgb) ** 2)) for n in names]
    return names[int(np.argmin(d))]


def scene_instances(scene: RealisticScene) -> list[dict]:
    """Instance records (level 1 first, then parts) with RLE masks and the canonical attributes; the
    wording (``semantic``) is added by the caller."""
    things = scene.things
    rles = encode_rles(np.stack([t.mask for t in things])) if things else []
    out = []
    for t, rle in zip(things, rles, strict=True):
        d = {"rle": rle, "semantic": "", "level": 2 if t.role == "part" else 1,
             "parent": t.owner if t.role == "part" else None, "role": t.role, "category": t.category,
             "colour": t.colour, "area_px": t.area, "centroid": [round(t.cx, 2), round(t.cy, 2)],
             "bbox": list(t.bbox)}
        for key in ("size", "material", "state", "group", "support"):
            if getattr(t, key) is not None:
                d[key] = getattr(t, key)
        if t.members:
            d["members"] = list(t.members)
        out.append(d)
    return out
