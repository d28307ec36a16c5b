"""Scene facts: what one object's line must carry so that it can be judged without reading the rest of the twin.

A per-object scorer (the compact format's ``target: object``) sees the query and one object. Queries that
relate objects ("the cup left of the red circle"), compare them ("the largest cup", "the cup nearest to the
largest circle") or count them ("the kind that appears exactly twice") cannot be decided from one object's
own description. ``facts: true`` writes, after each object's line, the relations the paper's spatial text
T_i = F_spatial(b_i, A_i, {R_ij}) holds about it (eq. 5, in words, kept to the relations that distinguish it)
and the comparisons within its kind, all computed from the twin alone (masks, areas, semantics), never from
the query::

    a small red cup, at 40 60, area 1.1, id 2; one of two cups; the smallest cup; the leftmost cup;
    left of and above the blue circle, the largest circle; nearest to and below the square

- **kind**: the head noun of the description (the last word before the first "with", "of", "on", ...,
  or a comma): "a large blue house with a red roof" -> "house", "the red roof of a house" -> "roof";
- **count**: "the only cup" or "one of <n> cups" (number words up to twelve);
- **superlatives** within the kind (when it has two or more members; ties write nothing): largest,
  smallest, leftmost, rightmost, topmost, bottommost; over all objects: "the largest object" and
  "the smallest object";
- **relations** to other objects, only those that single the object out within its kind (a reference like
  "the cup left of the red circle" only means something when another cup is not left of it): "left of" /
  "right of" and "above" / "below" by mask centroid when some other member of its kind is on the other
  side, and "nearest to" when it is the nearest of its kind to an object of another kind (ties write
  nothing); then the other object's reference, the shortest name that fits it alone ("the circle", "the
  blue circle", "the small blue circle": :func:`references`), and ", the largest <kind>" when that object
  is the largest of its own kind. An object alone of its kind has no relations.

Centroids are mask centroids, as the spatial text and the synthetic generator use. The cost is one mask
decode per object and O(N^2 K) comparisons per twin (K: the largest kind); only objects that share their
kind with others get relations, so the text stays short when kinds are distinct.
"""

from __future__ import annotations

import re

import numpy as np

from dtwinseg.twin import DigitalTwin

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve")
_HEAD_CUT = re.compile(r",|\b(?:with|of|on|in|at|near|under|over|and|that|which|holding|wearing)\b")
_WORD = re.compile(r"[a-z][a-z-]*")
COLOUR_WORDS = frozenset(("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white",
                          "gray", "grey", "violet", "cyan", "magenta", "gold", "golden", "silver", "beige", "teal"))
SIZE_WORDS = frozenset(("small", "medium", "large", "big", "tiny", "huge", "little", "giant"))
# value to maximise for each superlative, from (centroid x, centroid y, area)
_SUPERLATIVES = (
    ("largest", lambda x, y, a: a),
    ("smallest", lambda x, y, a: -a),
    ("leftmost", lambda x, y, a: -x),
    ("rightmost", lambda x, y, a: x),
    ("topmost", lambda x, y, a: -y),
    ("bottommost", lambda x, y, a: y),
)


def _head_words(semantic: str) -> list[str]:
    """The words of a description before its first preposition or comma."""
    return _WORD.findall(_HEAD_CUT.split((semantic or "").lower(), maxsplit=1)[0])


def kind_of(semantic: str) -> str:
    """The head noun of a description: the last word before the first preposition or comma ("object"
    when there is none)."""
    words = _head_words(semantic)
    return words[-1] if words else "object"


