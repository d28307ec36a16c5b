"""The compact twin format: a short, line-per-object rendering of a twin for small base models.

JSON(D) with the project's spatial text costs about 35-50 tokens per object plus a 150-token system
prompt; a 22M-parameter model on a CPU cannot learn from that in minutes (experiments/RESULTS.md).
The compact format keeps the same information in fewer tokens::

    query: the largest circle
    0: a small red circle, at 25 36, area 1.6
    1: a large blue circle, at 135 125, area 7.4
    ...

and the answer is one line ``Answer: [1]`` (parsed with dtwinseg.parsing.parse_indices). The strategy
plugs into :class:`dtwinseg.reasoning.LLMReasoner` like select / sftdt / score; training rows for it are
built with the same plain chat layout (``compact_example``), so training and inference see identical text.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from dtwinseg.parsing import parse_indices
from dtwinseg.reasoning.reasoner import Decoded
from dtwinseg.twin import DigitalTwin


@dataclass
class CompactConfig:
    """position: "centre" (box centre x y in pixels: 2 numbers, default), "box" (x_min y_min x_max y_max)
    or "none". areas: write the area (% of the image, rounded to 0.1). system: optional system message
    (empty: none, the shortest prompt). id_position: "first" (``0: a red circle, ...``) or "last"
    (``a red circle, ..., id 0``): with causal attention an id written after its description (and after
    the query) has a hidden state that has seen both, which a small decoder learns to point at faster
    (experiments/RESULTS.md)."""

    position: str = "centre"
    id_position: str = "first"
    areas: bool = True
    system: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def compact_twin_text(twin: DigitalTwin, cfg: CompactConfig | None = None) -> str:
    """One line per object: ``<id>: <semantic>[, at cx cy | , box x0 y0 x1 y1][, area A]`` (id_position
    "first") or ``<semantic>[...][, area A], id <id>`` (id_position "last")."""
    cfg = cfg or CompactConfig()
    if cfg.id_position not in ("first", "last"):
        raise ValueError(f"CompactConfig.id_position must be first or last, got {cfg.id_position!r}")
    lines = []
    for o in twin.objects:
        line = f"{o.id}: {o.semantic or 'object'}" if cfg.id_position == "first" else (o.semantic or "object")
        x0, y0, x1, y1 = (int(round(v)) for v in o.bbox)
        if cfg.position == "centre":
            line += f", at {(x0 + x1) // 2} {(y0 + y1) // 2}"
        elif cfg.position == "box":
            line += f", box {x0} {y0} {x1} {y1}"
        elif cfg.position != "none":
            raise ValueError(f"CompactConfig.position must be centre, box or none, got {cfg.position!r}")
        if cfg.areas:
            line += f", area {o.area:.1f}"
        if cfg.id_position == "last":
            line += f", id {o.id}"
        lines.append(line)
    return "\n".join(lines)


def compact_messages(twin: DigitalTwin, query: str, cfg: CompactConfig | None = None) -> list[dict]:
    """Chat messages of the compact format (an optional system message, then the user message)."""
    cfg = cfg or CompactConfig()
    user = f"query: {query}\n{compact_twin_text(twin, cfg)}"
    msgs = [{"role": "system", "content": cfg.system}] if cfg.system else []
    return msgs + [{"role": "user", "content": user}]


def compact_answer(ids: list[int]) -> tuple[str, tuple[int, int]]:
    """The target text ``Answer: [i, j]`` and the character span of the id list in it."""
    lst = "[" + ", ".join(str(int(i)) for i in sorted(ids)) + "]"
    text = f"Answer: {lst}"
    return text, (len(text) - len(lst), len(text))


@dataclass
class CompactStrategy:
    """Reasoning strategy over the compact format (``name`` = "compact")."""

    cfg: CompactConfig
    name: str = "compact"

    def messages(self, twin: DigitalTwin, query: str) -> list[dict]:
        return compact_messages(twin, query, self.cfg)

    def decode(self, text: str, twin: DigitalTwin) -> Decoded:
        return Decoded(parse_indices(text, twin.ids))
