"""Parsing an LLM's answer into object indices: strict about what it accepts, total about what it gets.

Every function here returns a :class:`ParseResult` and never raises on any input text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

Status = Literal["ok", "repaired", "failed"]

_ANSWER_RE = re.compile(r"(?im)^\s*(?:final\s+)?answer\s*[:=]\s*(.*)$")
_LIST_RE = re.compile(r"\[[^\[\]]*\]")


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


def _as_int(v: object) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and re.fullmatch(r"\s*-?\d+\s*", v):
        return int(v)
    return None


def validate_ids(values: Iterable[object], valid_ids: Iterable[int] | None, notes: list[str]) -> list[int]:
    """Keep integer ids present in ``valid_ids``; record every fix in ``notes``."""
    valid = None if valid_ids is None else set(int(i) for i in valid_ids)
    out: list[int] = []
    for v in values:
        i = _as_int(v)
        if i is None:
            notes.append(f"dropped non-integer {v!r}")
            continue
        if valid is not None and i not in valid:
            notes.append(f"dropped unknown id {i}")
            continue
        if i in out:
            notes.append(f"dropped duplicate id {i}")
            continue
        out.append(i)
    return sorted(out)


def parse_indices(text: object, valid_ids: Iterable[int] | None = None) -> ParseResult:
    """Parse a list of object ids from an answer such as ``[2, 5]`` or ``Answer: [2, 5]``.

    ok: the text is exactly a JSON list (optionally after ``Answer:``) of valid, distinct integers.
    repaired: a list was found inside prose, or some entries were dropped (unknown, duplicate, non-int).
    failed: no list found / not parseable.
    """
    try:
        raw = text if isinstance(text, str) else ("" if text is None else str(text))
    except Exception:  # noqa: BLE001 - a hostile __str__ must not escape
        return ParseResult("failed", [], ["answer is not text"], "")
    notes: list[str] = []
    stripped = raw.strip()
    m = list(_ANSWER_RE.finditer(stripped))
    candidate = m[-1].group(1).strip() if m else stripped
    exact = True
    try:
        values = json.loads(candidate)
        if not isinstance(values, list):
            raise ValueError
    except (ValueError, RecursionError):
        exact = False
        lists = _LIST_RE.findall(candidate) or _LIST_RE.findall(stripped)
        values = None
        for lst in reversed(lists):
            try:
                v = json.loads(lst)
            except (ValueError, RecursionError):
                v = [t for t in re.findall(r"-?\d+", lst)]
            if isinstance(v, list):
                values = v
                break
        if values is None:
            return ParseResult("failed", [], ["no list of ids found"], raw)
        notes.append("list extracted from surrounding text")
    if m and len(m) > 1:
        notes.append("several answer lines; used the last")
    ids = validate_ids(values, valid_ids, notes)
    status: Status = "ok" if exact and not notes else "repaired"
    return ParseResult(status, ids, notes, raw)
