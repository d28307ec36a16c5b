"""Scene facts: what one object's line must carry so that it can be judged without reading the rest of the twin.

A per-object scorer (the compact format's ``target: object``) sees the query and one object. Queries that
relate objects ("the mug left of the lamp"), compare them ("the largest mug", "the mug nearest to the
biggest plate"), name a part ("the handle of the red mug") or count ("the kind there are three of") cannot
be decided from one object's own description. ``facts: true`` writes after each object's line what the twin
says about it relative to the others: the paper's spatial text T_i (eq. 5) in words, kept to what
distinguishes the object. Everything comes from the masks and from the descriptions as a VLM writes them
(any wording, any vocabulary), never from the query::

    a black office chair next to the table, id 4; one of two chairs; the largest chair; the leftmost chair;
    left of and nearest to the desk; left of the lamp
    the handle of the mug, id 9; part of the red mug; one of two handles; the rightmost handle

How a description is read (:func:`noun_phrase`): its first clause (up to a comma, bracket or colon), cut
before the first preposition, conjunction or relative word ("of", "on", "next", "with", "that", ...) and
before a participle that follows a noun and takes a complement ("sleeping on", "holding a", "lying down",
"parked by"; not before "of": "a painting of a ship", nor before a word the twin's other descriptions use
as a noun: "a large painting on the wall" beside "the frame of a painting");
a possessive owner stays a modifier ("kitchen chair's seat": kind "seat"). Its **kind** is the last word
left ("a tabby cat sleeping on the chair" -> "cat", "a black office chair next to the table" -> "chair",
"the handle of a mug" -> "handle", "mug, red" -> "mug"), the words before it (articles and numbers left
out) its modifiers. Only closed-class English words (prepositions, articles, ...) are listed; nouns,
colours and sizes are never.

The facts, in order:

- **part of**: a mask lying (80%) inside a larger one (by 10%; not a near-duplicate of it, under half the
  image, not a region spanning it; the smallest such) is "part of" it: SAM returns wholes and their parts alike, and this says which whole;
- **count**: "the only mug" or "one of <n> mugs"; masks of one kind overlapping each other (IoU >= 0.7)
  are one thing seen twice (SAM's near-duplicates) and count once;
- **superlatives** within the kind, when it has two or more things: largest, smallest (areas 15% apart),
  leftmost, rightmost, topmost, bottommost (centroids 3% of the image apart); near-ties write nothing;
- **relations** of things (under 30% of the image, touching at most two of its borders: not a region such
  as floor, wall or sky) to the ``max_anchors`` nearest other things (by the gap between their boxes; also
  not inside another mask, of another kind, over 0.2% of the image; near-duplicates count once) that it
  stands in a relation to that singles it out within its kind: "left of" /
  "right of" / "above" / "below" by centroid when another thing of its kind is not, "nearest to" when it
  is clearly (15%) the nearest of its kind. Parts get none (their whole has them).

Other things are named by the shortest phrase that fits them alone (:func:`references`: the kind, then
with one of its modifiers, then two, then all of them: "the chair", "the office chair"), a part's whole by
its kind with all its modifiers (up to three: "part of the small red mug"), each followed by up to two of
their superlatives when their kind has several things ("the desk, the largest desk").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from dtwinseg.runtime import LRUMemo
from dtwinseg.twin import DigitalTwin

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve")
# closed-class English: words that end a noun phrase, and words that never name or modify a thing
PREPOSITIONS = frozenset((
    "of", "on", "in", "at", "near", "next", "beside", "besides", "by", "under", "over", "above", "below",
    "behind", "with", "without", "from", "for", "against", "inside", "outside", "between", "to", "into",
    "onto", "along", "across", "around", "upon", "atop", "beneath", "underneath", "among", "amid", "within",
    "toward", "towards", "like", "as", "beyond", "through", "throughout", "via", "off", "belonging",
))
CLAUSE_WORDS = frozenset(("that", "which", "who", "whose", "where", "while", "and", "or", "but", "is", "are",
                          "was", "were", "being", "has", "have", "can", "could", "seems", "appears"))
PARTICLES = frozenset(("up", "down", "out", "away", "back", "together", "alone", "here", "there"))
DETERMINERS = frozenset(("a", "an", "the", "this", "these", "those", "some", "any", "its", "his", "her",
                         "their", "our", "my", "your", "each", "every", "several", "many", "few", "another",
                         "other", "both", "all", "one", "two", "three", "four", "five", "six", "seven",
                         "eight", "nine", "ten", "pair", "couple"))
_CLAUSE_CUT = re.compile(r"[,;:()\[\]{}.!?]| - | – ")
_TOKEN = re.compile(r"[a-z0-9][a-z0-9'-]*")
_SUPERLATIVES = (  # value to maximise from (centroid x, centroid y, area), and the margin kind
    ("largest", lambda x, y, a: a, "area"),
    ("smallest", lambda x, y, a: -a, "area"),
    ("leftmost", lambda x, y, a: -x, "pos"),
    ("rightmost", lambda x, y, a: x, "pos"),
    ("topmost", lambda x, y, a: -y, "pos"),
    ("bottommost", lambda x, y, a: y, "pos"),
)


def _words(text: str) -> list[str]:
    return [w.strip("'-") for w in _TOKEN.findall(text.lower().replace("\u2019", "'")) if w.strip("'-")]


def noun_phrase(semantic: str, nouns: frozenset[str] | set[str] = frozenset()) -> tuple[list[str], str]:
    """(modifiers, kind) of a free-form description; see the module docstring. ``([], "object")`` when
    nothing is left. ``nouns``: words known to name things in this twin (:func:`known_nouns`); such a word
    ending in -ing / -ed is read as the head ("a large painting on the wall"), not as a participle."""
    return _parse(semantic, nouns)[:2]  # type: ignore[return-value]


def _parse(semantic: str, nouns: frozenset[str] | set[str] = frozenset()) -> tuple[list[str], str, bool]:
    """(modifiers, kind, whether a word was taken for a participle) of a description."""
    text = (semantic or "").lower().replace("\u2019", "'")
    for clause in _CLAUSE_CUT.split(text):
        words = _words(clause)
        phrase: list[str] = []
        cut = False
        for k, w in enumerate(words):
            if w in PREPOSITIONS or w in CLAUSE_WORDS:
                break
            nxt = words[k + 1] if k + 1 < len(words) else None
            if (any(p not in DETERMINERS for p in phrase) and w.endswith(("ing", "ed")) and len(w) > 4
                    and nxt is not None and nxt != "of" and w not in nouns
                    and (nxt in PREPOSITIONS or nxt in PARTICLES or nxt in CLAUSE_WORDS or nxt in DETERMINERS)):
                cut = True  # a participle with its complement: "sleeping on the sofa", "holding a cup", "curled up"
                break
            phrase.append(w)
        content = [w for w in phrase if w not in DETERMINERS and not w.isdigit()]
        if content:
            return content[:-1], content[-1].removesuffix("'s"), cut
    return [], "object", False


def known_nouns(semantics: list[str]) -> set[str]:
    """Words a twin's own descriptions use as nouns: heads read without guessing at a participle, owners
    ("painting's frame", "the frame of a painting")."""
    out: set[str] = set()
    for text in semantics:
        _, kind, cut = _parse(text)
        if not cut:
            out.add(kind)
        words = _words((text or "").lower().replace("\u2019", "'"))
        out |= {w.removesuffix("'s") for w in words if w.endswith("'s")}
        out |= {words[k + 2] for k in range(len(words) - 2) if words[k] == "of" and words[k + 1] in DETERMINERS}
    return out


def kind_of(semantic: str) -> str:
    """The kind (head noun) of a description: "a tabby cat sleeping on the chair" -> "cat"."""
    return noun_phrase(semantic)[1]


def plural(noun: str) -> str:
    """A plain English plural, enough for count phrases ("cups", "boxes", "butterflies"); a word that
    already looks plural ("legs", "leaves") stays as it is."""
    if noun.endswith("s") and not noun.endswith(("ss", "us", "is")):
        return noun
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and len(noun) > 1 and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def _number(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


@dataclass
class _Geometry:
    """Per-object geometry of a twin: centroids, areas (pixels), boxes, and the pairwise overlaps of
    objects whose boxes meet (exact, from the masks)."""

    cen: np.ndarray  # N x 2 (x, y)
    area: np.ndarray  # N
    borders: np.ndarray  # N: how many image borders the mask touches (0-4)
    boxes: np.ndarray  # N x 4: x0, y0, x1, y1 (exclusive)
    inter: dict[tuple[int, int], int]  # (i, j) with i < j -> pixels in common
    size: int  # image pixels
    width: int

    def overlap(self, i: int, j: int) -> int:
        return self.inter.get((min(i, j), max(i, j)), 0)

    def iou(self, i: int, j: int) -> float:
        o = self.overlap(i, j)
        u = self.area[i] + self.area[j] - o
        return o / u if u > 0 else 0.0


def _geometry(twin: DigitalTwin) -> _Geometry:
    import cv2

    n = len(twin.objects)
    masks = [o.mask().astype(np.uint8) for o in twin.objects]
    cen = np.zeros((n, 2))
    area = np.zeros(n)
    boxes = np.zeros((n, 4), dtype=int)
    h, w = twin.height, twin.width
    for k, (o, m) in enumerate(zip(twin.objects, masks, strict=True)):
        mom = cv2.moments(m, binaryImage=True)
        area[k] = mom["m00"]
        if mom["m00"] > 0:
            cen[k] = mom["m10"] / mom["m00"], mom["m01"] / mom["m00"]
            x, y, bw, bh = cv2.boundingRect(m)
            boxes[k] = x, y, x + bw, y + bh
        else:  # an empty mask: its box centre
            cen[k] = (o.bbox[0] + o.bbox[2]) / 2, (o.bbox[1] + o.bbox[3]) / 2
    inter: dict[tuple[int, int], int] = {}
    for i in range(n):
        for j in range(i + 1, n):
            x0, y0 = max(boxes[i, 0], boxes[j, 0]), max(boxes[i, 1], boxes[j, 1])
            x1, y1 = min(boxes[i, 2], boxes[j, 2]), min(boxes[i, 3], boxes[j, 3])
            if x0 < x1 and y0 < y1 and area[i] > 0 and area[j] > 0:
                c = int(np.count_nonzero(masks[i][y0:y1, x0:x1] & masks[j][y0:y1, x0:x1]))
                if c:
                    inter[(i, j)] = c
    borders = ((boxes[:, 0] <= 0).astype(int) + (boxes[:, 1] <= 0) + (boxes[:, 2] >= w) + (boxes[:, 3] >= h)) * (area > 0)
    return _Geometry(cen, area, borders, boxes, inter, h * w, w)


def _clusters(members: list[int], g: _Geometry, iou: float = 0.7) -> list[list[int]]:
    """``members`` grouped into near-duplicates (single linkage on IoU), in order of first member."""
    parent = {k: k for k in members}

    def root(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for a, i in enumerate(members):
        for j in members[a + 1:]:
            if g.iou(i, j) >= iou:
                parent[root(j)] = root(i)
    groups: dict[int, list[int]] = {}
    for k in members:
        groups.setdefault(root(k), []).append(k)
    return list(groups.values())


def references(twin: DigitalTwin, kinds: list[str] | None = None, mods: list[list[str]] | None = None,
               same: list[set[int]] | None = None) -> list[str]:
    """Per object (twin order), the shortest phrase that names it and no other thing of the twin: the kind
    alone ("the chair"), then with one of its modifiers ("the office chair"), then with two, then with all
    of them (words in the description's order). ``same[i]``: objects that are the same thing as ``i``
    (near-duplicates) and never rivals."""
    if kinds is None or mods is None:
        parsed = [noun_phrase(o.semantic) for o in twin.objects]
        mods, kinds = [p[0] for p in parsed], [p[1] for p in parsed]
    same = same or [{i} for i in range(len(kinds))]
    out = []
    for i, (m, kind) in enumerate(zip(mods, kinds, strict=True)):
        rivals = [j for j in range(len(kinds)) if kinds[j] == kind and j not in same[i]]
        name = None
        if not rivals:
            name = [kind]
        else:
            for size in (1, 2):
                for start in range(len(m) - size + 1):
                    words = m[start:start + size]
                    if all(not set(words) <= set(mods[j]) for j in rivals):
                        name = words + [kind]
                        break
                if name:
                    break
        out.append("the " + " ".join(name or (m + [kind])))
    return out


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


_FACTS_MEMO = LRUMemo(1024, copy=lambda facts: {i: list(f) for i, f in facts.items()})


def object_facts(twin: DigitalTwin, max_anchors: int = 5) -> dict[int, list[str]]:
    """Per object id, its facts in order (see the module docstring): part of, count, superlatives, relations.

    They depend on the twin's content only, so they are remembered by its digest
    (:meth:`DigitalTwin.content_digest`): an evaluation's checkpoints and a dataset's several examples of
    one twin compute them once."""
    if not twin.objects:
        return {}
    return _FACTS_MEMO.get_or_compute((twin.content_digest(), int(max_anchors)),
                                      lambda: _object_facts(twin, max_anchors))


def _object_facts(twin: DigitalTwin, max_anchors: int) -> dict[int, list[str]]:
    objs = twin.objects
    n = len(objs)
    if not n:
        return {}
    g = _geometry(twin)
    nouns = known_nouns([o.semantic for o in objs])
    parsed = [noun_phrase(o.semantic, nouns) for o in objs]
    mods, kinds = [p[0] for p in parsed], [p[1] for p in parsed]
    members: dict[str, list[int]] = {}
    for k, kind in enumerate(kinds):
        members.setdefault(kind, []).append(k)
    cluster_of: dict[int, list[int]] = {}
    clusters: dict[str, list[list[int]]] = {}
    for kind, ks in members.items():
        clusters[kind] = _clusters(ks, g)
        for c in clusters[kind]:
            for k in c:
                cluster_of[k] = c
    same = [set(cluster_of[i]) for i in range(n)]

    # part of: the smallest larger mask holding 80% of it (not a near-duplicate, not half the image)
    owner: list[int | None] = [None] * n
    for i in range(n):
        best = None
        for j in range(n):
            if (j in same[i] or g.area[j] < 1.1 * g.area[i] or g.area[j] > 0.5 * g.size or g.area[i] == 0
                    or g.borders[j] >= 3):  # a region (floor, sky) is no whole of the things on it
                continue
            if g.overlap(i, j) >= 0.8 * g.area[i] and (best is None or g.area[j] < g.area[best]):
                best = j
        owner[i] = best

    # superlatives within a kind, over its things (a near-duplicate cluster is one thing: its largest mask)
    sup: list[list[str]] = [[] for _ in objs]
    for kind, cs in clusters.items():
        if len(cs) < 2:
            continue
        reps = [max(c, key=lambda k: g.area[k]) for c in cs]
        for word, f, margin_kind in _SUPERLATIVES:
            vals = [f(g.cen[k, 0], g.cen[k, 1], g.area[k]) for k in reps]
            order = np.argsort(vals)[::-1]
            best, second = vals[order[0]], vals[order[1]]
            if margin_kind == "area":
                clear = abs(best) >= 1.15 * abs(second) if word == "largest" else abs(second) >= 1.15 * abs(best)
            else:
                clear = best - second >= 0.03 * g.width
            if clear:
                for k in cs[int(order[0])]:
                    sup[k].append(f"the {word} {kind}")

    names = references(twin, kinds, mods, same)

    def name(j: int, full: bool = False) -> str:
        """How a line names another thing: its shortest unique name (``full``: with all its modifiers, up to
        three, so a part's whole keeps the colour or size a query may name it by), then its superlatives."""
        extra = [s.split(" ")[1] for s in sup[j]][:2]
        base = "the " + " ".join(mods[j][-3:] + [kinds[j]]) if full else names[j]
        return base + (f", the {_and(extra)} {kinds[j]}" if extra else "")

    facts: dict[int, list[str]] = {}
    dist = np.hypot(g.cen[:, None, 0] - g.cen[None, :, 0], g.cen[:, None, 1] - g.cen[None, :, 1])
    b = g.boxes.astype(float)  # how far apart two things are: the gap between their boxes (0 when they meet)
    gap_x = np.maximum(0.0, np.maximum(b[:, None, 0] - b[None, :, 2], b[None, :, 0] - b[:, None, 2]))
    gap_y = np.maximum(0.0, np.maximum(b[:, None, 1] - b[None, :, 3], b[None, :, 1] - b[:, None, 3]))
    gap = np.hypot(gap_x, gap_y)
    # anchors: things, not regions (a mask spanning the image from border to border is floor, wall or sky),
    # nor specks (under 0.2% of the image)
    anchors_all = [j for j in range(n) if owner[j] is None and 0.002 * g.size <= g.area[j] <= 0.3 * g.size
                   and g.borders[j] < 3]
    margin = 0.03 * g.width
    for i, o in enumerate(objs):
        kind = kinds[i]
        out = [f"part of {name(owner[i], full=True)}"] if owner[i] is not None else []
        n_things = len(clusters[kind])
        out.append(f"the only {kind}" if n_things == 1 else f"one of {_number(n_things)} {plural(kind)}")
        out += sup[i]
        rivals = [c for c in clusters[kind] if i not in c]
        if owner[i] is None and rivals and g.area[i] <= 0.3 * g.size and g.borders[i] < 3:
            rival_reps = [max(c, key=lambda k: g.area[k]) for c in rivals]
            cands = sorted((gap[i, j], dist[i, j], j) for j in anchors_all if kinds[j] != kind and j not in same[i])
            written, seen = 0, set()
            for _, _, j in cands:
                if written >= max_anchors:
                    break
                if j in seen:
                    continue
                seen |= same[j]  # a near-duplicate of an anchor already considered is the same anchor
                words = []
                dr = min(dist[r, j] for r in rival_reps)
                if 1.15 * dist[i, j] < dr:
                    words.append("nearest to")
                for axis, (neg, pos) in enumerate((("left of", "right of"), ("above", "below"))):
                    d = g.cen[j, axis] - g.cen[i, axis]  # > 0: this object is left of / above j
                    if abs(d) < margin:
                        continue
                    sign = 1 if d > 0 else -1
                    if any(sign * (g.cen[j, axis] - g.cen[r, axis]) <= 0 for r in rival_reps):
                        words.append(neg if d > 0 else pos)
                if words:
                    out.append(f"{_and(words)} {name(j)}")
                    written += 1
        facts[o.id] = out
    return facts
