"""Shared, format-independent helpers of the answer parsers: the result type, caps, cleaning, id reading.

Each reasoning format's parser lives in its format's module and builds on these:
:func:`dtwinseg.formats.select.parse_indices` (``Answer: [2, 5]``, also read by the sftdt and compact
formats), :func:`dtwinseg.formats.score.parse_scores` (``{"0": 7, "1": 2}``),
:func:`dtwinseg.formats.sftdt.parse_path_output` and :func:`dtwinseg.formats.compact.parse_compact`.
Every parser returns a typed result and never raises on any input text.

Status semantics (every result):
    ok        the answer is exactly in the requested format and every id is valid;
    repaired  something usable was recovered; every fix is listed in ``notes`` (answer found inside
              prose or a code fence, dict answer, unknown / duplicated / non-integer ids dropped, ...);
    failed    nothing usable; ``ids`` / ``scores`` are empty and the prediction is the empty mask.
An empty list (``Answer: []``) is a valid answer, not a failure.

Bounded work (issue 13): every parser is linear in its input. Answers longer than ``HEAD_CHARS +
TAIL_CHARS`` keep their first and last parts (noted, :func:`cap_text`) *before* any regex runs, so a 5 MB
answer still finds a leading ``Answer: [0]``; no pattern nests quantifiers or lets two adjacent
quantifiers share characters (whitespace classes never cross a line); integers longer than
``MAX_ID_DIGITS`` digits (JSON included) are rejected as that one id, not as the whole answer; notes are
capped (:func:`cap_notes`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

Status = Literal["ok", "repaired", "failed"]

ANSWER_LINE_RE = re.compile(
    r"(?im)^[ \t>*#_`-]*(?:the[ \t]+)?(?:final[ \t]+)?(?:answer|selected(?:[ \t]+ids)?|ids|indices)[ \t*_`]*"
    r"(?:is|are|[:=])[ \t]*(.*)$"
)
"""A line that announces the answer (``Answer:``, ``Final answer is``, ``ids =``, ...); group 1: the rest."""
OBJECT_RE = re.compile(r"\{[^{}]*\}")
"""A flat JSON object in surrounding text."""
INT_RE = re.compile(r"#?(-?\d+)")
_FENCE_LANG_RE = re.compile(r"[ \t]*[A-Za-z0-9_-]*[ \t]*\n?")
_THINK_RE = re.compile(r"<think>.*?(?:</think>|$)", re.S | re.I)
HEAD_CHARS = 100_000  # longer answers keep head + tail (noted) before any regex runs
TAIL_CHARS = 100_000
MAX_ID_DIGITS = 18  # longer integers are not ids (int() of 4,300+ digits even raises)
MAX_NOTES = 20


@dataclass
class ParseResult:
    """Outcome of parsing one answer into object ids.

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


def as_text(text: object) -> str | None:
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


def clean_answer(raw: str, notes: list[str]) -> str:
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


def cap_notes(notes: list[str]) -> list[str]:
    """At most MAX_NOTES notes (a 100k-id answer must not carry 100k notes)."""
    if len(notes) <= MAX_NOTES:
        return notes
    return notes[:MAX_NOTES - 1] + [f"... and {len(notes) - MAX_NOTES + 1} more notes"]


class LongInt(str):
    """A JSON integer with more than MAX_ID_DIGITS digits, kept as its text (never converted)."""


def _json_int(text: str) -> int | LongInt:
    return int(text) if len(text.lstrip("-")) <= MAX_ID_DIGITS else LongInt(text)


def short_repr(v: object) -> str:
    """A short, safe description of a value for a note (huge ints and hostile __repr__ included)."""
    try:
        if isinstance(v, str) and (isinstance(v, LongInt) or len(v) > 40):
            digits = len(v.strip().lstrip("#-"))
            return f"<an integer of {digits} digits>" if v.strip().lstrip("#-").isdigit() else f"<{len(v)} characters>"
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 10 ** MAX_ID_DIGITS:
            return "<a huge integer>"
        return repr(v)[:40]
    except Exception:  # noqa: BLE001
        return "<unprintable>"


def as_id(v: object) -> int | None:
    """An id from an int, an integral float or a string such as "3" / "#3"; None otherwise (and for any
    integer of more than MAX_ID_DIGITS digits)."""
    if isinstance(v, bool) or isinstance(v, LongInt):
        return None
    if isinstance(v, int):
        return v if abs(v) < 10 ** MAX_ID_DIGITS else None
    if isinstance(v, float) and v.is_integer() and abs(v) < 10 ** MAX_ID_DIGITS:
        return int(v)
    if isinstance(v, str) and len(v) <= 2 * MAX_ID_DIGITS:
        m = INT_RE.fullmatch(v.strip())
        if m and len(m.group(1).lstrip("-")) <= MAX_ID_DIGITS:
            return int(m.group(1))
    return None


INVALID = object()
"""What :func:`loads_json` returns for text that is no JSON."""


def loads_json(text: str) -> object:
    """json.loads that returns :data:`INVALID` instead of raising; integers of more than MAX_ID_DIGITS
    digits stay text (:class:`LongInt`)."""
    try:
        return json.loads(text, parse_int=_json_int)
    except (ValueError, RecursionError, TypeError):
        return INVALID


def known_id(value: object, valid: set[int] | None, notes: list[str], what: str = "") -> int | None:
    """``value`` as an id of ``valid`` (None: any integer), or None with the reason noted."""
    i = as_id(value)
    if i is None:
        notes.append(f"dropped non-integer {what}{short_repr(value)}")
    elif valid is not None and i not in valid:
        notes.append(f"dropped unknown id {i}")
        return None
    return i


def validate_ids(values: Iterable[object], valid_ids: Iterable[int] | None, notes: list[str]) -> list[int]:
    """Keep integer ids present in ``valid_ids``; record every fix in ``notes``."""
    valid = None if valid_ids is None else set(int(i) for i in valid_ids)
    out: set[int] = set()
    for v in values:
        i = known_id(v, valid, notes)
        if i is None:
            continue
        if i in out:
            notes.append(f"dropped duplicate id {i}")
            continue
        out.add(i)
    return sorted(out)
