"""Evidence for reasoning paths: the visible facts of twin objects and the hops that keep or drop them.

A *hop* looks at the objects still in play and says, for each, whether it passes and why, in words a
reader of JSON(D) can check: the object's semantic S_i, its area A_i, its centre and its relation to
another object. Nothing here looks at ground-truth pixels; the answer (the ids to end with) is only used
to contrast the objects it leaves out with the ones it keeps.

Two sources of hops:

- :func:`program_hops`: the query program of a synthetic sample (``program`` in its annotation, e.g.
  ``{"kind": "nearest_to_extreme", "category": "cup", "anchor_category": "star", "which": "largest"}``),
  one hop per reasoning step the query needs: "the cup nearest to the largest star" = keep cups and stars,
  keep only the largest star, keep the cup nearest to it (3 steps); "the red circle" = circles, then red.
- :func:`generic_hops`: any dataset: the objects whose semantics share a word with the query, then the
  answer against the remaining candidates (what tells them apart: words, area, position).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from dtwinseg.data_builders.synthetic.config import COLOURS, SIZE_RADIUS, TEXTURES

from dtwinseg.spatial import PairwiseRelations, relation_phrase
from dtwinseg.twin import DigitalTwin

Verdicts = dict[int, tuple[bool, str]]
"""id -> (passes, the reason in words)."""
Hop = Callable[[list[int]], Verdicts]
"""Objects still in play -> a verdict for each of them."""

STOPWORDS = frozenset(
    "a an the of to in on at is are be and or with this that these those it its for from what which where who "
    "whom me my i you your we our here there picture image photo please segment find show highlight can could "
    "would should some something thing things all every object objects region regions one ones look looking "
    "let help want need into onto than then them they their his her has have had does did do not no yes "
    "part parts kind appears exactly times count each segment left right above below nearest closest "
    "largest smallest leftmost rightmost topmost bottommost first".split())
WORDS = {"two": 2, "three": 3, "four": 4, "five": 5}
NUMBER_WORDS = {v: k for k, v in WORDS.items()}


def _stem(word: str) -> str:
    """Crude singular: "stars" -> "star", "wheels" -> "wheel" ("glass" stays)."""
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def content_words(text: str) -> list[str]:
    """Lower-case singular words of ``text`` that can carry meaning (no stopwords, 3+ letters)."""
    return [_stem(w) for w in re.findall(r"[a-z]+", text.lower()) if len(w) >= 3 and w not in STOPWORDS]


@dataclass
class ObjectFacts:
    """What JSON(D) shows about one object: semantic, area (% of image), centre (pixels)."""

    id: int
    semantic: str
    head: list[str]  # words of the semantic before " with " / " of " (its own attributes and noun)
    owner: str  # for "the red roof of a house": "house"; else ""
    area: float
    cx: float
    cy: float
    level: int

    @property
    def noun(self) -> str:
        """The semantic's head noun ("circle" in "a small red striped circle"), or "" when unknown."""
        return self.head[-1] if self.head else ""

    def has(self, word: str) -> bool:
        return _stem(word.lower()) in self.head

    def own(self, vocabulary: Sequence[str]) -> str | None:
        """The object's word from a vocabulary (its colour, size, texture), if its semantic states one."""
        return next((w for w in self.head if w in vocabulary), None)


def object_facts(twin: DigitalTwin) -> dict[int, ObjectFacts]:
    """Facts of every object, keyed by id (centres from the masks, as the spatial relations use)."""
    out: dict[int, ObjectFacts] = {}
    masks = twin.masks()
    for k, o in enumerate(twin.objects):
        text = (o.semantic or "").lower()
        own_part, _, rest = text.partition(" of ")
        owner_words = re.findall(r"[a-z]+", re.split(r"\s+with\s+", rest, maxsplit=1)[0])
        owner = _stem(owner_words[-1]) if owner_words else ""
        head = re.split(r"\s+with\s+", own_part, maxsplit=1)[0]
        ys, xs = np.nonzero(masks[k]) if len(masks) else (np.zeros(0), np.zeros(0))
        cx, cy = (float(xs.mean()), float(ys.mean())) if len(xs) else (0.0, 0.0)
        out[o.id] = ObjectFacts(o.id, o.semantic or f"object {o.id}",
                                [_stem(w) for w in re.findall(r"[a-z]+", head) if w not in ("a", "an", "the")],
                                owner, float(o.area), cx, cy, int(o.level if o.level is not None else 1))
    return out


