"""Spatial relations between twin objects and the text T_i = F_spatial(b_i, A_i, {R_ij}) (paper eq. 4-5).

All pairwise quantities (intersections, containment, box gaps, centroid offsets) are computed at once
as N x N tensors (and cached per twin, so rendering a twin several times costs them once); only the final
wording loops in Python.

Two layouts of JSON(D) (``SpatialConfig.layout``):

- ``compact`` (the default): one string per object, ``{"<id>": "<S_i>; box x0 y0 x1 y1; area A; left of
  3 5; inside 2"}``, the box in integer percent of the image width / height, the area in percent with
  fewer decimals, the relations grouped by word. Per object it relates the object to its tightest
  container and its nearest others (``max_relations``, 2 in all) and to the query's landmarks (``landmarks``, 2:
  the objects whose description shares the most words with the query, the largest of each set of shared
  words: what a relational query compares against, found from the twin's text alone). ~50 tokens per
  object (SmolLM2's tokenizer), linear in N (benchmarks/prompt_size.py). That is the floor: while the
  whole prompt stays within ``fill_tokens`` (8,192 by default), :func:`fill_ladder` relates every object
  to more of the others (every pair, else the 32, 16, 8 or 4 nearest), so a twin of the size SAM returns
  (15-60 masks) is prompted with all or most of its pairs and only long twins fall back to the floor.
- ``paper``: eq. 5 as written, ``{"<id>": {"spatial": T_i, "semantic": S_i}}`` with T_i = ``box [x0, y0,
  x1, y1], area A% of the image; left of 3, next to and above 5``, boxes in pixels; with ``max_relations:
  all`` every pair is related (JSON(D) grows as N^2: 139k tokens at N = 150).

Under a token budget a prompt degrades along :func:`degradation_ladder` (fewer relations per object, the
farthest first; then shorter numbers); dropping objects comes after that and lives with the prompt
(dtwinseg/formats/base.py, ``fit_prompt``, which also chooses the fill rung).
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from dtwinseg.config import StrictConfig
from dtwinseg.io import DataError
from dtwinseg.twin import DigitalTwin

# Relation codes (i relative to j). Directional codes describe centroids; "next to" is a qualifier.
LEFT, RIGHT, ABOVE, BELOW, INSIDE, SURROUNDING, OVERLAPPING = range(7)
RELATION_WORDS = {
    LEFT: "left of",
    RIGHT: "right of",
    ABOVE: "above",
    BELOW: "below",
    INSIDE: "inside",
    SURROUNDING: "surrounding",
    OVERLAPPING: "overlapping",
}
NEXT_TO = "next to"


LAYOUTS = ("compact", "paper")
NUMBERS = ("pixels", "percent", "centre")
DEFAULT_MAX_RELATIONS = 2
DEFAULT_LANDMARKS = 2
DEFAULT_FILL_TOKENS = 8192
FILL_RELATIONS = (None, 32, 16, 8, 4)
"""The richer renderings :func:`fill_ladder` tries, richest first (None: every pair)."""


@dataclass
class SpatialConfig(StrictConfig):
    """Knobs of the spatial text.

    layout: "compact" (default: one string per object, numbers in percent, relations grouped by word) or
        "paper" (eq. 5 as written: ``{"spatial": T_i, "semantic": S_i}`` per object, boxes in pixels).
    max_relations: relations to nearby objects written per object: the tightest container first (compact
        layout), then the nearest others (box gap, then centroid distance). Default 2. ``all`` (or null, -1)
        relates every pair, as the paper's eq. 5 (``layout: paper, max_relations: all`` is the paper's
        JSON(D)); 0 writes none.
    landmarks: per object, also its relation to each of this many query landmarks (the objects whose
        description shares the most words with the query; the largest object of each set of shared
        words, the most words first). Default 2; 0 makes JSON(D) independent of the query.
    numbers: "pixels" (box in pixels, area to 0.1%), "percent" (box in integer % of the image width and
        height, area in % with fewer decimals) or "centre" (the box's centre in %, area to 1%); null: the
        layout's own (compact: percent, paper: pixels).
    containment: |m_i ∩ m_j| / |m_i| at or above which i is "inside" j (and j "surrounding" i).
    overlap: |m_i ∩ m_j| / min(|m_i|, |m_j|) above which two masks are "overlapping".
    next_to_gap: box gap, as a fraction of the image diagonal, below which two disjoint objects are
        also "next to" each other (paper layout).
    max_pixels: masks with more pixels are max-pooled to at most this many before intersecting
        (max-pooling keeps nesting: a mask inside another stays inside).
    fill_tokens: the prompt length (tokens, the whole prompt as the model counts it) up to which
        relations are added beyond ``max_relations``: the richest of every pair, then the 32, 16, 8 or 4
        nearest (+ the landmarks), whose prompt fits both this and the model's budget
        (:func:`fill_ladder`, chosen by dtwinseg.formats.base.fit_prompt at training and inference
        alike). Default 8192; null or 0: exactly ``max_relations``. A format.json saved before this
        field existed reads as null (the prompts its model was trained on).
    """

    layout: str = "compact"
    max_relations: int | str | None = DEFAULT_MAX_RELATIONS  # "all" (or -1) is read as None by relation_cap
    landmarks: int = DEFAULT_LANDMARKS
    numbers: str | None = None
    containment: float = 0.9
    overlap: float = 0.05
    next_to_gap: float = 0.02
    max_pixels: int = 256 * 256
    fill_tokens: int | None = DEFAULT_FILL_TOKENS

    def __post_init__(self) -> None:
        self.max_relations = relation_cap(self.max_relations)
        if self.fill_tokens is not None and (isinstance(self.fill_tokens, bool) or not isinstance(self.fill_tokens, int)
                                             or self.fill_tokens < 0):
            raise DataError(None, "fill_tokens", f"must be an integer >= 0 or null, got {self.fill_tokens!r}")
        if self.layout not in LAYOUTS:
            raise DataError(None, "layout", f"must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.numbers is not None and self.numbers not in NUMBERS:
            raise DataError(None, "numbers", f"must be one of {', '.join(NUMBERS)} or null, got {self.numbers!r}")
        if isinstance(self.landmarks, bool) or not isinstance(self.landmarks, int) or self.landmarks < 0:
            raise DataError(None, "landmarks", f"must be an integer >= 0, got {self.landmarks!r}")

    @property
    def all_pairs(self) -> bool:
        """True when every pair is related (eq. 5)."""
        return self.max_relations is None

    @property
    def number_format(self) -> str:
        """``numbers``, or the layout's own format when it is null."""
        return self.numbers or ("pixels" if self.layout == "paper" else "percent")


PAPER_SPATIAL = {"layout": "paper", "max_relations": None, "landmarks": 0}
"""The SpatialConfig fields of the paper's eq. 5 JSON(D), the layout of datasets built before layouts
existed (a saved format.json without ``spatial.layout`` is read with these)."""


def relation_cap(value: object) -> int | None:
    """``max_relations`` as stored: None for all pairs ("all", None, -1), else a count >= 0."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "all"):
        return None
    bad = DataError(None, "max_relations", f"must be 'all', null or an integer >= 0, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise bad
    try:
        n = int(value)
    except ValueError:
        raise bad from None
    if n == -1:
        return None
    if n < 0 or n != float(value):
        raise bad
    return n


@dataclass
class PairwiseRelations:
    """N x N relation data; row i describes object i relative to column j."""

    codes: np.ndarray  # int8, RELATION codes, diagonal -1
    next_to: np.ndarray  # bool
    distance: np.ndarray  # float, nearest-first ordering key, diagonal inf


def _pooled(masks: torch.Tensor, max_pixels: int) -> torch.Tensor:
    """k x k block "any" of N x H x W bool masks (= max_pool2d with ceil_mode), at most ``max_pixels`` each.

    Done as a reshape + ``any`` on bool: about 6x faster than float max_pool2d and no float copy of the
    masks (300 masks of 1024 x 1024 would be 1.2 GB as float32).
    """
    n, h, w = masks.shape
    if h * w <= max_pixels:
        return masks
    k = int(np.ceil(np.sqrt(h * w / max_pixels)))
    hp, wp = -(-h // k) * k, -(-w // k) * k
    if (hp, wp) != (h, w):
        masks = torch.nn.functional.pad(masks, (0, wp - w, 0, hp - h))
    return masks.reshape(n, hp // k, k, wp // k, k).any(dim=4).any(dim=2)


def _projections(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column pixel counts (float32 N x H, N x W) of CPU bool masks.

    Summed as uint8 with an int32 accumulator in numpy: ~6x faster than torch's float sums here and no
    float copy of the masks (300 masks of 1024 x 1024 would be 1.2 GB as float32).
    """
    u = masks.numpy().view(np.uint8)
    rows = torch.from_numpy(u.sum(2, dtype=np.int32).astype(np.float32))
    cols = torch.from_numpy(u.sum(1, dtype=np.int32).astype(np.float32))
    return rows, cols


def pairwise_relations(masks: np.ndarray, cfg: SpatialConfig | None = None) -> PairwiseRelations:
    """Relations for all ordered pairs of N x H x W bool masks, vectorised."""
    cfg = cfg or SpatialConfig()
    m = torch.as_tensor(np.asarray(masks, dtype=bool))
    n, h, w = m.shape
    if n == 0:
        empty = np.zeros((0, 0))
        return PairwiseRelations(empty.astype(np.int8), empty.astype(bool), empty)
    pooled = _pooled(m, cfg.max_pixels).reshape(n, -1).float()
    area = pooled.sum(1).clamp_min(1.0)
    inter = pooled @ pooled.T
    frac_i = inter / area[:, None]  # share of i covered by j
    frac_j = inter / area[None, :]
    overlap = inter / torch.minimum(area[:, None], area[None, :])

    # Boxes and centroids at full resolution (cheap: projections on each axis).
    rows, cols = _projections(m)  # N x H, N x W
    npix = rows.sum(1).clamp_min(1.0)
    cy = (rows * torch.arange(h, dtype=torch.float32)).sum(1) / npix
    cx = (cols * torch.arange(w, dtype=torch.float32)).sum(1) / npix
    big = float(max(h, w)) * 4

    def first_last(proj: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.arange(size, dtype=torch.float32)
        has = proj > 0
        lo = torch.where(has, idx, torch.full_like(idx, big)).min(1).values
        hi = torch.where(has, idx, torch.full_like(idx, -big)).max(1).values
        return lo, hi

    x0, x1 = first_last(cols, w)
    y0, y1 = first_last(rows, h)
    gx = torch.clamp(torch.maximum(x0[None, :] - x1[:, None], x0[:, None] - x1[None, :]) - 1, min=0)
    gy = torch.clamp(torch.maximum(y0[None, :] - y1[:, None], y0[:, None] - y1[None, :]) - 1, min=0)
    gap = torch.sqrt(gx**2 + gy**2)
    diag = float(np.hypot(h, w))
    dx = cx[None, :] - cx[:, None]  # > 0: j is to the right of i, so i is left of j
    dy = cy[None, :] - cy[:, None]  # > 0: j is below i, so i is above j

    codes = torch.where(dx.abs() >= dy.abs(),
                        torch.where(dx >= 0, torch.tensor(LEFT), torch.tensor(RIGHT)),
                        torch.where(dy >= 0, torch.tensor(ABOVE), torch.tensor(BELOW)))
    is_overlap = (overlap > cfg.overlap) & (inter > 0)
    codes = torch.where(is_overlap, torch.tensor(OVERLAPPING), codes)
    inside = (frac_i >= cfg.containment) & (area[:, None] <= area[None, :])
    surround = (frac_j >= cfg.containment) & (area[None, :] < area[:, None])
    codes = torch.where(surround, torch.tensor(SURROUNDING), codes)
    codes = torch.where(inside, torch.tensor(INSIDE), codes)
    next_to = (~is_overlap) & (gap <= cfg.next_to_gap * diag)

    centroid_dist = torch.sqrt(dx**2 + dy**2) / diag
    distance = torch.where(is_overlap, torch.zeros_like(gap), gap / diag) + 1e-3 * centroid_dist
    eye = torch.eye(n, dtype=torch.bool)
    codes = codes.masked_fill(eye, -1)
    next_to = next_to & ~eye
    distance = distance.masked_fill(eye, float("inf"))
    return PairwiseRelations(codes.to(torch.int8).numpy(), next_to.numpy(), distance.numpy())


def relation_phrase(code: int, next_to: bool) -> str:
    word = RELATION_WORDS[int(code)]
    if next_to and code in (LEFT, RIGHT, ABOVE, BELOW):
        return f"{NEXT_TO} and {word}"
    return word


# --- relations of a twin, cached ----------------------------------------------------------------------
_CACHE_SIZE = 4
_cache: OrderedDict[tuple, tuple[list, dict[int, int], PairwiseRelations]] = OrderedDict()
_cache_lock = threading.Lock()


def twin_relations(twin: DigitalTwin, cfg: SpatialConfig | None = None) -> PairwiseRelations:
    """:func:`pairwise_relations` of the twin's masks, in the twin's object order.

    The last few twins' relations are kept (by object identity: the cache holds the objects, so an id
    cannot be reused while cached), and a twin made of some of a cached twin's objects (the same
    TwinObject instances, e.g. with objects dropped) reads its rows and columns from it: a pair's
    relation depends only on its two masks.
    """
    cfg = cfg or SpatialConfig()
    objs = list(twin.objects)
    key = (cfg.containment, cfg.overlap, cfg.next_to_gap, cfg.max_pixels, twin.height, twin.width)
    with _cache_lock:
        for k, (held, pos, rel) in _cache.items():
            if k[0] != key:
                continue
            idx = [pos.get(id(o), -1) for o in objs]
            if all(i >= 0 and held[i].rle is o.rle for i, o in zip(idx, objs, strict=True)):
                _cache.move_to_end(k)
                ix = np.asarray(idx, dtype=np.int64)
                return PairwiseRelations(rel.codes[np.ix_(ix, ix)], rel.next_to[np.ix_(ix, ix)],
                                         rel.distance[np.ix_(ix, ix)])
    rel = pairwise_relations(twin.masks(), cfg) if objs else pairwise_relations(np.zeros((0, 1, 1), bool), cfg)
    with _cache_lock:
        _cache[(key, tuple(id(o) for o in objs))] = (objs, {id(o): i for i, o in enumerate(objs)}, rel)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return rel


# --- query landmarks -------------------------------------------------------------------------------------
_WORD_RE = re.compile(r"[a-z]+")
_FUNCTION_WORDS = frozenset(
    "a an the of to in on at by for from with and or but not no is are was be it its this that these those "
    "there here which what who whom whose where when how me my i you your we our they them their he she "
    "his her some any all each every one ones other than then very so as into onto over under".split())


def _words(text: str) -> frozenset[str]:
    """Lower-case content words of a text, a plural "s" removed (English only, no vocabulary list)."""
    out = set()
    for w in _WORD_RE.findall(text.lower()):
        if w in _FUNCTION_WORDS or len(w) < 2:
            continue
        out.add(w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w)
    return frozenset(out)


def query_landmarks(twin: DigitalTwin, query: str | None, k: int) -> list[int]:
    """Positions (into ``twin.objects``) of up to ``k`` objects a query is likely to compare against.

    Objects are grouped by the set of content words their description shares with the query; the groups
    sharing the most words come first (then the smaller groups: the more specific description), and each
    group gives its largest object. Only the twin's text and the query are read.
    """
    if not query or k <= 0:
        return []
    q = _words(query)
    groups: dict[frozenset[str], list[int]] = {}
    for p, o in enumerate(twin.objects):
        shared = _words(o.semantic) & q
        if shared:
            groups.setdefault(shared, []).append(p)
    order = sorted(groups.items(), key=lambda kv: (-len(kv[0]), len(kv[1]), sorted(kv[0])))
    out = []
    for _words_shared, members in order[:k]:
        out.append(max(members, key=lambda p: (twin.objects[p].area, -twin.objects[p].id)))
    return out


# --- which relations each object's line names ------------------------------------------------------------
def related_positions(twin: DigitalTwin, cfg: SpatialConfig, query: str | None = None,
                      rel: PairwiseRelations | None = None) -> list[list[int]]:
    """For each object (by position), the positions of the objects its line relates it to, in order.

    All pairs: every other object, nearest first. Else the ``max_relations`` nearest (compact layout:
    the tightest container first), then the query landmarks not already named.
    """
    n = len(twin.objects)
    if n < 2 or (cfg.max_relations == 0 and cfg.landmarks == 0):
        return [[] for _ in range(n)]
    rel = rel if rel is not None else twin_relations(twin, cfg)
    order = np.argsort(rel.distance, axis=1, kind="stable")[:, : n - 1]
    if cfg.max_relations is None:
        return [order[i].tolist() for i in range(n)]
    k = cfg.max_relations
    landmarks = query_landmarks(twin, query, cfg.landmarks)
    areas = np.array([o.area for o in twin.objects])
    out = []
    for i in range(n):
        chosen: list[int] = []
        if k and cfg.layout == "compact":
            inside = np.flatnonzero(rel.codes[i] == INSIDE)
            if len(inside):
                chosen.append(int(inside[np.argmin(areas[inside])]))
        for j in order[i]:
            if len(chosen) >= k:
                break
            if int(j) not in chosen:
                chosen.append(int(j))
        chosen += [j for j in landmarks if j != i and j not in chosen]
        out.append(chosen)
    return out


def related_ids(twin: DigitalTwin, cfg: SpatialConfig | None = None, query: str | None = None) -> dict[int, list[int]]:
    """Per object id, the ids its line in JSON(D) names, in order (what the prompt tells about pairs)."""
    cfg = cfg or SpatialConfig()
    ids = twin.ids
    return {ids[i]: [ids[j] for j in js] for i, js in enumerate(related_positions(twin, cfg, query))}


# --- the text --------------------------------------------------------------------------------------------
def _area_text(a: float, numbers: str) -> str:
    """Area in % of the image: pixels: to 0.1% (the paper's); percent and centre: whole percent from 1%,
    one significant digit below (0.4, 0.05)."""
    if numbers == "pixels":
        return f"{a:.1f}"
    if a >= 1:
        return str(int(round(a)))
    if a <= 0:
        return "0"
    text = np.format_float_positional(float(a), precision=1, unique=False, fractional=False, trim="-")
    return text if text not in ("1", "1.") else "1"


def _geometry(obj, twin: DigitalTwin, cfg: SpatialConfig) -> str:  # noqa: ANN001 - a TwinObject
    numbers = cfg.number_format
    area = _area_text(obj.area, numbers)
    if numbers == "pixels":
        b = [int(round(v)) for v in obj.bbox]
        if cfg.layout == "paper":
            return f"box [{b[0]}, {b[1]}, {b[2]}, {b[3]}], area {area}% of the image"
        return f"box {b[0]} {b[1]} {b[2]} {b[3]}; area {area}"
    sx, sy = 100.0 / max(twin.width - 1, 1), 100.0 / max(twin.height - 1, 1)
    x0, y0, x1, y1 = obj.bbox
    if numbers == "centre":
        c = (int(round((x0 + x1) / 2 * sx)), int(round((y0 + y1) / 2 * sy)))
        return f"centre [{c[0]}, {c[1]}]%, area {area}%" if cfg.layout == "paper" else f"at {c[0]} {c[1]}; area {area}"
    b = [int(round(x0 * sx)), int(round(y0 * sy)), int(round(x1 * sx)), int(round(y1 * sy))]
    if cfg.layout == "paper":
        return f"box [{b[0]}, {b[1]}, {b[2]}, {b[3]}]%, area {area}%"
    return f"box {b[0]} {b[1]} {b[2]} {b[3]}; area {area}"


def _relations_text(i: int, js: list[int], ids: list[int], rel: PairwiseRelations, layout: str) -> str:
    if layout == "paper":
        return ", ".join(f"{relation_phrase(rel.codes[i, j], rel.next_to[i, j])} {ids[j]}" for j in js)
    groups: dict[str, list[str]] = {}
    for j in js:
        groups.setdefault(RELATION_WORDS[int(rel.codes[i, j])], []).append(str(ids[j]))
    return "; ".join(f"{word} {' '.join(named)}" for word, named in groups.items())


def spatial_texts(twin: DigitalTwin, cfg: SpatialConfig | None = None, query: str | None = None) -> dict[int, str]:
    """T_i for every object: its box, its area and its relations (see :class:`SpatialConfig`); compact
    layout: ``box x0 y0 x1 y1; area A; left of 3 5; above 7``, paper layout: ``box [x0, y0, x1, y1], area
    A% of the image; left of 3, next to and above 5``."""
    cfg = cfg or SpatialConfig()
    ids = twin.ids
    related = related_positions(twin, cfg, query)
    rel = twin_relations(twin, cfg) if any(related) else None
    out: dict[int, str] = {}
    for i, obj in enumerate(twin.objects):
        text = _geometry(obj, twin, cfg)
        if related[i] and rel is not None:
            text += "; " + _relations_text(i, related[i], ids, rel, cfg.layout)
        out[obj.id] = text
    return out


def twin_json_dict(twin: DigitalTwin, cfg: SpatialConfig | None = None, query: str | None = None) -> dict:
    """JSON(D): paper layout ``{i: {"spatial": T_i, "semantic": S_i}}`` (eq. 5), compact layout
    ``{i: "S_i; T_i"}`` (keys are the ids as str)."""
    cfg = cfg or SpatialConfig()
    texts = spatial_texts(twin, cfg, query)
    if cfg.layout == "paper":
        return {str(o.id): {"spatial": texts[o.id], "semantic": o.semantic} for o in twin.objects}
    return {str(o.id): (f"{o.semantic}; {texts[o.id]}" if o.semantic else texts[o.id]) for o in twin.objects}


def twin_json(twin: DigitalTwin, cfg: SpatialConfig | None = None, indent: int | None = None,
              query: str | None = None) -> str:
    """JSON(D) as text, exactly as it is put into the LLM prompt (compact layout: one object per line)."""
    cfg = cfg or SpatialConfig()
    d = twin_json_dict(twin, cfg, query)
    if cfg.layout == "paper" or indent is not None:
        return json.dumps(d, ensure_ascii=False, indent=indent)
    return "{" + ",\n".join(json.dumps(k) + ":" + json.dumps(v, ensure_ascii=False) for k, v in d.items()) + "}"


def describe_twin(cfg: SpatialConfig | None = None) -> str:
    """What a prompt says about the layout of JSON(D) (its keys, units and relations)."""
    cfg = cfg or SpatialConfig()
    numbers = cfg.number_format
    where = {"pixels": "its bounding box [x_min, y_min, x_max, y_max] in pixels",
             "percent": "its bounding box [x_min, y_min, x_max, y_max] in percent of the image width and height",
             "centre": "the centre of its bounding box [x, y] in percent of the image width and height"}[numbers]
    relations = ("" if cfg.max_relations == 0 and cfg.landmarks == 0
                 else " and its spatial relations to other objects (by id)")
    if cfg.layout == "paper":
        return (f"a JSON object whose keys are object ids. For each object, \"spatial\" gives {where}, its "
                f"area as a percentage of the image{relations}; \"semantic\" describes what the object is.")
    return (f"a JSON object mapping each object id to one line: what the object is; {where}; its area as a "
            f"percentage of the image{relations} (\"left of 3 5\": it is left of objects 3 and 5).")


def fill_ladder(cfg: SpatialConfig, n_objects: int) -> list[SpatialConfig]:
    """The renderings richer than ``cfg`` that a prompt may take while it fits ``cfg.fill_tokens``, richest
    first: every pair, then the 32, 16, 8, 4 nearest (each with the landmarks), those that relate more
    than ``max_relations`` objects and differ for ``n_objects`` objects; each is longer than the next.
    [] when filling is off, the layout already relates every pair, or there is nothing to add. The
    rungs have ``fill_tokens`` null: they render as they are."""
    if not cfg.fill_tokens or cfg.max_relations is None or n_objects < 3:
        return []
    others = n_objects - 1
    rungs, seen = [], set()
    for k in FILL_RELATIONS:
        reach = others if k is None else min(k, others)
        if reach <= cfg.max_relations or reach in seen:
            continue
        seen.add(reach)
        rungs.append(dataclasses.replace(cfg, max_relations=None if reach == others else k, fill_tokens=None))
    return rungs


def degradation_ladder(cfg: SpatialConfig) -> list[SpatialConfig]:
    """The renderings a prompt tries under a token budget, richest first; each is no longer than the one
    before. Relations go first, the farthest first (max_relations halves to 1, then the landmarks go
    one by one, then the last relation), then numbers shorten (pixels -> percent -> centre). Objects are
    never dropped here (dtwinseg.formats.base.fit_prompt does that, past the last rung)."""
    rungs = [cfg]

    def add(**changes: object) -> None:
        nxt = dataclasses.replace(rungs[-1], **changes)
        if nxt != rungs[-1]:
            rungs.append(nxt)

    k = cfg.max_relations
    if k is None:
        k = 16
        add(max_relations=k)
    while k > 1:
        k //= 2
        add(max_relations=k)
    for landmarks in range(cfg.landmarks - 1, -1, -1):
        add(landmarks=landmarks)
    add(max_relations=0)
    order = list(NUMBERS)
    for numbers in order[order.index(cfg.number_format) + 1:]:
        add(numbers=numbers)
    return rungs
