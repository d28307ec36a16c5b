"""The ``score`` reasoning format (Rea2Seg, seed 003): score every candidate, rerank, select.

Rea2Seg reformulates segmentation as candidate discovery followed by comparative scoring: the model
reasons over the question and *all* candidates together, gives each a score, and the candidates are
reranked. Here the candidates are the twin's objects (perception is the discovery stage); the model
answers with a score table, optionally after one reasoning line per object (``FormatConfig.reasoning``)::

    0: a red mug; it holds drinks. score: 9          <- only with reasoning: true
    1: a table; not a container. score: 1
    Scores: {"0": 9, "1": 1}                        <- without reasoning: just the JSON object

Rerank (options ``select``, ``margin``, ``min``): ``best`` keeps the single highest-scoring object (ties:
lowest id), ``margin`` every object within ``margin`` points of the best (group queries); a best score
under ``min`` gives the empty answer.

Training (the trainable scorer): the target scores come from ground-truth overlap,
:func:`overlap_scores` (``round(10 * (precision + IoU) / 2)`` per object, written into Seg-DT records as
``object_scores`` by build-segdt); the decision spans (weight ``w_decision``) are the score digits, so
:class:`training.SFTDTTrainer` trains a scorer from the same datasets as SFTDT paths. A record without
``object_scores`` falls back to 10 for its answer objects and 0 for the others.

Parsing (:func:`parse_score_answer`): the ``Scores:`` line through :func:`parse_scores` (ok); without it (a
truncated answer), the ``score: N`` ending of each object line (repaired); else parse_scores on the whole
text. :func:`parse_scores` reads a score table in any of the forms models write: a JSON object
``{"<id>": score}``, a list of ``{"id", "score"}`` objects, or lines / markdown rows such as ``3: 7`` or
``| 3 | 7/10 |``; ok only for exactly a JSON object mapping every valid id to a number in [0, 10],
repaired when recovered from prose / fences / lines or some entries were fixed (clamped, unknown or
duplicated ids dropped, objects without a score), failed when no score is found. Total and linear in the
answer's length (the shared caps of :mod:`dtwinseg.parsing` first; lines split with str methods).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from dtwinseg.formats.base import (
    Completion,
    Decoded,
    FormatBase,
    FormatConfig,
    Target,
    chat,
    check_options,
    linear_budget,
    register_format,
    twin_intro,
)
from dtwinseg.io import DataError
from dtwinseg.parsing import (
    ANSWER_LINE_RE,
    OBJECT_RE,
    LongInt,
    ParseResult,
    Status,
    as_id,
    as_text,
    cap_notes,
    cap_text,
    clean_answer,
    known_id,
    loads_json,
)
from dtwinseg.spatial import SpatialConfig, twin_json
from dtwinseg.twin import DigitalTwin

_TASK = (
    "Compare all objects against the query and score how well each one matches it, from 0 (certainly "
    "not) to 10 (certainly the target). Score every object. "
)
_ANSWER = (
    "Answer with one JSON object mapping every object id to its score, e.g. {\"0\": 2, \"1\": 9}, and "
    "nothing else."
)
_ANSWER_REASONING = (
    "First write one line per object, in id order: '<id>: <what it is>; <why it does or does not match>. "
    "score: <0-10>'. Then end with one line 'Scores: ' followed by a JSON object mapping every id to its "
    "score, e.g. Scores: {\"0\": 2, \"1\": 9}."
)


def system_prompt_for(spatial_cfg: SpatialConfig | None = None, reasoning: bool = False) -> str:
    """The default system message: the twin's layout, the task, and the answer's form."""
    return twin_intro(spatial_cfg) + _TASK + (_ANSWER_REASONING if reasoning else _ANSWER)


SYSTEM_PROMPT = system_prompt_for()
SYSTEM_PROMPT_REASONING = system_prompt_for(reasoning=True)
USER_TEMPLATE = "Digital Twin:\n{twin}\n\nQuery: {query}\n\nScore every object from 0 to 10."
OPTIONS = {"select": "best", "margin": 1.0, "min": 0.0, "reasoning_chars": 60}
BASE_TOKENS = 32
TOKENS_PER_SCORE = 8


def score_messages(twin: DigitalTwin, query: str, spatial_cfg: SpatialConfig | None = None, *,
                   system_prompt: str | None = None, user_template: str | None = None,
                   indent: int | None = None, reasoning: bool = False) -> list[dict]:
    """Chat messages asking for a 0-10 score of every object against ``query``."""
    default = system_prompt_for(spatial_cfg, reasoning)
    dump = twin_json(twin, spatial_cfg, indent=indent, query=query)
    user = (user_template or USER_TEMPLATE).format(twin=dump, query=query)
    return chat(default if system_prompt is None else system_prompt, user)


# --- targets ---------------------------------------------------------------------------------------------
def overlap_scores(twin: DigitalTwin, gt_mask: np.ndarray) -> dict[int, int]:
    """Target score 0-10 of every object from its overlap with the ground truth.

    ``round(10 * (precision + IoU) / 2)`` with precision = share of the object's pixels on the target and
    IoU against the whole target (255 pixels ignored): the whole target scores 10, each part of a group
    target (precision 1, IoU = its share) 5-10, a large object the target lies on ~1, a disjoint one 0.
    """
    gt = np.asarray(gt_mask)
    valid = gt != 255
    target = (gt == 1) & valid
    t_area = int(target.sum())
    masks = twin.masks()
    out: dict[int, int] = {}
    for obj, m in zip(twin.objects, masks, strict=True):
        m = m & valid
        inter, area = int((m & target).sum()), int(m.sum())
        union = area + t_area - inter
        precision = inter / area if area else 0.0
        iou = inter / union if union else 0.0
        out[obj.id] = int(round(10.0 * (precision + iou) / 2.0))
    return out


def target_scores(twin: DigitalTwin, target: Target) -> dict[int, int]:
    """Integer scores for every twin object: ``target.scores`` when given (every id of the twin, values in
    [0, 10]), else 10 for the answer and 0 for the others."""
    if target.scores is None:
        answer = {int(i) for i in target.answer}
        return {i: (10 if i in answer else 0) for i in twin.ids}
    scores: dict[int, int] = {}
    for k, v in target.scores.items():
        i = as_id(k)
        if i is None or i not in twin.ids:
            raise DataError(None, f"object_scores.{k}", "not an object id of the twin")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 10:
            raise DataError(None, f"object_scores.{k}", f"expected a score in [0, 10], got {v!r}")
        scores[i] = int(round(float(v)))
    missing = [i for i in twin.ids if i not in scores]
    if missing:
        raise DataError(None, "object_scores", f"no score for ids {missing[:10]}")
    return scores


def _reason_of(target: Target, obj_id: int) -> str:
    """The last reasoning a path gives for the object ("" without a path)."""
    reason = ""
    for step in getattr(target.path, "steps", None) or []:
        d = step.decisions.get(obj_id)
        if d is not None and d.reasoning:
            reason = d.reasoning
    return reason


class _Writer:
    """Appends text pieces and records spans of the pieces marked as decisions."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.pos = 0
        self.spans: list[tuple[int, int]] = []

    def emit(self, s: str, decision: bool = False) -> None:
        if decision:
            self.spans.append((self.pos, self.pos + len(s)))
        self.parts.append(s)
        self.pos += len(s)


