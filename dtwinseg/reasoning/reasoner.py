"""Reasoners: (twin, query) pairs -> object ids, through a reasoning format over an LLM backend.

The format (dtwinseg/formats/, named by ``ReasoningConfig.format_name``; YAML ``format:``) builds the
messages, sizes the generation budget and parses the answer; the backend generates. The same format objects build the
SFTDT training data, so what a model was trained on is what it is asked at inference.

Finish reasons: every output says why its generation ended, ``stop`` (the model ended it), ``length``
(it hit max_new_tokens: the answer is truncated and whatever was parsed from it is counted apart from
ordinary repairs), ``error`` (the backend failed) or ``empty`` (a twin without objects: no call).

Prompts: every prompt is :func:`dtwinseg.formats.base.fit_prompt` of the format, fitted to the model's
context exactly as build-sft fits the training prompts (the same context: ``format.context_tokens``, else
the model's own; the same token counts: the backend's tokenizer on the chat text), so the same twin gives
the same prompt. Objects it had to leave out are reported per answer (``objects_dropped``, ``dropped``);
the answer is read against the objects shown.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from dtwinseg.formats import Decoded, ReasoningFormat, build_format, check_same_format, load_format
from dtwinseg.formats.base import (
    DEFAULT_CONTEXT_TOKENS,
    FittedPrompt,
    estimate_tokens,
    find_format_file,
    fit_prompt,
)
from dtwinseg.io import DataError
from dtwinseg.parsing import ParseResult
from dtwinseg.reasoning.backends import GenerationFailure, LLMBackend, Truncated, make_backend
from dtwinseg.reasoning.config import ReasoningConfig
from dtwinseg.twin import DigitalTwin

Item = tuple[DigitalTwin, str]
FINISH_REASONS = ("stop", "length", "error", "empty")

__all__ = ["FINISH_REASONS", "Decoded", "LLMReasoner", "PromptFitter", "Reasoner", "ReasoningOutput",
           "check_trained_format", "make_format"]


@dataclass
class ReasoningOutput:
    """One answer.

    ids: chosen object ids (sorted, unique, all present in the twin); the prediction is their union.
    parse: how the answer text was read (ok / repaired / failed, notes).
    text: the raw answer text ("" when no generation happened or it failed).
    format_name: the name of the reasoning format that produced it.
    scores: per-object scores (score formats only; unscored objects count as 0).
    error: a generation error (e.g. an API failure after retries), else None.
    finish_reason: "stop", "length" (hit max_new_tokens: truncated), "error" or "empty" (no objects).
    dropped: ids of twin objects the prompt left out (its context could not hold them even in the leanest
        rendering; dtwinseg.formats.base.fit_prompt), [] normally.
    similarity: forced verdicts with a similarity prior: the prior's cosine similarity of the query to each
        object's line (ReasoningConfig.similarity_prior), else None.
    """

    ids: list[int]
    parse: ParseResult
    text: str
    format_name: str
    scores: dict[int, float] | None = None
    error: str | None = None
    finish_reason: str = "stop"
    dropped: list[int] = field(default_factory=list)
    similarity: dict[int, float] | None = None

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"

    @property
    def objects_dropped(self) -> int:
        return len(self.dropped)

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"ids": self.ids, "parse": self.parse.to_dict(), "text": self.text,
                             "format": self.format_name, "finish_reason": self.finish_reason}
        if self.scores is not None:
            d["scores"] = {str(k): v for k, v in self.scores.items()}
        if self.error:
            d["error"] = self.error
        if self.dropped:
            d["objects_dropped"], d["dropped"] = len(self.dropped), list(self.dropped)
        return d


@runtime_checkable
class Reasoner(Protocol):
    """Anything that answers a batch of (twin, query) pairs, one output per item, in order."""

    def reason(self, items: Sequence[Item]) -> list[ReasoningOutput]: ...


def make_format(cfg: ReasoningConfig) -> ReasoningFormat:
    """The reasoning format ``cfg.format_name`` names, configured by ``cfg.format``."""
    return build_format(str(cfg.format_name), cfg.format)


def check_trained_format(cfg: ReasoningConfig) -> None:
    """Refuse (one-line DataError) a format that differs from the format.json saved beside the adapter or
    the model (training copies the dataset's format.json there)."""
    for folder in (cfg.adapter, cfg.model):
        if folder and os.path.isdir(folder) and find_format_file(folder) is not None:
            check_same_format(load_format(folder), (str(cfg.format_name), cfg.format), source=folder)
            return


class PromptFitter:
    """Fits a format's prompts to a backend's model (:func:`dtwinseg.formats.base.fit_prompt`).

    The context is ``format.context_tokens``, else the model's own (``backend.context_length()``, when the
    backend can tell), else DEFAULT_CONTEXT_TOKENS; tokens are counted by ``backend.count_prompt_tokens``
    (the model's tokenizer on its chat text), else estimated from the characters (an API model). Both are
    asked once, when the first prompt is fitted.
    """

    def __init__(self, fmt: ReasoningFormat, backend: Any):
        self.format, self.backend = fmt, backend
        self._context: int | None = None
        self._count: Any = None
        self.exact = False  # True when tokens are counted with the model's tokenizer

    def _resolve(self) -> None:
        if self._count is not None:
            return
        counter = getattr(self.backend, "count_prompt_tokens", None)
        model_context = getattr(self.backend, "context_length", None)
        context = self.format.config.context_tokens
        if context is None and callable(model_context):
            context = model_context()
        self._context = int(context or DEFAULT_CONTEXT_TOKENS)
        self.exact = callable(counter)
        self._count = counter if callable(counter) else estimate_tokens

    @property
    def context(self) -> int:
        self._resolve()
        assert self._context is not None
        return self._context

    def __call__(self, twin: DigitalTwin, query: str) -> FittedPrompt:
        self._resolve()
        return fit_prompt(self.format, twin, query, context=self._context, count=self._count)


def _takes_budget(backend: LLMBackend) -> bool:
    """True when ``backend.generate`` accepts per-conversation ``max_new_tokens`` (ours do)."""
    try:
        return "max_new_tokens" in inspect.signature(backend.generate).parameters
    except (TypeError, ValueError):
        return False


def answer_empty_twins(items: Sequence[Item], format_name: str) -> tuple[list[ReasoningOutput | None], list[int]]:
    """(outputs with the empty answer filled in for twins without objects, positions still to answer)."""
    outputs: list[ReasoningOutput | None] = [None] * len(items)
    todo = []
    for k, (twin, _query) in enumerate(items):
        if len(twin) == 0:
            outputs[k] = ReasoningOutput([], ParseResult("ok", [], ["twin has no objects"]), "", format_name,
                                         finish_reason="empty")
        else:
            todo.append(k)
    return outputs, todo


def _decode(fmt: ReasoningFormat, text: str, twin: DigitalTwin) -> Decoded:
    """``fmt.parse``; a parser bug is a failed parse."""
    try:
        return fmt.parse(text, twin)
    except Exception as e:  # noqa: BLE001 - a parser must never stop the run
        return Decoded(ParseResult("failed", [], [f"parser error {type(e).__name__}"], text))


# --- the reasoner ------------------------------------------------------------------------------
class LLMReasoner:
    """Format + backend. Twins without objects get the empty answer without an LLM call.

    ``format``: the reasoning format object (:func:`make_format` of the config).
    """

    def __init__(self, cfg: ReasoningConfig, backend: LLMBackend | None = None):
        self.cfg = cfg
        check_trained_format(cfg)
        self.format = make_format(cfg)
        if self.format.per_object:
            raise DataError(None, "decoding", f"the {cfg.format_name} format's per-object target judges one "
                            "object per prompt: read it with decoding: verdicts")
        self.backend = backend if backend is not None else make_backend(cfg)
        self._budgeted = _takes_budget(self.backend)
        self.fit = PromptFitter(self.format, self.backend)

    def messages(self, twin: DigitalTwin, query: str) -> list[dict]:
        """The prompt for a twin and query, fitted to the model's context (as build-sft fits it)."""
        return self.fit(twin, query).messages

    def budget(self, twin: DigitalTwin, fitted: FittedPrompt | None = None) -> int:
        """max_new_tokens for this twin: the config's integer, or the format's estimate for the objects shown
        under ``max_new_tokens_cap`` and, when the prompt's tokens were counted with the model's tokenizer,
        under the room the prompt leaves in the context."""
        if self.cfg.max_new_tokens != "auto":
            return int(self.cfg.max_new_tokens)
        shown = fitted.twin if fitted is not None else twin
        fmt = fitted.format if fitted is not None else self.format  # filled or leaner: its own estimate
        need = min(int(fmt.budget(shown)), int(self.cfg.max_new_tokens_cap))
        if fitted is not None and self.fit.exact:
            need = min(need, self.fit.context - fitted.tokens)
        return max(1, need)

    def reason(self, items: Sequence[Item]) -> list[ReasoningOutput]:
        outputs, todo = answer_empty_twins(items, self.format.name)
        fitted = [self.fit(*items[k]) for k in todo]
        texts = self._generate(fitted) if todo else []
        if len(texts) != len(todo):
            raise RuntimeError(f"backend {self.backend.name} returned {len(texts)} answers for {len(todo)}")
        for k, text, f in zip(todo, texts, fitted, strict=True):
            outputs[k] = self._output(text, f)
        return outputs  # type: ignore[return-value]

    def _generate(self, fitted: Sequence[FittedPrompt]) -> list[str]:
        conversations = [f.messages for f in fitted]
        if not self._budgeted:
            return self.backend.generate(conversations)
        budgets = [self.budget(f.twin, f) for f in fitted]
        return self.backend.generate(conversations, max_new_tokens=budgets)  # type: ignore[call-arg]

    def _output(self, text: str, fitted: FittedPrompt) -> ReasoningOutput:
        dropped = list(fitted.dropped)
        if isinstance(text, GenerationFailure):
            parse = ParseResult("failed", [], [f"generation failed: {text.error}"], "")
            return ReasoningOutput([], parse, "", self.format.name, error=text.error, finish_reason="error",
                                   dropped=dropped)
        decoded = _decode(self.format, text, fitted.twin)
        finish = "length" if isinstance(text, Truncated) else "stop"
        if finish == "length":
            decoded.parse.notes.insert(0, f"generation hit max_new_tokens ({text.budget}): the answer is truncated")
        if dropped:
            decoded.parse.notes.append(f"{len(dropped)} object(s) left out of the prompt to fit the context")
        return ReasoningOutput(list(decoded.parse.ids), decoded.parse, str(text), self.format.name,
                               decoded.scores, finish_reason=finish, dropped=dropped)
