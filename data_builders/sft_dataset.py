"""Seg-DT records -> a tokenised SFTDT dataset with per-token loss weights (paper eq. 10).

Each record becomes chat messages through a reasoning format (dtwinseg/formats/, ``strategy``: sftdt by
default, score for the Rea2Seg scorer, ...): the format's prompt (system, user: query + JSON(D(0))) and
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

Over-long examples (``max_length`` tokens) never lose the answer. Truncation rule (``on_overflow:
truncate_twin``, the default): remove from D(0), and from step 1 of the path, objects that step 1 drops
(without a path: objects outside the answer), smallest area first, fewest removed that make the example
fit (binary search); their spatial relations vanish with them (relations of the remaining objects are
recomputed). An example that does not fit even then, or any over-long example under ``on_overflow:
drop``, is dropped and counted. A record the format cannot use (e.g. malformed ``object_scores``) is
counted as failed with its reason; the build goes on.

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
from dtwinseg.config import StrictConfig
from dtwinseg.formats import (
    DEFAULT_LOSS_WEIGHTS,
    FormatConfig,
    LossWeights,
    ReasoningFormat,
    Target,
    build_format,
    save_format,
)
from dtwinseg.formats.base import ANSWER, COMPLETION, DECISION, PROMPT
from dtwinseg.formats.sftdt import PathStep, ReasoningPath
from dtwinseg.io import DataError, atomic_write_json
from dtwinseg.prompting import render_plain
from dtwinseg.runtime import progress as show_progress
from dtwinseg.spatial import SpatialConfig
from dtwinseg.twin import DigitalTwin


@dataclass
class SFTDatasetConfig(StrictConfig):
    """How records become token sequences.

    max_length: longest example in tokens (None: no limit). Default 4096 fits a 150-object twin of the
        default compact format with a Llama-3 tokenizer.
    on_overflow: "truncate_twin" (remove step-1-dropped objects, smallest first, see module doc) or "drop".
    w_prompt, w_completion, w_decision, w_answer: loss weight per token kind (defaults 0, 1, 2, 4:
        dtwinseg.formats.LossWeights, method.md sec. 3).
    strategy: the reasoning format (dtwinseg.formats: "sftdt" paths, "score" tables, ...).
    format: its FormatConfig (system prompt, spatial text, include_spatial, reasoning, ...), saved with
        the dataset as format.json; a dict is read strictly.
    """

    max_length: int | None = 4096
    on_overflow: str = "truncate_twin"
    w_prompt: float = DEFAULT_LOSS_WEIGHTS.prompt
    w_completion: float = DEFAULT_LOSS_WEIGHTS.completion
    w_decision: float = DEFAULT_LOSS_WEIGHTS.decision
    w_answer: float = DEFAULT_LOSS_WEIGHTS.answer
    strategy: str = "sftdt"
    format: FormatConfig = field(default_factory=FormatConfig)

    def __post_init__(self) -> None:
        if self.on_overflow not in ("truncate_twin", "drop"):
            raise ValueError(f"on_overflow must be 'truncate_twin' or 'drop', got {self.on_overflow!r}")
        if not isinstance(self.format, FormatConfig):
            self.format = FormatConfig.from_dict(self.format)
        build_format(self.strategy, self.format)  # unknown name / options: DataError now, not mid-build

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
        return build_format(self.strategy, self.format)



def load_tokenizer(path_or_id: str) -> Any:
    """A fast tokenizer (offsets are required) from a folder, a Hub id, or ``package:...``."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_path(path_or_id))
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"{path_or_id}: a fast tokenizer is needed (offset mappings); got {type(tok).__name__}")
    return tok


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
    return Target(answer=list(record.path.answer), path=record.path, scores=scores)


def encode_messages(tokenizer: Any, twin: DigitalTwin, query: str, target: Target | ReasoningPath,
                    cfg: SFTDatasetConfig, fmt: ReasoningFormat | None = None) -> tuple[list[int], np.ndarray]:
    """Token ids and kinds of one example (no length check): the format's prompt + its target."""
    ids, kinds, _ = encode_example(tokenizer, twin, query, target, cfg, fmt)
    return ids, kinds


def encode_example(tokenizer: Any, twin: DigitalTwin, query: str, target: Target | ReasoningPath,
                   cfg: SFTDatasetConfig, fmt: ReasoningFormat | None = None
                   ) -> tuple[list[int], np.ndarray, list[dict]]:
    """:func:`encode_messages` plus the conversation it encodes (prompt messages + the assistant target)."""
    fmt = fmt or cfg.reasoning_format()
    if isinstance(target, ReasoningPath):
        target = Target(answer=list(target.answer), path=target)
    messages, completion = fmt.messages(twin, query), fmt.target(twin, target)
    ids, kinds = tokenize_completion(tokenizer, messages, completion)
    return ids, kinds, conversation(messages, completion)


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


