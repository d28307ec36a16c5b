"""Reasoners: (twin, query) pairs -> object ids, through a strategy over an LLM backend.

A strategy turns a twin and a query into chat messages and an answer text back into ids:

- ``select``: :func:`dtwinseg.prompting.select_messages` + :func:`dtwinseg.parsing.parse_indices`;
- ``sftdt``: ``dtwinseg.paths.sftdt_messages`` + ``dtwinseg.paths.parse_path_output`` (the same
  renderer/parser the SFTDT training data uses);
- ``score``: :func:`dtwinseg.prompting.score_messages` + :func:`dtwinseg.parsing.parse_scores`, then
  a rerank: the best object, or every object within ``score_margin`` of the best.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from dtwinseg.parsing import ParseResult, parse_indices, parse_scores
from dtwinseg.paths import parse_path_output, sftdt_messages
from dtwinseg.prompting import score_messages, select_messages
from dtwinseg.reasoning.backends import GenerationFailure, LLMBackend, make_backend
from dtwinseg.reasoning.config import ReasoningConfig
from dtwinseg.twin import DigitalTwin

Item = tuple[DigitalTwin, str]


@dataclass
class ReasoningOutput:
    """One answer.

    ids: chosen object ids (sorted, unique, all present in the twin); the prediction is their union.
    parse: how the answer text was read (ok / repaired / failed, notes).
    text: the raw answer text ("" when no generation happened or it failed).
    strategy: the strategy that produced it.
    scores: per-object scores (``score`` strategy only; unscored objects count as 0).
    error: a generation error (e.g. an API failure after retries), else None.
    """

    ids: list[int]
    parse: ParseResult
    text: str
    strategy: str
    scores: dict[int, float] | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"ids": self.ids, "parse": self.parse.to_dict(), "text": self.text,
                             "strategy": self.strategy}
        if self.scores is not None:
            d["scores"] = {str(k): v for k, v in self.scores.items()}
        if self.error:
            d["error"] = self.error
        return d


@runtime_checkable
class Reasoner(Protocol):
    """Anything that answers a batch of (twin, query) pairs, one output per item, in order."""

    def reason(self, items: Sequence[Item]) -> list[ReasoningOutput]: ...


# --- strategies --------------------------------------------------------------------------------
@dataclass
class Decoded:
    parse: ParseResult
    scores: dict[int, float] | None = None


class Strategy(Protocol):
    name: str

    def messages(self, twin: DigitalTwin, query: str) -> list[dict]: ...

    def decode(self, text: str, twin: DigitalTwin) -> Decoded: ...


@dataclass
class SelectStrategy:
    """Zero-shot DTwinSeger: ask for the ids that satisfy the query."""

    cfg: ReasoningConfig
    name: str = "select"

    def messages(self, twin: DigitalTwin, query: str) -> list[dict]:
        return select_messages(twin, query, self.cfg.spatial, self.cfg.prompt)

    def decode(self, text: str, twin: DigitalTwin) -> Decoded:
        return Decoded(parse_indices(text, twin.ids))


@dataclass
class SFTDTStrategy:
    """A fine-tuned model writes the reasoning path; the final answer gives the ids."""

    cfg: ReasoningConfig
    name: str = "sftdt"

    def messages(self, twin: DigitalTwin, query: str) -> list[dict]:
        return sftdt_messages(twin, query, spatial_cfg=self.cfg.spatial)

    def decode(self, text: str, twin: DigitalTwin) -> Decoded:
        try:
            return Decoded(parse_path_output(text, twin.ids).result)
        except Exception as e:  # noqa: BLE001 - a parser must never stop the run
            return Decoded(ParseResult("failed", [], [f"path parser error {type(e).__name__}"], text))


@dataclass
class ScoreStrategy:
    """Rea2Seg-style: score every object 0-10, rerank, keep the best (or all within a margin)."""

    cfg: ReasoningConfig
    name: str = "score"

    def messages(self, twin: DigitalTwin, query: str) -> list[dict]:
        return score_messages(twin, query, self.cfg.spatial, self.cfg.prompt)

    def decode(self, text: str, twin: DigitalTwin) -> Decoded:
        sp = parse_scores(text, twin.ids)
        if not sp.ok:
            return Decoded(ParseResult("failed", [], sp.notes, sp.raw), {})
        scores = {i: sp.scores.get(i, 0.0) for i in twin.ids}
        return Decoded(ParseResult(sp.status, self.rerank(scores), list(sp.notes), sp.raw), scores)

    def rerank(self, scores: dict[int, float]) -> list[int]:
        """Ids chosen from ``{id: score}``: best (ties -> lowest id) or all within the margin."""
        if not scores:
            return []
        best = max(scores.values())
        if best < self.cfg.score_min:
            return []
        if self.cfg.score_select == "best":
            return [min(i for i, s in scores.items() if s == best)]
        return sorted(i for i, s in scores.items() if s >= best - self.cfg.score_margin)


STRATEGY_CLASSES: dict[str, type] = {"select": SelectStrategy, "sftdt": SFTDTStrategy, "score": ScoreStrategy}


def make_strategy(cfg: ReasoningConfig) -> Strategy:
    return STRATEGY_CLASSES[cfg.strategy](cfg)


# --- the reasoner ------------------------------------------------------------------------------
class LLMReasoner:
    """Strategy + backend. Twins without objects get the empty answer without an LLM call."""

    def __init__(self, cfg: ReasoningConfig, backend: LLMBackend | None = None):
        self.cfg = cfg
        self.strategy = make_strategy(cfg)
        self.backend = backend if backend is not None else make_backend(cfg)

    def messages(self, twin: DigitalTwin, query: str) -> list[dict]:
        return self.strategy.messages(twin, query)

    def reason(self, items: Sequence[Item]) -> list[ReasoningOutput]:
        outputs: list[ReasoningOutput | None] = [None] * len(items)
        todo = []
        for k, (twin, _query) in enumerate(items):
            if len(twin) == 0:
                outputs[k] = ReasoningOutput([], ParseResult("ok", [], ["twin has no objects"]), "",
                                             self.strategy.name)
            else:
                todo.append(k)
        texts = self.backend.generate([self.messages(*items[k]) for k in todo]) if todo else []
        if len(texts) != len(todo):
            raise RuntimeError(f"backend {self.backend.name} returned {len(texts)} answers for {len(todo)}")
        for k, text in zip(todo, texts, strict=True):
            outputs[k] = self._output(text, items[k][0])
        return outputs  # type: ignore[return-value]

    def _output(self, text: str, twin: DigitalTwin) -> ReasoningOutput:
        if isinstance(text, GenerationFailure):
            parse = ParseResult("failed", [], [f"generation failed: {text.error}"], "")
            return ReasoningOutput([], parse, "", self.strategy.name, error=text.error)
        decoded = self.strategy.decode(text, twin)
        return ReasoningOutput(list(decoded.parse.ids), decoded.parse, str(text), self.strategy.name,
                               decoded.scores)


def build_reasoner(cfg: ReasoningConfig, backend: LLMBackend | None = None) -> LLMReasoner:
    """The reasoner a config describes (backend built from the config unless given)."""
    return LLMReasoner(cfg, backend)
