"""Query programs of the realistic profile and their phrasing.

A program picks the targets from the scene's canonical attributes (category, colour, size, position), the
same seven dimensions as the basic profile; the phrasing then words it in the sample's role: train, val
and test each have their own template families (sentence shapes) and their own words (lexicon.py), so
the test split measures phrasing the model never saw, and val (held-out families of its own) chooses
among trained rows honestly.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from dtwinseg.data_builders.synthetic.queries import Query
from dtwinseg.data_builders.synthetic.realistic.lexicon import (
    COLOURS,
    COMPARATIVES,
    EXTREMES,
    FUNCTIONS,
    MATERIALS,
    NEAREST,
    NOUNS,
    NUMBERS,
    PART_FUNCTIONS,
    PART_NOUNS,
    RELATIONS,
    SIZES,
    Words,
)
from dtwinseg.data_builders.synthetic.realistic.scene import RealisticScene, Thing
from dtwinseg.data_builders.synthetic.realistic.wording import pick, plural

RQuery = Query
"""A query of the realistic profile: the basic profile's Query (short phrase, long sentence, targets as instance
indices, dimension, granularity, program)."""


# --- template families (``{...}`` slots filled by the phrasing) ----------------------------------------------
def _t(shared: str = "", train: str = "", val: str = "", test: str = "") -> Words:
    def split(s: str) -> tuple[str, ...]:
        return tuple(w.strip() for w in s.split("||") if w.strip())
    return Words(split(shared), split(train), split(val), split(test))


SHORT = {
    "reference": _t("", "{ref} || find {ref} || segment {ref}", "{ref} please || outline {ref}",
                    "where is {ref}? || show me {ref} || mark {ref}"),
    "relation": _t("", "{noun} {rel} {anchor} || the {noun} that is {rel} {anchor}",
                   "the {noun} placed {rel} {anchor}", "which {noun} is {rel} {anchor}? || the {noun} sitting {rel} {anchor}"),
    "extreme": _t("", "the {sup} {noun} || the {noun} that is the {sup}", "the {sup} of the {plural}",
                  "the {noun} that is {comp} than the other {plural} || of all the {plural}, the {sup} one"),
    "nearest": _t("", "the {noun} {near} {anchor}", "the {noun} {near} {anchor}",
                  "the {noun} {near} {anchor} || which {noun} is {near} {anchor}?"),
    "chain": _t("", "the {noun} {near} the {sup} {noun2}", "the {noun} {near} the {sup} of the {plural2}",
                "the {noun} {near} whichever {noun2} is the {sup} || the {noun} {near} the {noun2} that is {comp} "
                "than the other {plural2}"),
    "chain_relation": _t("", "the {noun} {rel} the {sup} {noun2}", "the {noun} {rel} the {sup} of the {plural2}",
                         "the {noun} {rel} whichever {noun2} is the {sup}"),
    "count": _t("", "the kind of thing that appears exactly {n} times || the type of object there are {n} of",
                "whatever there are exactly {n} of in the picture",
                "the things that come in a set of exactly {n} || every item of the category with {n} members"),
    "group_colour": _t("", "all the {colour} things || every {colour} object", "each {colour} item",
                       "everything that is {colour} || all objects coloured {colour}"),
    "group_category": _t("", "all the {plural} || every {noun}", "each of the {plural}",
                         "each and every {noun} || the {plural}, all of them"),
    "part": _t("", "the {part} of {owner} || {owner_poss} {part}", "the {part} on {owner}",
               "the {part} belonging to {owner} || just the {part} of {owner}"),
    "function": _t("", "{f}", "{f}", "{f}"),
}
LONG = {
    "reference": _t("", "Please segment {ref} in this image. || Can you find {ref} in the picture and highlight it?",
                    "I am looking for {ref}; where is it in this scene?",
                    "Could you mark {ref} for me in this photo? || I need a mask of {ref}, please."),
    "relation": _t("", "Find the {noun} that is {rel} {anchor}. || There are several {plural}; segment the one {rel} "
                   "{anchor}.", "Of the {plural} here, which one is {rel} {anchor}?",
                   "Which {noun} sits {rel} {anchor}? || I mean the {noun} {rel} {anchor}, not any other {noun}."),
    "extreme": _t("", "Segment the {sup} {noun} in this picture. || Which {noun} is the {sup} one? Segment it.",
                  "Look at the {plural} and pick the {sup} of them.",
                  "Compare the {plural}: show me the one that is {comp} than the rest. || Among the {plural}, "
                  "which one is the {sup}?"),
    "nearest": _t("", "Segment the {noun} that is {near} {anchor}. || Which {noun} is {near} {anchor}?",
                  "Find whichever {noun} is {near} {anchor}.", "Look near {anchor}: which {noun} is {near} it?"),
    "chain": _t("", "First find the {sup} {noun2}, then segment the {noun} that is {near} it.",
                "Take the {sup} of the {plural2}; which {noun} is {near} that one?",
                "Start from whichever {noun2} is the {sup}, and show me the {noun} {near} it."),
    "chain_relation": _t("", "First find the {sup} {noun2}, then segment the {noun} {rel} it.",
                         "Take the {sup} of the {plural2}; which {noun} is {rel} that one?",
                         "Start from whichever {noun2} is the {sup}; I want the {noun} {rel} it."),
    "count": _t("", "Count the objects of each kind; segment all objects of the kind that appears exactly {n} "
                "times.", "Some kind of thing shows up exactly {n} times here. Segment all of them.",
                "Which category has exactly {n} members in this picture? Mark every one of them."),
    "group_colour": _t("", "Segment all the {colour} things in this picture. || Highlight every {colour} object "
                       "you can see.", "Mark each {colour} item in the scene.",
                       "Show me everything here that is {colour}."),
    "group_category": _t("", "Segment all the {plural} in this picture. || Highlight every {noun} you can see.",
                         "Mark each of the {plural} in the scene.", "Show me every single {noun} in this photo."),
    "part": _t("", "Look at {owner}: segment its {part}. || Please segment the {part} of {owner}.",
               "On {owner}, outline the {part}.", "I only want the {part} of {owner}, nothing else."),
    "part_function": _t("", "Look at {owner}: segment {pf}.", "On {owner}, mark {pf}.",
                        "Consider {owner}. Show me {pf}."),
    "function": _t("", "I need {f}. Which object here would work? || Segment {f} in this image.",
                   "Is there {f} in this scene? Outline it.",
                   "In this photo, what could serve as {f}? || Find me {f} in the picture, if there is one."),
}


# --- canonical helpers -------------------------------------------------------------------------------------------
def objects_of(scene: RealisticScene) -> list[int]:
    """Instance indices of whole things (members of groups included), the query programs' universe."""
    return [k for k, t in enumerate(scene.things) if t.role == "object" and t.area >= 40]


