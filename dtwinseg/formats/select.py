"""The ``select`` reasoning format (DTwinSeger zero-shot, paper sec. 3.2): JSON(D) + query -> ``Answer: [ids]``.

The LLM reads JSON(D) (paper eq. 5) and the query, may think briefly, and ends with one line
``Answer: [i, j, ...]`` (``Answer: []`` when nothing matches), parsed by :func:`parse_indices` (here:
the sftdt and compact formats read their ``Answer:`` line with it too). As a training target it is just
that line (answer span: the list).

:func:`parse_indices` is total and linear (the shared caps of :mod:`dtwinseg.parsing` before any regex):

- ok: the text is exactly a JSON list (optionally after ``Answer:``) of valid, distinct integers;
- repaired: the ids were recovered from prose, a code fence, a dict (``{"ids": [...]}``), bare integers
  after ``Answer:``, or some entries were dropped (unknown, duplicate, non-integer), each fix noted;
- failed: no list found (``ids`` empty).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

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
from dtwinseg.parsing import (
    ANSWER_LINE_RE,
    INT_RE,
    INVALID,
    OBJECT_RE,
    ParseResult,
    Status,
    as_id,
    as_text,
    cap_notes,
    clean_answer,
    loads_json,
    short_repr,
    validate_ids,
)
from dtwinseg.spatial import SpatialConfig, twin_json
from dtwinseg.twin import DigitalTwin

TASK = (
    "Given a query, decide which objects the query refers to. The answer may be several objects, or "
    "none. Think briefly if needed, then end with one line exactly of the form "
    "'Answer: [id, id, ...]' (use 'Answer: []' if no object matches)."
)


def system_prompt_for(spatial_cfg: SpatialConfig | None = None) -> str:
    """The default system message: the twin's layout (dtwinseg.spatial.describe_twin), then the task."""
    return twin_intro(spatial_cfg) + TASK


SYSTEM_PROMPT = system_prompt_for()
USER_TEMPLATE = "Digital Twin:\n{twin}\n\nQuery: {query}"
BASE_TOKENS = 512  # the brief reasoning the prompt allows
TOKENS_PER_ID = 4


def select_messages(twin: DigitalTwin, query: str, spatial_cfg: SpatialConfig | None = None, *,
                    system_prompt: str | None = None, user_template: str | None = None,
                    indent: int | None = None) -> list[dict]:
    """Chat messages asking for the ids that satisfy ``query``."""
    dump = twin_json(twin, spatial_cfg, indent=indent, query=query)
    user = (user_template or USER_TEMPLATE).format(twin=dump, query=query)
    return chat(system_prompt_for(spatial_cfg) if system_prompt is None else system_prompt, user)


def answer_completion(ids: list[int]) -> Completion:
    """``Answer: [i, j]`` with the list as the answer span."""
    lst = "[" + ", ".join(str(int(i)) for i in sorted(ids)) + "]"
    text = f"Answer: {lst}"
    return Completion(text, [], [(len(text) - len(lst), len(text))])


# --- the parser ---------------------------------------------------------------------------------
_LIST_RE = re.compile(r"\[[^\[\]]*\]")
_NESTED_LIST_RE = re.compile(r"\[\s*\[[^\[\]]*\](?:\s*,\s*\[[^\[\]]*\])*\s*\]")
_MARKER_RE = re.compile(r"(?i)[ \t]*(?:final[ \t]+)?answer[ \t]*[:=]")
_EMPTY_WORDS = frozenset({"none", "nothing", "no object", "no objects", "empty", "null", "n a", "na"})
_NON_WORD_RE = re.compile(r"\W+")
_ID_KEYS = ("ids", "answer", "indices", "index", "selected", "selected_ids", "objects", "final", "result")


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
    if as_id(value) is not None:
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
        v = loads_json(lst)
        if isinstance(v, list):
            if v and all(isinstance(x, list) for x in v):
                v = [x for sub in v for x in sub]
            return v
        ints = INT_RE.findall(lst)
        if ints or not lst[1:-1].strip():
            return ints
    return None


def parse_indices(text: object, valid_ids: Iterable[int] | None = None) -> ParseResult:
    """Parse a list of object ids from an answer such as ``[2, 5]`` or ``Answer: [2, 5]`` (module
    docstring: ok / repaired / failed). Never raises."""
    raw = as_text(text)
    if raw is None:
        return ParseResult("failed", [], ["answer is not text"], "")
    try:
        r = _parse_indices(raw, valid_ids)
        r.notes = cap_notes(r.notes)
        return r
    except Exception as e:  # noqa: BLE001 - totality: a parser bug must not kill a 1,000-sample run
        return ParseResult("failed", [], [f"parser error {type(e).__name__}"], raw)


def _is_answer_marker(line: str) -> bool:
    """True for the requested marker: ``Answer:`` or ``Final answer:`` (any case, no decoration)."""
    return _MARKER_RE.match(line) is not None


def _parse_indices(raw: str, valid_ids: Iterable[int] | None) -> ParseResult:
    notes: list[str] = []
    text = clean_answer(raw, notes)
    exact = not notes
    answers = list(ANSWER_LINE_RE.finditer(text))
    candidate = answers[-1].group(1).strip().strip("*_`").strip() if answers else text
    if len(answers) > 1:
        notes.append("several answer lines; used the last")
    if answers and not _is_answer_marker(answers[-1].group(0)):
        exact = False  # "ids: [..]" / "selected: [..]" are accepted, but not the requested format
        notes.append("answer marker not in the requested 'Answer: [...]' form")
    if answers and not candidate:  # "Answer:" followed by the list on the next lines
        candidate = text[answers[-1].end():].strip()
    values: list | None = None
    parsed = loads_json(candidate)
    if isinstance(parsed, list) and not (parsed and all(isinstance(v, list) for v in parsed)):
        values = parsed
    elif parsed is not INVALID:
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
    for obj in reversed(OBJECT_RE.findall(candidate) or OBJECT_RE.findall(text)):
        v = _ids_from_json(loads_json(obj), notes)
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
            notes.append(f"{short_repr(line.strip())} read as the empty list")
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
        m = INT_RE.fullmatch(w)
        if m is None:
            return None
        ints.append(m.group(1))
    return ints or None


# --- the format ---------------------------------------------------------------------------------
class SelectFormat(FormatBase):
    """Zero-shot DTwinSeger: ask for the ids that satisfy the query. No options."""

    name = "select"

    def __init__(self, config: FormatConfig | None = None):
        self.config = config or FormatConfig()
        check_options(self.name, self.config.options, {})

    def messages(self, twin: DigitalTwin, query: str) -> list[dict]:
        c = self.config
        return select_messages(twin, query, c.spatial, system_prompt=c.system_prompt,
                               user_template=c.user_template, indent=c.indent)

    def target(self, twin: DigitalTwin, target: Target) -> Completion:
        return answer_completion(target.answer)

    def parse(self, text: str, twin: DigitalTwin) -> Decoded:
        return Decoded(parse_indices(text, twin.ids))

    def budget(self, twin: DigitalTwin) -> int:
        """``base_tokens`` (512: brief prose) + 4 tokens per object (every id in the list)."""
        return linear_budget(self.config, twin, TOKENS_PER_ID, BASE_TOKENS)


register_format("select", SelectFormat)
