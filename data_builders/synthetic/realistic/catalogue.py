"""What the realistic scenes are made of: settings (background regions and which things go where) and
categories (their parts, colours, materials, sizes and how each part is drawn in its box).

A category's drawer maps its box (x0, y0, x1, y1) to parts ``[(part name | None, [polygons])]`` in pixels,
in painter's order; a single-part thing has one part named None (no part instances). Polygons are N x 2
float arrays (x, y).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Box = tuple[float, float, float, float]
Parts = list[tuple[str | None, list[np.ndarray]]]


def _rect(b: Box, u0: float, v0: float, u1: float, v1: float) -> np.ndarray:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    return np.array([[x0 + u0 * w, y0 + v0 * h], [x0 + u1 * w, y0 + v0 * h], [x0 + u1 * w, y0 + v1 * h],
                     [x0 + u0 * w, y0 + v1 * h]])


def _poly(b: Box, pts: list[tuple[float, float]]) -> np.ndarray:
    x0, y0, x1, y1 = b
    return np.array([[x0 + u * (x1 - x0), y0 + v * (y1 - y0)] for u, v in pts])


def _ellipse(b: Box, u0: float, v0: float, u1: float, v1: float, n: int = 28, t0: float = 0.0,
             t1: float = 2 * math.pi) -> np.ndarray:
    t = np.linspace(t0, t1, n, endpoint=t1 - t0 < 2 * math.pi - 1e-9)
    cu, cv, ru, rv = (u0 + u1) / 2, (v0 + v1) / 2, (u1 - u0) / 2, (v1 - v0) / 2
    return _poly(b, list(zip(cu + ru * np.cos(t), cv + rv * np.sin(t), strict=True)))


def _flip(parts: Parts, b: Box) -> Parts:
    x0, _, x1, _ = b
    out = []
    for name, polys in parts:
        out.append((name, [np.stack([x0 + x1 - p[:, 0], p[:, 1]], 1) for p in polys]))
    return out


# --- drawers (box -> parts) --------------------------------------------------------------------------------
def table(b: Box) -> Parts:
    return [("leg", [_rect(b, 0.05, 0.12, 0.13, 1.0)]), ("leg", [_rect(b, 0.87, 0.12, 0.95, 1.0)]),
            ("top", [_rect(b, 0.0, 0.0, 1.0, 0.14)])]


def chair(b: Box) -> Parts:
    return [("leg", [_rect(b, 0.02, 0.6, 0.14, 1.0)]), ("leg", [_rect(b, 0.84, 0.6, 0.96, 1.0)]),
            ("seat", [_rect(b, 0.0, 0.5, 1.0, 0.62)]), ("back", [_rect(b, 0.0, 0.0, 0.2, 0.5)])]


def sofa(b: Box) -> Parts:
    return [("back", [_rect(b, 0.04, 0.0, 0.96, 0.5)]), ("seat", [_rect(b, 0.12, 0.5, 0.88, 0.85)]),
            ("arm", [_rect(b, 0.0, 0.3, 0.14, 1.0)]), ("arm", [_rect(b, 0.86, 0.3, 1.0, 1.0)])]


def lamp(b: Box) -> Parts:
    return [("base", [_ellipse(b, 0.15, 0.9, 0.85, 1.0)]), ("pole", [_rect(b, 0.44, 0.28, 0.56, 0.93)]),
            ("shade", [_poly(b, [(0.22, 0.0), (0.78, 0.0), (1.0, 0.3), (0.0, 0.3)])])]


def plant(b: Box) -> Parts:
    leaves = [_ellipse(b, 0.05, 0.15, 0.55, 0.65), _ellipse(b, 0.45, 0.1, 0.95, 0.62), _ellipse(b, 0.25, 0.0, 0.75, 0.5)]
    return [("leaves", leaves), ("pot", [_poly(b, [(0.18, 0.58), (0.82, 0.58), (0.7, 1.0), (0.3, 1.0)])])]


def tv(b: Box) -> Parts:
    return [("stand", [_poly(b, [(0.38, 0.78), (0.62, 0.78), (0.75, 1.0), (0.25, 1.0)])]),
            ("screen", [_rect(b, 0.0, 0.0, 1.0, 0.8)])]


def window(b: Box) -> Parts:
    return [("frame", [_rect(b, 0.0, 0.0, 1.0, 1.0)]), ("pane", [_rect(b, 0.08, 0.08, 0.47, 0.92)]),
            ("pane", [_rect(b, 0.53, 0.08, 0.92, 0.92)])]


def painting(b: Box) -> Parts:
    return [("frame", [_rect(b, 0.0, 0.0, 1.0, 1.0)]), ("canvas", [_rect(b, 0.12, 0.12, 0.88, 0.88)])]


def door(b: Box) -> Parts:
    return [("door", [_rect(b, 0.0, 0.0, 1.0, 1.0)]), ("handle", [_ellipse(b, 0.75, 0.5, 0.9, 0.57)])]


def rug(b: Box) -> Parts:
    return [(None, [_ellipse(b, 0.0, 0.0, 1.0, 1.0, n=36)])]


def fridge(b: Box) -> Parts:
    return [("door", [_rect(b, 0.0, 0.0, 1.0, 0.36)]), ("door", [_rect(b, 0.0, 0.36, 1.0, 1.0)]),
            ("handle", [_rect(b, 0.8, 0.12, 0.88, 0.3)]), ("handle", [_rect(b, 0.8, 0.42, 0.88, 0.66)])]


def counter(b: Box) -> Parts:
    return [("cabinet", [_rect(b, 0.0, 0.1, 0.5, 1.0)]), ("cabinet", [_rect(b, 0.5, 0.1, 1.0, 1.0)]),
            ("handle", [_rect(b, 0.4, 0.3, 0.45, 0.55)]), ("handle", [_rect(b, 0.55, 0.3, 0.6, 0.55)]),
            ("top", [_rect(b, 0.0, 0.0, 1.0, 0.12)])]


def mug(b: Box) -> Parts:
    handle = _poly(b, [(0.68, 0.25), (0.9, 0.25), (1.0, 0.4), (1.0, 0.62), (0.9, 0.78), (0.68, 0.78)])
    return [("handle", [handle]), ("body", [_rect(b, 0.0, 0.08, 0.74, 1.0)])]


def bottle(b: Box) -> Parts:
    body = _poly(b, [(0.36, 0.12), (0.64, 0.12), (0.64, 0.3), (0.92, 0.42), (0.92, 1.0), (0.08, 1.0),
                     (0.08, 0.42), (0.36, 0.3)])
    return [("body", [body]), ("cap", [_rect(b, 0.33, 0.0, 0.67, 0.13)])]


def book(b: Box) -> Parts:
    return [(None, [_rect(b, 0.0, 0.0, 1.0, 1.0)])]


def laptop(b: Box) -> Parts:
    return [("screen", [_poly(b, [(0.12, 0.0), (0.88, 0.0), (0.9, 0.74), (0.1, 0.74)])]),
            ("keyboard", [_poly(b, [(0.06, 0.74), (0.94, 0.74), (1.0, 1.0), (0.0, 1.0)])])]


def vase(b: Box) -> Parts:
    pts = [(0.3, 0.0), (0.7, 0.0), (0.62, 0.2), (0.95, 0.55), (0.8, 1.0), (0.2, 1.0), (0.05, 0.55), (0.38, 0.2)]
    return [(None, [_poly(b, pts)])]


def bowl(b: Box) -> Parts:
    return [(None, [_ellipse(b, 0.0, -1.0, 1.0, 1.0, n=20, t0=0.0, t1=math.pi)])]


def apple(b: Box) -> Parts:
    return [(None, [_ellipse(b, 0.0, 0.15, 1.0, 1.0, n=24), _rect(b, 0.46, 0.0, 0.56, 0.2)])]


def banana(b: Box) -> Parts:
    t = np.linspace(0.15 * math.pi, 0.85 * math.pi, 12)
    outer = list(zip(0.5 + 0.5 * np.cos(t), 1.0 - 0.95 * np.sin(t) + 0.0, strict=True))
    inner = list(zip(0.5 + 0.35 * np.cos(t[::-1]), 1.0 - 0.55 * np.sin(t[::-1]), strict=True))
    return [(None, [_poly(b, [(float(u), float(v)) for u, v in outer + inner])])]


def plate(b: Box) -> Parts:
    return [(None, [_ellipse(b, 0.0, 0.0, 1.0, 1.0, n=30)])]


def kettle(b: Box) -> Parts:
    handle = _poly(b, [(0.25, 0.0), (0.75, 0.0), (0.8, 0.3), (0.68, 0.3), (0.64, 0.1), (0.36, 0.1),
                       (0.32, 0.3), (0.2, 0.3)])
    return [("handle", [handle]), ("spout", [_poly(b, [(0.8, 0.5), (1.0, 0.3), (1.0, 0.42), (0.85, 0.75)])]),
            ("body", [_poly(b, [(0.2, 0.28), (0.8, 0.28), (0.9, 1.0), (0.1, 1.0)])])]


def cat(b: Box) -> Parts:
    tail = _poly(b, [(0.85, 0.75), (1.0, 0.35), (0.97, 0.3), (0.8, 0.62)])
    head = [_ellipse(b, 0.0, 0.2, 0.36, 0.62), _poly(b, [(0.02, 0.3), (0.06, 0.05), (0.16, 0.24)]),
            _poly(b, [(0.2, 0.22), (0.3, 0.05), (0.34, 0.3)])]
    return [("tail", [tail]), ("body", [_ellipse(b, 0.18, 0.38, 0.92, 1.0)]), ("head", head)]


def dog(b: Box) -> Parts:
    legs = [_rect(b, 0.3, 0.7, 0.38, 1.0), _rect(b, 0.72, 0.7, 0.8, 1.0)]
    tail = _poly(b, [(0.86, 0.45), (1.0, 0.15), (0.95, 0.12), (0.82, 0.38)])
    head = [_ellipse(b, 0.0, 0.05, 0.36, 0.45), _rect(b, -0.02, 0.25, 0.12, 0.4)]
    return [("legs", legs), ("tail", [tail]), ("body", [_ellipse(b, 0.22, 0.3, 0.92, 0.8)]), ("head", head)]


def person(b: Box) -> Parts:
    legs = [_rect(b, 0.28, 0.58, 0.47, 1.0), _rect(b, 0.53, 0.58, 0.72, 1.0)]
    return [("legs", legs), ("torso", [_poly(b, [(0.2, 0.2), (0.8, 0.2), (0.74, 0.6), (0.26, 0.6)])]),
            ("head", [_ellipse(b, 0.32, 0.0, 0.68, 0.2)])]


def tree(b: Box) -> Parts:
    return [("trunk", [_rect(b, 0.42, 0.5, 0.58, 1.0)]), ("crown", [_ellipse(b, 0.0, 0.0, 1.0, 0.62)])]


def house(b: Box) -> Parts:
    return [("walls", [_rect(b, 0.08, 0.42, 0.92, 1.0)]),
            ("roof", [_poly(b, [(0.0, 0.45), (0.5, 0.0), (1.0, 0.45)])]),
            ("door", [_rect(b, 0.42, 0.68, 0.58, 1.0)]), ("window", [_rect(b, 0.16, 0.55, 0.34, 0.75)]),
            ("window", [_rect(b, 0.66, 0.55, 0.84, 0.75)])]


def car(b: Box) -> Parts:
    body = _poly(b, [(0.0, 0.45), (0.2, 0.42), (0.32, 0.05), (0.72, 0.05), (0.85, 0.42), (1.0, 0.48),
                     (1.0, 0.8), (0.0, 0.8)])
    return [("body", [body]), ("window", [_poly(b, [(0.36, 0.12), (0.68, 0.12), (0.76, 0.4), (0.28, 0.4)])]),
            ("wheel", [_ellipse(b, 0.1, 0.58, 0.34, 1.0)]), ("wheel", [_ellipse(b, 0.66, 0.58, 0.9, 1.0)])]


def bicycle(b: Box) -> Parts:
    frame = [_poly(b, [(0.25, 0.7), (0.48, 0.3), (0.52, 0.34), (0.3, 0.72)]),
             _poly(b, [(0.48, 0.3), (0.78, 0.3), (0.78, 0.36), (0.48, 0.36)]),
             _poly(b, [(0.75, 0.3), (0.78, 0.7), (0.73, 0.72), (0.72, 0.34)]),
             _poly(b, [(0.74, 0.18), (0.8, 0.18), (0.8, 0.32), (0.74, 0.32)])]
    return [("wheel", [_ellipse(b, 0.0, 0.45, 0.5, 1.0)]), ("wheel", [_ellipse(b, 0.5, 0.45, 1.0, 1.0)]),
            ("frame", frame)]


def bench(b: Box) -> Parts:
    return [("leg", [_rect(b, 0.06, 0.55, 0.14, 1.0)]), ("leg", [_rect(b, 0.86, 0.55, 0.94, 1.0)]),
            ("back", [_rect(b, 0.0, 0.0, 1.0, 0.3)]), ("seat", [_rect(b, 0.0, 0.45, 1.0, 0.58)])]


def streetlight(b: Box) -> Parts:
    return [("pole", [_rect(b, 0.42, 0.12, 0.58, 1.0)]), ("head", [_ellipse(b, 0.1, 0.0, 0.9, 0.16)])]


def sun(b: Box) -> Parts:
    return [(None, [_ellipse(b, 0.0, 0.0, 1.0, 1.0, n=32)])]


def cloud(b: Box) -> Parts:
    return [(None, [_ellipse(b, 0.0, 0.35, 0.5, 1.0), _ellipse(b, 0.25, 0.0, 0.75, 0.8),
                    _ellipse(b, 0.5, 0.3, 1.0, 1.0)])]


@dataclass(frozen=True)
class Category:
    """A kind of thing: its drawer, colours (canonical names), materials, box size (fraction of the
    image: width range and height / width aspect), whether it faces left or right at random, what the
    wording model may say it is doing, and where a setting places it (``Setting.slots``)."""

    name: str
    draw: Callable[[Box], Parts]
    colours: tuple[str, ...]
    materials: tuple[str, ...] = ()
    width: tuple[float, float] = (0.1, 0.16)
    aspect: float = 1.0
    flips: bool = False
    states: tuple[str, ...] = ()
    part_colours: tuple[tuple[str, str], ...] = ()  # part -> fixed colour ("main": the thing's colour)


_WARM = ("red", "orange", "yellow", "pink", "brown")
_ALL = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "gray")
CATEGORIES: dict[str, Category] = {c.name: c for c in (
    Category("table", table, ("brown", "white", "black", "gray"), ("wood", "metal", "glass"), (0.3, 0.42), 0.5),
    Category("chair", chair, ("brown", "black", "red", "blue", "green", "white"), ("wood", "metal", "plastic"),
             (0.12, 0.16), 1.7, flips=True),
    Category("sofa", sofa, ("red", "blue", "gray", "green", "brown", "purple"), ("fabric", "leather"), (0.32, 0.4), 0.5),
    Category("lamp", lamp, ("yellow", "white", "black", "orange"), ("metal",), (0.09, 0.12), 3.2,
             part_colours=(("pole", "black"), ("base", "black"))),
    Category("plant", plant, ("green",), (), (0.1, 0.15), 1.5, part_colours=(("pot", "brown"),)),
    Category("tv", tv, ("black", "gray"), ("plastic",), (0.22, 0.3), 0.7, part_colours=(("stand", "gray"),)),
    Category("window", window, ("white", "brown"), ("wood",), (0.18, 0.26), 0.9, part_colours=(("pane", "blue"),)),
    Category("painting", painting, ("brown", "black", "white", "yellow"), ("wood",), (0.14, 0.22), 0.75,
             part_colours=(("canvas", "any"),)),
    Category("door", door, ("brown", "white", "blue", "green"), ("wood",), (0.14, 0.18), 2.2,
             part_colours=(("handle", "yellow"),)),
    Category("rug", rug, ("red", "blue", "purple", "green", "orange", "brown"), ("striped", "dotted"), (0.35, 0.5), 0.3),
    Category("fridge", fridge, ("white", "gray", "black", "red"), ("metal",), (0.18, 0.22), 2.1,
             part_colours=(("handle", "gray"),)),
    Category("counter", counter, ("white", "brown", "blue", "green", "gray"), ("wood",), (0.45, 0.6), 0.45,
             part_colours=(("handle", "gray"), ("top", "gray"))),
    Category("mug", mug, _ALL, ("ceramic", "glass", "striped", "dotted"), (0.06, 0.085), 1.0),
    Category("bottle", bottle, ("green", "blue", "white", "red", "orange", "brown"), ("glass", "plastic"),
             (0.045, 0.06), 2.4, part_colours=(("cap", "any"),)),
    Category("book", book, _ALL, ("striped",), (0.1, 0.14), 0.22),
    Category("laptop", laptop, ("gray", "black", "white"), ("metal", "plastic"), (0.16, 0.2), 0.7,
             part_colours=(("screen", "black"),)),
    Category("vase", vase, ("blue", "white", "red", "green", "yellow", "purple"), ("ceramic", "glass", "striped"),
             (0.06, 0.08), 1.6),
    Category("bowl", bowl, ("white", "blue", "red", "green", "yellow", "orange"), ("ceramic", "wood", "dotted"),
             (0.1, 0.14), 0.45),
    Category("apple", apple, ("red", "green", "yellow"), (), (0.045, 0.06), 1.05),
    Category("banana", banana, ("yellow", "green"), (), (0.08, 0.1), 0.5),
    Category("plate", plate, ("white", "blue", "red", "yellow", "green"), ("ceramic", "striped"), (0.12, 0.16), 0.32),
    Category("kettle", kettle, ("red", "white", "black", "gray", "blue"), ("metal", "plastic"), (0.1, 0.12), 1.0,
             flips=True),
    Category("cat", cat, ("orange", "black", "white", "gray", "brown"), ("striped",), (0.14, 0.2), 0.55, flips=True,
             states=("sleeping", "sitting", "lying")),
    Category("dog", dog, ("brown", "black", "white", "yellow", "gray"), ("dotted",), (0.16, 0.22), 0.7, flips=True,
             states=("sitting", "standing", "lying")),
    Category("person", person, ("red", "blue", "green", "yellow", "purple", "black", "white", "orange"), (),
             (0.07, 0.09), 2.8, states=("standing", "walking"), part_colours=(("head", "skin"), ("legs", "any"))),
    Category("tree", tree, ("green",), (), (0.16, 0.24), 1.35, part_colours=(("trunk", "brown"),)),
    Category("house", house, ("white", "yellow", "red", "blue", "gray", "brown"), ("wood",), (0.26, 0.34), 0.95,
             part_colours=(("roof", "any"), ("door", "any"), ("window", "blue"))),
    Category("car", car, ("red", "blue", "green", "yellow", "white", "black", "gray", "orange"), ("metal",),
             (0.22, 0.3), 0.45, flips=True, part_colours=(("window", "blue"), ("wheel", "black"))),
    Category("bicycle", bicycle, ("red", "blue", "green", "black", "yellow"), ("metal",), (0.16, 0.2), 0.6,
             flips=True, part_colours=(("wheel", "black"),)),
    Category("bench", bench, ("brown", "green", "gray"), ("wood", "metal"), (0.24, 0.3), 0.4,
             part_colours=(("leg", "black"),)),
    Category("streetlight", streetlight, ("black", "gray"), ("metal",), (0.06, 0.08), 5.0,
             part_colours=(("head", "yellow"),)),
    Category("sun", sun, ("yellow", "orange"), (), (0.1, 0.14), 1.0),
    Category("cloud", cloud, ("white", "gray"), (), (0.16, 0.26), 0.5),
)}

# background regions (one per scene each at most): canonical colour choices and materials
BACKGROUNDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "wall": (("white", "yellow", "blue", "green", "gray", "pink"), ()),
    "floor": (("brown", "gray", "white"), ("wood",)),
    "sky": (("blue",), ()),
    "grass": (("green",), ()),
    "road": (("gray", "black"), ()),
    "tabletop": (("brown", "white", "gray"), ("wood",)),
}


@dataclass(frozen=True)
class Setting:
    """A kind of scene: background bands (name, fraction of the height from the top; the last fills the
    rest), then slots: (place, categories, (min, max) count). Places: ``floor`` (standing on the floor
    band), ``wall`` (hanging in the wall band), ``sky``, ``ground`` (standing on the ground), ``road``,
    ``surface`` (on a table / counter / the tabletop placed earlier), ``anywhere`` (tabletop scenes)."""

    name: str
    bands: tuple[tuple[str, tuple[float, float]], ...]
    slots: tuple[tuple[str, tuple[str, ...], tuple[int, int]], ...]


SETTINGS: dict[str, Setting] = {s.name: s for s in (
    Setting("room", (("wall", (0.5, 0.62)), ("floor", (1.0, 1.0))), (
        ("wall", ("window", "painting"), (1, 3)),
        ("floor", ("rug",), (0, 1)),
        ("floor", ("door",), (0, 1)),
        ("floor", ("table",), (1, 1)),
        ("floor", ("sofa", "lamp", "plant", "chair"), (2, 4)),
        ("floor", ("chair",), (0, 2)),
        ("surface", ("mug", "bottle", "book", "laptop", "vase", "bowl", "apple", "plate"), (2, 5)),
        ("floor", ("cat", "dog"), (0, 2)),
    )),
    Setting("kitchen", (("wall", (0.45, 0.55)), ("floor", (1.0, 1.0))), (
        ("wall", ("window", "painting"), (0, 2)),
        ("floor", ("fridge",), (1, 1)),
        ("floor", ("counter",), (1, 1)),
        ("surface", ("mug", "bottle", "bowl", "kettle", "apple", "banana", "plate", "vase"), (3, 6)),
        ("floor", ("chair", "cat", "dog", "plant"), (0, 2)),
    )),
    Setting("tabletop", (("wall", (0.22, 0.3)), ("tabletop", (1.0, 1.0))), (
        ("wall", ("painting", "window"), (0, 1)),
        ("anywhere", ("mug", "bottle", "book", "laptop", "vase", "bowl", "apple", "banana", "plate", "kettle"),
         (6, 11)),
        ("anywhere", ("cat",), (0, 1)),
    )),
    Setting("street", (("sky", (0.38, 0.48)), ("grass", (0.62, 0.7)), ("road", (1.0, 1.0))), (
        ("sky", ("sun",), (0, 1)),
        ("sky", ("cloud",), (0, 3)),
        ("ground", ("house",), (1, 2)),
        ("ground", ("tree",), (1, 3)),
        ("ground", ("person", "bench", "streetlight", "bicycle", "dog"), (2, 4)),
        ("road", ("car",), (1, 3)),
    )),
)}
