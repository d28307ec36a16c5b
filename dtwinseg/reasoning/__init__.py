"""Reasoning over Digital Twins: a reasoning format (dtwinseg/formats/: select / sftdt / score / ...) over
an LLM backend (transformers / openai / vllm). See :class:`ReasoningConfig` for every knob."""

from dtwinseg.reasoning.backends import (
    GenerationFailure,
    LLMBackend,
    OpenAIBackend,
    TransformersBackend,
    Truncated,
    VLLMBackend,
    adapter_base,
    load_causal_lm,
    make_backend,
)
from dtwinseg.reasoning.config import BACKENDS, ReasoningConfig
from dtwinseg.reasoning.reasoner import (
    FINISH_REASONS,
    LLMReasoner,
    Reasoner,
    ReasoningOutput,
    make_format,
)
from dtwinseg.reasoning.verdicts import VerdictReasoner, build_reasoner

__all__ = [
    "BACKENDS", "FINISH_REASONS", "GenerationFailure", "LLMBackend", "LLMReasoner", "OpenAIBackend", "Reasoner",
    "ReasoningConfig", "ReasoningOutput", "TransformersBackend", "Truncated", "VLLMBackend", "VerdictReasoner", "adapter_base",
    "build_reasoner", "load_causal_lm", "make_backend", "make_format",
]