def _targetable(scene: RealisticScene, ks: list[int]) -> bool:
    return bool(ks) and all(scene.holefree(k) for k in ks)


def reference_key(scene: RealisticScene, objs: list[int], k: int) -> tuple[str, ...] | None:
    """The canonical attributes that name ``k`` and no other object: (), (colour,), (size, colour),
    (material,) - the first that is unique among the objects of its category - or None."""
    t = scene.things[k]
    same = [scene.things[j] for j in objs if scene.things[j].category == t.category]
    choices: list[tuple[str, ...]] = [(), ("colour",)]
    if t.size in ("small", "large"):
        choices.append(("size", "colour"))
    if t.material:
        choices.append(("material",))
    for key in choices:
        if sum(all(getattr(o, a) == getattr(t, a) for a in key) for o in same) == 1:
            return key
    return None


class Phrasing:
    """Words a query uses in one role."""

    def __init__(self, rng: np.random.Generator, role: str) -> None:
        self.rng, self.role = rng, role

    def noun(self, category: str, part: bool = False) -> str:
        return pick(self.rng, (PART_NOUNS if part else NOUNS)[category].of(self.role))

    def ref(self, t: Thing, key: tuple[str, ...]) -> str:
        words = []
        for a in ("size", "colour", "material"):
            if a not in key:
                continue
            if a == "size":
                words.append(pick(self.rng, SIZES[t.size].of(self.role)))
            elif a == "colour":
                words.append(pick(self.rng, COLOURS[t.colour].of(self.role)))
            else:
                words.append(pick(self.rng, MATERIALS[t.material].of(self.role)))
        return "the " + " ".join(words + [self.noun(t.category)])

    def template(self, table: dict[str, Words], key: str) -> str:
        return pick(self.rng, table[key].of(self.role))

    def word(self, words: Words) -> str:
        return pick(self.rng, words.of(self.role))


