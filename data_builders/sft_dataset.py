"""Seg-DT records -> a tokenised SFTDT dataset with per-token loss weights (paper eq. 10).

Each record becomes chat messages through a reasoning format (dtwinseg/formats/, ``format_name``: sftdt
by default, score for the Rea2Seg scorer, ...): the format's prompt (system, user: query + JSON(D(0))) and
its target as the assistant message (the path + ``Answer: [...]``, or the score table). The conversation
is rendered with the tokenizer's own chat template; a tokenizer without one uses the plain layout of
:func:`dtwinseg.prompting.render_plain` followed by its EOS (or SEP) token. The format name and its
:class:`~dtwinseg.formats.FormatConfig` are saved with the dataset (``format.json``) so inference reads
back exactly what the model was trained on (``format_from:`` in the reasoning config).

Per-token weights come from character spans mapped through the tokenizer's offset mapping. Every
character gets a kind: 0 prompt, 1 completion, 2 decision (object ids and keep/drop verdicts of each
step), 3 answer (the final id list). A token takes the highest kind among its characters (so a token
merging a quote and a digit counts as a decision token); a zero-width special token is completion when it
follows the prompt. Weights are ``[w_prompt, w_completion, w_decision, w_answer][kind]`` (defaults 0, 1,
2, 4: method.md sec. 3); labels are -100 where the weight is 0.

Prompts: each example's prompt is :func:`dtwinseg.formats.base.fit_prompt` of the format, exactly as the
reasoners build it at inference: fitted to the model's context (``format.context_tokens``, else the
tokenizer's / model's own, else 32,768) less the answer's reserve, with tokens counted by this tokenizer
on the chat text. Under that budget JSON(D) first loses relations, then number precision, and only past
the context objects (smallest first): they are left out of the prompt and of the path (counted per row
as ``removed_objects`` and in the stats as ``objects_dropped``); an example whose answer lost an object
is skipped (``answer_dropped``). The same twin and query give the same prompt here and at inference, byte
for byte. An example longer than ``max_length`` after that (the target outgrew its reserve, or
``max_length`` is below the context) is dropped and counted (``dropped_too_long``), never shortened: a
prompt shortened only for training would differ from the one the model is asked at inference. A record
the format cannot use (e.g. malformed ``object_scores``) is counted as failed with its reason; the build
goes on.

A per-object format (the compact format's ``target: object``) writes one example per twin object instead
(id ``<record id>#<object id>``); one over ``max_length`` is dropped and counted.

Dataset columns: ``id`` (str), ``messages`` (the conversation as ``[{"role", "content"}]``: the readable
text the tokens encode, for people and Hub viewers; the trainer reads the tokens), ``input_ids``,
``labels`` (int), ``loss_weights`` (float32), ``token_kinds`` (int8; lets the trainer re-weight without
re-tokenising), ``removed_objects`` (int).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from dtwinseg.data_builders.segdt import SegDTRecord

from dtwinseg.base_models import resolve_model_path
from dtwinseg.config import StrictConfig, build_dataclass
from dtwinseg.formats import (
    DEFAULT_LOSS_WEIGHTS,
    FormatConfig,
    LossWeights,
    ReasoningFormat,
    Target,
    build_format,
    read_format_spec,
    save_format,
)
from dtwinseg.formats.base import (
    ANSWER,
    COMPLETION,
    DECISION,
    DEFAULT_CONTEXT_TOKENS,
    PROMPT,
    fit_prompt,
    model_context_length,
    nest_format_name,
)
from dtwinseg.formats.sftdt import PathStep, ReasoningPath
from dtwinseg.io import DataError, atomic_write_json
from dtwinseg.prompting import chat_prompt, render_plain
from dtwinseg.runtime import progress as show_progress
from dtwinseg.spatial import SpatialConfig


@dataclass
class SFTDatasetConfig(StrictConfig):
    """How records become token sequences.

    max_length: longest example in tokens; longer ones are dropped and counted (module doc). None (the
        default): the context the prompts are fitted to; 0: no limit.
    on_overflow: "drop" (the only behaviour; "truncate_twin" is read as a deprecated alias: removing objects
        for training alone made training prompts differ from inference prompts, see the module doc).
    w_prompt, w_completion, w_decision, w_answer: loss weight per token kind (defaults 0, 1, 2, 4:
        dtwinseg.formats.LossWeights, method.md sec. 3).
    format_name: the reasoning format's name (dtwinseg.formats: "sftdt" paths, "score" tables, ...).
    format: its FormatConfig (system prompt, spatial text, include_spatial, reasoning, ...), saved with
        the dataset as format.json; a dict is read strictly. In a YAML file both are ``format: NAME`` or
        ``format: {name: NAME, <FormatConfig fields>}`` (dtwinseg.formats.read_format_spec; ``strategy:``
        read as the name's deprecated alias).
    """

    max_length: int | None = None
    on_overflow: str = "drop"
    w_prompt: float = DEFAULT_LOSS_WEIGHTS.prompt
    w_completion: float = DEFAULT_LOSS_WEIGHTS.completion
    w_decision: float = DEFAULT_LOSS_WEIGHTS.decision
    w_answer: float = DEFAULT_LOSS_WEIGHTS.answer
    format_name: str = "sftdt"
    format: FormatConfig = field(default_factory=FormatConfig)

    def __post_init__(self) -> None:
        if self.on_overflow not in ("truncate_twin", "drop"):
            raise ValueError(f"on_overflow must be 'drop' (or its deprecated alias 'truncate_twin'), got "
                             f"{self.on_overflow!r}")
        if self.max_length is not None and int(self.max_length) < 0:
            raise ValueError(f"max_length must be >= 0 (0: no limit), got {self.max_length}")
        if not isinstance(self.format, FormatConfig):
            self.format = FormatConfig.from_dict(self.format)
        build_format(self.format_name, self.format)  # unknown name / options: DataError now, not mid-build

    @classmethod
    def from_dict(cls, d: Any, *, path: str | os.PathLike | None = None) -> SFTDatasetConfig:
        """Strict (dtwinseg.config), the format named as ``format: NAME`` or ``format: {name: NAME, ...}``."""
        if d is not None and not isinstance(d, dict):
            raise DataError(path, None, f"expected a mapping, got {type(d).__name__}")
        spec = read_format_spec(d or {}, path)
        if spec.get("format") is None:
            spec.pop("format", None)
        return build_dataclass(cls, spec, path, cls.SECTION)

    def to_dict(self) -> dict:
        """Plain dict, the format as ``format: {name: NAME, <its options>}`` (what :meth:`from_dict` reads)."""
        return nest_format_name(super().to_dict())

    @property
    def loss_weights(self) -> LossWeights:
        return LossWeights.of(self)

    @property
    def kind_weights(self) -> np.ndarray:
        """float32 [4]: weight of token kinds prompt, completion, decision, answer."""
        return np.array(self.loss_weights.by_kind(), dtype=np.float32)

    def spatial_config(self) -> SpatialConfig:
        return self.format.spatial

    def reasoning_format(self) -> ReasoningFormat:
        return build_format(self.format_name, self.format)



def load_tokenizer(path_or_id: str) -> Any:
    """A fast tokenizer (offsets are required) from a folder, a Hub id, or ``package:...``."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_path(path_or_id))
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"{path_or_id}: a fast tokenizer is needed (offset mappings); got {type(tok).__name__}")
    return tok