def _a(noun: str) -> str:
    """ "a cup", "an umbrella"."""
    return f"{'an' if noun[:1] in 'aeiou' and noun else 'a'} {noun}"


def _quote(f: ObjectFacts) -> str:
    return f'"{f.semantic}"'


def _n(v: float) -> str:
    return f"{v:.0f}"


# --- attribute hops -----------------------------------------------------------------------------------
def category_hop(facts: dict[int, ObjectFacts], category: str, *, extra: Sequence[str] = ()) -> Hop:
    """Keep objects whose semantic names ``category`` (or one of ``extra``)."""
    wanted = [category, *extra]

    def hop(kept: list[int]) -> Verdicts:
        out: Verdicts = {}
        for i in kept:
            f = facts[i]
            hit = next((c for c in wanted if f.has(c)), None)
            if hit is not None:
                out[i] = (True, f"{_a(hit)}, as the query asks" if hit == category else
                          f"{_a(hit)}, the kind the query refers to")
            else:
                what = _a(f.noun) if f.noun else _quote(f)
                out[i] = (False, f"{what}, not {' or '.join(_a(w) for w in wanted)}")
        return out
    return hop


def attribute_hop(facts: dict[int, ObjectFacts], value: str, vocabulary: Sequence[str]) -> Hop:
    """Keep objects whose semantic states ``value`` (a colour, size or texture)."""

    def hop(kept: list[int]) -> Verdicts:
        out: Verdicts = {}
        for i in kept:
            f = facts[i]
            if f.has(value):
                out[i] = (True, f"{value}, as the query asks")
            else:
                own = f.own(vocabulary) or ("plain" if vocabulary is TEXTURES else "not stated")
                out[i] = (False, f"{own}, not {value}")
        return out
    return hop


# --- comparative hops ---------------------------------------------------------------------------------
_EXTREME = {  # which -> (value to maximise, how to say it)
    "largest": (lambda f: f.area, "area {v:.1f}%"),
    "smallest": (lambda f: -f.area, "area {v:.1f}%"),
    "leftmost": (lambda f: -f.cx, "centre x {v:.0f}"),
    "rightmost": (lambda f: f.cx, "centre x {v:.0f}"),
    "topmost": (lambda f: -f.cy, "centre y {v:.0f}"),
    "bottommost": (lambda f: f.cy, "centre y {v:.0f}"),
}


def _shown(which: str, f: ObjectFacts) -> str:
    value, fmt = _EXTREME[which]
    return fmt.format(v=abs(value(f)))


def extreme_hop(facts: dict[int, ObjectFacts], which: str, among: Callable[[ObjectFacts], bool] | None = None,
                noun: str = "object") -> Hop:
    """Keep the ``which`` (largest, leftmost, ...) of the objects in play that satisfy ``among``; the others
    that satisfy it are dropped with the comparison, the rest pass (they are decided by another hop)."""
    value, _ = _EXTREME[which]

    def hop(kept: list[int]) -> Verdicts:
        group = [i for i in kept if among is None or among(facts[i])]
        out: Verdicts = {i: (True, f"{_a(facts[i].noun or 'candidate')}, still in play") for i in kept}
        if not group:
            return out
        best = max(group, key=lambda i: (value(facts[i]), -i))
        for i in group:
            if i == best:
                out[i] = (True, f"{_shown(which, facts[i])}: the {which} {noun}")
            else:
                out[i] = (False, f"{_shown(which, facts[i])}, {which} is {best} with {_shown(which, facts[best])}")
        return out
    return hop


def _distance(a: ObjectFacts, b: ObjectFacts) -> float:
    return math.hypot(a.cx - b.cx, a.cy - b.cy)


def nearest_hop(facts: dict[int, ObjectFacts], anchor: int, among: Callable[[ObjectFacts], bool] | None = None,
                drop_anchor: bool = True) -> Hop:
    """Keep the object (satisfying ``among``) whose centre is nearest to the anchor's centre."""

    def hop(kept: list[int]) -> Verdicts:
        a = facts[anchor]
        group = [i for i in kept if i != anchor and (among is None or among(facts[i]))]
        out: Verdicts = {i: (True, "still in play") for i in kept}
        if anchor in kept and drop_anchor:
            out[anchor] = (False, "the reference object of the query, not what it asks for")
        if not group:
            return out
        best = min(group, key=lambda i: (_distance(facts[i], a), i))
        d_best = _distance(facts[best], a)
        for i in group:
            d = _distance(facts[i], a)
            out[i] = ((True, f"{_n(d)} px from {anchor}: the nearest") if i == best else
                      (False, f"{_n(d)} px from {anchor}, farther than {best} ({_n(d_best)} px)"))
        return out
    return hop


