"""The compact format: a line-per-object twin rendering for small base models, answer-only or SFTDT path.

JSON(D) with the project's spatial text costs about 35-50 tokens per object plus a 150-token system
prompt; a 22M-parameter model on a CPU cannot learn from that in minutes, and MiniLM has only 512
positions (experiments/RESULTS.md). The compact format keeps the facts in fewer tokens
(``id_position: last``)::

    query: the largest circle
    a small red circle, at 25 36, area 1.6, id 0
    a large blue circle, at 135 125, area 7.4, id 1

Targets (``options.target``):

- ``answer``: one line ``Answer: [1]`` (answer span: the id list);
- ``path``: the SFTDT reasoning path in compact form, a verdict per object, then the answer::

      a small red circle, id 0: no
      a large blue circle, id 1: yes
      Answer: [1]

  (``echo: false`` writes ``id 0: no``). The verdict words are decision spans (``w_decision``), the
  id list the answer span (``w_answer``): paper eq. 10 with a one-step path.
- ``object``: a per-object verdict (Rea2Seg-style scorer, trained with the same weighted loss): one
  example per object, prompt ``query: Q`` (+ the whole twin with ``context: true``) ``object: <its line>``,
  target ``yes`` / ``no`` (a decision span). Read with ``decoding: verdicts``: each object's verdict is
  scored on its own and the answer is the objects judged yes.

Forced verdict decoding (``ReasoningConfig.decoding: verdicts``): the path's object lines are known from
the twin, so the reasoner writes them itself and the model only chooses each verdict word
(:meth:`CompactFormat.verdict_path`); see dtwinseg/reasoning/verdicts.py.

The parser is total and linear: the ``Answer:`` line (dtwinseg.formats.select.parse_indices), or, when no
answer line parses, the objects whose verdict is ``yes`` (status "repaired").

Options (``FormatConfig.options``, validated strictly): ``target`` (answer | path | object), ``echo`` (bool),
``position`` (centre | box | none), ``id_position`` (first | last), ``areas`` (bool), ``ranks`` (bool: each
object's rank by area and left to right among all objects), ``context`` (bool, object target: the whole twin
before the judged object), ``facts`` (bool: after each object's line, its scene facts from the twin alone: the
count of its kind, its superlatives, the relations that single it out within its kind;
dtwinseg/formats/facts.py). With
``facts`` a per-object prompt carries what relational, comparative and counting queries need without the rest
of the twin. ``system_prompt`` (default: none) and
``user_template`` (default ``query: {query}\\n{twin}``) come from FormatConfig itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dtwinseg.config import StrictConfig
from dtwinseg.formats.base import (
    Completion,
    Decoded,
    FormatBase,
    FormatConfig,
    Target,
    VerdictPath,
    answer_text,
    linear_budget,
    register_format,
)
from dtwinseg.formats.facts import object_facts
from dtwinseg.formats.select import parse_indices
from dtwinseg.io import DataError
from dtwinseg.parsing import ParseResult
from dtwinseg.twin import DigitalTwin

NAME = "compact"
TARGETS = ("answer", "path", "object")
USER_TEMPLATE = "query: {query}\n{twin}"
MAX_PARSE_CHARS = 200_000
_VERDICT_RE = re.compile(r"(?i)\bid\s*(\d{1,6})\s*:\s*(yes|no)\b")


@dataclass
class CompactOptions(StrictConfig):
    """The compact format's options (``FormatConfig.options``); see the module docstring."""

    target: str = "answer"
    echo: bool = True
    position: str = "centre"
    id_position: str = "last"
    areas: bool = True
    ranks: bool = False
    context: bool = False
    facts: bool = False

    def __post_init__(self) -> None:
        for name, allowed in (("target", TARGETS), ("position", ("centre", "box", "none")),
                              ("id_position", ("first", "last"))):
            if getattr(self, name) not in allowed:
                raise DataError(None, f"format.options.{name}", f"must be one of {', '.join(allowed)}, "
                                f"got {getattr(self, name)!r}")
        for name in ("echo", "areas", "ranks", "context", "facts"):
            if not isinstance(getattr(self, name), bool):
                raise DataError(None, f"format.options.{name}", "must be true or false")

    SECTION = "format.options"