def tokenizer_context(tokenizer: Any, path_or_id: str | None = None) -> int | None:
    """The model's context as the reasoners read it (dtwinseg.formats.base.model_context_length): the
    tokenizer's ``model_max_length``, else the config beside it (``path_or_id``), else None."""
    config = None
    if path_or_id is not None and model_context_length(tokenizer) is None:
        try:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(resolve_model_path(path_or_id))
        except Exception:  # noqa: BLE001 - a tokenizer-only folder has no config
            config = None
    return model_context_length(tokenizer, config)


def prompt_counter(tokenizer: Any) -> Any:
    """Tokens of a conversation's prompt as the model sees it (chat template, else the plain layout): what
    :func:`fit_prompt` counts, here and in the transformers backend."""
    def count(messages: list[dict]) -> int:
        return len(tokenizer(chat_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"])
    return count


# --- one conversation -> tokens ------------------------------------------------------------------------
def _conversation_text(tokenizer: Any, messages: list[dict], assistant: str) -> tuple[str, int, int, bool]:
    """(full text, index of the completion start, offset of the assistant text, append EOS id?)."""
    if getattr(tokenizer, "chat_template", None):
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        offset = full.rfind(assistant)
        if offset < 0:
            raise ValueError("the chat template rewrites the assistant message; cannot locate its spans")
        start = len(prompt) if full.startswith(prompt) and len(prompt) <= offset else offset
        return full, start, offset, False
    head = render_plain(messages[:-1])
    return head + assistant, len(head), len(head), True


def tokenize_conversation(tokenizer: Any, messages: list[dict], decision_spans: list[tuple[int, int]],
                          answer_spans: list[tuple[int, int]]) -> tuple[list[int], np.ndarray]:
    """Token ids of the conversation and the kind (0-3) of each token.

    ``decision_spans`` / ``answer_spans`` are character spans into the assistant message (the last one).
    """
    assistant = messages[-1]["content"]
    text, start, offset, add_eos = _conversation_text(tokenizer, messages, assistant)
    char_kind = np.zeros(len(text) + 1, dtype=np.int8)
    char_kind[start:] = COMPLETION
    for spans, kind in ((decision_spans, DECISION), (answer_spans, ANSWER)):
        for a, b in spans:
            char_kind[offset + a: offset + b] = kind
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    kinds = np.empty(len(ids) + int(add_eos), dtype=np.int8)
    for t, (s, e) in enumerate(enc["offset_mapping"]):
        kinds[t] = char_kind[s:e].max() if e > s else (COMPLETION if s >= start else PROMPT)
    if add_eos:
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        if eos is None:
            raise ValueError("tokenizer has neither a chat template nor an EOS/SEP token to end the answer")
        ids.append(int(eos))
        kinds[-1] = COMPLETION
    return ids, kinds


def record_target(record: SegDTRecord) -> Target:
    """What a Seg-DT record teaches: its answer, its path and (when build-segdt wrote them) the
    per-object scores from ground-truth overlap (``object_scores``)."""
    scores = record.extra.get("object_scores")
    if scores is not None and not isinstance(scores, dict):
        raise DataError(None, "object_scores", "expected {\"<id>\": score}")
    return Target(answer=list(record.path.answer), path=record.path, scores=scores, query=record.query)


def conversation(messages: list[dict], completion: Any) -> list[dict]:
    """The ``messages`` column: the prompt's messages and the completion as the assistant turn."""
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in messages] + \
        [{"role": "assistant", "content": completion.text}]


def tokenize_completion(tokenizer: Any, messages: list[dict], completion: Any) -> tuple[list[int], np.ndarray]:
    """Token ids and kinds of a prompt's messages followed by a format's Completion as the assistant turn."""
    return tokenize_conversation(tokenizer, messages + [{"role": "assistant", "content": completion.text}],
                                 completion.decision_spans, completion.answer_spans)


def dataset_row(row_id: str, ids: list[int], kinds: np.ndarray, cfg: SFTDatasetConfig, removed: int = 0,
                messages: list[dict] | None = None) -> dict:
    """One dataset row: weights from the token kinds, labels -100 where the weight is 0."""
    weights = cfg.kind_weights[kinds.astype(np.int64)]
    labels = [t if w > 0 else -100 for t, w in zip(ids, weights, strict=True)]
    return {"id": row_id, "messages": messages or [], "input_ids": ids, "labels": labels,
            "loss_weights": weights.tolist(), "token_kinds": kinds.tolist(), "removed_objects": removed}


class AnswerDropped(Exception):
    """The prompt had to leave out an object of the answer: the example cannot be trained on."""


def _shown_target(target: Target, shown: set[int]) -> Target:
    """The target over the objects a fitted prompt shows: every path step and the scores keep only them."""
    if not set(int(i) for i in target.answer) <= shown:
        raise AnswerDropped
    path = target.path
    if path is not None:
        steps = [PathStep({i: d for i, d in st.decisions.items() if i in shown}) for st in path.steps]
        path = ReasoningPath(steps, list(path.answer))
    scores = None if target.scores is None else {k: v for k, v in target.scores.items() if int(k) in shown}
    return Target(list(target.answer), path, scores, target.query)


def encode_record(record: SegDTRecord, tokenizer: Any, cfg: SFTDatasetConfig,
                  fmt: ReasoningFormat | None = None, context: int | None = None) -> dict | None:
    """One dataset row (prompt fitted as at inference: see the module doc), or None when it is longer than
    ``max_length``. ``context``: the model's context (None: the format's ``context_tokens``, else this
    tokenizer's, else 32,768). Raises AnswerDropped when the fitted prompt lost an answer object, and
    DataError when the format cannot use the record (e.g. malformed ``object_scores``)."""
    fmt = fmt or cfg.reasoning_format()
    context = context or fmt.config.context_tokens or model_context_length(tokenizer) or DEFAULT_CONTEXT_TOKENS
    fitted = fit_prompt(fmt, record.twin, record.query, context=context, count=prompt_counter(tokenizer))
    target = record_target(record)
    if fitted.dropped:
        target = _shown_target(target, set(fitted.twin.ids))
    completion = fitted.format.target(fitted.twin, target)
    ids, kinds = tokenize_completion(tokenizer, fitted.messages, completion)
    limit = context if cfg.max_length is None else cfg.max_length
    if limit and len(ids) > limit:
        return None
    return dataset_row(record.id, ids, kinds, cfg, fitted.objects_dropped, conversation(fitted.messages, completion))


def encode_object_rows(record: SegDTRecord, tokenizer: Any, cfg: SFTDatasetConfig,
                       fmt: ReasoningFormat, context: int | None = None) -> tuple[list[dict], int]:
    """Rows of a per-object format (``fmt.per_object``: one example per twin object, id ``<record>#<object>``)
    and how many were over ``max_length`` (dropped: the twin is not truncated for them)."""
    rows, dropped = [], 0
    for obj, messages, completion in fmt.object_examples(record.twin, record.query, record_target(record)):
        ids, kinds = tokenize_completion(tokenizer, messages, completion)
        limit = cfg.max_length if cfg.max_length is not None else context
        if limit and len(ids) > limit:
            dropped += 1
            continue
        rows.append(dataset_row(f"{record.id}#{obj}", ids, kinds, cfg, messages=conversation(messages, completion)))
    return rows, dropped


def build_sft_dataset(records: Iterable[SegDTRecord], tokenizer: Any, cfg: SFTDatasetConfig | None = None,
                      *, progress: bool = False, total: int | None = None,
                      context: int | None = None) -> tuple[Any, dict]:
    """(``datasets.Dataset``, stats) for the records. Stats: examples written; ``truncated_twin`` (examples
    whose prompt left objects out) and ``objects_dropped`` (how many in all); ``answer_dropped`` (skipped:
    an answer object left out); ``dropped_too_long``; ``failed``; ``context`` (what prompts were fitted to).
    ``context``: the model's context (None: the format's ``context_tokens``, else the tokenizer's)."""
    from datasets import Dataset, Features, Sequence, Value

    cfg = cfg or SFTDatasetConfig()
    fmt = cfg.reasoning_format()
    context = context or fmt.config.context_tokens or model_context_length(tokenizer) or DEFAULT_CONTEXT_TOKENS
    per_object = fmt.per_object
    rows: list[dict] = []
    stats: dict[str, Any] = {"records": 0, "examples": 0, "truncated_twin": 0, "objects_dropped": 0,
                             "answer_dropped": 0, "dropped_too_long": 0, "failed": 0, "context": int(context),
                             "dropped_ids": [], "failures": []}
    for rec in show_progress(records, "tokenising", progress, total):
        stats["records"] += 1
        try:
            if per_object:
                obj_rows, dropped = encode_object_rows(rec, tokenizer, cfg, fmt, context)
                rows.extend(obj_rows)
                stats["dropped_too_long"] += dropped
                if dropped:
                    stats["dropped_ids"].append(rec.id)
                continue
            row = encode_record(rec, tokenizer, cfg, fmt, context)
        except AnswerDropped:
            stats["answer_dropped"] += 1
            stats["dropped_ids"].append(rec.id)
            continue
        except DataError as e:  # one unusable record never stops the build
            stats["failed"] += 1
            stats["failures"].append({"id": rec.id, "error": f"field '{e.field}': {e.message}"})
            continue
        if row is None:
            stats["dropped_too_long"] += 1
            stats["dropped_ids"].append(rec.id)
            continue
        stats["truncated_twin"] += int(row["removed_objects"] > 0)
        stats["objects_dropped"] += int(row["removed_objects"])
        rows.append(row)
    stats["examples"] = len(rows)
    lengths = [len(r["input_ids"]) for r in rows]
    stats["max_tokens"] = max(lengths, default=0)
    stats["mean_tokens"] = float(np.mean(lengths)) if lengths else 0.0
    features = Features({"id": Value("string"),
                         "messages": [{"role": Value("string"), "content": Value("string")}],
                         "input_ids": Sequence(Value("int32")),
                         "labels": Sequence(Value("int32")), "loss_weights": Sequence(Value("float32")),
                         "token_kinds": Sequence(Value("int8")), "removed_objects": Value("int32")})
    empty = {k: [] for k in features}
    ds = Dataset.from_list(rows, features=features) if rows else Dataset.from_dict(empty, features=features)
    return ds, stats


def save_dataset(ds: Any, out: str | os.PathLike, meta: dict, cfg: SFTDatasetConfig | None = None) -> Path:
    """``save_to_disk`` into a temporary sibling folder, then swap it in; ``meta`` -> out/build.json and,
    with ``cfg``, its format -> out/format.json (what ``format_from:`` reads back at inference)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        ds.save_to_disk(str(tmp / "data"))
        atomic_write_json(tmp / "data" / "build.json", meta)
        if cfg is not None:
            save_format(tmp / "data", cfg.format_name, cfg.format)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp / "data", out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp / "data", out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# --- the Hub: push a built dataset, train from a pushed one ---------------------------------------------
HUB_FILES = ("format.json", "build.json")  # pushed next to the data: format.json is what inference checks


def push_dataset(ds: Any, folder: str | os.PathLike, repo_id: str, *, private: bool, api: Any = None) -> None:
    """Push a build-sft dataset to the Hub dataset repository ``repo_id`` (created ``private`` or public),
    with its ``format.json`` and ``build.json``, so a recipe can train from ``data.train: repo_id`` and
    inference can check the format. The token comes from HF_TOKEN or the login cache."""
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=os.environ.get("HF_TOKEN") or None)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    ds.push_to_hub(repo_id, private=private, token=getattr(api, "token", None))
    for name in HUB_FILES:
        path = Path(folder) / name
        if path.is_file():
            api.upload_file(path_or_fileobj=str(path), path_in_repo=name, repo_id=repo_id, repo_type="dataset",
                            commit_message=f"dtwinseg build-sft: {name}")


def dataset_folder(name: str | os.PathLike, field: str = "data.train") -> Path:
    """The local folder of a training dataset: ``name`` itself when it is a folder, else a Hub dataset id
    ``ORG/NAME`` downloaded (or found in the Hugging Face cache; HF_HUB_OFFLINE is respected). DataError
    naming ``field`` when it is neither."""
    from dtwinseg.base_models import is_hub_id

    if Path(name).is_dir() or not is_hub_id(str(name)):
        return Path(name)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(name), repo_type="dataset"))
    except Exception as e:  # noqa: BLE001 - offline and not cached, no such repository, gated, network
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        why = ("it is not in the local Hugging Face cache and HF_HUB_OFFLINE is set" if offline else
               f"it cannot be downloaded: {' '.join(str(e).split())[:200]}")
        raise DataError(name, field, f"not found: not a folder written by dtwinseg build-sft, nor a Hub dataset "
                        f"id ({why})") from None


def load_sft_dataset(folder: str | os.PathLike) -> Any:
    """A build-sft dataset from its folder: ``save_to_disk``'s layout, or a Hub snapshot (parquet files)."""
    from datasets import load_dataset, load_from_disk

    folder = Path(folder)
    if (folder / "dataset_info.json").is_file() or (folder / "state.json").is_file():
        return load_from_disk(str(folder))
    shards = sorted(str(p) for p in folder.glob("data/train-*.parquet"))  # Dataset.push_to_hub's layout
    if shards:
        return load_dataset("parquet", data_files={"train": shards}, split="train")
    return load_dataset(str(folder), split="train")