_SIDES = {  # relation -> (axis, sign): the object is <relation> the anchor when sign * (o - a) > 0
    "left of": ("x", -1), "right of": ("x", 1), "above": ("y", -1), "below": ("y", 1),
}


def relation_hop(facts: dict[int, ObjectFacts], relation: str, anchor: int) -> Hop:
    """Keep the objects whose centre lies ``relation`` ("left of", "above", ...) the anchor's centre."""
    axis, sign = _SIDES[relation]

    def hop(kept: list[int]) -> Verdicts:
        a = facts[anchor]
        av = a.cx if axis == "x" else a.cy
        out: Verdicts = {}
        for i in kept:
            v = facts[i].cx if axis == "x" else facts[i].cy
            if i == anchor:
                out[i] = (False, "the reference object of the query, not what it asks for")
            elif sign * (v - av) > 0:
                out[i] = (True, f"centre {axis} {_n(v)} vs {_n(av)} of {anchor}: {relation} it")
            else:
                out[i] = (False, f"centre {axis} {_n(v)} vs {_n(av)} of {anchor}: not {relation} it")
        return out
    return hop


def count_hop(facts: dict[int, ObjectFacts], count: int) -> Hop:
    """Keep the objects of the kind that appears exactly ``count`` times (kinds by head noun)."""

    def hop(kept: list[int]) -> Verdicts:
        tally: dict[str, int] = {}
        for i in kept:
            tally[facts[i].noun] = tally.get(facts[i].noun, 0) + 1
        word = NUMBER_WORDS.get(count, str(count))
        out: Verdicts = {}
        for i in kept:
            noun, k = facts[i].noun, tally[facts[i].noun]
            out[i] = ((True, f"one of {k} {noun}s: exactly {word}") if k == count else
                      (False, f"one of {k} {noun}s, not {word}") if k > 1 else (False, f"the only {noun}, not {word}"))
        return out
    return hop


def level_hop(facts: dict[int, ObjectFacts], owner_id: int, owner_noun: str,
              rel: PairwiseRelations | None, pos: dict[int, int]) -> Hop:
    """Part queries: keep the parts (semantic "... of a <owner>") that lie inside the owner object."""

    def inside(i: int) -> bool:
        if rel is None:
            return False
        return relation_phrase(int(rel.codes[pos[i], pos[owner_id]]), False) in ("inside", "overlapping")

    def hop(kept: list[int]) -> Verdicts:
        out: Verdicts = {}
        for i in kept:
            f = facts[i]
            if not f.owner:
                out[i] = (False, f"a whole {f.noun or 'object'}, not a part" if i != owner_id else
                          f"the {owner_noun} itself, the query asks for a part of it")
            elif f.owner != owner_noun:
                out[i] = (False, f"a part of {_a(f.owner)}, not of the {owner_noun}")
            elif not inside(i):
                out[i] = (False, f"a part of another {owner_noun}, not inside {owner_id}")
            else:
                out[i] = (True, f"a part of the {owner_noun} {owner_id}, inside it")
        return out
    return hop


# --- generic (any dataset) --------------------------------------------------------------------------------
def query_match_hop(facts: dict[int, ObjectFacts], query: str, answer: Sequence[int]) -> Hop:
    """Keep the objects whose semantic shares a content word with the query (and the answer)."""
    q = set(content_words(query))

    def hop(kept: list[int]) -> Verdicts:
        out: Verdicts = {}
        for i in kept:
            shared = [w for w in content_words(facts[i].semantic) if w in q]
            if shared:
                out[i] = (True, f'mentions "{shared[0]}", as the query does')
            elif i in answer:
                out[i] = (True, f"{_quote(facts[i])} fits the query")
            else:
                out[i] = (False, f"{_quote(facts[i])} is not what the query asks for")
        return out
    return hop


