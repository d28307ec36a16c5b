"""The folder a trained model is published as, and its upload: one home for ``dtwinseg publish``
(dtwinseg.workflows.publish, which adds the evaluation results) and ``training.push_to_hub`` (the end of
dtwinseg.training.run), so both upload the same complete folder.

The folder (:func:`stage`): the weights (adapter or full model), their configs, the tokenizer, ``format.json``
(the reasoning format the model was trained with: dtwinseg reads it back and refuses another format at
inference), ``recipe.yaml`` without any secret-named key, and ``README.md``, the model card
(:func:`build_card`: metadata with the base model and, when given, ``model-index`` eval results; text with
the LoRA settings, the recipe, a peft / transformers loading snippet and the ``dtwinseg eval`` command).
Staging never deletes anything: it writes into a folder it creates itself (:func:`staging_folder`). The
token comes from ``HF_TOKEN`` (or the huggingface-hub login) and is never printed or written. Staging
refuses outright when any file it would stage (or the recipe or card it writes) holds the value of a live
secret of the environment, in any form (:func:`refuse_live_secrets`): a key pasted into a recipe note never
reaches the Hub.

Base model: the adapter's ``base_model_name_or_path``. A *local path* there fails the Hub's metadata
validation (``base_model`` must be a Hub id), so it is left out of the card metadata (and named in the
card text) unless the Hub id it came from is given (``--base-model ORG/NAME``).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dtwinseg.config import is_secret_key, strip_secrets
from dtwinseg.formats import FORMAT_FILE
from dtwinseg.io import (
    MAX_CONFIG_BYTES,
    DataError,
    YAMLBudgetError,
    atomic_write_text,
    dump_yaml,
    parse_yaml,
    read_json,
)
from dtwinseg.redaction import find_live_secret

# Files of a model folder that belong on the Hub (weights, configs, tokenizer, the reasoning format);
# recipe.yaml is staged cleaned, README.md is written.
KEEP = re.compile(r"^(adapter_config\.json|adapter_model\.(safetensors|bin)|config\.json|"
                  r"model(-\d{5}-of-\d{5})?\.safetensors|model\.safetensors\.index\.json|"
                  r"pytorch_model(-\d{5}-of-\d{5})?\.bin|pytorch_model\.bin\.index\.json|"
                  r"tokenizer(_config)?\.json|special_tokens_map\.json|vocab\.(txt|json)|merges\.txt|"
                  r"chat_template\.(jinja|json)|added_tokens\.json|generation_config\.json|"
                  r"training_config\.json|tokenizer\.model|spiece\.model|sentencepiece\.bpe\.model|"
                  + re.escape(FORMAT_FILE) + r")$")
_RECIPE_NAMES = ("recipe.yaml", "recipe.yml")
_KEY_LINE = re.compile(r"^\s*-?\s*[\"']?([A-Za-z0-9_.-]{1,100})[\"']?\s*[:=]")
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


class PublishError(RuntimeError):
    """Publishing refused (existing revision without --force, missing files, ...)."""


def model_kind(folder: Path) -> str:
    """"adapter" (peft: adapter_config.json) or "model" (a full model: config.json); DataError otherwise."""
    if (folder / "adapter_config.json").is_file():
        return "adapter"
    if (folder / "config.json").is_file():
        return "model"
    if not folder.is_dir():
        raise DataError(folder, None, "not found")
    raise DataError(folder, None, "neither a peft adapter (adapter_config.json) nor a model folder (config.json)")


def hub_base_model(base: str | None, override: str | None) -> tuple[str | None, str | None]:
    """(metadata base_model, note for the card text). Local paths are not valid Hub ids."""
    if override:
        return override, None
    if not base:
        return None, "The base model is not recorded in adapter_config.json."
    if os.path.exists(base) or not HUB_ID.match(base):
        return None, (f"Base model: a local checkpoint (`{base}`), not a Hub id; load it from where you "
                      "keep it and apply this adapter with peft.")
    return base, None


def _recipe_file(folder: Path) -> Path | None:
    for cand in [folder / n for n in _RECIPE_NAMES] + [folder.parent / "recipe.yaml"]:
        if cand.is_file():
            return cand
    return None


def _parse_recipe(text: str) -> Any:
    """A recipe's YAML through the one budgeted parser (an alias bomb is refused, never expanded); None
    when it is not YAML."""
    import yaml

    try:
        return parse_yaml(text)
    except YAMLBudgetError as e:
        raise PublishError(f"recipe.yaml refused: the YAML {e}") from None
    except yaml.YAMLError:
        return None


def clean_recipe_text(text: str) -> str:
    """A recipe's YAML without any secret-named key (parsed and re-dumped; line-filtered if unparsable)."""
    data = _parse_recipe(text)
    if isinstance(data, dict):
        return dump_yaml(strip_secrets(data))
    kept = [ln for ln in text.splitlines() if not ((m := _KEY_LINE.match(ln)) and is_secret_key(m.group(1)))]
    return "\n".join(kept) + "\n"