def render_scores(twin: DigitalTwin, scores: dict[int, int], target: Target | None = None, *,
                  reasoning: bool = False) -> Completion:
    """The assistant text of a score table (with one reasoning line per object when asked); every score's
    digits are a decision span."""
    w = _Writer()
    if reasoning:
        for o in twin.objects:
            reason = _reason_of(target, o.id) if target is not None else ""
            what = o.semantic or "an object"
            w.emit(f"{o.id}: {what}" + (f"; {reason}" if reason else "") + ". score: ")
            w.emit(str(scores[o.id]), decision=True)
            w.emit("\n")
        w.emit("Scores: ")
    w.emit("{")
    for n, o in enumerate(twin.objects):
        w.emit((", " if n else "") + json.dumps(str(o.id)) + ": ")
        w.emit(str(scores[o.id]), decision=True)
    w.emit("}")
    return Completion("".join(w.parts), w.spans, [])


# --- parsing ---------------------------------------------------------------------------------------------
@dataclass
class ScoreParse:
    """Outcome of parsing a score table.

    scores: object id -> score in [0, 10] for every object the answer scored validly.
        Objects the answer did not score are absent (and listed in ``notes``, status repaired).
    status / notes / raw: as :class:`dtwinseg.parsing.ParseResult`.
    """

    status: Status
    scores: dict[int, float]
    notes: list[str] = field(default_factory=list)
    raw: str = ""

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def to_dict(self) -> dict:
        return {"status": self.status, "scores": {str(k): v for k, v in self.scores.items()}, "notes": self.notes}


_SCORE_LINE_RE = re.compile(
    r"(?im)^[ \t|>*#_`-]*(?:(?:object|obj|id|item)[ \t#_*]*)?(\d{1,18})(?!\d)[ \t*_`]*[|:=,>)–-]+[ \t*_`]*"
    r"(?:score[ \t*_]*[:=]?[ \t]*)?(-?\d{1,18}(?:\.\d{1,18})?)(?!\d)"
)
_SCORE_TEXT_RE = re.compile(r"(-?\d{1,18}(?:\.\d{1,18})?)(?:[ \t]*/[ \t]*10)?")
_SCORE_KEYS = ("scores", "score", "ratings", "answer", "result")


