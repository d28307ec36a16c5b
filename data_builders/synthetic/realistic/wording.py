"""The wording model: what a VLM would write for each instance of a realistic scene (the twin's semantics).

Descriptions are drawn from the role's vocabulary (lexicon.py: train, val and test differ partly) in one of
several shapes, with optional attributes in varied order, and a small rate of mistakes:

    "a crimson mug on the table"      "mug, red"       "a small red ceramic cup"      "cup (red)"
    "the handle of a cup"             "kitchen chair's seat"    "wooden floor"    "a stack of three books"
    "a tabby cat sleeping on the sofa"     "an object" (mistake: generic)     "a blue mug" (mistake: colour)

A scene keeps one preferred noun per category (a VLM is fairly consistent within an image) and departs
from it at ``p_other_noun``. ``describe_all`` returns per instance the main description and ``alts``
alternative ones (what the same VLM writes for a near-duplicate or a piece of the same mask).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from dtwinseg.data_builders.synthetic.realistic.lexicon import (
    COLOURS,
    CONTEXT,
    MATERIALS,
    NOUNS,
    NUMBERS,
    PART_NOUNS,
    SIZES,
    STATES,
)
from dtwinseg.data_builders.synthetic.realistic.scene import RealisticScene, Thing

if TYPE_CHECKING:  # the wording model's rates are its p_* fields
    from dtwinseg.data_builders.synthetic.config import RealisticConfig

GENERIC = ("an object", "a thing", "some item", "an item", "something")


def pick(rng: np.random.Generator, seq: tuple | list) -> str:
    return seq[int(rng.integers(len(seq)))]


def article(phrase: str) -> str:
    """``a`` or ``an`` before ``phrase`` (by its first letter)."""
    return "an" if phrase[:1].lower() in "aeiou" else "a"


def plural(noun: str) -> str:
    """English plural of a noun phrase's last word (enough for this lexicon)."""
    irregular = {"person": "people", "man": "men", "woman": "women", "leaves": "leaves", "shelf": "shelves",
                 "walls": "walls", "legs": "legs", "keys": "keys", "foliage": "foliage", "greenery": "greenery",
                 "glass": "glasses", "bus": "buses", "knife": "knives"}
    head, _, last = noun.rpartition(" ")
    if last in irregular:
        word = irregular[last]
    elif last.endswith(("s", "x", "z", "ch", "sh")):
        word = last + "es"
    elif last.endswith("y") and len(last) > 1 and last[-2] not in "aeiou":
        word = last[:-1] + "ies"
    else:
        word = last + "s"
    return f"{head} {word}" if head else word


class Wording:
    """Words for one scene in one role (train / val / test), with the scene's preferred nouns."""

    def __init__(self, rng: np.random.Generator, role: str, cfg: RealisticConfig) -> None:
        self.rng, self.role, self.cfg = rng, role, cfg
        self.preferred: dict[str, str] = {}

    def noun(self, category: str, part: bool = False) -> str:
        table = PART_NOUNS if part else NOUNS
        words = table[category].of(self.role)
        key = ("part:" if part else "") + category
        if key not in self.preferred:
            self.preferred[key] = pick(self.rng, words)
        if self.rng.random() < self.cfg.p_other_noun:
            return pick(self.rng, words)
        return self.preferred[key]

    def colour(self, canonical: str) -> str:
        if canonical in ("", "mixed", "skin"):
            return ""
        if self.rng.random() < self.cfg.p_wrong_colour:  # a mistake: another colour's word
            canonical = pick(self.rng, [c for c in COLOURS if c != canonical])
        return pick(self.rng, COLOURS[canonical].of(self.role))

    def size(self, canonical: str | None) -> str:
        return pick(self.rng, SIZES[canonical].of(self.role)) if canonical else ""

    def material(self, canonical: str | None) -> str:
        return pick(self.rng, MATERIALS[canonical].of(self.role)) if canonical else ""

    def state(self, canonical: str | None) -> str:
        return pick(self.rng, STATES[canonical].of(self.role)) if canonical else ""

    def number(self, n: int) -> str:
        return pick(self.rng, NUMBERS[n].of(self.role)) if n in NUMBERS else str(n)


def _join(*words: str) -> str:
    return " ".join(w for w in words if w)


def _with_article(phrase: str, rng: np.random.Generator) -> str:
    u = rng.random()
    if u < 0.6:
        return f"{article(phrase)} {phrase}"
    if u < 0.75:
        return f"the {phrase}"
    return phrase


