"""Reasoners: (twin, query) pairs -> object ids, through a reasoning format over an LLM backend.

The format (dtwinseg/formats/, chosen by ``ReasoningConfig.strategy``) builds the messages, sizes the
generation budget and parses the answer; the backend generates. The same format objects build the
SFTDT training data, so what a model was trained on is what it is asked at inference.

Finish reasons: every output says why its generation ended, ``stop`` (the model ended it), ``length``
(it hit max_new_tokens: the answer is truncated and whatever was parsed from it is counted apart from
ordinary repairs), ``error`` (the backend failed) or ``empty`` (a twin without objects: no call).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from dtwinseg.formats import Decoded, ReasoningFormat, build_format, check_same_format, load_format
from dtwinseg.formats.base import find_format_file
from dtwinseg.io import DataError
from dtwinseg.parsing import ParseResult
from dtwinseg.reasoning.backends import GenerationFailure, LLMBackend, Truncated, make_backend
from dtwinseg.reasoning.config import ReasoningConfig
from dtwinseg.twin import DigitalTwin

Item = tuple[DigitalTwin, str]
FINISH_REASONS = ("stop", "length", "error", "empty")

__all__ = ["FINISH_REASONS", "Decoded", "LLMReasoner", "Reasoner", "ReasoningOutput",
           "check_trained_format", "make_strategy"]


@dataclass
class ReasoningOutput:
    """One answer.

    ids: chosen object ids (sorted, unique, all present in the twin); the prediction is their union.
    parse: how the answer text was read (ok / repaired / failed, notes).
    text: the raw answer text ("" when no generation happened or it failed).
    strategy: the reasoning format that produced it.
    scores: per-object scores (score formats only; unscored objects count as 0).
    error: a generation error (e.g. an API failure after retries), else None.
    finish_reason: "stop", "length" (hit max_new_tokens: truncated), "error" or "empty" (no objects).
    """

    ids: list[int]
    parse: ParseResult
    text: str
    strategy: str
    scores: dict[int, float] | None = None
    error: str | None = None
    finish_reason: str = "stop"

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"ids": self.ids, "parse": self.parse.to_dict(), "text": self.text,
                             "strategy": self.strategy, "finish_reason": self.finish_reason}
        if self.scores is not None:
            d["scores"] = {str(k): v for k, v in self.scores.items()}
        if self.error:
            d["error"] = self.error
        return d


@runtime_checkable
class Reasoner(Protocol):
    """Anything that answers a batch of (twin, query) pairs, one output per item, in order."""

    def reason(self, items: Sequence[Item]) -> list[ReasoningOutput]: ...


def make_strategy(cfg: ReasoningConfig) -> ReasoningFormat:
    """The reasoning format ``cfg.strategy`` names, configured by ``cfg.format``."""
    return build_format(str(cfg.strategy), cfg.format)


def check_trained_format(cfg: ReasoningConfig) -> None:
    """Refuse (one-line DataError) a format that differs from the format.json saved beside the adapter or
    the model (training copies the dataset's format.json there)."""
    for folder in (cfg.adapter, cfg.model):
        if folder and os.path.isdir(folder) and find_format_file(folder) is not None:
            check_same_format(load_format(folder), (str(cfg.strategy), cfg.format), source=folder)
            return


def _takes_budget(backend: LLMBackend) -> bool:
    """True when ``backend.generate`` accepts per-conversation ``max_new_tokens`` (ours do)."""
    try:
        return "max_new_tokens" in inspect.signature(backend.generate).parameters
    except (TypeError, ValueError):
        return False


def answer_empty_twins(items: Sequence[Item], strategy: str) -> tuple[list[ReasoningOutput | None], list[int]]:
    """(outputs with the empty answer filled in for twins without objects, positions still to answer)."""
    outputs: list[ReasoningOutput | None] = [None] * len(items)
    todo = []
    for k, (twin, _query) in enumerate(items):
        if len(twin) == 0:
            outputs[k] = ReasoningOutput([], ParseResult("ok", [], ["twin has no objects"]), "", strategy,
                                         finish_reason="empty")
        else:
            todo.append(k)
    return outputs, todo


def _decode(fmt: Any, text: str, twin: DigitalTwin) -> Decoded:
    """fmt.parse (or a format written against the older ``decode`` name); a parser bug is a failed parse."""
    try:
        parse = getattr(fmt, "parse", None) or fmt.decode
        return parse(text, twin)
    except Exception as e:  # noqa: BLE001 - a parser must never stop the run
        return Decoded(ParseResult("failed", [], [f"parser error {type(e).__name__}"], text))


# --- the reasoner ------------------------------------------------------------------------------
class LLMReasoner:
    """Format + backend. Twins without objects get the empty answer without an LLM call.

    ``strategy`` is the format object (kept under its old name for callers that read ``.strategy.name``).
    """

    def __init__(self, cfg: ReasoningConfig, backend: LLMBackend | None = None):
        self.cfg = cfg
        check_trained_format(cfg)
        self.strategy = make_strategy(cfg)
        if getattr(self.strategy, "per_object", False):
            raise DataError(None, "decoding", f"the {cfg.strategy} format's per-object target judges one object "
                            "per prompt: read it with decoding: verdicts")
        self.backend = backend if backend is not None else make_backend(cfg)
        self._budgeted = _takes_budget(self.backend)

    @property
    def format(self) -> ReasoningFormat:
        return self.strategy

    def messages(self, twin: DigitalTwin, query: str) -> list[dict]:
        return self.strategy.messages(twin, query)

    def budget(self, twin: DigitalTwin) -> int:
        """max_new_tokens for this twin: the config's integer, or the format's estimate under the cap."""
        if self.cfg.max_new_tokens != "auto":
            return int(self.cfg.max_new_tokens)
        estimate = getattr(self.strategy, "budget", None)
        need = int(estimate(twin)) if estimate is not None else self.cfg.max_new_tokens_cap
        return max(1, min(need, int(self.cfg.max_new_tokens_cap)))

    def reason(self, items: Sequence[Item]) -> list[ReasoningOutput]:
        outputs, todo = answer_empty_twins(items, self.strategy.name)
        texts = self._generate([items[k] for k in todo]) if todo else []
        if len(texts) != len(todo):
            raise RuntimeError(f"backend {self.backend.name} returned {len(texts)} answers for {len(todo)}")
        for k, text in zip(todo, texts, strict=True):
            outputs[k] = self._output(text, items[k][0])
        return outputs  # type: ignore[return-value]

    def _generate(self, items: Sequence[Item]) -> list[str]:
        conversations = [self.messages(*item) for item in items]
        if not self._budgeted:
            return self.backend.generate(conversations)
        return self.backend.generate(conversations, max_new_tokens=[self.budget(t) for t, _ in items])  # type: ignore[call-arg]

    def _output(self, text: str, twin: DigitalTwin) -> ReasoningOutput:
        if isinstance(text, GenerationFailure):
            parse = ParseResult("failed", [], [f"generation failed: {text.error}"], "")
            return ReasoningOutput([], parse, "", self.strategy.name, error=text.error, finish_reason="error")
        decoded = _decode(self.strategy, text, twin)
        finish = "length" if isinstance(text, Truncated) else "stop"
        if finish == "length":
            decoded.parse.notes.insert(0, f"generation hit max_new_tokens ({text.budget}): the answer is truncated")
        return ReasoningOutput(list(decoded.parse.ids), decoded.parse, str(text), self.strategy.name,
                               decoded.scores, finish_reason=finish)