def _fill(template: str, slots: dict[str, str]) -> str:
    text = template.format(**slots)
    return text[:1].upper() + text[1:] if template[:1].isupper() else text


def _phrase(ph: Phrasing, key: str, slots: dict[str, str], long_key: str | None = None) -> tuple[str, str]:
    return _fill(ph.template(SHORT, key), slots), _fill(ph.template(LONG, long_key or key), slots)


_SIDES: dict[str, Callable[[Thing, Thing], float]] = {
    "left of": lambda o, a: a.cx - o.cx, "right of": lambda o, a: o.cx - a.cx,
    "above": lambda o, a: a.cy - o.cy, "below": lambda o, a: o.cy - a.cy,
}
_EXTREME_VALUE: dict[str, tuple[Callable[[Thing], float], str]] = {
    "largest": (lambda o: o.area, "ratio"), "smallest": (lambda o: -o.area, "ratio"),
    "leftmost": (lambda o: -o.cx, "px"), "rightmost": (lambda o: o.cx, "px"),
    "topmost": (lambda o: -o.cy, "px"), "bottommost": (lambda o: o.cy, "px"),
}


def extreme(scene: RealisticScene, group: list[int], which: str, margin_px: float, margin_ratio: float) -> int | None:
    """The unambiguous extreme of ``group`` (instance indices), or None when too close to call."""
    if len(group) < 2:
        return None
    f, mode = _EXTREME_VALUE[which]
    ranked = sorted(group, key=lambda k: f(scene.things[k]), reverse=True)
    best, second = f(scene.things[ranked[0]]), f(scene.things[ranked[1]])
    if mode == "px" and best - second < margin_px:
        return None
    if mode == "ratio" and abs(best) < margin_ratio * abs(second) and which == "largest":
        return None
    if mode == "ratio" and which == "smallest" and abs(second) < margin_ratio * abs(best):
        return None
    return ranked[0]


def nearest(scene: RealisticScene, group: list[int], anchor: int, margin_ratio: float) -> int | None:
    a = scene.things[anchor]
    cands = sorted((math.hypot(scene.things[k].cx - a.cx, scene.things[k].cy - a.cy), k) for k in group if k != anchor)
    if len(cands) < 2 or cands[1][0] < margin_ratio * cands[0][0]:
        return None
    return cands[0][1]


