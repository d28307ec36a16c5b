"""The ``sftdt`` reasoning format: reasoning paths over a Digital Twin, rendered as text and parsed back.

A reasoning path (paper sec. 3.3) is ``P = (D(0), D(1), ..., D(K))`` and the final indices ``I = I(K)``.
``D(0)`` is the twin itself and goes into the user message as ``JSON(D)`` (``dtwinseg.spatial.twin_json``).
Each later step lists only the objects of the previous step, each with its rewritten semantic, the
reasoning behind the decision, and the verdict; objects dropped at step j never reappear. The spatial
text is written once, in ``D(0)`` (repeating it K times would blow the context on a 150-object twin);
``include_spatial=True`` repeats it per step, as the paper's ``JSON(D(j))`` does.

Assistant text (one line per step, then the answer line)::

    Step 1: {"0": {"semantic": "a red mug", "reasoning": "a mug holds coffee", "verdict": "keep"}, "1": {"semantic": "a table", "reasoning": "not a container; below 0", "verdict": "drop"}}
    Step 2: {"0": {"semantic": "the red mug on the table", "reasoning": "the only container left", "verdict": "keep"}}
    Answer: [0]

The ``concise`` style (option ``style: concise``) writes the same steps tersely, one clause per object of the
step, the reasoning before the verdict (the paper's fields; the semantic only with ``semantic: true``)::

    Step 1: 0: a mug, as the query asks -> keep; 1: a table, not a mug -> drop; kept [0]
    Answer: [0]

Decision tokens (loss weight ``w_decision``) are the object ids (the digits of each step's keys) and the
verdict words; answer tokens (``w_answer``) are the final list ``[0]``. :func:`render_path` returns their
character spans; ``data_builders.sft_dataset`` maps them to tokens through the tokenizer's offsets.

:func:`parse_path_output` reads any model output back and never raises: the final indices come from the
``Answer:`` line (through :func:`dtwinseg.formats.select.parse_indices`); without one, from the kept ids of the
last readable step (status "repaired"); with neither, from any id list in the text. The text is capped
(head + tail, :func:`dtwinseg.parsing.cap_text`) before any regex, and every pattern is line-bounded, so
parsing is linear in the answer's length.

:class:`SFTDTFormat` (registered as ``sftdt``) ties it together for build-sft and the reasoners:
``messages`` (system + user), ``target`` (the rendered path with its spans), ``parse``, ``budget``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from dtwinseg.formats.base import (
    Completion,
    Decoded,
    FormatBase,
    FormatConfig,
    Target,
    check_options,
    linear_budget,
    register_format,
)
from dtwinseg.formats.select import parse_indices
from dtwinseg.io import DataError
from dtwinseg.parsing import ParseResult, as_id, cap_text, validate_ids
from dtwinseg.spatial import SpatialConfig, describe_twin, spatial_texts, twin_json
from dtwinseg.twin import DigitalTwin

__all__ = [
    "SYSTEM_PROMPT", "USER_TEMPLATE", "VERDICTS", "Decision", "ParsedPath", "PathStep", "ReasoningPath",
    "RenderedPath", "SFTDTFormat", "answer_line", "check_path", "parse_path_output", "render_path", "sftdt_messages",
]

Verdict = Literal["keep", "drop"]
VERDICTS: tuple[str, ...] = ("keep", "drop")

def system_prompt_for(spatial_cfg: SpatialConfig | None = None, style: str = "json") -> str:
    """The default system message for a layout of JSON(D) (dtwinseg.spatial.describe_twin) and a path style."""
    if style == "concise":
        step = ('Write each step on its own line as "Step j: " followed by, for every object still in play, '
                '"<id>: <reasoning> -> keep" or "... -> drop", separated by "; ", then "; kept [ids]". ')
    else:
        step = ('Write each step on its own line as "Step j: " followed by a JSON object with, for every object '
                'still in play, its updated "semantic", your "reasoning", and a "verdict" of "keep" or "drop". ')
    return (
        "You segment images by reasoning over a Digital Twin: " + describe_twin(spatial_cfg) + " Given a "
        "query, narrow the objects down step by step. " + step +
        'A dropped object never comes back. End with the line "Answer: [ids]" listing the ids whose union is '
        "the answer ([] when nothing matches)."
    )


SYSTEM_PROMPT = system_prompt_for()
"""Default system message of the SFTDT format (override with ``system_prompt=``)."""

USER_TEMPLATE = "Query: {query}\nDigital Twin JSON(D):\n{twin}"
"""Default user message; ``{query}`` and ``{twin}`` (JSON(D); ``{twin_json}`` is the same) are filled in."""


# --- the path -----------------------------------------------------------------------------------------
@dataclass
class Decision:
    """What one step says about one object of the previous step."""

    verdict: Verdict
    semantic: str = ""
    reasoning: str = ""

    def to_dict(self) -> dict:
        return {"semantic": self.semantic, "reasoning": self.reasoning, "verdict": self.verdict}


@dataclass
class PathStep:
    """One step D(j): a decision for every object of D(j-1), keyed by object id (in display order)."""

    decisions: dict[int, Decision]

    @property
    def kept(self) -> list[int]:
        """Ids kept at this step, sorted."""
        return sorted(i for i, d in self.decisions.items() if d.verdict == "keep")

    @property
    def dropped(self) -> list[int]:
        return sorted(i for i, d in self.decisions.items() if d.verdict == "drop")

    def to_dict(self) -> dict:
        return {"kept": self.kept, "objects": {str(i): d.to_dict() for i, d in self.decisions.items()}}


@dataclass
class ReasoningPath:
    """D(1..K) and the final indices I (sorted ids; ``[]`` is a valid empty answer)."""

    steps: list[PathStep]
    answer: list[int]

    def to_dict(self) -> dict:
        return {"path": [s.to_dict() for s in self.steps], "answer": sorted(self.answer)}

    @classmethod
    def from_dict(cls, d: Any, *, where: str = "") -> ReasoningPath:
        """Read ``{"path": [...], "answer": [...]}``; structural errors are DataError naming the field.

        Each step is ``{"kept": [ids], "objects": {"<id>": {"semantic", "reasoning", "verdict"}}}``;
        ``kept`` is optional and, when present, must agree with the verdicts.
        """
        pre = f"{where}." if where else ""
        if not isinstance(d, dict):
            raise DataError(None, where or None, "expected an object with 'path' and 'answer'")
        for name in ("path", "answer"):
            if name not in d:
                raise DataError(None, f"{pre}{name}", "missing")
        if not isinstance(d["path"], list):
            raise DataError(None, f"{pre}path", "expected a list of steps")
        steps = [_step_from_dict(s, f"{pre}path[{k}]") for k, s in enumerate(d["path"])]
        answer = _int_list(d["answer"], f"{pre}answer")
        return cls(steps=steps, answer=sorted(answer))


def _int_list(value: Any, where: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise DataError(None, where, f"expected a list of integer ids, got {value!r}")
    if len(set(value)) != len(value):
        raise DataError(None, where, f"duplicate ids in {value}")
    return list(value)


def _step_from_dict(s: Any, where: str) -> PathStep:
    if not isinstance(s, dict) or not isinstance(s.get("objects"), dict):
        raise DataError(None, f"{where}.objects", "expected {'<id>': {'semantic', 'reasoning', 'verdict'}}")
    decisions: dict[int, Decision] = {}
    for key, obj in s["objects"].items():
        f = f"{where}.objects.{key}"
        if not re.fullmatch(r"-?\d+", str(key)):
            raise DataError(None, f, "object keys must be integer ids")
        if not isinstance(obj, dict):
            raise DataError(None, f, "expected {'semantic', 'reasoning', 'verdict'}")
        verdict = obj.get("verdict")
        if verdict not in VERDICTS:
            raise DataError(None, f"{f}.verdict", f"must be 'keep' or 'drop', got {verdict!r}")
        decisions[int(key)] = Decision(verdict=verdict, semantic=str(obj.get("semantic", "")),
                                       reasoning=str(obj.get("reasoning", "")))
    step = PathStep(decisions)
    if "kept" in s:
        kept = sorted(_int_list(s["kept"], f"{where}.kept"))
        if kept != step.kept:
            raise DataError(None, f"{where}.kept", f"{kept} disagrees with the verdicts (kept {step.kept})")
    return step


def check_path(path: ReasoningPath, twin_ids: Iterable[int], *, where: str = "") -> None:
    """Raise DataError (naming the field) unless the path is valid for a twin with ``twin_ids``.

    Valid: at least one step; step 1 decides on every twin object; step j decides on exactly the ids kept
    at step j-1 (so a dropped object never comes back and no unknown id appears); the answer equals the
    last step's kept ids.
    """
    pre = f"{where}." if where else ""
    if not path.steps:
        raise DataError(None, f"{pre}path", "empty reasoning path: at least one step is required")
    previous = sorted(int(i) for i in twin_ids)
    for k, step in enumerate(path.steps):
        got = sorted(step.decisions)
        unknown = sorted(set(got) - set(previous))
        if unknown:
            what = "not in the twin" if k == 0 else "dropped at an earlier step (or not in the twin)"
            raise DataError(None, f"{pre}path[{k}].objects", f"ids {unknown} are {what}")
        missing = sorted(set(previous) - set(got))
        if missing:
            raise DataError(None, f"{pre}path[{k}].objects", f"no decision for ids {missing} of the previous step")
        previous = step.kept
    if sorted(path.answer) != previous:
        raise DataError(None, f"{pre}answer", f"{sorted(path.answer)} != the last step's kept ids {previous}")


# --- rendering ------------------------------------------------------------------------------------------
@dataclass
class RenderedPath:
    """Assistant text of a path plus character spans ``(start, end)`` (end exclusive) into ``text``.

    decision_spans: object ids (the digits of each step key) and verdict words.
    answer_spans: the final list, e.g. ``[0, 3]`` on the ``Answer:`` line.
    """

    text: str
    decision_spans: list[tuple[int, int]] = field(default_factory=list)
    answer_spans: list[tuple[int, int]] = field(default_factory=list)


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def render_path(
    twin: DigitalTwin,
    path: ReasoningPath,
    spatial_cfg: SpatialConfig | None = None,
    *,
    include_spatial: bool = False,
    query: str | None = None,
    style: str = "json",
    semantic: bool = False,
    kept: bool = True,
) -> RenderedPath:
    """Render D(1..K) and the answer as the assistant text, recording decision and answer spans.

    An empty semantic in a decision is filled with the twin's S_i. ``include_spatial`` adds each object's
    T_i to every step (the paper's full ``JSON(D(j))``; longer), as D(0) writes it for ``query``.
    ``style``: "json" (a JSON object per step, the paper's form) or "concise" (``<id>: <reasoning> ->
    <verdict>`` per object, ``; `` between objects; with ``semantic`` the step's semantic in parentheses
    after the id; with ``kept`` the step ends with ``; kept [ids]``, the indices I(j) it keeps).
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    if style == "concise":
        return _render_concise(twin, path, semantic=semantic, kept=kept)
    spatial = spatial_texts(twin, spatial_cfg, query) if include_spatial else {}
    semantics = {o.id: o.semantic for o in twin.objects}
    w = _SpanWriter()
    for j, step in enumerate(path.steps, 1):
        w.emit(f"Step {j}: {{")
        for n, (obj_id, d) in enumerate(step.decisions.items()):
            w.emit(", " if n else "")
            start = w.emit(_dump(str(obj_id)))
            w.decisions.append((start + 1, start + 1 + len(str(obj_id))))  # digits inside the quotes
            body: list[str] = []
            if include_spatial:
                body.append(f'"spatial": {_dump(spatial.get(obj_id, ""))}')
            body.append(f'"semantic": {_dump(d.semantic or semantics.get(obj_id, ""))}')
            body.append(f'"reasoning": {_dump(d.reasoning)}')
            w.emit(": {" + ", ".join(body) + ', "verdict": "')
            w.decision(d.verdict)
            w.emit('"}')
        w.emit("}\n")
    return w.answer(path.answer)


class _SpanWriter:
    """Assistant text written piece by piece, with the character spans of its decision and answer tokens."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.pos = 0
        self.decisions: list[tuple[int, int]] = []

    def emit(self, text: str) -> int:
        """Append ``text``; returns where it starts."""
        start = self.pos
        self.parts.append(text)
        self.pos += len(text)
        return start

    def decision(self, text: str) -> None:
        """Append ``text`` as a decision span."""
        start = self.emit(text)
        self.decisions.append((start, start + len(text)))

    def answer(self, ids: Sequence[int]) -> RenderedPath:
        """End with ``Answer: [ids]`` (the list is the answer span) and return the rendered path."""
        self.emit("Answer: ")
        answer_text = _dump(sorted(int(i) for i in ids))
        start = self.emit(answer_text)
        return RenderedPath("".join(self.parts), self.decisions, [(start, start + len(answer_text))])


def _clause(text: str) -> str:
    """A reasoning or semantic as one concise clause: on one line, without the separators ``;`` and ``->``."""
    return " ".join(text.replace(";", ",").replace("->", "-").split())


def _render_concise(twin: DigitalTwin, path: ReasoningPath, *, semantic: bool, kept: bool) -> RenderedPath:
    """The concise style of :func:`render_path`: ``Step j: <id>[ (<semantic>)]: <reasoning> -> <verdict>; ...[;
    kept [ids]]`` (the kept list I(j) is a decision span)."""
    semantics = {o.id: o.semantic for o in twin.objects}
    w = _SpanWriter()
    for j, step in enumerate(path.steps, 1):
        w.emit(f"Step {j}: ")
        for n, (obj_id, d) in enumerate(step.decisions.items()):
            w.emit("; " if n else "")
            w.decision(str(obj_id))
            if semantic:
                w.emit(f" ({_clause(d.semantic or semantics.get(obj_id, ''))})")
            w.emit(f": {_clause(d.reasoning)} -> ")
            w.decision(d.verdict)
        if kept:
            w.emit("; kept ")
            w.decision(_dump(step.kept))
        w.emit("\n")
    return w.answer(path.answer)


def answer_line(ids: Sequence[int]) -> Completion:
    """``Answer: [i, j]`` alone (answer span: the list), rendered exactly as a path's last line."""
    lst = _dump(sorted(int(i) for i in ids))
    text = f"Answer: {lst}"
    return Completion(text, [], [(len(text) - len(lst), len(text))])


def sftdt_messages(
    twin: DigitalTwin,
    query: str,
    spatial_cfg: SpatialConfig | None = None,
    path: ReasoningPath | None = None,
    *,
    system_prompt: str | None = None,
    user_template: str | None = None,
    include_spatial: bool = False,
    indent: int | None = None,
) -> list[dict[str, str]]:
    """Chat messages of one SFTDT example: system, user (query + JSON(D(0))), and the assistant path if given.

    Returns ``[{"role": ..., "content": ...}, ...]`` ready for ``tokenizer.apply_chat_template``; an empty
    ``system_prompt`` leaves the system message out.
    """
    dump = twin_json(twin, spatial_cfg, indent=indent, query=query)
    user = (user_template or USER_TEMPLATE).format(query=query, twin=dump, twin_json=dump)
    system = system_prompt if system_prompt is not None else system_prompt_for(spatial_cfg)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    if path is not None:
        rendered = render_path(twin, path, spatial_cfg, include_spatial=include_spatial, query=query)
        messages.append({"role": "assistant", "content": rendered.text})
    return messages


# --- parsing --------------------------------------------------------------------------------------------
# Line-bounded ([ \t], never \s across lines) and without adjacent quantifiers over shared characters.
_STEP_RE = re.compile(r"(?im)^[ \t]*step[ \t]*(\d{1,9})(?!\d)[ \t]*[:.)-][ \t]*(.*)$")
_ANSWER_LINE_RE = re.compile(r"(?im)^[ \t]*(?:final[ \t]+)?answer[ \t]*[:=]")
_LOOSE_DECISION_RE = re.compile(
    r'(?<![\d-])"?(-?\d{1,18})(?!\d)"?[ \t]*:[ \t]*\{[^{}]*?"verdict"[ \t]*:[ \t]*"(keep|drop)"', re.IGNORECASE)
# A concise clause: "<id>[ (semantic)]: <reasoning> -> <verdict>", clauses separated by ";".
_CONCISE_DECISION_RE = re.compile(r"(?:^|;)[ \t]*(-?\d{1,18})(?![\d.])[^;]*?->[ \t]*(keep|drop)\b", re.IGNORECASE)


@dataclass
class ParsedPath:
    """A parsed model output.

    result: the final indices as a ParseResult (never None; "failed" with ``ids == []`` when unusable).
    steps: every step that could be read, in order (possibly fewer than written).
    notes: problems found in the steps (unreadable step, answer inconsistent with the last step, ...).
    """

    result: ParseResult
    steps: list[PathStep] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _parse_step_body(body: str) -> PathStep | None:
    try:
        obj = json.loads(body)
        if isinstance(obj, dict):
            decisions: dict[int, Decision] = {}
            for key, d in obj.items():
                obj_id = as_id(key)
                if obj_id is None or not isinstance(d, dict):
                    continue
                verdict = str(d.get("verdict", "")).strip().lower()
                if verdict not in VERDICTS:
                    continue
                decisions[obj_id] = Decision(verdict=verdict,  # type: ignore[arg-type]
                                               semantic=str(d.get("semantic", "")),
                                               reasoning=str(d.get("reasoning", "")))
            return PathStep(decisions) if decisions else None
    except (ValueError, RecursionError):
        pass
    # A concise step, or a truncated or slightly malformed JSON line: the verdicts that are readable.
    found = {int(k): Decision(verdict=v.lower())  # type: ignore[arg-type]
             for k, v in _LOOSE_DECISION_RE.findall(body)}
    if not found:
        found = {int(k): Decision(verdict=v.lower())  # type: ignore[arg-type]
                 for k, v in _CONCISE_DECISION_RE.findall(body)}
    return PathStep(found) if found else None


def parse_path_output(text: object, valid_ids: Iterable[int] | None = None) -> ParsedPath:
    """Parse an SFTDT answer (steps + ``Answer:`` line). Never raises, whatever ``text`` is.

    Status of ``.result``: as :func:`dtwinseg.formats.select.parse_indices` on the Answer line; "repaired" when the
    Answer line is missing and the last readable step's kept ids are used; "failed" when neither exists
    and no id list can be found in the text.
    """
    try:
        raw = text if isinstance(text, str) else ("" if text is None else str(text))
    except Exception:  # noqa: BLE001 - a hostile __str__ must not escape
        return ParsedPath(ParseResult("failed", [], ["answer is not text"], ""))
    try:
        return _parse_path_text(raw, None if valid_ids is None else [int(i) for i in valid_ids])
    except Exception as e:  # noqa: BLE001 - totality: a parser bug must not crash an evaluation run
        return ParsedPath(ParseResult("failed", [], [f"parser error: {type(e).__name__}"], raw))


def _parse_path_text(raw: str, valid_ids: Sequence[int] | None) -> ParsedPath:
    steps: list[PathStep] = []
    notes: list[str] = []
    text = cap_text(raw, notes)
    for m in _STEP_RE.finditer(text):
        step = _parse_step_body(m.group(2).strip())
        if step is None:
            notes.append(f"step {m.group(1)} unreadable")
        else:
            steps.append(step)
    notes = notes[:20]
    if _ANSWER_LINE_RE.search(text):
        result = _indices(text, raw, valid_ids)
        if steps and result.ok and result.ids != steps[-1].kept:
            notes.append(f"answer {result.ids} differs from the last step's kept ids {steps[-1].kept}")
        return ParsedPath(result, steps, notes)
    if steps:
        fix: list[str] = ["no Answer line; used the last step's kept ids"]
        ids = validate_ids(steps[-1].kept, valid_ids, fix)
        return ParsedPath(ParseResult("repaired", ids, fix[:20], raw), steps, notes)
    return ParsedPath(_indices(text, raw, valid_ids), steps, notes)


def _indices(text: str, raw: str, valid_ids: Sequence[int] | None) -> ParseResult:
    """parse_indices on the capped text, reporting the raw answer (and the cap, when it applied)."""
    result = parse_indices(text, valid_ids)
    if len(text) != len(raw):
        result.notes.insert(0, f"answer of {len(raw)} characters; kept its first and last part")
        if result.status == "ok":
            result.status = "repaired"
    result.raw = raw
    return result


# --- the format -----------------------------------------------------------------------------------------
BASE_TOKENS = 64
REASONING_CHARS = 60
"""Characters of reasoning per object assumed by the generation budget (option ``reasoning_chars``)."""
STYLES = ("json", "concise")
"""How a path is written (option ``style``): the paper's JSON object per step, or one clause per object."""


class SFTDTFormat(FormatBase):
    """The SFTDT reasoning path (paper sec. 3.3): prompt, target path with spans, parser, budget.

    Options (``FormatConfig.options``): ``reasoning_chars`` (budget estimate, default 60); ``style``: "json"
    (default: each step a JSON object with every object's semantic, reasoning and verdict, the paper's form)
    or "concise" (``<id>: <reasoning> -> <verdict>`` per object: a third of the tokens); ``semantic``
    (concise style: also write each object's semantic of the step, default false); ``kept`` (concise style:
    end each step with the ids it keeps, ``; kept [ids]``, default true).
    """

    name = "sftdt"

    def __init__(self, config: FormatConfig | None = None):
        self.config = config or FormatConfig()
        self.options = check_options(self.name, self.config.options,
                                     {"reasoning_chars": REASONING_CHARS, "style": "json", "semantic": False,
                                      "kept": True})
        if self.options["style"] not in STYLES:
            raise DataError(None, "format.options.style", f"must be one of {', '.join(STYLES)}, got "
                            f"{self.options['style']!r}")
        for key in ("semantic", "kept"):
            if not isinstance(self.options[key], bool):
                raise DataError(None, f"format.options.{key}", f"must be true or false, got {self.options[key]!r}")

    def messages(self, twin: DigitalTwin, query: str) -> list[dict]:
        """System + user (query + JSON(D(0))) for ``query``; fitted to a context by
        dtwinseg.formats.base.fit_prompt."""
        c = self.config
        system = c.system_prompt
        if system is None and self.options["style"] != "json":  # the default prompt describes the style
            system = system_prompt_for(c.spatial, style=self.options["style"])
        return sftdt_messages(twin, query, c.spatial, system_prompt=system,
                              user_template=c.user_template, indent=c.indent)

    def target(self, twin: DigitalTwin, target: Target) -> Completion:
        """The rendered path with its spans; without a path (``target.path`` None), the bare answer line
        ``Answer: [ids]``, the end every path has: what constrained decoding scores a zero-shot base on
        (eval/baselines.py), never a training target (build-sft's records always carry a path)."""
        if target.path is None:
            return answer_line(target.answer)
        r = render_path(twin, target.path, self.config.spatial, include_spatial=self.config.include_spatial,
                        query=target.query, style=self.options["style"], semantic=self.options["semantic"],
                        kept=self.options["kept"])
        return Completion(r.text, r.decision_spans, r.answer_spans)

    def parse(self, text: str, twin: DigitalTwin) -> Decoded:
        return Decoded(parse_path_output(text, twin.ids).result)

    def budget(self, twin: DigitalTwin) -> int:
        """New tokens a full path needs: step 1 decides on every object (about 50 characters of JSON +
        its semantic + ``reasoning_chars``; + its spatial text when repeated), later steps together at
        most as long again; 3 characters per token (JSON and digits tokenise densely)."""
        c = self.config
        if c.tokens_per_object is not None:
            return linear_budget(c, twin, c.tokens_per_object, BASE_TOKENS)
        base = c.base_tokens if c.base_tokens is not None else BASE_TOKENS
        if self.options["style"] == "concise":  # "<id>: <reasoning> -> keep; " (+ " (<semantic>)", "kept [..]")
            chars = sum(int(self.options["reasoning_chars"]) + 14
                        + (len(o.semantic) + 3 if self.options["semantic"] else 0) for o in twin.objects)
            chars += (10 + 3 * len(twin)) if self.options["kept"] else 0
            return int(base) + (2 * chars + 2) // 3
        per_object = int(self.options["reasoning_chars"]) + 50
        sp = c.spatial
        n_rel = len(twin) - 1 if sp.max_relations is None else min(len(twin) - 1, sp.max_relations + sp.landmarks)
        spatial = (60 + 25 * max(n_rel, 0)) if c.include_spatial else 0
        chars = sum(per_object + len(o.semantic) + spatial for o in twin.objects)
        return int(base) + (2 * chars + 2) // 3


register_format("sftdt", SFTDTFormat)