def _read_recipe(path: Path) -> str:
    """A recipe file's text (any bytes decode; over the config size cap is refused, never parsed)."""
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise PublishError(f"{path}: larger than {MAX_CONFIG_BYTES:,} bytes, not a recipe; nothing was staged")
    return path.read_bytes().decode("utf-8", "replace")


def recipe_text(folder: Path) -> str | None:
    """The cleaned recipe of a model folder (its recipe.yaml, or its parent's), or None."""
    path = _recipe_file(folder)
    return clean_recipe_text(_read_recipe(path)) if path else None


def _recipe_base(folder: Path) -> str | None:
    """The base model a full fine-tune started from (its recipe's model.name_or_path), if recorded."""
    path = _recipe_file(folder)
    data = _parse_recipe(_read_recipe(path)) if path else None
    model = data.get("model") if isinstance(data, dict) else None
    return model.get("name_or_path") if isinstance(model, dict) else None


def _trained_format(folder: Path) -> str | None:
    """The format name recorded in the folder's format.json, if any."""
    path = folder / FORMAT_FILE
    try:
        data = read_json(path) if path.is_file() else None
    except DataError:
        return None
    return data.get("format") if isinstance(data, dict) and isinstance(data.get("format"), str) else None


def use_command(repo_id: str, format_name: str = "sftdt", *, format_recorded: bool = False) -> str:
    """The card's "Use" command: evaluate this model (a Hub id, or a local folder in its place); with a
    format.json published beside it, the format is read back from it (--format-from), else named."""
    fmt = f"--format-from {repo_id}" if format_recorded else f"--format {format_name}"
    return f"dtwinseg eval DATASET_SPEC --dt-cache CACHE --checkpoint {repo_id} {fmt} --out runs/eval"


