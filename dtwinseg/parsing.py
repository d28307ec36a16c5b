"""Parsing an LLM's answer into object indices (or per-object scores): strict about what it accepts,
total about what it gets.

Every public function here returns a typed result and never raises on any input text:

- :func:`parse_indices` -> :class:`ParseResult` for the ``select`` and ``sftdt`` strategies
  (``Answer: [2, 5]``).
- :func:`parse_scores` -> :class:`ScoreParse` for the ``score`` strategy (``{"0": 7, "1": 2}``).

Status semantics (both results):
    ok        the answer is exactly in the requested format and every id is valid;
    repaired  something usable was recovered; every fix is listed in ``notes`` (answer found inside
              prose or a code fence, dict answer, unknown / duplicated / non-integer ids dropped, ...);
    failed    nothing usable; ``ids`` / ``scores`` are empty and the prediction is the empty mask.
An empty list (``Answer: []``) is a valid answer, not a failure.

Bounded work (issue 13): every parser is linear in its input. Answers longer than ``HEAD_CHARS +
TAIL_CHARS`` keep their first and last parts (noted) *before* any regex runs, so a 5 MB answer still
finds a leading ``Answer: [0]``; no pattern nests quantifiers or lets two adjacent quantifiers share
characters (whitespace classes never cross a line); integers longer than ``MAX_ID_DIGITS`` digits
(JSON included) are rejected as that one id, not as the whole answer; notes are capped.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

Status = Literal["ok", "repaired", "failed"]

_ANSWER_RE = re.compile(
    r"(?im)^[ \t>*#_`-]*(?:the[ \t]+)?(?:final[ \t]+)?(?:answer|selected(?:[ \t]+ids)?|ids|indices)[ \t*_`]*"
    r"(?:is|are|[:=])[ \t]*(.*)$"
)
_LIST_RE = re.compile(r"\[[^\[\]]*\]")
_NESTED_LIST_RE = re.compile(r"\[\s*\[[^\[\]]*\](?:\s*,\s*\[[^\[\]]*\])*\s*\]")
_OBJECT_RE = re.compile(r"\{[^{}]*\}")
_FENCE_LANG_RE = re.compile(r"[ \t]*[A-Za-z0-9_-]*[ \t]*\n?")
_THINK_RE = re.compile(r"<think>.*?(?:</think>|$)", re.S | re.I)
_EMPTY_WORDS = frozenset({"none", "nothing", "no object", "no objects", "empty", "null", "n a", "na"})
_INT_RE = re.compile(r"#?(-?\d+)")
_NON_WORD_RE = re.compile(r"\W+")
_ID_KEYS = ("ids", "answer", "indices", "index", "selected", "selected_ids", "objects", "final", "result")
_SCORE_KEYS = ("scores", "score", "ratings", "answer", "result")
HEAD_CHARS = 100_000  # longer answers keep head + tail (noted) before any regex runs
TAIL_CHARS = 100_000
MAX_ID_DIGITS = 18  # longer integers are not ids (int() of 4,300+ digits even raises)
MAX_NOTES = 20


@dataclass
class ParseResult:
    """Outcome of parsing one answer.

    status: "ok" (well-formed, every id valid), "repaired" (usable after fixes listed in ``notes``),
        "failed" (nothing usable; ``ids`` is empty and the prediction is the empty mask).
    ids: the selected object ids, sorted and unique. ``[]`` with status ok is a valid empty answer.
    """

    status: Status
    ids: list[int]
    notes: list[str] = field(default_factory=list)
    raw: str = ""

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def to_dict(self) -> dict:
        return {"status": self.status, "ids": self.ids, "notes": self.notes}


@dataclass
class ScoreParse:
    """Outcome of parsing a score table (``score`` strategy).

    scores: object id -> score in [0, 10] for every object the answer scored validly.
        Objects the answer did not score are absent (and listed in ``notes``, status repaired).
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


# --- shared helpers ----------------------------------------------------------------------------
def _as_text(text: object) -> str | None:
    """The answer as str, or None when even str() fails (hostile objects)."""
    try:
        return text if isinstance(text, str) else ("" if text is None else str(text))
    except Exception:  # noqa: BLE001 - a hostile __str__ must not escape
        return None