def contrast_hop(facts: dict[int, ObjectFacts], answer: Sequence[int], rel: PairwiseRelations | None,
                 pos: dict[int, int]) -> Hop:
    """Keep exactly the answer; each other candidate is dropped with what tells it apart from the nearest
    answer object (words of the semantic, area, where it is)."""

    def contrast(i: int, a: int) -> str:
        fi, fa = facts[i], facts[a]
        mine = [w for w in fi.head if w not in fa.head]
        theirs = [w for w in fa.head if w not in fi.head]
        if mine or theirs:
            text = f"{' '.join(mine) or fi.noun}, where {a} is {' '.join(theirs) or fa.noun}"
        else:
            text = f"area {fi.area:.1f}% vs {fa.area:.1f}% of {a}"
        if rel is not None:
            text += f"; {relation_phrase(int(rel.codes[pos[i], pos[a]]), bool(rel.next_to[pos[i], pos[a]]))} {a}"
        return text

    def hop(kept: list[int]) -> Verdicts:
        out: Verdicts = {}
        inside = [i for i in kept if i in answer]
        for i in kept:
            if i in answer:
                out[i] = (True, f"{_quote(facts[i])}: what the query describes")
            elif inside:
                a = min(inside, key=lambda j: (_distance(facts[i], facts[j]), j))
                out[i] = (False, contrast(i, a))
            else:
                out[i] = (False, f"{_quote(facts[i])} does not fit the query")
        return out
    return hop


def generic_hops(facts: dict[int, ObjectFacts], query: str, answer: Sequence[int],
                 rel: PairwiseRelations | None, pos: dict[int, int]) -> list[Hop]:
    """Semantic match with the query, then the answer against what is left."""
    return [query_match_hop(facts, query, answer), contrast_hop(facts, answer, rel, pos)]


# --- synthetic query programs -------------------------------------------------------------------------
def program_hops(program: dict, facts: dict[int, ObjectFacts], anchors: dict[str, int | None],
                 target_attrs: dict | None, rel: PairwiseRelations | None, pos: dict[int, int]) -> list[Hop] | None:
    """One hop per step the query program needs, or None when the program cannot be stated in visible
    facts of this twin (unknown kind, its anchor object not in the twin, ...).

    ``anchors``: twin ids of the program's instance references ("anchor", "owner", "object") or None.
    ``target_attrs``: the instance attributes of a ``reference`` target (category, colour, size, texture).
    """
    kind = program.get("kind")
    cat = program.get("category")
    is_cat: Callable[[ObjectFacts], bool] | None = (lambda f: f.has(cat)) if cat else None
    if kind == "reference" and target_attrs:
        hops = [category_hop(facts, str(target_attrs["category"]))]
        for key, vocab in (("colour", tuple(COLOURS)), ("size", tuple(SIZE_RADIUS)), ("texture", TEXTURES)):
            value = target_attrs.get(key)
            if value and value != "plain":
                hops.append(attribute_hop(facts, str(value), vocab))
        return hops
    if kind == "function" and cat:
        return [category_hop(facts, cat)]
    if kind == "group":
        if program.get("colour"):
            return [attribute_hop(facts, program["colour"], tuple(COLOURS))]
        if program.get("texture"):
            return [attribute_hop(facts, program["texture"], TEXTURES)]
        return [category_hop(facts, cat)] if cat else None
    if kind == "extreme" and program.get("which") in _EXTREME:
        first = [category_hop(facts, cat)] if cat else []
        return first + [extreme_hop(facts, program["which"], is_cat, cat or "object")]
    if kind == "relation" and anchors.get("anchor") is not None and program.get("relation") in _SIDES and cat:
        return [category_hop(facts, cat), relation_hop(facts, program["relation"], anchors["anchor"])]
    if kind == "nearest" and anchors.get("anchor") is not None and cat:
        return [category_hop(facts, cat), nearest_hop(facts, anchors["anchor"], is_cat)]
    if kind == "nearest_to_extreme" and cat and program.get("anchor_category"):
        c2 = program["anchor_category"]
        which = program.get("which", "largest")
        if which not in _EXTREME:
            return None
        hop1 = category_hop(facts, cat, extra=[c2])
        hop2 = extreme_hop(facts, which, lambda f: f.has(c2), c2)

        def hop3(kept: list[int]) -> Verdicts:
            anchor = next((i for i in kept if facts[i].has(c2)), None)
            if anchor is None:
                return {i: (True, "still in play") for i in kept}
            return nearest_hop(facts, anchor, is_cat)(kept)
        return [hop1, hop2, hop3]
    if kind == "count" and program.get("count"):
        return [count_hop(facts, int(program["count"]))]
    if kind == "part" and anchors.get("owner") is not None and program.get("part"):
        owner = anchors["owner"]
        owner_noun = facts[owner].noun
        return [level_hop(facts, owner, owner_noun, rel, pos), category_hop(facts, str(program["part"]))]
    return None