def _without(twin: DigitalTwin, target: Target, remove: set[int]) -> tuple[DigitalTwin, Target]:
    objs = [o for o in twin.objects if o.id not in remove]
    small = DigitalTwin(twin.image_id, twin.height, twin.width, twin.granularity, objs, twin.query,
                        twin.provenance)
    path = target.path
    if path is not None:
        first = PathStep({i: d for i, d in path.steps[0].decisions.items() if i not in remove})
        path = ReasoningPath([first, *path.steps[1:]], list(path.answer))
    scores = None if target.scores is None else {k: v for k, v in target.scores.items()
                                                 if str(k) not in {str(i) for i in remove}}
    return small, Target(list(target.answer), path, scores)


def _removable(twin: DigitalTwin, target: Target) -> list[int]:
    """Objects an over-long example may lose, smallest first: dropped at step 1 (else not in the answer)."""
    areas = {o.id: o.area for o in twin.objects}
    if target.path is not None and target.path.steps:
        ids = target.path.steps[0].dropped
    else:
        ids = [i for i in twin.ids if i not in set(target.answer)]
    return sorted(ids, key=lambda i: (areas[i], i))


def encode_record(record: SegDTRecord, tokenizer: Any, cfg: SFTDatasetConfig,
                  fmt: ReasoningFormat | None = None) -> dict | None:
    """One dataset row, or None when the example cannot fit ``max_length`` (see the truncation rule).
    DataError when the format cannot use the record (e.g. malformed ``object_scores``)."""
    fmt = fmt or cfg.reasoning_format()
    twin, target = record.twin, record_target(record)
    ids, kinds, messages = encode_example(tokenizer, twin, record.query, target, cfg, fmt)
    removed = 0
    if cfg.max_length is not None and len(ids) > cfg.max_length:
        if cfg.on_overflow == "drop":
            return None
        removable = _removable(twin, target)
        lo, hi, best = 1, len(removable), None
        while lo <= hi:  # fewest removed objects that fit
            k = (lo + hi) // 2
            t2, p2 = _without(twin, target, set(removable[:k]))
            cand = encode_example(tokenizer, t2, record.query, p2, cfg, fmt)
            if len(cand[0]) <= cfg.max_length:
                best, hi = (k, cand), k - 1
            else:
                lo = k + 1
        if best is None:
            return None
        removed, (ids, kinds, messages) = best
    return dataset_row(record.id, ids, kinds, cfg, removed, messages)


def encode_object_rows(record: SegDTRecord, tokenizer: Any, cfg: SFTDatasetConfig,
                       fmt: ReasoningFormat) -> tuple[list[dict], int]:
    """Rows of a per-object format (``fmt.per_object``: one example per twin object, id ``<record>#<object>``)
    and how many were over ``max_length`` (dropped: the twin is not truncated for them)."""
    rows, dropped = [], 0
    for obj, messages, completion in fmt.object_examples(record.twin, record.query, record_target(record)):  # type: ignore[attr-defined]
        ids, kinds = tokenize_completion(tokenizer, messages, completion)
        if cfg.max_length is not None and len(ids) > cfg.max_length:
            dropped += 1
            continue
        rows.append(dataset_row(f"{record.id}#{obj}", ids, kinds, cfg, messages=conversation(messages, completion)))
    return rows, dropped


def build_sft_dataset(records: Iterable[SegDTRecord], tokenizer: Any, cfg: SFTDatasetConfig | None = None,
                      *, progress: bool = False, total: int | None = None) -> tuple[Any, dict]:
    """(``datasets.Dataset``, stats) for the records; stats count written, truncated and dropped examples."""
    from datasets import Dataset, Features, Sequence, Value

    cfg = cfg or SFTDatasetConfig()
    fmt = cfg.reasoning_format()
    per_object = bool(getattr(fmt, "per_object", False))
    rows: list[dict] = []
    stats: dict[str, Any] = {"records": 0, "examples": 0, "truncated_twin": 0, "dropped_too_long": 0,
                             "failed": 0, "dropped_ids": [], "failures": []}
    for rec in show_progress(records, "tokenising", progress, total):
        stats["records"] += 1
        try:
            if per_object:
                obj_rows, dropped = encode_object_rows(rec, tokenizer, cfg, fmt)
                rows.extend(obj_rows)
                stats["dropped_too_long"] += dropped
                if dropped:
                    stats["dropped_ids"].append(rec.id)
                continue
            row = encode_record(rec, tokenizer, cfg, fmt)
        except DataError as e:  # one unusable record never stops the build
            stats["failed"] += 1
            stats["failures"].append({"id": rec.id, "error": f"field '{e.field}': {e.message}"})
            continue
        if row is None:
            stats["dropped_too_long"] += 1
            stats["dropped_ids"].append(rec.id)
            continue
        stats["truncated_twin"] += int(row["removed_objects"] > 0)
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
            save_format(tmp / "data", cfg.strategy, cfg.format)
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