def references(twin: DigitalTwin) -> list[str]:
    """Per object (twin order), the shortest phrase that names it and no other object of the twin, built the
    way people refer (the incremental algorithm of referring-expression generation, Dale & Reiter 1995):
    the kind alone ("the hexagon"), then with its colour ("the purple hexagon"), then with its size too
    ("the small purple hexagon"), then with every modifier of its description; the first that no other
    object fits (same kind, every chosen word among its modifiers) is used, words in the description's
    order. When even the full name fits another object, the full name."""
    words = [_head_words(o.semantic) for o in twin.objects]
    words = [w[1:] if w and w[0] in ("a", "an", "the") else w for w in words]
    kinds = [w[-1] if w else "object" for w in words]
    mods = [w[:-1] for w in words]
    out = []
    for i, m in enumerate(mods):
        chain = ([w for w in m if w in COLOUR_WORDS], [w for w in m if w in SIZE_WORDS],
                 [w for w in m if w not in COLOUR_WORDS and w not in SIZE_WORDS])
        chosen: set[str] = set()
        for step in ((), *chain):
            chosen |= set(step)
            rivals = [j for j in range(len(mods)) if j != i and kinds[j] == kinds[i] and chosen <= set(mods[j])]
            if not rivals:
                break
        out.append("the " + " ".join([w for w in m if w in chosen] + [kinds[i]]))
    return out


def plural(noun: str) -> str:
    """A plain English plural, enough for count phrases ("cups", "boxes", "butterflies")."""
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and len(noun) > 1 and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def _number(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def _centroids(twin: DigitalTwin) -> np.ndarray:
    out = np.zeros((len(twin.objects), 2))
    for k, o in enumerate(twin.objects):
        ys, xs = np.nonzero(o.mask())
        if len(xs):
            out[k] = xs.mean(), ys.mean()
        else:  # an empty mask: its box centre
            out[k] = (o.bbox[0] + o.bbox[2]) / 2, (o.bbox[1] + o.bbox[3]) / 2
    return out


def _argmax_unique(values: list[float]) -> int | None:
    best = max(values)
    hits = [k for k, v in enumerate(values) if v == best]
    return hits[0] if len(hits) == 1 else None


def object_facts(twin: DigitalTwin) -> dict[int, list[str]]:
    """Per object id, its facts in order: count, superlatives, the relations that single it out in its kind."""
    objs = twin.objects
    if not objs:
        return {}
    cen = _centroids(twin)
    areas = [float(o.area) for o in objs]
    kinds = [kind_of(o.semantic) for o in objs]
    members: dict[str, list[int]] = {}
    for k, kind in enumerate(kinds):
        members.setdefault(kind, []).append(k)

    sup: list[list[str]] = [[] for _ in objs]
    for kind, ks in members.items():
        if len(ks) < 2:
            continue
        for word, f in _SUPERLATIVES:
            best = _argmax_unique([f(cen[k, 0], cen[k, 1], areas[k]) for k in ks])
            if best is not None:
                sup[ks[best]].append(f"the {word} {kind}")
    overall: list[list[str]] = [[] for _ in objs]
    if len(objs) >= 2:
        for word, f in _SUPERLATIVES[:2]:
            best = _argmax_unique([f(0, 0, a) for a in areas])
            if best is not None:
                overall[best].append(f"the {word} object")

    names = references(twin)
    dist = np.hypot(cen[:, None, 0] - cen[None, :, 0], cen[:, None, 1] - cen[None, :, 1])
    facts: dict[int, list[str]] = {}
    for i, o in enumerate(objs):
        ks = members[kinds[i]]
        out = [f"the only {kinds[i]}" if len(ks) == 1 else f"one of {_number(len(ks))} {plural(kinds[i])}"]
        out += sup[i] + overall[i]
        for j in range(len(objs)):
            if j == i:
                continue
            others = [k for k in ks if k not in (i, j)]  # the rest of its kind, the other object left out
            if not others:  # a relation to j cannot single this object out of its kind
                continue
            words = []
            rivals = [k for k in ks if k != j]  # this object and the others (two or more)
            near = _argmax_unique([-dist[k, j] for k in rivals])
            if near is not None and rivals[near] == i and kinds[j] != kinds[i]:
                words.append("nearest to")
            for axis, (neg, pos) in enumerate((("left of", "right of"), ("above", "below"))):
                d = np.sign(cen[j, axis] - cen[i, axis])  # > 0: this object is left of / above j
                if d and any(np.sign(cen[j, axis] - cen[k, axis]) != d for k in others):
                    words.append(neg if d > 0 else pos)
            if not words:
                continue
            name = names[j] + (f", the largest {kinds[j]}" if f"the largest {kinds[j]}" in sup[j] else "")
            rel = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
            out.append(f"{rel} {name}")
        facts[o.id] = out
    return facts
