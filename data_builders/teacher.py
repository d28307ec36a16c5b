"""Teacher synthesis of Seg-DT reasoning paths, verified against the ground truth (method.md sec. 4).

For each sample with a cached twin, an OpenAI-compatible chat model (the *teacher*, e.g. GPT-4o or a local
vLLM server) reads the same messages the student is trained on (system prompt, query, JSON(D)) plus two
things the student never sees: instructions on what a good path states, and, under the ``hint: answer``
policy, the ids of the best union of twin objects (:func:`data_builders.programmatic.best_subset`) so it
explains a known answer instead of guessing it. ``hint: none`` lets it find the answer itself.

Its output is parsed with the SFTDT parser and kept only when

1. it parses cleanly (steps and an ``Answer:`` line; "repaired" or "failed" outputs are rejected),
2. the steps form a valid path over the twin (:func:`dtwinseg.formats.sftdt.check_path`),
3. every decision carries a reasoning text, and
4. the union of the answer's masks reaches IoU >= ``min_iou`` with the ground-truth mask (255 ignored).

Rejected paths are counted by reason (``request_failed``, ``unparsed``, ``invalid_path``, ``no_reasoning``,
``low_iou``) and listed; ``on_reject: programmatic`` writes the programmatic path instead of skipping
the sample. Accepted records have ``source: "teacher"``. The API key is read from the environment variable
that ``api_key_env`` names; it is never a config field, logged or written.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from dtwinseg.data_builders.programmatic import (
    ProgrammaticConfig,
    best_subset,
    programmatic_record,
    sample_program,
)
from dtwinseg.data_builders.segdt import SegDTRecord

from dtwinseg.config import StrictConfig, build_dataclass
from dtwinseg.formats.sftdt import ReasoningPath, check_path, parse_path_output, sftdt_messages
from dtwinseg.io import DataError
from dtwinseg.openai_chat import ChatClientConfig, ChatCompletionsClient, ChatCompletionsError, EndpointFields
from dtwinseg.runtime import progress as show_progress
from dtwinseg.spatial import SpatialConfig
from dtwinseg.twin import DigitalTwin

HINTS = ("answer", "none")
ON_REJECT = ("skip", "programmatic")
REJECTIONS = ("request_failed", "unparsed", "invalid_path", "no_reasoning", "low_iou")
KEY_ENV = "DTWINSEG_TEACHER_API_KEY"

TEACHER_INSTRUCTIONS = """

