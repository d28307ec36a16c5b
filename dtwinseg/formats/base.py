"""The reasoning-format contract: what a format is, its shared config, and the registry of formats by name.

A *reasoning format* is everything that has to be identical at training and at inference for one way of
asking an LLM about a Digital Twin: the prompt messages, the target text a model is trained to write
(with the character spans that carry the loss weights), the parser that reads any answer back, and the
generation budget the answer needs. ``build-sft`` (data_builders/sft_dataset.py) and the reasoners
(dtwinseg/reasoning/) both get a format from :func:`build_format` and never build prompts or parse
answers themselves, so training data and inference cannot drift apart.

Contract of a format (:class:`ReasoningFormat`: everything its callers use; :class:`FormatBase` gives the
defaults of the members only per-object formats need)::

    fmt = build_format("sftdt", FormatConfig(...))
    fmt.name                        # the registered name
    fmt.config                      # the FormatConfig it was built with
    fmt.per_object                  # False: one prompt, one answer per scene (messages / target / parse);
                                    #   True: one prompt and one verdict per object (object_examples /
                                    #   verdict_path; the compact format's ``target: object``)
    fmt.reads_spatial               # True when its prompt renders JSON(D) from config.spatial (filled by
                                    #   fit_prompt; False: the compact format's own object lines)
    fmt.messages(twin, query)       # -> [{"role": "system"?, ...}, {"role": "user", ...}]: the prompt
    fmt.target(twin, Target(...))   # -> Completion: assistant text + decision / answer character spans
    fmt.object_examples(twin, query, Target(...))
                                    # -> [(object id, prompt, Completion)]: a per-object format's training
                                    #    examples (DataError for a whole-scene format)
    fmt.parse(text, twin)           # -> Decoded: ids (+ per-object scores); total: never raises,
                                    #    linear time in len(text) (caps applied before any regex)
    fmt.budget(twin)                # -> int: new tokens a complete answer needs for this twin
    fmt.verdict_path(twin, query)   # -> VerdictPath: the skeleton forced verdict decoding fills in
                                    #    (dtwinseg/reasoning/verdicts.py); DataError for a format without
                                    #    per-object verdicts to force

Each format's parser lives in its own module (``parse_indices`` in select.py, read by sftdt and compact
too; ``parse_scores`` in score.py; ``parse_path_output`` in sftdt.py; ``parse_compact`` in compact.py) on
the shared, format-independent helpers of :mod:`dtwinseg.parsing`.

Every prompt that reaches a model, at training (build-sft) and at inference (the reasoners), comes from
:func:`fit_prompt`: the format's messages for a twin, with as many relations as fit
``spatial.fill_tokens`` (dtwinseg.spatial.fill_ladder), fitted to the prompt budget (the model's context
less the answer's budget) by the stated degradation order -- fewer relations per object, shorter numbers
(dtwinseg.spatial.degradation_ladder), and only when even the leanest rendering is longer than that,
objects dropped (the smallest first), counted as ``objects_dropped``. Both sides count tokens with the
model's tokenizer on the same text and take the same context (``FormatConfig.context_tokens``, else the
model's own), so the same twin and query give byte-identical prompts.

``Target`` carries what a training example knows: the answer ids, the reasoning path (sftdt) and
per-object scores from ground-truth overlap (score); a format uses what it needs and says which field it
misses (DataError). Span kinds: decision spans get ``w_decision`` and answer spans ``w_answer`` in the
SFTDT loss (method.md sec. 3); the token kinds and :class:`LossWeights` (defaults 0, 1, 2, 4) live here.

Registry: :func:`register_format` (name, factory ``FormatConfig -> ReasoningFormat``),
:func:`build_format`, :func:`available_formats`. The built-in formats (select, sftdt, score, compact)
register themselves when ``dtwinseg.formats`` is imported.

:class:`FormatConfig` is the one config both sides share (issue 14 item 6): ``build-sft`` writes it into
the dataset folder (``format.json``, :func:`save_format`), the reasoning config reads it back
(``format_from:``) and :func:`check_same_format` refuses a mismatch in one line.

Naming a format in a config (:func:`read_format_spec`, used by ReasoningConfig and SFTDatasetConfig):
``format: NAME``, or ``format: {name: NAME, <FormatConfig fields>}``; in Python the name is the config's
``format_name`` and its options ``format`` (a FormatConfig). ``strategy: NAME``, the name's old spelling,
is still read, with a one-line deprecation note on stderr (once per process).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from dtwinseg.config import ConfigError, StrictConfig, build_dataclass, unknown_key_error
from dtwinseg.io import DataError, atomic_write_json, read_json
from dtwinseg.parsing import ParseResult
from dtwinseg.spatial import PAPER_SPATIAL, SpatialConfig, degradation_ladder, describe_twin, fill_ladder
from dtwinseg.twin import DigitalTwin

DEFAULT_CONTEXT_TOKENS = 32_768
"""The context a prompt is fitted to when neither ``FormatConfig.context_tokens`` nor the model tells it
(an API model: GPT-4o and Qwen2.5 take at least this many)."""


def twin_intro(spatial: SpatialConfig | None = None) -> str:
    """What the JSON(D) prompts of the select and score formats say about the twin before their task."""
    return ("You are a precise visual reasoning assistant. An image has been converted into a Digital Twin: "
            + describe_twin(spatial) + " ")


TWIN_INTRO = twin_intro()
"""The intro for the default layout (``twin_intro(spatial)`` gives it for any SpatialConfig)."""

FORMAT_FILE = "format.json"
"""File name of the saved format (name + FormatConfig) in a dataset, run or adapter folder."""


@dataclass
class FormatConfig(StrictConfig):
    """Options of a reasoning format, shared by build-sft and the reasoning config (saved with the dataset).

    system_prompt: the system message (None: the format's default; "" : no system message).
    user_template: the user message with ``{query}`` and ``{twin}`` fields (None: the format's default).
    spatial: the spatial text of JSON(D) (relations, thresholds: dtwinseg.spatial.SpatialConfig).
    include_spatial: sftdt: repeat each object's spatial text T_i in every path step (the paper's full
        JSON(D(j)); longer, True is the paper's form). Default False: T_i once, in D(0).
    indent: JSON(D) indentation (None: compact, the fewest tokens).
    reasoning: score: write a reasoning line per object before its score (Rea2Seg "scores through
        reasoning"); select: ignored.
    tokens_per_object: generation budget per twin object (None: the format's own estimate, see
        ``budget``); the budget is ``base_tokens + tokens_per_object * len(twin)`` or the estimate.
    base_tokens: fixed part of the generation budget (None: the format's default; select 512 for the
        brief prose it allows, score 32, sftdt 64).
    options: format-specific options (e.g. the compact format's ``position``, the score format's
        rerank ``select: best|margin``, ``margin``, ``min``); each format validates its own.
    context_tokens: the context (prompt + answer, in tokens) prompts are fitted to (:func:`fit_prompt`);
        None: the model's own (its tokenizer's ``model_max_length``, else its config's positions), else
        DEFAULT_CONTEXT_TOKENS (32,768). Set it to train shorter prompts than the model takes: inference
        reads the same value from format.json, so both fit the same way.
    """

    system_prompt: str | None = None
    user_template: str | None = None
    spatial: SpatialConfig = field(default_factory=SpatialConfig)
    include_spatial: bool = False
    indent: int | None = None
    reasoning: bool = False
    tokens_per_object: int | None = None
    base_tokens: int | None = None
    options: dict = field(default_factory=dict)
    context_tokens: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.spatial, dict):
            self.spatial = build_dataclass(SpatialConfig, self.spatial, None, "spatial")
        if self.tokens_per_object is not None and int(self.tokens_per_object) < 1:
            raise DataError(None, "tokens_per_object", "must be >= 1 (or null for the format's estimate)")
        if self.base_tokens is not None and int(self.base_tokens) < 0:
            raise DataError(None, "base_tokens", "must be >= 0 (or null for the format's default)")
        if not isinstance(self.options, dict):
            raise DataError(None, "options", f"expected a mapping, got {type(self.options).__name__}")
        if self.context_tokens is not None and (isinstance(self.context_tokens, bool)
                                                or int(self.context_tokens) < 64):
            raise DataError(None, "context_tokens", f"must be >= 64 (or null for the model's own), got "
                            f"{self.context_tokens!r}")

    @classmethod
    def from_dict(cls, d: Any, *, path: str | os.PathLike | None = None, where: str = "format") -> FormatConfig:
        """Strict (dtwinseg.config): an unknown key (did-you-mean) or a bad value is a ConfigError naming
        ``where.<key>``."""
        if d is None:
            return cls()
        if isinstance(d, cls):
            return d
        return build_dataclass(cls, d, path, where)


# --- token kinds and their loss weights (SFTDT, paper eq. 10; method.md sec. 3) -----------------------------
PROMPT, COMPLETION, DECISION, ANSWER = 0, 1, 2, 3
"""Token kinds: prompt, other completion text, decision spans, answer spans (``token_kinds`` column)."""


# LossWeights lives in its own light module (no torch: the CLI builds its --w-* options from it at startup)
from dtwinseg.loss_weights import DEFAULT_LOSS_WEIGHTS, UNWEIGHTED_LOSS, LossWeights  # noqa: E402, F401


@dataclass
class Completion:
    """The assistant text a model is trained to write, with character spans ``(start, end)`` into it.

    decision_spans: tokens of the reasoning decisions (object ids and verdicts of a path, scores).
    answer_spans: tokens of the final answer (the id list of ``Answer: [...]``).
    """

    text: str
    decision_spans: list[tuple[int, int]] = field(default_factory=list)
    answer_spans: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class Target:
    """What one training example knows about its answer.

    answer: the final ids (sorted; ``[]`` is a valid empty answer).
    path: the reasoning path D(1..K) (``dtwinseg.formats.sftdt.ReasoningPath``), for path formats.
    scores: per-object target scores in [0, 10] (from ground-truth overlap), for score formats.
    query: the query (a target that repeats the spatial text names the same landmarks as the prompt).
    """

    answer: list[int]
    path: Any = None
    scores: dict[int, float] | None = None
    query: str | None = None


@dataclass
class Decoded:
    """A parsed answer: the ids as a ParseResult and, for score formats, every object's score."""

    parse: ParseResult
    scores: dict[int, float] | None = None


def answer_text(ids: list[int]) -> tuple[str, tuple[int, int]]:
    """``Answer: [i, j]`` and the character span of the id list in it."""
    lst = "[" + ", ".join(str(int(i)) for i in sorted(ids)) + "]"
    text = f"Answer: {lst}"
    return text, (len(text) - len(lst), len(text))


@dataclass
class VerdictPath:
    """The forced skeleton of a path: per object its id and the text before its verdict (``head``), the
    verdict words (the first one means "this object is meant"), the text after each verdict, and the
    answer line built from the chosen ids. ``prompts`` (a per-object format): each object is its own
    conversation, judged independently; else every verdict follows the scene's prompt and the earlier
    steps. ``texts``: per object id, the text the prompt shows of it (what a similarity prior compares with
    the query; ReasoningConfig.similarity_prior)."""

    steps: list[tuple[int, str]]
    choices: tuple[str, ...] = ("yes", "no")
    line_end: str = "\n"
    prompts: list[list[dict]] | None = None
    texts: dict[int, str] = field(default_factory=dict)

    def answer(self, ids: list[int]) -> str:
        return answer_text(ids)[0]


ObjectExample = tuple[int, list[dict], Completion]
"""One training example of a per-object format: (object id, its prompt, its verdict as a Completion)."""


@runtime_checkable
class ReasoningFormat(Protocol):
    """One way of prompting for, training on and reading back an answer over a twin: every member its
    callers (build-sft, the reasoners, forced verdict decoding, the baselines) use (module docstring)."""

    name: str
    config: FormatConfig
    reads_spatial: bool

    @property
    def per_object(self) -> bool: ...

    def messages(self, twin: DigitalTwin, query: str) -> list[dict]: ...

    def target(self, twin: DigitalTwin, target: Target) -> Completion: ...

    def object_examples(self, twin: DigitalTwin, query: str, target: Target) -> list[ObjectExample]: ...

    def parse(self, text: str, twin: DigitalTwin) -> Decoded: ...

    def budget(self, twin: DigitalTwin) -> int: ...

    def verdict_path(self, twin: DigitalTwin, query: str = "") -> VerdictPath: ...


class FormatBase:
    """Defaults of the :class:`ReasoningFormat` members that only per-object formats give meaning to. A
    whole-scene format subclasses it and writes ``name``, ``config``, ``messages``, ``target``, ``parse``
    and ``budget`` (left out here, so a format missing one is no ReasoningFormat)."""

    name: str = ""
    config: FormatConfig

    reads_spatial: bool = True
    """Whether the prompt renders JSON(D) from ``config.spatial`` (a format with its own object lines says
    False: a difference in ``spatial`` then changes none of its prompts, see :func:`format_differences`)."""

    @property
    def per_object(self) -> bool:
        """False: one prompt and one answer per scene."""
        return False

    def object_examples(self, twin: DigitalTwin, query: str, target: Target) -> list[ObjectExample]:
        """A whole-scene format has no per-object examples (its training example is :meth:`target`)."""
        raise DataError(None, "format.options.target", f"the {self.name} format writes one example per scene "
                        "(its target), not one per object")

    def verdict_path(self, twin: DigitalTwin, query: str = "") -> VerdictPath:
        """A format without per-object verdicts has nothing for forced verdict decoding to fill in."""
        raise DataError(None, "decoding", f"'verdicts' needs a format with a per-object verdict path "
                        f"(compact with format.options.target: path or object); {self.name!r} has none")


def chat(system: str | None, user: str) -> list[dict]:
    """``[system?, user]`` chat messages (no system message when ``system`` is empty)."""
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]


def linear_budget(cfg: FormatConfig, twin: DigitalTwin, per_object: int, base: int = 64) -> int:
    """``base_tokens + tokens_per_object * len(twin)``; the config's values win over the format's defaults."""
    per = cfg.tokens_per_object if cfg.tokens_per_object is not None else per_object
    return int(cfg.base_tokens if cfg.base_tokens is not None else base) + int(per) * len(twin)


def check_options(name: str, options: dict, known: dict[str, Any]) -> dict[str, Any]:
    """A format's options with defaults filled in; an unknown key is a ConfigError naming it (did-you-mean)."""
    for key in options:
        if key not in known:
            err = unknown_key_error(str(key), sorted(known), None, "format.options")
            raise ConfigError(None, err.field, f"{err.message} (the {name} format's options: "
                              f"{', '.join(sorted(known)) or 'none'})")
    return {**known, **options}


# --- registry ---------------------------------------------------------------------------------------------
FormatFactory = Callable[[FormatConfig], ReasoningFormat]
_REGISTRY: dict[str, FormatFactory] = {}


def register_format(name: str, factory: FormatFactory, *, replace: bool = False) -> None:
    """Make ``build_format(name, cfg)`` return ``factory(cfg)``. Re-registering a name needs ``replace``."""
    if not name or not isinstance(name, str):
        raise ValueError("a format name must be a non-empty string")
    if name in _REGISTRY and not replace and _REGISTRY[name] is not factory:
        raise ValueError(f"reasoning format {name!r} is already registered")
    _REGISTRY[name] = factory


def available_formats() -> tuple[str, ...]:
    """Registered format names, sorted."""
    return tuple(sorted(_REGISTRY))


def build_format(name: str, config: FormatConfig | dict | None = None) -> ReasoningFormat:
    """The format registered as ``name``, configured by ``config`` (DataError for an unknown name)."""
    if name not in _REGISTRY:
        raise DataError(None, "format.name", f"{name!r} is not a reasoning format; known: "
                        f"{', '.join(available_formats())}")
    return _REGISTRY[name](FormatConfig.from_dict(config))


# --- naming a format in a config ---------------------------------------------------------------------------
DEPRECATED_STRATEGY = ("note: 'strategy:' is deprecated; name the reasoning format with format: NAME "
                       "(or format: {name: NAME, ...})")
_NOTED: set[str] = set()


def note_deprecated(message: str) -> None:
    """Write a one-line deprecation note on stderr, at most once per process for each message."""
    if message not in _NOTED:
        _NOTED.add(message)
        print(message, file=sys.stderr)


def read_format_spec(d: Mapping[str, Any], path: str | os.PathLike | None = None) -> dict[str, Any]:
    """A copy of a config mapping with its format named once: ``format_name`` (absent when not given) and
    ``format`` holding only FormatConfig fields (absent or None when not given).

    Read: ``format: NAME``; ``format: {name: NAME, <FormatConfig fields>}``; ``format_name: NAME`` (the
    Python field); ``strategy: NAME`` (the deprecated alias: one note on stderr per process). A name that
    is not registered, or two keys naming different formats, is a DataError naming the key as written."""
    out = dict(d)
    named: list[tuple[str, Any]] = []
    if "strategy" in out:
        note_deprecated(DEPRECATED_STRATEGY)
        named.append(("strategy", out.pop("strategy")))
    if "format_name" in out:
        named.append(("format_name", out.pop("format_name")))
    fmt = out.get("format")
    if isinstance(fmt, str):
        named.append(("format", out.pop("format")))
    elif isinstance(fmt, Mapping) and "name" in fmt:
        fmt = dict(fmt)
        named.append(("format.name", fmt.pop("name")))
        out["format"] = fmt
    named = [(key, value) for key, value in named if value is not None]
    for key, value in named:
        if not isinstance(value, str):
            raise ConfigError(path, key, f"expected a reasoning format's name, got {value!r}")
        if value not in _REGISTRY:
            raise DataError(path, key, f"{value!r} is not a reasoning format; known: "
                            f"{', '.join(available_formats())}")
        if value != named[0][1]:
            raise ConfigError(path, key, f"names the format {value!r}, but {named[0][0]} names "
                              f"{named[0][1]!r}; name it once (format: NAME or format.name)")
    if named:
        out["format_name"] = named[0][1]
    return out


def nest_format_name(d: dict[str, Any]) -> dict[str, Any]:
    """The written form of a config dict (``to_dict``): ``format_name`` folded into ``format`` as its
    ``name``, so what is saved reads back through :func:`read_format_spec` as written."""
    out = {}
    for key, value in d.items():
        if key == "format_name":
            continue
        if key == "format":
            value = {"name": d.get("format_name"), **(value or {})}
        out[key] = value
    return out


# --- saved with a dataset, read back at inference ---------------------------------------------------------
def format_record(name: str, config: FormatConfig) -> dict:
    """The JSON object saved as format.json: ``{"format": name, "config": {...}}``."""
    return {"format": name, "config": config.to_dict()}


def save_format(folder: str | os.PathLike, name: str, config: FormatConfig) -> Path:
    """Write ``folder/format.json`` atomically."""
    return atomic_write_json(Path(folder) / FORMAT_FILE, format_record(name, config))


def find_format_file(path: str | os.PathLike) -> Path | None:
    """``path`` itself (a format.json) or ``path/format.json``, or None when neither exists."""
    p = Path(path)
    if p.is_file():
        return p
    return p / FORMAT_FILE if (p / FORMAT_FILE).is_file() else None


def load_format(path: str | os.PathLike) -> tuple[str, FormatConfig]:
    """(name, FormatConfig) from a format.json or a folder holding one; DataError naming the file otherwise."""
    file = find_format_file(path)
    if file is None:
        raise DataError(path, None, f"no {FORMAT_FILE} here (build-sft writes it into the dataset folder)")
    data = read_json(file)
    if not isinstance(data, dict) or not isinstance(data.get("format"), str):
        raise DataError(file, "format", "expected {\"format\": name, \"config\": {...}}")
    config = data.get("config")
    spatial = config.get("spatial") if isinstance(config, dict) else None
    if isinstance(spatial, dict) and "layout" not in spatial:  # saved before layouts: the paper's JSON(D)
        spatial = {**spatial, **{k: v for k, v in PAPER_SPATIAL.items() if k != "max_relations"}}
        config = {**config, "spatial": spatial}
    if isinstance(spatial, dict) and "fill_tokens" not in spatial:  # saved before filling: never filled
        config = {**config, "spatial": {**spatial, "fill_tokens": None}}
    return data["format"], FormatConfig.from_dict(config, path=file, where="config")


def format_differences(a: tuple[str, FormatConfig], b: tuple[str, FormatConfig]) -> list[str]:
    """Dotted names of the fields where two (name, config) pairs differ (``[]`` when identical)."""
    if a[0] != b[0]:
        return ["format"]
    da, db = json.loads(json.dumps(a[1].to_dict())), json.loads(json.dumps(b[1].to_dict()))
    diff = _diff(da, db, "")
    if any(d.startswith("spatial.") for d in diff) and not _reads_spatial(a[0], a[1]):
        diff = [d for d in diff if not d.startswith("spatial.")]
    return diff


def _reads_spatial(name: str, config: FormatConfig) -> bool:
    try:
        return build_format(name, config).reads_spatial
    except (DataError, ValueError, KeyError):  # an unknown or broken format: compare every field
        return True


def _diff(a: Any, b: Any, prefix: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def check_same_format(trained: tuple[str, FormatConfig], used: tuple[str, FormatConfig], *,
                      source: str | os.PathLike | None = None) -> None:
    """Raise a one-line DataError when the inference format differs from the one a model was trained on."""
    diff = format_differences(trained, used)
    if diff:
        hint = ""
        if "spatial.fill_tokens" in diff and trained[1].spatial.fill_tokens is None:
            hint = (" (the model was trained on prompts without filled relations: set "
                    "format.spatial.fill_tokens: null)")
        raise DataError(source, diff[0], f"the reasoning format differs from the one the model was trained with "
                        f"({', '.join(diff[:5])}); use format_from: to read it back, or set the same values{hint}")


# --- one prompt per twin and query, fitted to the model's context ------------------------------------------
TokenCounter = Callable[[list[dict]], int]
_CONFIG_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length",
                        "n_ctx", "max_seq_len")


def model_context_length(tokenizer: Any = None, config: Any = None) -> int | None:
    """A model's context in tokens: its tokenizer's ``model_max_length`` when set (tokenizers without one
    hold a huge placeholder), else its config's positions, else None. build-sft and the reasoners read it
    the same way, tokenizer first, so the same tokenizer gives the same context on both sides."""
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 10_000_000:
        return limit
    for cfg in (config, getattr(config, "text_config", None)):
        for key in _CONFIG_CONTEXT_KEYS:
            value = getattr(cfg, key, None)
            if isinstance(value, int) and value > 0:
                return value
    return None


def estimate_tokens(messages: list[dict]) -> int:
    """Tokens of a conversation without a tokenizer (an API model): a character count / 3 (JSON and digits
    tokenise densely), + 4 per message for the chat markup."""
    return sum(-(-len(str(m.get("content", ""))) // 3) + 4 for m in messages)


def answer_reserve(fmt: ReasoningFormat, twin: DigitalTwin, context: int) -> int:
    """Tokens kept free for the answer: the format's budget for the twin, at most half the context."""
    return max(1, min(int(fmt.budget(twin)), context // 2))


@dataclass
class FittedPrompt:
    """A format's prompt for one twin and query, fitted to a token budget (:func:`fit_prompt`).

    messages: the prompt. twin: the objects it shows (the input twin unless objects were dropped).
    format: the format it was rendered with (the input format, or one with a richer (filled) or leaner
    ``spatial``: build the training target with it). rung: 0 for the configured or a filled rendering
    (``format.config.spatial.max_relations`` tells which), k for the k-th rung of
    dtwinseg.spatial.degradation_ladder. dropped: ids left out, smallest first ([] normally).
    tokens / budget: the prompt's tokens and the budget it was fitted to.
    """

    messages: list[dict]
    twin: DigitalTwin
    format: ReasoningFormat
    rung: int
    dropped: list[int]
    tokens: int
    budget: int

    @property
    def objects_dropped(self) -> int:
        return len(self.dropped)

    @property
    def fits(self) -> bool:
        return self.tokens <= self.budget


def subset_twin(twin: DigitalTwin, keep: set[int]) -> DigitalTwin:
    """The twin with only the objects whose ids are in ``keep`` (the same TwinObject instances)."""
    return DigitalTwin(twin.image_id, twin.height, twin.width, twin.granularity,
                       [o for o in twin.objects if o.id in keep], twin.query, twin.provenance)


def _filled(fmt: ReasoningFormat, twin: DigitalTwin, query: str, tokens: Callable[[list[dict]], int],
            context: int, floor_tokens: int) -> FittedPrompt | None:
    """The richest rendering of :func:`dtwinseg.spatial.fill_ladder` whose prompt fits both the format's
    ``spatial.fill_tokens`` and its budget (``context`` less that rendering's answer reserve: a path that
    repeats T_i grows with the relations), or None when none does, filling is off, or the format does not
    render JSON(D) (``reads_spatial``). ``floor_tokens``: the configured rendering's length; every rung is
    longer, so a floor past ``fill_tokens`` ends the search. Every pair is tried first (a twin of SAM's usual
    size takes it), then a binary search: each rung is longer than the next."""
    spatial = fmt.config.spatial
    fill = int(spatial.fill_tokens or 0)
    rungs = fill_ladder(spatial, len(twin)) if fmt.reads_spatial and floor_tokens < fill else []
    if not rungs:
        return None

    def render(k: int) -> FittedPrompt:
        rich = build_format(fmt.name, dataclasses.replace(fmt.config, spatial=rungs[k]))
        messages = rich.messages(twin, query)
        return FittedPrompt(messages, twin, rich, 0, [], tokens(messages),
                            context - answer_reserve(rich, twin, context))

    def fits(p: FittedPrompt) -> bool:
        return p.tokens <= min(fill, p.budget)

    richest = render(0)
    if fits(richest):
        return richest
    found, lo, hi = None, 1, len(rungs) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        cand = render(mid)
        if fits(cand):
            found, hi = cand, mid - 1
        else:
            lo = mid + 1
    return found


def fit_prompt(fmt: ReasoningFormat, twin: DigitalTwin, query: str, *, context: int | None = None,
               count: TokenCounter | None = None) -> FittedPrompt:
    """The prompt for ``twin`` and ``query``: the format's messages fitted to ``context`` tokens.

    The prompt may take ``context`` less the answer's reserve (:func:`answer_reserve`). When the configured
    rendering fits, the richest rendering of :func:`dtwinseg.spatial.fill_ladder` (more relations per
    object) that also fits ``spatial.fill_tokens`` is taken instead, if any. Otherwise it degrades in this
    order, the first rendering that fits wins: the configured one; fewer relations per object and then
    shorter numbers (the rungs of :func:`dtwinseg.spatial.degradation_ladder`); then, on the leanest rung,
    the fewest objects dropped (smallest area first) that fit. ``context``: the model's context (None:
    ``fmt.config.context_tokens``, else DEFAULT_CONTEXT_TOKENS); ``count``: tokens of a conversation as
    the model sees it (None: :func:`estimate_tokens`). Deterministic: the same inputs give the same prompt.
    """
    context = int(context or fmt.config.context_tokens or DEFAULT_CONTEXT_TOKENS)
    count = count or estimate_tokens
    counted: dict[str, int] = {}

    def tokens(messages: list[dict]) -> int:
        key = "\x00".join(f"{m.get('role')}\x01{m.get('content')}" for m in messages)
        if key not in counted:
            counted[key] = int(count(messages))
        return counted[key]

    budget = context - answer_reserve(fmt, twin, context)
    rungs = degradation_ladder(fmt.config.spatial)
    rung_format = fmt
    for k, spatial in enumerate(rungs):
        rung_format = fmt if k == 0 else build_format(fmt.name, dataclasses.replace(fmt.config, spatial=spatial))
        messages = rung_format.messages(twin, query)
        n = tokens(messages)
        if n <= budget or len(twin) <= 1:
            if k == 0:
                return _filled(fmt, twin, query, tokens, context, n) or FittedPrompt(messages, twin, fmt, 0, [], n, budget)
            return FittedPrompt(messages, twin, rung_format, k, [], n, budget)
    order = [o.id for o in sorted(twin.objects, key=lambda o: (o.area, o.id))]
    last = len(rungs) - 1

    def attempt(n_drop: int) -> FittedPrompt:
        small = subset_twin(twin, set(order[n_drop:]))
        messages = rung_format.messages(small, query)
        b = context - answer_reserve(rung_format, small, context)
        return FittedPrompt(messages, small, rung_format, last, sorted(order[:n_drop],
                            key=order.index), tokens(messages), b)

    lo, hi, best = 1, len(order) - 1, None
    while lo <= hi:  # fewest dropped objects that fit
        mid = (lo + hi) // 2
        cand = attempt(mid)
        if cand.fits:
            best, hi = cand, mid - 1
        else:
            lo = mid + 1
    return best if best is not None else attempt(len(order) - 1)