def _digit_text(v: object) -> bool:
    """True for text that is an integer of any length ("12", "#3", "-7", or 4,300 digits)."""
    return isinstance(v, str) and v.strip().lstrip("#").lstrip("-").isdigit()


def _as_score(v: object) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        f = float(v)
    elif isinstance(v, str) and not isinstance(v, LongInt) and len(v) <= 64:
        m = _SCORE_TEXT_RE.fullmatch(v.strip())
        if not m:
            return None
        f = float(m.group(1))
    else:
        return None
    return f if math.isfinite(f) else None


def _scores_from_json(value: object, notes: list[str]) -> list[tuple[object, object]] | None:
    """JSON value -> (id, score) pairs, or None when it is not a score table."""
    if isinstance(value, dict):
        for key in _SCORE_KEYS:
            for k, v in value.items():
                if isinstance(k, str) and k.lower() == key and isinstance(v, (dict, list)):
                    inner = _scores_from_json(v, notes)
                    if inner is not None:
                        notes.append(f"scores taken from the key {k!r}")
                        return inner
        pairs = [(k, v) for k, v in value.items()]
        if pairs and all(as_id(k) is not None or _digit_text(k) for k, _ in pairs):
            return pairs  # a key with too many digits is still an id key: dropped alone by validation
        if {"id", "score"} <= {str(k).lower() for k in value}:
            low = {str(k).lower(): v for k, v in value.items()}
            return [(low["id"], low["score"])]
        return None
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        pairs = []
        for v in value:
            low = {str(k).lower(): x for k, x in v.items()}
            if "id" in low and "score" in low:
                pairs.append((low["id"], low["score"]))
        if pairs:
            notes.append("scores read from a list of {id, score} objects")
            return pairs
    return None


def parse_scores(text: object, valid_ids: Iterable[int] | None = None) -> ScoreParse:
    """Parse per-object scores (0-10) from a JSON object ``{"<id>": score}``, a list of
    ``{"id", "score"}`` objects, or lines / markdown rows such as ``3: 7`` or ``| 3 | 7/10 |`` (module
    docstring: ok / repaired / failed). Never raises."""
    raw = as_text(text)
    if raw is None:
        return ScoreParse("failed", {}, ["answer is not text"], "")
    try:
        r = _parse_scores(raw, valid_ids)
        r.notes = cap_notes(r.notes)
        return r
    except Exception as e:  # noqa: BLE001 - totality: a parser bug must not kill a 1,000-sample run
        return ScoreParse("failed", {}, [f"parser error {type(e).__name__}"], raw)


def _parse_scores(raw: str, valid_ids: Iterable[int] | None) -> ScoreParse:
    notes: list[str] = []
    text = clean_answer(raw, notes)
    exact = not notes
    answers = list(ANSWER_LINE_RE.finditer(text))
    candidate = answers[-1].group(1).strip() if answers else text
    if answers:
        exact = False
        if not candidate:
            candidate = text[answers[-1].end():].strip()
    pairs = _scores_from_json(loads_json(candidate), notes)
    if pairs is not None and notes:
        exact = False
    if pairs is None:
        exact = False
        for obj in reversed(OBJECT_RE.findall(candidate) + OBJECT_RE.findall(text)):
            pairs = _scores_from_json(loads_json(obj), notes)
            if pairs is not None:
                notes.append("score object extracted from surrounding text")
                break
    if pairs is None:
        pairs = [(m.group(1), m.group(2)) for m in _SCORE_LINE_RE.finditer(text)]
        if pairs:
            notes.append("scores read line by line")
        else:
            return ScoreParse("failed", {}, notes + ["no scores found"], raw)
    scores = _validate_scores(pairs, valid_ids, notes)
    status: Status = "ok" if exact and not notes else "repaired"
    return ScoreParse(status, scores, notes, raw)


def _validate_scores(pairs: list[tuple[object, object]], valid_ids: Iterable[int] | None,
                     notes: list[str]) -> dict[int, float]:
    valid = None if valid_ids is None else set(int(i) for i in valid_ids)
    scores: dict[int, float] = {}
    for k, v in pairs:
        i = known_id(k, valid, notes, "id ")
        s = _as_score(v)
        if i is None:
            continue
        if s is None:
            notes.append(f"dropped non-numeric score for id {i}")
            continue
        if not 0.0 <= s <= 10.0:
            notes.append(f"clamped score {s:g} of id {i} to [0, 10]")
            s = min(10.0, max(0.0, s))
        if i in scores:
            notes.append(f"duplicate score for id {i}; kept the first")
            continue
        scores[i] = s
    if valid is not None:
        missing = [i for i in sorted(valid) if i not in scores]
        if missing and scores:
            notes.append(f"no score for ids {missing}")
    return dict(sorted(scores.items()))