def _ranks(values: dict[int, float], descending: bool) -> dict[int, int]:
    order = sorted(values, key=lambda i: (-values[i] if descending else values[i], i))
    return {i: r + 1 for r, i in enumerate(order)}


def object_lines(twin: DigitalTwin, opts: CompactOptions) -> dict[int, str]:
    """Each object's line: ``<semantic>[, at cx cy | , box x0 y0 x1 y1][, area A][, ranks], id <id>``
    (id_position "last") or ``<id>: <semantic>...`` (id_position "first")."""
    n = len(twin.objects)
    size_rank = _ranks({o.id: o.area for o in twin.objects}, True) if opts.ranks else {}
    x_rank = _ranks({o.id: (o.bbox[0] + o.bbox[2]) / 2 for o in twin.objects}, False) if opts.ranks else {}
    facts = object_facts(twin) if opts.facts else {}
    lines = {}
    for o in twin.objects:
        semantic = o.semantic or "object"
        line = f"{o.id}: {semantic}" if opts.id_position == "first" else semantic
        x0, y0, x1, y1 = (int(round(v)) for v in o.bbox)
        if opts.position == "centre":
            line += f", at {(x0 + x1) // 2} {(y0 + y1) // 2}"
        elif opts.position == "box":
            line += f", box {x0} {y0} {x1} {y1}"
        if opts.areas:
            line += f", area {o.area:.1f}"
        if opts.ranks:
            line += f", size rank {size_rank[o.id]} of {n}, x rank {x_rank[o.id]} of {n}"
        if opts.id_position == "last":
            line += f", id {o.id}"
        if facts.get(o.id):
            line += "; " + "; ".join(facts[o.id])
        lines[o.id] = line
    return lines


def twin_text(twin: DigitalTwin, opts: CompactOptions) -> str:
    """One line per object (:func:`object_lines`), in the twin's order."""
    return "\n".join(object_lines(twin, opts).values())


def parse_compact(text: object, valid_ids: list[int]) -> ParseResult:
    """Ids of a compact answer: the ``Answer:`` line, else the ``yes`` verdicts. Never raises."""
    res = parse_indices(text, valid_ids)
    if res.status != "failed" or not isinstance(text, str):
        return res
    verdicts = _VERDICT_RE.findall(text[:MAX_PARSE_CHARS])
    if not verdicts:
        return res
    valid = set(valid_ids)
    ids = sorted({int(i) for i, v in verdicts if v.lower() == "yes" and int(i) in valid})
    return ParseResult("repaired", ids, ["no answer line; ids from the yes verdicts"], text)