def load_snippet(repo_id: str, kind: str) -> str:
    """Python that loads the published model with peft (adapter) or transformers (full model)."""
    if kind == "adapter":
        return (f'from peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n\n'
                f'model = AutoPeftModelForCausalLM.from_pretrained("{repo_id}")  # the base from adapter_config.json\n'
                f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")')
    return (f'from transformers import AutoModelForCausalLM, AutoTokenizer\n\n'
            f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")')


def build_card(model_dir: Path, repo_id: str, *, eval_results: list[Any] | None = None,
               evaluation: list[str] | None = None, format_name: str | None = None, base_model: str | None = None,
               dataset_note: str | None = None, license: str = "apache-2.0") -> Any:
    """The ModelCard (metadata + text) of a peft adapter or a full model folder. ``eval_results`` become the
    ``model-index``; ``evaluation`` is the markdown of an Evaluation section (both from dtwinseg publish)."""
    from huggingface_hub import ModelCard, ModelCardData

    kind = model_kind(model_dir)
    acfg = read_json(model_dir / "adapter_config.json") if kind == "adapter" else {}
    if not isinstance(acfg, dict):
        raise DataError(model_dir / "adapter_config.json", None, "expected a JSON object (a peft adapter config)")
    recorded = acfg.get("base_model_name_or_path") if kind == "adapter" else _recipe_base(model_dir)
    if recorded is not None and not isinstance(recorded, str):
        raise DataError(model_dir / ("adapter_config.json" if kind == "adapter" else "recipe.yaml"),
                        "base_model_name_or_path" if kind == "adapter" else "model.name_or_path",
                        f"expected a model path or Hub id, got {recorded!r}")
    base, base_note = hub_base_model(recorded, base_model)
    model_name = repo_id.split("/")[-1]
    tags = ["dtwinseg", "reasoning-segmentation", "digital-twin", "sftdt"] + (["lora"] if kind == "adapter" else [])
    data = ModelCardData(base_model=base, library_name="peft" if kind == "adapter" else "transformers",
                         license=license, model_name=model_name, eval_results=eval_results or None,
                         pipeline_tag="text-generation", tags=tags)
    what = "A LoRA adapter" if kind == "adapter" else "A causal language model (full fine-tune)"
    body = [f"# {model_name}", "",
            f"{what} trained with SFTDT (supervised fine-tuning on Digital Twin representations, DTwinSeger) "
            "for reasoning segmentation: given the Digital Twin of an image and a query, the model writes a "
            "reasoning path and the ids of the target objects; dtwinseg turns them into a mask.", "",
            "## Base model", "", (f"`{recorded}`" if recorded else "Not recorded.") +
            (f" (Hub id: `{base}`)" if base else ""), ""]
    if base_note:
        body += [base_note, ""]
    if kind == "adapter":
        body += ["## LoRA", "", f"rank {acfg.get('r')}, alpha {acfg.get('lora_alpha')}, dropout "
                 f"{acfg.get('lora_dropout')}, target modules {acfg.get('target_modules')}", ""]
    trained = _trained_format(model_dir)
    body += ["## Reasoning format", "", (f"`{trained}`, recorded in `{FORMAT_FILE}`: dtwinseg reads it when it loads "
                                         "this model and refuses a reasoning config of another format.")
             if trained else f"Not recorded (no `{FORMAT_FILE}` next to the model).", ""]
    recipe = recipe_text(model_dir)
    body += ["## Training recipe", ""]
    body += (["```yaml", recipe.rstrip(), "```", ""] if recipe else ["Not recorded next to the model.", ""])
    body += ["## Data", "", dataset_note or "Not recorded.", ""]
    body += evaluation or []
    body += ["## Use", "", "With dtwinseg installed, on twins cached by `dtwinseg build-dt` (DATASET_SPEC such as "
             "`reasonseg:/data/ReasonSeg:test`, CACHE the cache folder):",
             "", "```bash", use_command(repo_id, format_name or trained or "sftdt", format_recorded=bool(trained)),
             "```", "",
             f"In Python, with {'peft' if kind == 'adapter' else 'transformers'}:", "",
             "```python", load_snippet(repo_id, kind), "```", ""]
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)
    return ModelCard(content)


def staging_folder(model_dir: Path, stage_dir: Path | None) -> Path:
    """A folder this run creates and owns: ``stage_dir`` when it does not exist or is empty, else a fresh
    folder inside it; by default a fresh ``NAME-publish-*`` folder next to the model. Never one to empty."""
    if stage_dir is not None:
        stage_dir = Path(stage_dir)
        if stage_dir.resolve() == model_dir.resolve():
            raise PublishError("the staging folder must differ from the model folder")
        if not stage_dir.exists():
            stage_dir.mkdir(parents=True)
            return stage_dir
        if stage_dir.is_dir() and not any(stage_dir.iterdir()):
            return stage_dir
        if not stage_dir.is_dir():
            raise PublishError(f"--stage-dir {stage_dir} is a file")
        return Path(tempfile.mkdtemp(prefix=f"{model_dir.name}-publish-", dir=stage_dir))
    return Path(tempfile.mkdtemp(prefix=f"{model_dir.name}-publish-", dir=model_dir.parent))


MAX_SCANNED_BYTES = 256 << 20  # a file is scanned up to this size; of a .safetensors file, its JSON header


def _scanned_bytes(path: Path) -> bytes:
    """What of a file to look for secrets in: a safetensors file's header (its text; the rest is tensor
    data), else the file (up to MAX_SCANNED_BYTES)."""
    with open(path, "rb") as f:
        if path.suffix == ".safetensors":
            head = f.read(8)
            size = int.from_bytes(head, "little") if len(head) == 8 else 0
            return f.read(min(size, MAX_SCANNED_BYTES))
        return f.read(MAX_SCANNED_BYTES)


def refuse_live_secrets(files: list[Path], texts: dict[str, str]) -> None:
    """PublishError when a file about to be staged (or a text about to be written there: recipe, card)
    holds the value of a live secret of the environment (HF_TOKEN, an API key variable, ...) in any form
    (raw, escaped, URL-encoded, quoted: :func:`dtwinseg.redaction.find_live_secret`). Names the file and the
    variable, never the value."""
    for name, text in texts.items():
        if (var := find_live_secret(text)) is not None:
            raise PublishError(f"{name} would hold the value of ${var} (a live secret of this environment); "
                               "remove it from the recipe / card text, nothing was staged")
    for path in files:
        if (var := find_live_secret(_scanned_bytes(path))) is not None:
            raise PublishError(f"{path} holds the value of ${var} (a live secret of this environment); remove "
                               "it from the file, nothing was staged")


def stage(model_dir: Path, out: Path, card: Any) -> list[Path]:
    """Copy the publishable files of ``model_dir`` into ``out`` (a folder this run created), the recipe without
    secrets, and README.md (the card); returns the files. Nothing is ever deleted. Refused before anything is
    copied when a file or text holds a live secret (:func:`refuse_live_secrets`)."""
    kind = model_kind(model_dir)
    refuse_live_secrets([p for p in sorted(model_dir.iterdir()) if p.is_file() and KEEP.match(p.name)],
                        {"recipe.yaml": recipe_text(model_dir) or "", "README.md (the card)": str(card)})
    files = []
    for p in sorted(model_dir.iterdir()):
        if p.is_file() and KEEP.match(p.name) and not (out / p.name).exists():
            shutil.copy2(p, out / p.name)
            files.append(out / p.name)
    weights = ("adapter_model",) if kind == "adapter" else ("model", "pytorch_model")
    if not any(f.name.startswith(weights) and f.suffix in (".safetensors", ".bin") for f in files):
        raise PublishError(f"{model_dir}: no {'adapter_model' if kind == 'adapter' else 'model'} weights "
                           "(.safetensors / .bin) to publish")
    recipe = recipe_text(model_dir)
    if recipe is not None:
        files.append(atomic_write_text(out / "recipe.yaml", recipe))
    files.append(atomic_write_text(out / "README.md", str(card)))
    return files


def upload(out: Path, repo_id: str, *, private: bool = False, revision: str = "main", force: bool = False,
           api: Any = None, commit_message: str = "dtwinseg: model + model card",
           log: Callable[[str], None] = print) -> None:
    """Upload a staged folder to the model repository ``repo_id`` (created ``private`` when new); an existing
    revision with files is not overwritten without ``force``."""
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=os.environ.get("HF_TOKEN") or None)
    if api.repo_exists(repo_id, repo_type="model"):
        existing = [f for f in api.list_repo_files(repo_id, repo_type="model", revision=revision)
                    if f != ".gitattributes"]
        if existing and not force:
            raise PublishError(f"{repo_id}@{revision} already has {len(existing)} files; pass --force to "
                               "overwrite that revision")
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(folder_path=str(out), repo_id=repo_id, repo_type="model", revision=revision,
                      commit_message=commit_message)
    log(f"uploaded to https://huggingface.co/{repo_id}")


def push_trained(model_dir: Path, repo_id: str, *, private: bool = False, revision: str | None = None,
                 api: Any = None, log: Callable[[str], None] = print) -> str:
    """``training.push_to_hub``: stage the finished output folder (weights, tokenizer, recipe, format.json,
    card) in a temporary folder and upload it, as ``dtwinseg publish`` does (without eval results); returns
    the repository id. ``repo_id`` without an owner (``NAME``) goes to the token's user. The run's own
    repository revision is overwritten: the recipe asked for this push."""
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=os.environ.get("HF_TOKEN") or None)
    if "/" not in repo_id:
        repo_id = f"{api.whoami()['name']}/{repo_id}"
    if not HUB_ID.match(repo_id):
        raise PublishError(f"training.hub_model_id {repo_id!r}: expected ORG/NAME")
    card = build_card(model_dir, repo_id)
    with tempfile.TemporaryDirectory(prefix=f"{model_dir.name}-push-") as tmp:
        files = stage(model_dir, Path(tmp), card)
        log(f"pushing {len(files)} files of {model_dir} to {repo_id}")
        upload(Path(tmp), repo_id, private=private, revision=revision or "main", force=True, api=api,
               commit_message="dtwinseg train: model + model card", log=log)
    return repo_id
