"""Checkpoint specs of ``dtwinseg eval --checkpoint``.

Forms (optionally prefixed ``NAME=`` to label the checkpoint in reports, e.g. ``sftdt=runs/x/adapter``):

    runs/sft/adapter        a peft adapter folder (adapter_config.json); its base model is the
                            adapter's ``base_model_name_or_path`` (the reasoning config's ``model``
                            only when the adapter records none)
    runs/full/model         a local model folder (config.json)
    package:MOD/sub/path    a folder inside an installed Python package (e.g. the shipped MiniLM)
    openai:MODEL            an OpenAI-compatible API model (base_url / key variable from the config)
    baseline:KIND[:MODEL]   an untrained picker: random, largest, embedding[:MODEL], constrained[:MODEL]
                            (eval/baselines.py)
    ORG/NAME, hf:ORG/NAME   a Hugging Face Hub id (when not a local path): a full model, or a peft
                            adapter (downloaded; its base from its adapter_config.json). HF_HUB_OFFLINE
                            is respected; offline, an id missing from the cache is a one-line error

The backend of the reasoning config is kept for local checkpoints (``transformers`` or ``vllm``);
``openai:`` switches to the API backend. Labels default to the folder name (``parent-name`` when the
folder is called ``adapter`` / ``model`` / ``final``) or ``openai-MODEL``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dtwinseg.base_models import is_hub_id, resolve_hub_model, resolve_model_path
from dtwinseg.reasoning import ReasoningConfig, adapter_base

_LABEL_RE = re.compile(r"^([A-Za-z0-9_.-]+)=(.+)$")
_GENERIC = {"adapter", "model", "final", "checkpoint", "output"}


@dataclass
class Checkpoint:
    """One thing to evaluate: a label, the spec it came from, its reasoning config, and optionally a
    ready reasoner (tests, custom code) that replaces the one the config would build."""

    label: str
    spec: str
    cfg: ReasoningConfig
    reasoner: Any = None

    def describe(self) -> dict:
        """What reports show about it (no secrets: the config holds only the key's variable name); ``format``
        is the reasoning format's name (:func:`recorded_format` reads it back, from older files too)."""
        return {"spec": self.spec, "format": self.cfg.format_name, "backend": self.cfg.backend,
                "model": self.cfg.model, "adapter": self.cfg.adapter}


def recorded_format(desc: dict) -> str | None:
    """The reasoning format's name a checkpoint's description, identity or metrics entry records: ``format``,
    or ``strategy`` in files written before the format had that one name."""
    name = desc.get("format", desc.get("strategy"))
    return name if isinstance(name, str) else None


def _default_label(path: str) -> str:
    p = Path(path.rstrip("/"))
    name = p.name
    if name in _GENERIC and p.parent.name:
        name = f"{p.parent.name}-{name}"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "checkpoint"


def parse_checkpoint(spec: str, base: ReasoningConfig) -> Checkpoint:
    """The checkpoint a spec names, with ``base`` (the reasoning config) adjusted to it."""
    label = None
    m = _LABEL_RE.match(spec)
    if m and not os.path.exists(spec):
        label, spec_body = m.group(1), m.group(2)
    else:
        spec_body = spec
    if spec_body.startswith("baseline:"):  # untrained pickers (eval/baselines.py)
        from dtwinseg.eval.baselines import parse_baseline

        cfg, picker = parse_baseline(spec_body, base)
        return Checkpoint(label or spec_body.split(":")[1], spec, cfg, reasoner=picker)
    if spec_body.startswith("openai:"):
        model = spec_body[len("openai:"):]
        cfg = base.replace(backend="openai", model=model, adapter=None)
        return Checkpoint(label or f"openai-{re.sub(r'[^A-Za-z0-9_.-]', '_', model)}", spec, cfg)
    backend = base.backend if base.backend in ("transformers", "vllm") else "transformers"
    hub = spec_body[3:] if spec_body.startswith("hf:") else spec_body if is_hub_id(spec_body) else None
    if hub is not None:
        kind, where = resolve_hub_model(hub)
        if kind == "model":
            return Checkpoint(label or _default_label(hub), spec, base.replace(backend=backend, model=hub,
                                                                             adapter=None))
        spec_body, label = where, label or _default_label(hub)
    path = resolve_model_path(spec_body)
    if os.path.isfile(os.path.join(path, "adapter_config.json")):
        try:
            model = adapter_base(path)
        except ValueError:  # DataError: no base recorded in the adapter
            if not base.model:
                raise
            model = base.model
        cfg = base.replace(backend=backend, model=resolve_model_path(model), adapter=path)
    elif os.path.isfile(os.path.join(path, "config.json")):
        cfg = base.replace(backend=backend, model=path, adapter=None)
    else:
        raise FileNotFoundError(
            f"checkpoint {spec!r}: {path} holds neither adapter_config.json (peft adapter) nor config.json "
            "(model); use openai:MODEL or hf:ORG/NAME for remote models")
    return Checkpoint(label or _default_label(spec_body), spec, cfg)


def parse_checkpoints(specs: list[str], base: ReasoningConfig) -> list[Checkpoint]:
    """Parse every spec; labels must be unique (use NAME=SPEC to disambiguate)."""
    cks = [parse_checkpoint(s, base) for s in specs]
    labels = [c.label for c in cks]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ValueError(f"duplicate checkpoint labels {dup}: name them with NAME=SPEC")
    return cks