You are writing a worked example for training another model. Rules for a good reasoning path:
- Use as many steps as the query needs: one step per reasoning hop (a simple query needs one step; "the
  cup nearest to the largest star" needs three: cups and stars, the largest star, the nearest cup).
- For every object, the "reasoning" states the fact from the Digital Twin that keeps or drops it: its
  semantic description, its box or area, or its relation to another object id. Never a vague phrase.
- The "semantic" of a kept object may be rewritten to say how it relates to the query."""

HINT_TEXT = """

(For you only, the student never sees this.) The correct answer is the ids {ids}. Write the path that reaches
exactly these ids from facts in the Digital Twin; do not mention this note."""


@dataclass
class TeacherConfig(EndpointFields, StrictConfig):
    """The teacher model and the acceptance rule. Loads from YAML; holds no secret.

    Attributes:
        base_url, api_key_env, timeout_s, max_retries, backoff_s: the endpoint
            (dtwinseg.openai_chat.EndpointFields; here timeout_s defaults to 180 s and max_retries to 3;
            DTWINSEG_TEACHER_API_KEY is tried before ``api_key_env``).
        model: the teacher's model name.
        concurrency: parallel requests.
        max_tokens, temperature: generation settings (0 = greedy).
        hint: "answer" (the teacher is told the target ids) | "none" (it must find them).
        min_iou: the answer's union must reach this IoU with the ground truth.
        on_reject: "skip" (count and leave the sample out) | "programmatic" (write the programmatic path).
        chunk: samples sent per batch of concurrent requests.
        spatial: SpatialConfig fields of JSON(D) (must match the student's).
    """

    timeout_s: float = 180.0
    max_retries: int = 3
    model: str = "gpt-4o"
    concurrency: int = 8
    max_tokens: int = 4096
    temperature: float = 0.0
    hint: str = "answer"
    min_iou: float = 0.5
    on_reject: str = "skip"
    chunk: int = 64
    spatial: SpatialConfig = field(default_factory=SpatialConfig)

    def __post_init__(self) -> None:
        if isinstance(self.spatial, dict):
            self.spatial = build_dataclass(SpatialConfig, self.spatial, None, "spatial")
        if self.hint not in HINTS:
            raise DataError(None, "hint", f"must be one of {HINTS}, got {self.hint!r}")
        if self.on_reject not in ON_REJECT:
            raise DataError(None, "on_reject", f"must be one of {ON_REJECT}, got {self.on_reject!r}")
        if not 0.0 <= float(self.min_iou) <= 1.0:
            raise DataError(None, "min_iou", f"must be in [0, 1], got {self.min_iou!r}")
        for name in ("chunk", "concurrency", "max_tokens"):
            if int(getattr(self, name)) < 1:
                raise DataError(None, name, f"must be >= 1, got {getattr(self, name)}")
        if int(self.max_retries) < 0:
            raise DataError(None, "max_retries", f"must be >= 0, got {self.max_retries}")
        if not self.timeout_s > 0:
            raise DataError(None, "timeout_s", f"must be > 0, got {self.timeout_s}")
        if not self.temperature >= 0:  # NaN too
            raise DataError(None, "temperature", f"must be >= 0, got {self.temperature}")
        self.check_endpoint()

    def spatial_config(self) -> SpatialConfig:
        return self.spatial

    def client(self, sleep: Callable[[float], None] | None = None) -> ChatCompletionsClient:
        cfg = ChatClientConfig.for_model(self.endpoint(extra_key_envs=(KEY_ENV,)), self.model)
        return ChatCompletionsClient(cfg) if sleep is None else ChatCompletionsClient(cfg, sleep=sleep)


def teacher_messages(twin: DigitalTwin, query: str, answer: Sequence[int] | None,
                     cfg: TeacherConfig) -> list[dict[str, str]]:
    """The student's messages (system, user) with the teacher's instructions and, for ``hint: answer``,
    the target ids appended; these additions never reach a Seg-DT record."""
    messages = sftdt_messages(twin, query, cfg.spatial_config())
    messages[0]["content"] += TEACHER_INSTRUCTIONS
    if cfg.hint == "answer" and answer is not None:
        messages[1]["content"] += HINT_TEXT.format(ids=sorted(int(i) for i in answer))
    return messages


def union_iou(twin: DigitalTwin, ids: Sequence[int], gt_mask: np.ndarray) -> float:
    """IoU of the union of ``ids``' masks with the ground truth (255 ignored; empty vs empty = 1)."""
    gt = np.asarray(gt_mask)
    valid = gt != 255
    target = (gt == 1) & valid
    pred = twin.union(list(ids)) & valid
    union = int((pred | target).sum())
    return 1.0 if union == 0 else float((pred & target).sum() / union)


def verify(text: str | ChatCompletionsError, twin: DigitalTwin, gt_mask: np.ndarray,
           min_iou: float) -> tuple[ReasoningPath | None, float | None, str | None]:
    """(path, its answer's IoU, None) for an accepted teacher output, else (None, IoU or None, reason)."""
    if isinstance(text, ChatCompletionsError):
        return None, None, "request_failed"
    parsed = parse_path_output(text, twin.ids)
    if parsed.result.status != "ok" or not parsed.steps:
        return None, None, "unparsed"
    path = ReasoningPath(parsed.steps, sorted(parsed.result.ids))
    try:
        check_path(path, twin.ids)
    except DataError:
        return None, None, "invalid_path"
    if any(not d.reasoning.strip() for s in path.steps for d in s.decisions.values()):
        return None, None, "no_reasoning"
    iou = union_iou(twin, path.answer, gt_mask)
    if iou < min_iou:
        return None, iou, "low_iou"
    return path, iou, None


@dataclass
class TeacherItem:
    """One sample to send: its record fields, twin, ground truth, the answer hint and query program."""

    id: str
    image: str
    query: str
    twin: DigitalTwin
    gt_mask: np.ndarray
    hint: list[int]
    dimension: str | None = None
    program: dict | None = None
    instances: list | None = None
    twin_ref: dict | None = None


def teacher_records(items: Sequence[TeacherItem], cfg: TeacherConfig, client: ChatCompletionsClient,
                    counts: dict, rejected: list[dict]) -> list[SegDTRecord]:
    """Ask the teacher for every item (concurrently), verify, and return the records to write; updates
    ``counts`` (accepted, rejected_<reason>, fallback_programmatic) and ``rejected`` (id, reason, iou)."""
    answers = client.complete_many([teacher_messages(it.twin, it.query, it.hint, cfg) for it in items],
                                   max_tokens=cfg.max_tokens, temperature=cfg.temperature)
    out: list[SegDTRecord] = []
    for it, text in zip(items, answers, strict=True):
        path, iou, reason = verify(text, it.twin, it.gt_mask, cfg.min_iou)
        if path is not None:
            counts["accepted"] += 1
            out.append(SegDTRecord(id=it.id, image=it.image, query=it.query, twin=it.twin, path=path,
                                   granularity=int(it.twin.granularity), dimension=it.dimension, match_iou=iou,
                                   source="teacher", twin_ref=it.twin_ref,
                                   extra={"teacher": {"model": cfg.model, "hint": cfg.hint}}))
            continue
        counts[f"rejected_{reason}"] += 1
        rejected.append({"id": it.id, "reason": reason, "iou": iou})
        if cfg.on_reject == "programmatic":
            counts["fallback_programmatic"] += 1
            out.append(programmatic_record(it.id, it.image, it.query, it.twin, it.gt_mask,
                                           cfg=ProgrammaticConfig(min_iou=cfg.min_iou), twin_ref=it.twin_ref,
                                           dimension=it.dimension, program=it.program, instances=it.instances))
    return out


def build_segdt_teacher(dataset_spec: str, dt_cache: str | os.PathLike, out: str | os.PathLike,
                        cfg: TeacherConfig, *, strict: bool = False, progress: bool = True,
                        client: ChatCompletionsClient | None = None) -> dict:
    """Write teacher-written, verified Seg-DT records (JSONL, atomically) for a dataset with cached twins.

    Returns the counts (samples, written, accepted, rejected_<reason>, fallback_programmatic,
    missing_twin, failed (twin and ground truth of different sizes), below_min_iou: samples whose best
    union cannot reach ``min_iou``, not sent),
    the rejected ids with their reason, and the config.
    """
    from dtwinseg.data_builders.dt_cache import DTCache
    from dtwinseg.data_builders.registry import open_dataset

    from dtwinseg.io import write_jsonl

    client = client or cfg.client()
    cache = DTCache.open(dt_cache)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cache_ref = os.path.relpath(cache.folder.resolve(), out.parent.resolve())
    dataset = open_dataset(dataset_spec, strict=strict)
    counts = {"samples": 0, "written": 0, "accepted": 0, "fallback_programmatic": 0, "missing_twin": 0,
              "below_min_iou": 0, "failed": 0, **{f"rejected_{r}": 0 for r in REJECTIONS}}
    rejected: list[dict] = []
    lines: list[dict] = []
    pending: list[TeacherItem] = []

    def flush() -> None:
        for rec in teacher_records(pending, cfg, client, counts, rejected):
            lines.append(rec.to_dict())
        pending.clear()

    for sample in show_progress(dataset, "teacher paths", progress, len(dataset)):
        counts["samples"] += 1
        try:
            twin = cache.get(sample.id)
        except DataError:  # a corrupt cached twin: counted, the run goes on (build-dt rebuilds it)
            counts["failed"] += 1
            rejected.append({"id": sample.id, "reason": "corrupt_twin", "iou": None})
            continue
        if twin is None:
            counts["missing_twin"] += 1
            continue
        if (twin.height, twin.width) != tuple(sample.gt_mask.shape):
            counts["failed"] += 1
            rejected.append({"id": sample.id, "reason": "size", "iou": None})
            continue
        hint, best = best_subset(twin.masks(), sample.gt_mask, twin.ids)
        if best < cfg.min_iou:
            counts["below_min_iou"] += 1
            continue
        pending.append(TeacherItem(sample.id, sample.image_path, sample.query, twin, sample.gt_mask, hint,
                                   sample.dimension, sample_program(sample), sample.instances,
                                   {"dt_cache": cache_ref, "id": sample.id}))
        if len(pending) >= cfg.chunk:
            flush()
    if pending:
        flush()
    if lines:  # nothing usable: no (empty) records file replaces a previous one; the CLI exits 1
        write_jsonl(out, lines)
    counts["written"] = len(lines)
    return {**counts, "rejected": rejected, "teacher_stats": dict(client.stats), "config": cfg.to_dict()}