class Programs:
    """The realistic profile's query programs over one scene; each returns an RQuery or None."""

    def __init__(self, rng: np.random.Generator, scene: RealisticScene, words_rng: np.random.Generator, role: str,
                 margin_px: float, margin_ratio: float) -> None:
        """``rng`` makes every choice of targets; ``words_rng`` every choice of words (so one scene and
        program can be phrased in another role with the same targets)."""
        self.rng, self.scene, self.role = rng, scene, role
        self.mpx, self.mratio = margin_px, margin_ratio
        self.objs = objects_of(scene)
        self.ph = Phrasing(words_rng, role)
        self.by_cat: dict[str, list[int]] = {}
        for k in self.objs:
            self.by_cat.setdefault(scene.things[k].category, []).append(k)

    def thing(self, k: int) -> Thing:
        return self.scene.things[k]

    def anchors(self, exclude_cat: str) -> list[tuple[int, tuple[str, ...]]]:
        out = []
        for k in self.objs:
            t = self.thing(k)
            if t.category == exclude_cat:
                continue
            key = reference_key(self.scene, self.objs, k)
            if key is not None:
                out.append((k, key))
        return out

    def choose(self, found: list) -> object | None:
        return found[int(self.rng.integers(len(found)))] if found else None

    # --- dimensions -------------------------------------------------------------------------------------------
    def recognition(self) -> RQuery | None:
        found = []
        for k in self.objs:
            key = reference_key(self.scene, self.objs, k)
            if key is not None and _targetable(self.scene, [k]) and (key or self.rng.random() < 0.4):
                found.append((k, key))
        got = self.choose(found)
        if got is None:
            return None
        k, key = got
        short, long = _phrase(self.ph, "reference", {"ref": self.ph.ref(self.thing(k), key)})
        return RQuery(short, long, [k], "recognition", 1, {"kind": "reference", "object": k, "attributes": list(key)})

    def function(self) -> RQuery | None:
        cands = [ks[0] for cat, ks in sorted(self.by_cat.items()) if len(ks) == 1 and cat in FUNCTIONS
                 and _targetable(self.scene, ks)]
        k = self.choose(cands)
        if k is None:
            return None
        f = self.ph.word(FUNCTIONS[self.thing(k).category])
        short, long = _phrase(self.ph, "function", {"f": f})
        return RQuery(short, long, [k], "function", 1, {"kind": "function", "category": self.thing(k).category})

    def spatial(self) -> RQuery | None:
        found = []
        for cat, group in sorted(self.by_cat.items()):
            if len(group) < 2:
                continue
            for a, akey in self.anchors(cat):
                members = [k for k in group if k != a]
                for rel, f in _SIDES.items():
                    v = [f(self.thing(k), self.thing(a)) for k in members]
                    if any(abs(x) < self.mpx for x in v):
                        continue
                    yes = [k for k, x in zip(members, v, strict=True) if x > 0]
                    if len(yes) == 1 and _targetable(self.scene, yes):
                        found.append((yes[0], cat, rel, a, akey))
        got = self.choose(found)
        if got is None:
            return None
        k, cat, rel, a, akey = got
        noun = self.ph.noun(cat)
        slots = {"noun": noun, "plural": plural(noun), "rel": self.ph.word(RELATIONS[rel]),
                 "anchor": self.ph.ref(self.thing(a), akey)}
        short, long = _phrase(self.ph, "relation", slots)
        return RQuery(short, long, [k], "spatial", 1,
                      {"kind": "relation", "category": cat, "relation": rel, "anchor": a})

    def _extreme_slots(self, which: str, noun: str) -> dict[str, str]:
        return {"sup": self.ph.word(EXTREMES[which]), "comp": self.ph.word(COMPARATIVES[which]), "noun": noun,
                "plural": plural(noun)}

    def geometric(self) -> RQuery | None:
        found: list[tuple] = []
        for cat, group in sorted(self.by_cat.items()):
            for which in _EXTREME_VALUE:
                k = extreme(self.scene, group, which, self.mpx, self.mratio)
                if k is not None and _targetable(self.scene, [k]):
                    found.append(("extreme", k, cat, which))
            if len(group) >= 2:
                for a, akey in self.anchors(cat):
                    k = nearest(self.scene, group, a, self.mratio)
                    if k is not None and _targetable(self.scene, [k]):
                        found.append(("nearest", k, cat, (a, akey)))
        got = self.choose(found)
        if got is None:
            return None
        kind, k, cat, extra = got
        noun = self.ph.noun(cat)
        if kind == "extreme":
            short, long = _phrase(self.ph, "extreme", self._extreme_slots(extra, noun))
            prog = {"kind": "extreme", "which": extra, "category": cat}
        else:
            a, akey = extra
            slots = {"noun": noun, "near": self.ph.word(NEAREST), "anchor": self.ph.ref(self.thing(a), akey)}
            short, long = _phrase(self.ph, "nearest", slots)
            prog = {"kind": "nearest", "category": cat, "anchor": a}
        return RQuery(short, long, [k], "geometric", 1, prog)

    def multi_step(self) -> RQuery | None:
        found: list[tuple] = []
        cats = sorted(self.by_cat)
        for c2 in cats:
            for which in ("largest", "smallest", "leftmost", "rightmost"):
                anchor = extreme(self.scene, self.by_cat[c2], which, self.mpx, self.mratio)
                if anchor is None:
                    continue
                for cat in cats:
                    if cat == c2 or len(self.by_cat[cat]) < 2:
                        continue
                    k = nearest(self.scene, self.by_cat[cat], anchor, self.mratio)
                    if k is not None and _targetable(self.scene, [k]):
                        found.append(("chain", [k], cat, c2, which, None))
                    for rel, f in _SIDES.items():
                        members = self.by_cat[cat]
                        v = [f(self.thing(j), self.thing(anchor)) for j in members]
                        yes = [j for j, x in zip(members, v, strict=True) if x > 0]
                        if all(abs(x) >= self.mpx for x in v) and len(yes) == 1 and _targetable(self.scene, yes):
                            found.append(("chain_relation", yes, cat, c2, which, rel))
        counts = {c: len(ks) for c, ks in self.by_cat.items()}
        for n in (2, 3, 4):
            with_n = [c for c, m in counts.items() if m == n]
            if len(with_n) == 1 and _targetable(self.scene, self.by_cat[with_n[0]]):
                found.append(("count", list(self.by_cat[with_n[0]]), with_n[0], None, None, n))
        got = self.choose(found)
        if got is None:
            return None
        kind, targets, cat, c2, which, extra = got
        if kind == "count":
            short, long = _phrase(self.ph, "count", {"n": self.ph.word(NUMBERS[extra]) if extra in NUMBERS else str(extra)})
            return RQuery(short, long, sorted(targets), "multi_step", 0, {"kind": "count", "count": extra, "category": cat})
        noun, noun2 = self.ph.noun(cat), self.ph.noun(c2)
        slots = {"noun": noun, "noun2": noun2, "plural2": plural(noun2), "sup": self.ph.word(EXTREMES[which]),
                 "comp": self.ph.word(COMPARATIVES[which]), "near": self.ph.word(NEAREST)}
        if kind == "chain":
            short, long = _phrase(self.ph, "chain", slots)
            prog = {"kind": "nearest_to_extreme", "category": cat, "anchor_category": c2, "which": which}
        else:
            slots["rel"] = self.ph.word(RELATIONS[extra])
            short, long = _phrase(self.ph, "chain_relation", slots)
            prog = {"kind": "relation_to_extreme", "category": cat, "anchor_category": c2, "which": which,
                    "relation": extra}
        return RQuery(short, long, targets, "multi_step", 1, prog)

    def group(self) -> RQuery | None:
        found: list[tuple] = []
        for colour in sorted({self.thing(k).colour for k in self.objs}):
            members = [k for k in self.objs if self.thing(k).colour == colour]
            if len(members) >= 2 and _targetable(self.scene, members):
                found.append(("group_colour", members, {"colour": colour}))
        for cat, ks in sorted(self.by_cat.items()):
            if len(ks) >= 2 and _targetable(self.scene, ks):
                found.append(("group_category", ks, {"category": cat}))
        got = self.choose(found)
        if got is None:
            return None
        key, members, prog = got
        if key == "group_colour":
            slots = {"colour": self.ph.word(COLOURS[prog["colour"]])}
        else:
            noun = self.ph.noun(prog["category"])
            slots = {"noun": noun, "plural": plural(noun)}
        short, long = _phrase(self.ph, key, slots)
        return RQuery(short, long, sorted(members), "group", 0, {"kind": "group", **prog})

    def part(self) -> RQuery | None:
        parts_of: dict[int, dict[str, list[int]]] = {}
        for j, t in enumerate(self.scene.things):
            if t.role == "part" and t.area >= 12:
                parts_of.setdefault(t.owner, {}).setdefault(t.category, []).append(j)
        found = []
        for owner, named in sorted(parts_of.items()):
            if owner not in self.objs:
                continue
            key = reference_key(self.scene, self.objs, owner)
            owner_refs: list[tuple[str, tuple | str]] = []
            if key is not None:
                owner_refs.append(("ref", key))
            cat_group = self.by_cat.get(self.thing(owner).category, [])
            if len(cat_group) == 2:
                for which in ("leftmost", "rightmost"):
                    if extreme(self.scene, cat_group, which, self.mpx, self.mratio) == owner:
                        owner_refs.append(("side", which))
            for name, ks in sorted(named.items()):
                if _targetable(self.scene, ks):
                    for ref in owner_refs:
                        found.append((owner, name, sorted(ks), ref))
        got = self.choose(found)
        if got is None:
            return None
        owner, name, ks, (how, detail) = got
        t = self.thing(owner)
        if how == "ref":
            owner_text = self.ph.ref(t, detail)
        else:
            noun = self.ph.noun(t.category)
            owner_text = f"the {noun} on the {'left' if detail == 'leftmost' else 'right'}"
        pnoun = self.ph.noun(name, part=True)
        if len(ks) > 1:
            pnoun = plural(pnoun)
        slots = {"part": pnoun, "owner": owner_text, "owner_poss": owner_text + "'s"}
        short, long = _phrase(self.ph, "part", slots)
        if name in PART_FUNCTIONS and len(ks) == 1 and self.ph.rng.random() < 0.4:
            long = _fill(self.ph.template(LONG, "part_function"), {"owner": owner_text,
                                                                   "pf": self.ph.word(PART_FUNCTIONS[name])})
        return RQuery(short, long, ks, "part", 2, {"kind": "part", "part": name, "owner": owner})