def describe_object(w: Wording, t: Thing, scene: RealisticScene, context: str) -> str:
    """One description of a thing: noun with optional colour, size, material, state and context."""
    rng, cfg = w.rng, w.cfg
    if rng.random() < cfg.p_generic:
        col = w.colour(t.colour)
        return pick(rng, GENERIC) + (f", {col}" if col and rng.random() < 0.5 else "")
    noun = w.noun(t.category)
    col = w.colour(t.colour)
    size = w.size(t.size) if t.size != "medium" and rng.random() < cfg.p_size else ""
    mat = w.material(t.material) if rng.random() < cfg.p_material else ""
    state = w.state(t.state)
    ctx = context if rng.random() < cfg.p_context else ""
    shape = int(rng.integers(8))
    if shape <= 2:  # "a small red wooden chair"
        text = _with_article(_join(size, col, mat, noun), rng)
    elif shape == 3:  # "chair, red"
        text = _join(mat, noun) + (f", {_join(size, col)}" if col or size else "")
    elif shape == 4:  # "a chair (red)"
        text = _with_article(_join(size, mat, noun), rng) + (f" ({col})" if col else "")
    elif shape == 5:  # "a chair in red"
        text = _with_article(_join(size, mat, noun), rng) + (f" in {col}" if col else "")
    elif shape == 6:  # "a red chair, small"
        text = _with_article(_join(col, mat, noun), rng) + (f", {size}" if size else "")
    else:  # "a chair that is red"
        text = _with_article(_join(size, noun), rng) + (f" that is {col}" if col else "") + \
            (f", {mat}" if mat else "")
    if state and ctx.startswith(("on ", "in ")) and rng.random() < 0.7:  # "a cat sleeping on the sofa"
        return f"{text} {state} {ctx}"
    if state and shape <= 2 and rng.random() < 0.5:  # "a sleeping cat"
        text = text.replace(noun, f"{state} {noun}", 1)
    elif state and rng.random() < 0.15:  # "a cat, sleeping"
        text += f", {state}"
    return f"{text} {ctx}" if ctx else text


def describe_part(w: Wording, t: Thing, owner: Thing) -> str:
    rng = w.rng
    if rng.random() < w.cfg.p_generic:
        return pick(rng, ("a part of something", "a piece", "a small region", "part of an object"))
    part = w.noun(t.category, part=True)
    owner_noun = w.noun(owner.category)
    col = w.colour(t.colour) if rng.random() < 0.5 else ""
    shape = int(rng.integers(6))
    if shape == 0:
        return f"the {_join(col, part)} of {article(owner_noun)} {owner_noun}"
    if shape == 1:
        return _join(owner_noun, part) + (f", {col}" if col else "")
    if shape == 2:
        return f"{owner_noun}'s {_join(col, part)}"
    if shape == 3:
        return f"{_with_article(_join(col, part), rng)} ({owner_noun})"
    if shape == 4:
        return f"{_with_article(_join(col, part), rng)} of the {owner_noun}"
    return f"{_join(col, part)} belonging to {article(owner_noun)} {owner_noun}"


def describe_background(w: Wording, t: Thing) -> str:
    rng = w.rng
    noun = w.noun(t.category)
    col = w.colour(t.colour) if rng.random() < 0.6 else ""
    mat = w.material(t.material) if rng.random() < 0.7 else ""
    shape = int(rng.integers(4))
    if shape == 0:
        return f"the {_join(col, mat, noun)}"
    if shape == 1:
        return _join(col, mat, noun)
    if shape == 2:
        return _with_article(_join(mat, noun), rng) + (f", {col}" if col else "")
    return f"{_join(col, mat, noun)} in the background"


def describe_group(w: Wording, t: Thing, scene: RealisticScene) -> str:
    rng = w.rng
    n = len(t.members)
    noun = plural(w.noun(t.category))
    col = w.colour(t.colour) if t.colour != "mixed" and rng.random() < 0.5 else ""
    collective = {"book": ("stack", "pile"), "apple": ("pile", "group", "heap"), "banana": ("bunch", "cluster")}
    shape = int(rng.integers(4))
    if shape == 0:
        return f"a {pick(rng, collective.get(t.category, ('group',)))} of {_join(col, noun)}"
    if shape == 1:
        return _join(w.number(n), col, noun)
    if shape == 2:
        return f"several {_join(col, noun)}"
    return f"{_join(col, noun)}, {w.number(n)} of them"


def context_phrase(w: Wording, scene: RealisticScene, k: int) -> str:
    """Where a VLM says the thing is: on its support, or next to / near its nearest other thing."""
    t = scene.things[k]
    if t.support is not None and scene.things[t.support].role != "group" and w.rng.random() < 0.6:
        sup = scene.things[t.support]
        return f"on the {w.noun(sup.category)}"
    others = [(abs(o.cx - t.cx) + abs(o.cy - t.cy), j) for j, o in enumerate(scene.things)
              if j != k and o.role == "object" and o.group is None and o.category != t.category]
    if not others:
        return ""
    _, j = min(others)
    return f"{pick(w.rng, CONTEXT.of(w.role))} the {w.noun(scene.things[j].category)}"


def describe_all(rng: np.random.Generator, scene: RealisticScene, role: str, cfg: RealisticConfig,
                 alts: int = 2) -> list[list[str]]:
    """Per instance (scene order), ``1 + alts`` descriptions: the main one first."""
    w = Wording(rng, role, cfg)
    out = []
    for k, t in enumerate(scene.things):
        texts = []
        for _ in range(1 + alts):
            if t.role == "background":
                texts.append(describe_background(w, t))
            elif t.role == "group":
                texts.append(describe_group(w, t, scene))
            elif t.role == "part":
                texts.append(describe_part(w, t, scene.things[t.owner]))
            else:
                texts.append(describe_object(w, t, scene, context_phrase(w, scene, k)))
        out.append(texts)
    return out