def _scores_line(text: str) -> str | None:
    """What follows the last ``Scores:`` marker at a line start, or None."""
    found = None
    for line in text.split("\n"):
        head = line.lstrip(" \t*#>")
        if head[:7].lower() == "scores:":
            found = head[7:]
    return found


def _object_lines(text: str, valid: list[int]) -> dict[int, float]:
    """``<id>: ... score: N`` lines (a reasoning answer cut before its Scores line)."""
    out: dict[int, float] = {}
    for line in text.split("\n"):
        head, sep, rest = line.partition(":")
        i = as_id(head.strip().removeprefix("Object ").removeprefix("object "))
        if not sep or i is None or i not in valid or i in out:
            continue
        k = rest.lower().rfind("score:")
        if k >= 0:
            value = rest[k + 6:].strip().rstrip(".")
            sp = parse_scores(json.dumps({str(i): value}), [i])
            if sp.scores:
                out[i] = sp.scores[i]
    return out


def parse_score_answer(text: str, valid_ids: list[int]) -> ScoreParse:
    """Scores from a score-format answer: the Scores line, else per-object lines, else anything
    parse_scores reads. Never raises."""
    try:
        notes: list[str] = []
        capped = cap_text(text if isinstance(text, str) else str(text), notes)
        line = _scores_line(capped)
        if line is not None:
            sp = parse_scores(line, valid_ids)
            if sp.ok:
                sp.raw = text
                sp.notes = notes + sp.notes
                if notes and sp.status == "ok":
                    sp.status = "repaired"
                return sp
        lines = _object_lines(capped, valid_ids)
        if lines:
            missing = [i for i in valid_ids if i not in lines]
            notes.append("no Scores line; read the per-object score lines")
            if missing:
                notes.append(f"no score for ids {missing[:10]}")
            return ScoreParse("repaired", dict(sorted(lines.items())), notes, text)
        return parse_scores(text, valid_ids)
    except Exception as e:  # noqa: BLE001 - totality
        return ScoreParse("failed", {}, [f"parser error {type(e).__name__}"], "")


class ScoreFormat(FormatBase):
    """Rea2Seg comparative scoring + rerank (module docstring). Options: ``select`` (best | margin),
    ``margin`` (points), ``min`` (best score below it -> empty answer), ``reasoning_chars`` (budget)."""

    name = "score"

    def __init__(self, config: FormatConfig | None = None):
        self.config = config or FormatConfig()
        self.options = check_options(self.name, self.config.options, OPTIONS)
        if self.options["select"] not in ("best", "margin"):
            raise DataError(None, "format.options.select", f"{self.options['select']!r} is not best or margin")
        for key in ("margin", "min", "reasoning_chars"):
            value = self.options[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise DataError(None, f"format.options.{key}", f"expected a number >= 0, got {value!r}")

    def messages(self, twin: DigitalTwin, query: str) -> list[dict]:
        c = self.config
        return score_messages(twin, query, c.spatial, system_prompt=c.system_prompt,
                              user_template=c.user_template, indent=c.indent, reasoning=c.reasoning)

    def target(self, twin: DigitalTwin, target: Target) -> Completion:
        return render_scores(twin, target_scores(twin, target), target, reasoning=self.config.reasoning)

    def rerank(self, scores: dict[int, float]) -> list[int]:
        """Ids chosen from ``{id: score}``: the best (ties -> lowest id) or all within the margin."""
        if not scores:
            return []
        best = max(scores.values())
        if best < float(self.options["min"]):
            return []
        if self.options["select"] == "best":
            return [min(i for i, s in scores.items() if s == best)]
        return sorted(i for i, s in scores.items() if s >= best - float(self.options["margin"]))

    def parse(self, text: str, twin: DigitalTwin) -> Decoded:
        sp = parse_score_answer(text, twin.ids)
        if not sp.ok:
            return Decoded(ParseResult("failed", [], sp.notes, sp.raw), {})
        scores = {i: sp.scores.get(i, 0.0) for i in twin.ids}
        return Decoded(ParseResult(sp.status, self.rerank(scores), list(sp.notes), sp.raw), scores)

    def budget(self, twin: DigitalTwin) -> int:
        """8 tokens per object for the table; with reasoning, also the line (semantic + reason) / 3 chars."""
        if self.config.tokens_per_object is not None or not self.config.reasoning:
            return linear_budget(self.config, twin, TOKENS_PER_SCORE, BASE_TOKENS)
        chars = sum(len(o.semantic) + int(self.options["reasoning_chars"]) + 20 for o in twin.objects)
        base = self.config.base_tokens if self.config.base_tokens is not None else BASE_TOKENS
        return int(base) + TOKENS_PER_SCORE * len(twin) + (chars + 2) // 3


register_format("score", ScoreFormat)