def cap_text(text: str, notes: list[str] | None = None, head: int = HEAD_CHARS, tail: int = TAIL_CHARS) -> str:
    """``text`` itself, or its first ``head`` and last ``tail`` characters joined by a newline (noted)."""
    if len(text) <= head + tail:
        return text
    if notes is not None:
        notes.append(f"answer of {len(text)} characters; kept its first {head} and last {tail}")
    return text[:head] + "\n" + text[len(text) - tail:]


def _last_fence(text: str) -> str | None:
    """Body of the last complete ```...``` block (blocks pair up in order, as a lazy regex would), minus
    a language tag; None when there is no complete block. Linear: str.find only."""
    marks: list[int] = []
    pos = text.find("```")
    while pos >= 0:
        marks.append(pos)
        pos = text.find("```", pos + 3)
    if len(marks) < 2:
        return None
    k = (len(marks) // 2 - 1) * 2
    body = text[marks[k] + 3:marks[k + 1]]
    lang = _FENCE_LANG_RE.match(body)
    return body[lang.end():] if lang else body


def _clean(raw: str, notes: list[str]) -> str:
    """Cap the length, drop reasoning-model think blocks and unwrap the last code fence; note each fix."""
    text = cap_text(raw, notes)
    if "<think>" in text.lower():
        stripped = _THINK_RE.sub("", text)
        if stripped.strip():
            text = stripped
            notes.append("removed <think> block")
    fence = _last_fence(text)
    if fence is not None:
        text = fence
        notes.append("answer taken from a code fence")
    return text.strip()


def _cap_notes(notes: list[str]) -> list[str]:
    """At most MAX_NOTES notes (a 100k-id answer must not carry 100k notes)."""
    if len(notes) <= MAX_NOTES:
        return notes
    return notes[:MAX_NOTES - 1] + [f"... and {len(notes) - MAX_NOTES + 1} more notes"]


class _LongInt(str):
    """A JSON integer with more than MAX_ID_DIGITS digits, kept as its text (never converted)."""


def _json_int(text: str) -> int | _LongInt:
    return int(text) if len(text.lstrip("-")) <= MAX_ID_DIGITS else _LongInt(text)


def _short(v: object) -> str:
    """A short, safe description of a value for a note (huge ints and hostile __repr__ included)."""
    try:
        if isinstance(v, str) and (isinstance(v, _LongInt) or len(v) > 40):
            digits = len(v.strip().lstrip("#-"))
            return f"<an integer of {digits} digits>" if v.strip().lstrip("#-").isdigit() else f"<{len(v)} characters>"
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 10 ** MAX_ID_DIGITS:
            return "<a huge integer>"
        return repr(v)[:40]
    except Exception:  # noqa: BLE001
        return "<unprintable>"


def _as_int(v: object) -> int | None:
    """An id from an int, an integral float or a string such as "3" / "#3"; None otherwise (and for any
    integer of more than MAX_ID_DIGITS digits)."""
    if isinstance(v, bool) or isinstance(v, _LongInt):
        return None
    if isinstance(v, int):
        return v if abs(v) < 10 ** MAX_ID_DIGITS else None
    if isinstance(v, float) and v.is_integer() and abs(v) < 10 ** MAX_ID_DIGITS:
        return int(v)
    if isinstance(v, str) and len(v) <= 2 * MAX_ID_DIGITS:
        m = _INT_RE.fullmatch(v.strip())
        if m and len(m.group(1).lstrip("-")) <= MAX_ID_DIGITS:
            return int(m.group(1))
    return None


def _digit_text(v: object) -> bool:
    """True for text that is an integer of any length ("12", "#3", "-7", or 4,300 digits)."""
    return isinstance(v, str) and v.strip().lstrip("#").lstrip("-").isdigit()


as_id = _as_int
"""Public name of the id reader: int / integral float / "3" / "#3" -> int, else None (huge ints too)."""


def _as_score(v: object) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        f = float(v)
    elif isinstance(v, str) and not isinstance(v, _LongInt) and len(v) <= 64:
        m = _SCORE_TEXT_RE.fullmatch(v.strip())
        if not m:
            return None
        f = float(m.group(1))
    else:
        return None
    return f if math.isfinite(f) else None


def _loads(text: str) -> object:
    """json.loads that returns a sentinel instead of raising; integers of more than MAX_ID_DIGITS
    digits stay text (:class:`_LongInt`)."""
    try:
        return json.loads(text, parse_int=_json_int)
    except (ValueError, RecursionError, TypeError):
        return _INVALID


_INVALID = object()


def _known_id(value: object, valid: set[int] | None, notes: list[str], what: str = "") -> int | None:
    """``value`` as an id of ``valid`` (None: any integer), or None with the reason noted."""
    i = _as_int(value)
    if i is None:
        notes.append(f"dropped non-integer {what}{_short(value)}")
    elif valid is not None and i not in valid:
        notes.append(f"dropped unknown id {i}")
        return None
    return i


def validate_ids(values: Iterable[object], valid_ids: Iterable[int] | None, notes: list[str]) -> list[int]:
    """Keep integer ids present in ``valid_ids``; record every fix in ``notes``."""
    valid = None if valid_ids is None else set(int(i) for i in valid_ids)
    out: set[int] = set()
    for v in values:
        i = _known_id(v, valid, notes)
        if i is None:
            continue
        if i in out:
            notes.append(f"dropped duplicate id {i}")
            continue
        out.add(i)
    return sorted(out)


# --- ids ---------------------------------------------------------------------------------------
def _ids_from_json(value: object, notes: list[str]) -> list | None:
    """A JSON value -> list of candidate ids (None when it holds no id list)."""
    if isinstance(value, list):
        if value and all(isinstance(v, list) for v in value):
            notes.append("flattened a nested list")
            return [x for v in value for x in v]
        return value
    if isinstance(value, dict):
        for key in _ID_KEYS:
            for k, v in value.items():
                if isinstance(k, str) and k.lower() == key:
                    inner = _ids_from_json(v, notes)
                    if inner is not None:
                        notes.append(f"ids taken from the key {k!r} of an object")
                        return inner
        return None
    if _as_int(value) is not None:
        notes.append("single id instead of a list")
        return [value]
    if value is None:
        notes.append("null answer read as the empty list")
        return []
    return None


def _last_list(text: str) -> list | None:
    """The last bracketed list in ``text`` that yields ids (JSON, else the integers inside it)."""
    found = [(m.start(), m.group(0)) for rx in (_NESTED_LIST_RE, _LIST_RE) for m in rx.finditer(text)]
    found.sort(key=lambda x: x[0])
    for _, lst in reversed(found):
        v = _loads(lst)
        if isinstance(v, list):
            if v and all(isinstance(x, list) for x in v):
                v = [x for sub in v for x in sub]
            return v
        ints = _INT_RE.findall(lst)
        if ints or not lst[1:-1].strip():
            return ints
    return None


def parse_indices(text: object, valid_ids: Iterable[int] | None = None) -> ParseResult:
    """Parse a list of object ids from an answer such as ``[2, 5]`` or ``Answer: [2, 5]``.

    ok: the text is exactly a JSON list (optionally after ``Answer:``) of valid, distinct integers.
    repaired: the ids were recovered from prose, a code fence, a dict (``{"ids": [...]}``), bare
        integers after ``Answer:``, or some entries were dropped (unknown, duplicate, non-integer).
    failed: no list found / not parseable (``ids`` empty).
    """
    raw = _as_text(text)
    if raw is None:
        return ParseResult("failed", [], ["answer is not text"], "")
    try:
        r = _parse_indices(raw, valid_ids)
        r.notes = _cap_notes(r.notes)
        return r
    except Exception as e:  # noqa: BLE001 - totality: a parser bug must not kill a 1,000-sample run
        return ParseResult("failed", [], [f"parser error {type(e).__name__}"], raw)


def _is_answer_marker(line: str) -> bool:
    """True for the requested marker: ``Answer:`` or ``Final answer:`` (any case, no decoration)."""
    return _MARKER_RE.match(line) is not None


def _parse_indices(raw: str, valid_ids: Iterable[int] | None) -> ParseResult:
    notes: list[str] = []
    text = _clean(raw, notes)
    exact = not notes
    answers = list(_ANSWER_RE.finditer(text))
    candidate = answers[-1].group(1).strip().strip("*_`").strip() if answers else text
    if len(answers) > 1:
        notes.append("several answer lines; used the last")
    if answers and not _is_answer_marker(answers[-1].group(0)):
        exact = False  # "ids: [..]" / "selected: [..]" are accepted, but not the requested format
        notes.append("answer marker not in the requested 'Answer: [...]' form")
    if answers and not candidate:  # "Answer:" followed by the list on the next lines
        candidate = text[answers[-1].end():].strip()
    values: list | None = None
    parsed = _loads(candidate)
    if isinstance(parsed, list) and not (parsed and all(isinstance(v, list) for v in parsed)):
        values = parsed
    elif parsed is not _INVALID:
        values = _ids_from_json(parsed, notes)
        exact = False
    if values is None:
        exact = False
        values = _ids_from_prose(candidate, text, bool(answers), notes)
        if values is None:
            return ParseResult("failed", [], notes + ["no list of ids found"], raw)
    ids = validate_ids(values, valid_ids, notes)
    status: Status = "ok" if exact and not notes else "repaired"
    return ParseResult(status, ids, notes, raw)


def _ids_from_prose(candidate: str, text: str, has_answer_line: bool, notes: list[str]) -> list | None:
    """Recover ids from text around the answer; None when nothing id-like is there."""
    for obj in reversed(_OBJECT_RE.findall(candidate) or _OBJECT_RE.findall(text)):
        v = _ids_from_json(_loads(obj), notes)
        if v is not None:
            return v
    lst = _last_list(candidate)
    if lst is None:
        lst = _last_list(text)
    if lst is not None:
        notes.append("list extracted from surrounding text")
        return lst
    if has_answer_line:
        line = candidate.split("\n", 1)[0] if candidate else ""
        if _NON_WORD_RE.sub(" ", line).strip().lower() in _EMPTY_WORDS:
            notes.append(f"{_short(line.strip())} read as the empty list")
            return []
        ints = _bare_ints(line)
        if ints:
            notes.append("bare integers after the answer marker")
            return ints
    return None


def _bare_ints(line: str) -> list[str] | None:
    """``1, 2 and #4.`` -> ["1", "2", "4"]; None unless the line is only integers and separators
    (``,`` ``;`` ``&`` ``and`` whitespace). str.split only: linear."""
    words = line.strip().rstrip(".").replace(",", " ").replace(";", " ").replace("&", " ").split()
    ints: list[str] = []
    for w in words:
        if w.lower() == "and":
            continue
        m = _INT_RE.fullmatch(w)
        if m is None:
            return None
        ints.append(m.group(1))
    return ints or None


# --- scores ------------------------------------------------------------------------------------
_SCORE_LINE_RE = re.compile(
    r"(?im)^[ \t|>*#_`-]*(?:(?:object|obj|id|item)[ \t#_*]*)?(\d{1,18})(?!\d)[ \t*_`]*[|:=,>)–-]+[ \t*_`]*"
    r"(?:score[ \t*_]*[:=]?[ \t]*)?(-?\d{1,18}(?:\.\d{1,18})?)(?!\d)"
)
_SCORE_TEXT_RE = re.compile(r"(-?\d{1,18}(?:\.\d{1,18})?)(?:[ \t]*/[ \t]*10)?")
_MARKER_RE = re.compile(r"(?i)[ \t]*(?:final[ \t]+)?answer[ \t]*[:=]")


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
        if pairs and all(_as_int(k) is not None or _digit_text(k) for k, _ in pairs):
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
    ``{"id", "score"}`` objects, or lines / markdown rows such as ``3: 7`` or ``| 3 | 7/10 |``.

    ok: exactly a JSON object mapping every valid id to a number in [0, 10].
    repaired: recovered from prose / fences / lines, or some entries fixed (clamped, unknown or
        duplicated ids dropped, objects without a score).
    failed: no score found.
    """
    raw = _as_text(text)
    if raw is None:
        return ScoreParse("failed", {}, ["answer is not text"], "")
    try:
        r = _parse_scores(raw, valid_ids)
        r.notes = _cap_notes(r.notes)
        return r
    except Exception as e:  # noqa: BLE001 - see parse_indices
        return ScoreParse("failed", {}, [f"parser error {type(e).__name__}"], raw)


def _parse_scores(raw: str, valid_ids: Iterable[int] | None) -> ScoreParse:
    notes: list[str] = []
    text = _clean(raw, notes)
    exact = not notes
    answers = list(_ANSWER_RE.finditer(text))
    candidate = answers[-1].group(1).strip() if answers else text
    if answers:
        exact = False
        if not candidate:
            candidate = text[answers[-1].end():].strip()
    pairs = _scores_from_json(_loads(candidate), notes)
    if pairs is not None and notes:
        exact = False
    if pairs is None:
        exact = False
        for obj in reversed(_OBJECT_RE.findall(candidate) + _OBJECT_RE.findall(text)):
            pairs = _scores_from_json(_loads(obj), notes)
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
        i = _known_id(k, valid, notes, "id ")
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