class CompactFormat(FormatBase):
    """The registered ``compact`` format (ReasoningFormat contract of dtwinseg.formats.base)."""

    name = NAME
    reads_spatial = False  # its object lines are its own (object_lines), not JSON(D)

    def __init__(self, config: FormatConfig):
        self.config = config
        self.options = CompactOptions.from_dict(config.options)

    def _chat(self, user: str) -> list[dict]:
        # The system message is always present (empty by default): the plain layout of build-sft
        # (### System / ### User) then renders exactly like the reasoner's prompt.
        return [{"role": "system", "content": self.config.system_prompt or ""}, {"role": "user", "content": user}]

    @property
    def per_object(self) -> bool:
        """True for ``target: object``: one training example and one verdict per object."""
        return self.options.target == "object"

    def messages(self, twin: DigitalTwin, query: str) -> list[dict]:
        if self.per_object:
            raise DataError(None, "decoding", "format.options.target: object judges one object per prompt: "
                            "read it with decoding: verdicts")
        template = self.config.user_template or USER_TEMPLATE
        return self._chat(template.format(query=query, twin=twin_text(twin, self.options)))

    def object_messages(self, twin: DigitalTwin, query: str, obj: int,
                        lines: dict[int, str] | None = None) -> list[dict]:
        """The per-object target's prompt: ``query: Q`` [the whole twin, ``context: true``] ``object: <line>``
        (``lines``: the twin's :func:`object_lines`, when the caller already has them)."""
        lines = lines if lines is not None else object_lines(twin, self.options)
        context = "\n".join(lines.values()) + "\n" if self.options.context else ""
        user = f"query: {query}\n{context}object: {lines[obj]}"
        # No empty system message here (a few tokens on every one of the many short examples): the plain
        # layout renders a conversation without one the same way for build-sft and the reasoner.
        if self.config.system_prompt:
            return self._chat(user)
        return [{"role": "user", "content": user}]

    def object_examples(self, twin: DigitalTwin, query: str, target: Target) -> list[tuple[int, list[dict], Completion]]:
        """Training examples of the per-object target: per object its prompt and ``yes`` / ``no`` (a decision
        span: the loss weighs it by w_decision)."""
        if not self.per_object:
            raise DataError(None, "format.options.target", f"{self.options.target!r} writes one example per "
                            "scene (target); one per object is target: object")
        chosen = {int(i) for i in target.answer}
        lines = object_lines(twin, self.options)
        out = []
        for o in twin.objects:
            verdict = "yes" if o.id in chosen else "no"
            out.append((o.id, self.object_messages(twin, query, o.id, lines), Completion(verdict, [(0, len(verdict))], [])))
        return out

    def target(self, twin: DigitalTwin, target: Target) -> Completion:
        if self.per_object:
            raise DataError(None, "format.options.target", "'object' writes one example per object "
                            "(object_examples), not one completion per scene")
        answer, (a, b) = answer_text(target.answer)
        if self.options.target == "answer":
            return Completion(answer, [], [(a, b)])
        chosen = {int(i) for i in target.answer}
        text, decisions = "", []
        for o in twin.objects:
            head = self._head(o)
            verdict = "yes" if o.id in chosen else "no"
            decisions.append((len(text) + len(head), len(text) + len(head) + len(verdict)))
            text += head + verdict + "\n"
        return Completion(text + answer, decisions, [(len(text) + a, len(text) + b)])

    def _head(self, o) -> str:  # noqa: ANN001 - a twin object
        return f"{o.semantic or 'object'}, id {o.id}: " if self.options.echo else f"id {o.id}: "

    def verdict_path(self, twin: DigitalTwin, query: str = "") -> VerdictPath:
        """The skeleton for forced verdict decoding; DataError for the answer-only target."""
        if self.per_object:
            lines = object_lines(twin, self.options)
            return VerdictPath([(o.id, "") for o in twin.objects],
                               prompts=[self.object_messages(twin, query, o.id, lines) for o in twin.objects],
                               texts=lines)
        if self.options.target != "path":
            raise DataError(None, "decoding", "'verdicts' needs verdicts to force: format.options.target: path "
                            f"or object (this format's target is {self.options.target!r})")
        return VerdictPath([(o.id, self._head(o)) for o in twin.objects], texts=object_lines(twin, self.options))

    def parse(self, text: str, twin: DigitalTwin) -> Decoded:
        return Decoded(parse_compact(text, twin.ids))

    def budget(self, twin: DigitalTwin) -> int:
        """Answer: ~4 tokens per id; path: ~14 per object with the echoed description, 5 without; object: 2."""
        if self.per_object:
            return 2
        per = 4 if self.options.target == "answer" else (14 if self.options.echo else 5)
        return linear_budget(self.config, twin, per, 16)


register_format(NAME, CompactFormat)
