"""ReasoningConfig: every knob of the reasoning stage, loadable from YAML (recipes/reasoning/*.yaml)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from dtwinseg.io import DataError, load_yaml
from dtwinseg.prompting import PromptConfig
from dtwinseg.spatial import SpatialConfig

STRATEGIES = ("select", "sftdt", "score")
BACKENDS = ("transformers", "openai", "vllm")


@dataclass
class ReasoningConfig:
    """How a twin + query becomes object ids.

    strategy: "select" (zero-shot: ids that satisfy the query; paper sec. 3.2), "sftdt" (generate the
        reasoning path D(1..K), parse the final answer; paper sec. 3.3) or "score" (Rea2Seg: score every
        object 0-10, rerank).
    backend: "transformers" (local model + optional LoRA adapter), "openai" (any OpenAI-compatible
        chat-completions endpoint) or "vllm" (optional extra; several LoRA adapters on one engine).
    model: local model folder or Hub id (transformers / vllm), or the API model name (openai).
    adapter: optional peft LoRA adapter folder applied on ``model`` (transformers / vllm).
    max_new_tokens: generation budget per answer. 512 fits select / score answers with short reasoning;
        SFTDT paths over large twins need more (recipes/reasoning/sftdt.yaml uses 2048).
    do_sample / temperature / top_p: sampling; the default is greedy decoding (deterministic).
    batch_size: conversations per generate() call (transformers / vllm); left-padded.
    dtype: "auto" (bf16 on CUDA, fp32 on CPU), "float32", "bfloat16" or "float16".
    device: "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    chat_template: "auto" (the tokenizer's template if it has one, else the plain format of
        dtwinseg.prompting.render_plain), "template" or "plain".
    model_kwargs: extra ``from_pretrained`` keyword arguments (e.g. attn_implementation).
    base_url: OpenAI-compatible endpoint (".../v1"); a local vLLM / SGLang server works too.
    api_key_env: name of the environment variable holding the API key (the key itself is never stored
        in a config, logged or written to a report).
    concurrency: parallel API requests (openai backend).
    max_retries / backoff_s / timeout_s: retries on HTTP 429 / 5xx / network errors with exponential
        backoff starting at ``backoff_s`` (a Retry-After header wins), and the per-request timeout.
    score_select: "best" (Rea2Seg: the single highest-scoring object; ties -> lowest id) or "margin"
        (every object whose score is within ``score_margin`` of the best, for group queries).
    score_margin: margin in score points (0-10 scale) for ``score_select: margin``.
    score_min: if the best score is below this, the answer is empty (0 = always answer).
    vllm_kwargs: extra ``vllm.LLM(...)`` arguments (gpu_memory_utilization, max_lora_rank, ...).
    spatial: the spatial text of JSON(D) (must match what a fine-tuned model was trained with).
    prompt: wording of the zero-shot prompts.
    """

    strategy: str = "select"
    backend: str = "transformers"
    model: str = ""
    adapter: str | None = None
    max_new_tokens: int = 512
    do_sample: bool = False
    temperature: float = 0.0
    top_p: float = 1.0
    batch_size: int = 8
    dtype: str = "auto"
    device: str = "auto"
    chat_template: str = "auto"
    model_kwargs: dict = field(default_factory=dict)
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    max_retries: int = 5
    backoff_s: float = 1.0
    timeout_s: float = 120.0
    score_select: str = "best"
    score_margin: float = 1.0
    score_min: float = 0.0
    vllm_kwargs: dict = field(default_factory=dict)
    spatial: SpatialConfig = field(default_factory=SpatialConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, path: str | os.PathLike | None = None) -> None:
        """Raise DataError naming the field when a value is out of its domain."""
        if self.strategy not in STRATEGIES:
            raise DataError(path, "strategy", f"{self.strategy!r} is not one of {', '.join(STRATEGIES)}")
        if self.backend not in BACKENDS:
            raise DataError(path, "backend", f"{self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.score_select not in ("best", "margin"):
            raise DataError(path, "score_select", f"{self.score_select!r} is not 'best' or 'margin'")
        if self.chat_template not in ("auto", "template", "plain"):
            raise DataError(path, "chat_template", f"{self.chat_template!r} is not auto, template or plain")
        for name in ("max_new_tokens", "batch_size", "concurrency"):
            if int(getattr(self, name)) < 1:
                raise DataError(path, name, "must be >= 1")
        if self.max_retries < 0 or self.backoff_s < 0 or self.timeout_s <= 0:
            raise DataError(path, "max_retries/backoff_s/timeout_s", "must be non-negative (timeout > 0)")

    # --- (de)serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain dict (YAML/JSON-safe). Holds no secret: only the *name* of the key variable."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, *, path: str | os.PathLike | None = None) -> ReasoningConfig:
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise DataError(path, unknown[0], f"unknown reasoning option; known: {', '.join(sorted(known))}")
        for name, sub in (("spatial", SpatialConfig), ("prompt", PromptConfig)):
            if name in d and not isinstance(d[name], sub):
                d[name] = _sub_config(sub, d[name], name, path)
        try:
            return cls(**d)
        except DataError as e:
            raise DataError(path, e.field, e.message) from None
        except (TypeError, ValueError) as e:
            raise DataError(path, None, str(e)) from None

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> ReasoningConfig:
        """Load a YAML file; a ``reasoning:`` section is used when present (pipeline configs)."""
        data = load_yaml(path)
        if isinstance(data.get("reasoning"), dict):
            data = data["reasoning"]
        return cls.from_dict(data, path=path)

    def replace(self, **changes: Any) -> ReasoningConfig:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)


def _sub_config(cls: type, value: Any, name: str, path: str | os.PathLike | None) -> Any:
    if value is None:
        return cls()
    if not isinstance(value, dict):
        raise DataError(path, name, f"expected a mapping, got {type(value).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise DataError(path, f"{name}.{unknown[0]}", f"unknown option; known: {', '.join(sorted(known))}")
    return cls(**value)
