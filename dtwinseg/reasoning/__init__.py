"""Reasoning over Digital Twins: strategies (select / sftdt / score) over LLM backends
(transformers / openai / vllm). See :class:`ReasoningConfig` for every knob."""

from dtwinseg.reasoning.backends import (
    GenerationFailure,
    LLMBackend,
    OpenAIBackend,
    TransformersBackend,
    VLLMBackend,
    adapter_base,
    load_causal_lm,
    make_backend,
)
from dtwinseg.reasoning.config import BACKENDS, STRATEGIES, ReasoningConfig
from dtwinseg.reasoning.reasoner import (
    LLMReasoner,
    Reasoner,
    ReasoningOutput,
    ScoreStrategy,
    SelectStrategy,
    SFTDTStrategy,
    build_reasoner,
    make_strategy,
)

__all__ = [
    "BACKENDS", "STRATEGIES", "GenerationFailure", "LLMBackend", "LLMReasoner", "OpenAIBackend", "Reasoner",
    "ReasoningConfig", "ReasoningOutput", "SFTDTStrategy", "ScoreStrategy", "SelectStrategy",
    "TransformersBackend", "VLLMBackend", "adapter_base", "build_reasoner", "load_causal_lm", "make_backend",
    "make_strategy",
]
