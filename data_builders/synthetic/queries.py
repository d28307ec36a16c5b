"""Query programs: one per reasoning dimension, each picks a query over a rendered scene and the instance
indices that answer it (or None when the scene cannot support the dimension unambiguously)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from dtwinseg.data_builders.synthetic.config import (
    COMPOSITES,
    FUNCTIONS,
    PART_FUNCTIONS,
    PART_PLURALS,
    PLURALS,
    TEXTURES,
    SynthConfig,
)
from dtwinseg.data_builders.synthetic.rendering import SceneObject, choose


@dataclass
class Query:
    """A query and the instance indices (into Scene.instances()) that answer it."""

    text: str
    sentence: str
    targets: list[int]
    dimension: str
    granularity: int
    program: dict


def _count(objs: list[SceneObject], key: Callable[[SceneObject], object], value: object) -> int:
    return sum(1 for o in objs if key(o) == value)


def _reference(objs: list[SceneObject], o: SceneObject) -> str | None:
    """Shortest unique noun phrase for ``o``: "the cup", "the red cup" or "the small red cup"."""
    if _count(objs, lambda x: x.category, o.category) == 1:
        return f"the {o.category}"
    if _count(objs, lambda x: (x.colour, x.category), (o.colour, o.category)) == 1:
        return f"the {o.colour} {o.category}"
    if _count(objs, lambda x: (x.size, x.colour, x.category), (o.size, o.colour, o.category)) == 1:
        return f"the {o.size} {o.colour} {o.category}"
    return None


def _sentence(rng: np.random.Generator, phrase: str) -> str:
    templates = (
        "Please segment {p} in this image.",
        "Can you find {p} in the picture and highlight it?",
        "I am looking for {p}; show me where it is in the image.",
        "Which region of the picture contains {p}? Segment it for me.",
    )
    return choose(rng, templates).format(p=phrase)


def _q_recognition(rng: np.random.Generator, objs: list[SceneObject], cfg: SynthConfig) -> Query | None:
    cands = [(o, r) for o in objs if (r := _reference(objs, o)) is not None and o.kind != "composite"]
    cands = [(o, r) for o, r in cands if r != f"the {o.category}" or rng.random() < 0.3] or cands
    if not cands:
        return None
    o, r = cands[int(rng.integers(len(cands)))]
    return Query(r, _sentence(rng, r), [o.index], "recognition", 1, {"kind": "reference", "object": o.index})


def _q_function(rng: np.random.Generator, objs: list[SceneObject], cfg: SynthConfig) -> Query | None:
    cands = [o for o in objs if o.category in FUNCTIONS and _count(objs, lambda x: x.category, o.category) == 1]
    if not cands:
        return None
    o = cands[int(rng.integers(len(cands)))]
    short, long = FUNCTIONS[o.category]
    return Query(short, long, [o.index], "function", 1, {"kind": "function", "category": o.category})


_RELATIONS: dict[str, Callable[[SceneObject, SceneObject], float]] = {
    # signed margin in pixels: > 0 when ``o`` stands in the relation to ``anchor``
    "left of": lambda o, a: a.cx - o.cx,
    "right of": lambda o, a: o.cx - a.cx,
    "above": lambda o, a: a.cy - o.cy,
    "below": lambda o, a: o.cy - a.cy,
}


def _q_spatial(rng: np.random.Generator, objs: list[SceneObject], cfg: SynthConfig) -> Query | None:
    found = []
    for a in objs:
        ra = _reference(objs, a)
        if ra is None:
            continue
        for cat in sorted({o.category for o in objs if o is not a}):
            group = [o for o in objs if o.category == cat and o is not a]
            if len(group) < 2:
                continue
            for rel, f in _RELATIONS.items():
                v = [f(o, a) for o in group]
                if any(abs(x) < cfg.margin_px for x in v):
                    continue
                yes = [o for o, x in zip(group, v, strict=True) if x > 0]
                if len(yes) == 1:
                    found.append((yes[0], cat, rel, a, ra))
    if not found:
        return None
    o, cat, rel, a, ra = found[int(rng.integers(len(found)))]
    phrase = f"the {cat} {rel} {ra}"
    sent = choose(rng, (f"Find the {cat} that is {rel} {ra}.",
                         f"There are several {PLURALS[cat]}; segment the one {rel} {ra}."))
    return Query(phrase, sent, [o.index], "spatial", 1,
                 {"kind": "relation", "category": cat, "relation": rel, "anchor": a.index})


_EXTREMES: dict[str, tuple[Callable[[SceneObject], float], str]] = {
    # value to maximise, and whether the comparison is by area ("ratio") or position ("px")
    "largest": (lambda o: o.area, "ratio"),
    "smallest": (lambda o: -o.area, "ratio"),
    "leftmost": (lambda o: -o.cx, "px"),
    "rightmost": (lambda o: o.cx, "px"),
    "topmost": (lambda o: -o.cy, "px"),
    "bottommost": (lambda o: o.cy, "px"),
}


def _extreme(group: list[SceneObject], which: str, cfg: SynthConfig) -> SceneObject | None:
    """The unambiguous extreme of ``group`` (largest, leftmost, ...), or None when too close to call."""
    if len(group) < 2:
        return None
    f, mode = _EXTREMES[which]
    ranked = sorted(group, key=f, reverse=True)
    best, second = f(ranked[0]), f(ranked[1])
    if mode == "px" and best - second < cfg.margin_px:
        return None
    if mode == "ratio" and which == "largest" and best < cfg.margin_ratio * second:
        return None
    if mode == "ratio" and which == "smallest" and -second < cfg.margin_ratio * -best:
        return None
    return ranked[0]


def _nearest(group: list[SceneObject], a: SceneObject, cfg: SynthConfig) -> SceneObject | None:
    cands = sorted((math.hypot(o.cx - a.cx, o.cy - a.cy), o.index, o) for o in group if o is not a)
    if len(cands) < 2 or cands[1][0] < cfg.margin_ratio * cands[0][0]:
        return None
    return cands[0][2]


def _q_geometric(rng: np.random.Generator, objs: list[SceneObject], cfg: SynthConfig) -> Query | None:
    found: list[tuple[SceneObject, str, dict]] = []
    for cat in sorted({o.category for o in objs}):
        group = [o for o in objs if o.category == cat]
        for which in _EXTREMES:
            o = _extreme(group, which, cfg)
            if o is not None:
                found.append((o, f"the {which} {cat}", {"kind": "extreme", "which": which, "category": cat}))
        for a in objs:
            ra = _reference(objs, a)
            if ra is None or a.category == cat:
                continue
            o = _nearest(group, a, cfg)
            if o is not None and len(group) >= 2:
                found.append((o, f"the {cat} nearest to {ra}",
                              {"kind": "nearest", "category": cat, "anchor": a.index}))
    for which in ("largest", "smallest"):
        o = _extreme(objs, which, cfg)
        if o is not None:
            found.append((o, f"the {which} object", {"kind": "extreme", "which": which, "category": None}))
    if not found:
        return None
    o, phrase, prog = found[int(rng.integers(len(found)))]
    return Query(phrase, _sentence(rng, phrase), [o.index], "geometric", 1, prog)


def _q_multi_step(rng: np.random.Generator, objs: list[SceneObject], cfg: SynthConfig) -> Query | None:
    found: list[Query] = []
    cats = sorted({o.category for o in objs})
    for c2 in cats:  # chained: nearest <cat> to the largest <c2>
        anchor = _extreme([o for o in objs if o.category == c2], "largest", cfg)
        if anchor is None:
            continue
        for cat in cats:
            if cat == c2:
                continue
            o = _nearest([x for x in objs if x.category == cat], anchor, cfg)
            if o is not None:
                phrase = f"the {cat} nearest to the largest {c2}"
                sent = (f"First find the largest {c2}, then segment the {cat} that is closest to it.")
                found.append(Query(phrase, sent, [o.index], "multi_step", 1,
                                   {"kind": "nearest_to_extreme", "category": cat, "anchor_category": c2,
                                    "which": "largest"}))
    counts = {c: _count(objs, lambda x: x.category, c) for c in cats}
    for n_target in (2, 3, 4):
        with_n = [c for c, k in counts.items() if k == n_target]
        if len(with_n) == 1:
            cat = with_n[0]
            words = {2: "two", 3: "three", 4: "four"}[n_target]
            phrase = f"the kind of thing that appears exactly {words} times"
            sent = (f"Count the objects of each kind; segment all objects of the kind that appears exactly "
                    f"{words} times.")
            found.append(Query(phrase, sent, [o.index for o in objs if o.category == cat], "multi_step", 0,
                               {"kind": "count", "count": n_target, "category": cat}))
    if not found:
        return None
    return found[int(rng.integers(len(found)))]


def _q_group(rng: np.random.Generator, objs: list[SceneObject], cfg: SynthConfig) -> Query | None:
    found = []
    for colour in sorted({o.colour for o in objs}):
        members = [o.index for o in objs if o.colour == colour]
        if len(members) >= 2:
            found.append((f"all the {colour} things", members, {"kind": "group", "colour": colour}))
    for cat in sorted({o.category for o in objs}):
        members = [o.index for o in objs if o.category == cat]
        if len(members) >= 2:
            found.append((f"all the {PLURALS[cat]}", members, {"kind": "group", "category": cat}))
    for tex in TEXTURES[1:]:
        members = [o.index for o in objs if o.texture == tex]
        if len(members) >= 2:
            found.append((f"all the {tex} objects", members, {"kind": "group", "texture": tex}))
    if not found:
        return None
    phrase, members, prog = found[int(rng.integers(len(found)))]
    sent = choose(rng, (f"Segment {phrase} in this picture.", f"Highlight every one of {phrase} you can see."))
    return Query(phrase, sent, members, "group", 0, prog)


def _q_part(rng: np.random.Generator, objs: list[SceneObject], cfg: SynthConfig) -> Query | None:
    found = []
    for cat in COMPOSITES:
        group = [o for o in objs if o.category == cat]
        if not group:
            continue
        owners: list[tuple[SceneObject, str]] = []
        if len(group) == 1:
            owners.append((group[0], f"the {cat}"))
        else:
            for which, word in (("leftmost", "on the left"), ("rightmost", "on the right")):
                o = _extreme(group, which, cfg)
                if o is not None and len(group) == 2:
                    owners.append((o, f"the {cat} {word}"))
            for o in group:
                r = _reference(objs, o)
                if r is not None:
                    owners.append((o, r))
        for o, owner_ref in owners:
            names = sorted({p["name"] for p in o.parts})
            for name in names:
                targets = [p["index"] for p in o.parts if p["name"] == name]
                noun = PART_PLURALS.get(name, name) if len(targets) > 1 else name
                found.append((targets, f"the {noun} of {owner_ref}", name, o.index))
    if not found:
        return None
    targets, phrase, name, owner = found[int(rng.integers(len(found)))]
    owner_obj = objs[owner]
    sent = (f"Look at {phrase.split(' of ', 1)[1]}: segment {PART_FUNCTIONS[name]}."
            if len(owner_obj.parts) and rng.random() < 0.5 else _sentence(rng, phrase))
    return Query(phrase, sent, targets, "part", 2, {"kind": "part", "part": name, "owner": owner})


PROGRAMS: dict[str, Callable[[np.random.Generator, list[SceneObject], SynthConfig], Query | None]] = {
    "recognition": _q_recognition,
    "function": _q_function,
    "spatial": _q_spatial,
    "geometric": _q_geometric,
    "multi_step": _q_multi_step,
    "group": _q_group,
    "part": _q_part,
}
REQUIRE = {"part": "composite", "function": "icon"}
