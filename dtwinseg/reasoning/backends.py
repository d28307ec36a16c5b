"""LLM backends behind one small protocol: ``generate(conversations) -> texts``.

- :class:`TransformersBackend`: a local causal LM (``AutoModelForCausalLM``; BERT-style encoders are
  loaded with ``is_decoder=True``) plus an optional peft LoRA adapter; batched, LEFT-padded, greedy by
  default.
- :class:`OpenAIBackend`: any OpenAI-compatible ``/chat/completions`` endpoint through the shared
  :mod:`dtwinseg.openai_chat` client (concurrent requests on a thread pool, retries with exponential
  backoff on 429 / 5xx / network errors); the key comes from an environment variable and never appears
  in a log, an error message or a saved config.
- :class:`VLLMBackend` (optional extra ``pip install dtwinseg[vllm]``): one vLLM engine per base model,
  shared by every adapter, each adapter served through a ``LoRARequest``.

A request that still fails after its retries comes back as a :class:`GenerationFailure` (an empty str
carrying ``.error``) instead of raising, so one bad sample never stops a 1,000-sample evaluation; the
reasoner counts it as a failed parse. An answer that hit its token budget comes back as a
:class:`Truncated` str (its text, plus ``.budget``), so truncation is counted, never silent.
``generate(conversations, max_new_tokens=[...])`` takes one budget per conversation (None: the config's
integer ``max_new_tokens``, or ``max_new_tokens_cap`` when that is "auto"). Nothing outside this module
branches on the backend.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, runtime_checkable

from dtwinseg import runtime
from dtwinseg.formats.base import model_context_length
from dtwinseg.openai_chat import ChatClientConfig, ChatCompletionsClient, ChatCompletionsError
from dtwinseg.prompting import chat_prompt
from dtwinseg.reasoning.config import ReasoningConfig

Conversation = list[dict]
ENCODER_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "electra", "camembert", "bert-generation")


class Truncated(str):
    """An answer whose generation stopped at its token budget (finish reason "length")."""

    budget: int

    def __new__(cls, text: str, budget: int) -> Truncated:
        obj = super().__new__(cls, text)
        obj.budget = int(budget)
        return obj


def _budgets(cfg: ReasoningConfig, n: int, max_new_tokens: Sequence[int] | None) -> list[int]:
    """One token budget per conversation."""
    if max_new_tokens is not None:
        if len(max_new_tokens) != n:
            raise ValueError(f"{len(max_new_tokens)} budgets for {n} conversations")
        return [int(b) for b in max_new_tokens]
    fixed = cfg.max_new_tokens_cap if cfg.max_new_tokens == "auto" else cfg.max_new_tokens
    return [int(fixed)] * n


class GenerationFailure(str):
    """An empty answer standing for a generation that failed; ``error`` says why (no secrets)."""

    error: str

    def __new__(cls, error: str) -> GenerationFailure:
        obj = super().__new__(cls, "")
        obj.error = error
        return obj


@runtime_checkable
class LLMBackend(Protocol):
    """Generates one answer per conversation (a list of ``{"role", "content"}`` messages)."""

    name: str

    def generate(self, conversations: Sequence[Conversation],
                 max_new_tokens: Sequence[int] | None = None) -> list[str]: ...


# --- transformers ------------------------------------------------------------------------------
resolve_device = runtime.resolve_device  # "auto" -> cuda:LOCAL_RANK, else cpu (the one resolver)


def resolve_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def adapter_base(adapter_dir: str | os.PathLike) -> str:
    """Base model path / id recorded in a peft adapter folder (adapter_config.json)."""
    from dtwinseg.io import DataError, read_json

    path = os.path.join(adapter_dir, "adapter_config.json")
    cfg = read_json(path)
    base = cfg.get("base_model_name_or_path") if isinstance(cfg, dict) else None
    if not base:
        raise DataError(path, "base_model_name_or_path", "missing: cannot tell which base model to load")
    return str(base)


def load_causal_lm(model: str, *, adapter: str | None = None, dtype: Any = None, device: str = "cpu",
                   model_kwargs: dict | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) for generation: AutoModelForCausalLM (+ peft adapter, merged into it), in eval mode.

    BERT-style encoders (``model_type`` in ENCODER_MODEL_TYPES) are loaded as decoders
    (``is_decoder=True``: causal attention, e.g. ``BertLMHeadModel``).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kwargs = dict(model_kwargs or {})
    config = AutoConfig.from_pretrained(model)
    if getattr(config, "model_type", "") in ENCODER_MODEL_TYPES:
        kwargs.setdefault("is_decoder", True)
    if dtype is not None:
        kwargs.setdefault("dtype", dtype)
    lm = AutoModelForCausalLM.from_pretrained(model, **kwargs)
    tok_source = adapter if adapter and os.path.exists(os.path.join(adapter, "tokenizer_config.json")) else model
    tokenizer = AutoTokenizer.from_pretrained(tok_source)
    if adapter:
        from peft import PeftModel

        # merged into the base for inference: the same function, without the adapter's extra matmuls and
        # dtype casts in every layer at every generated token (1.5x faster generation on CPU, measured)
        lm = PeftModel.from_pretrained(lm, adapter).merge_and_unload()
    lm.to(device).eval()
    return lm, tokenizer


class TransformersBackend:
    """Local generation with transformers: batched, left-padded, greedy unless ``do_sample``.

    Pass ``model``/``tokenizer`` to use objects already in memory (tests, benchmarks); otherwise they
    are loaded from ``cfg.model`` (+ ``cfg.adapter``) on first use.
    """

    name = "transformers"

    def __init__(self, cfg: ReasoningConfig, model: Any = None, tokenizer: Any = None):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self._model, self._tokenizer = model, tokenizer
        self._load_error: Exception | None = None

    def _ensure_loaded(self) -> tuple[Any, Any]:
        if self._model is None:
            if not self.cfg.model:
                raise ValueError("reasoning config: 'model' is empty (a local folder or Hub id is needed)")
            if self._load_error is not None:  # a broken checkpoint is tried once, not once per sample
                raise self._load_error
            try:
                self._model, self._tokenizer = load_causal_lm(
                    self.cfg.model, adapter=self.cfg.adapter, dtype=resolve_dtype(self.cfg.dtype, self.device),
                    device=self.device, model_kwargs=self.cfg.model_kwargs)
            except (KeyboardInterrupt, MemoryError):
                raise
            except Exception as e:  # noqa: BLE001 - corrupt config / weights, missing files, bad adapter
                from dtwinseg.io import DataError

                what = f"{self.cfg.model} (adapter {self.cfg.adapter})" if self.cfg.adapter else self.cfg.model
                msg = " ".join(f"{type(e).__name__}: {e}".split())[:400]
                self._load_error = DataError(what, None, f"cannot load the model: {msg}")
                raise self._load_error from None
        tok = self._tokenizer
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token or tok.sep_token or tok.unk_token
        return self._model, tok

    def prompt_text(self, conversation: Conversation) -> str:
        _, tok = self._ensure_loaded()
        return chat_prompt(tok, conversation, self.cfg.chat_template)

    def count_prompt_tokens(self, conversation: Conversation) -> int:
        """Tokens of the prompt text the model sees (what prompts are fitted to its context by)."""
        _, tok = self._ensure_loaded()
        return len(tok(self.prompt_text(conversation), add_special_tokens=False)["input_ids"])

    def context_length(self) -> int | None:
        """The model's context (dtwinseg.formats.base.model_context_length: tokenizer, then config)."""
        model, tok = self._ensure_loaded()
        return model_context_length(tok, getattr(model, "config", None))

    def _gen_kwargs(self, tok: Any, budget: int) -> dict:
        eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
        kw: dict[str, Any] = {"max_new_tokens": budget, "do_sample": self.cfg.do_sample,
                              "pad_token_id": tok.pad_token_id}
        if eos is not None:
            kw["eos_token_id"] = eos
        if self.cfg.do_sample:
            kw.update(temperature=max(self.cfg.temperature, 1e-5), top_p=self.cfg.top_p)
        else:
            kw.update(temperature=None, top_p=None, top_k=None)
        return kw

    def _generate_batch(self, texts: list[str], budgets: list[int]) -> list[str]:
        """Generate a batch with the largest of its budgets; a row that used its own budget without
        an end token is :class:`Truncated`."""
        import torch

        model, tok = self._ensure_loaded()
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        # A model with a position limit (BERT-style absolute positions: 512) cannot generate past it: the
        # budget shrinks to the room left after the prompt, and an answer cut there counts as truncated.
        limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        prompt_len = int(enc["input_ids"].shape[1])
        if isinstance(limit, int) and limit > 0:
            if prompt_len >= limit:
                raise ValueError(f"the prompt has {prompt_len} tokens; the model takes at most {limit} positions")
            budgets = [min(b, limit - prompt_len) for b in budgets]
        budget = max(budgets)
        with torch.inference_mode():
            out = model.generate(**enc, **self._gen_kwargs(tok, budget))
        new_tokens = out[:, enc["input_ids"].shape[1]:]
        stops = {t for t in (tok.eos_token_id, tok.sep_token_id, tok.pad_token_id) if t is not None}
        answers: list[str] = []
        for row, own in zip(new_tokens.tolist(), budgets, strict=True):
            ended = next((k for k, t in enumerate(row) if t in stops), None)
            text = tok.decode(row[:own], skip_special_tokens=True).strip()
            answers.append(Truncated(text, own) if (ended is None or ended >= own) and len(row) >= own else text)
        return answers

    def generate(self, conversations: Sequence[Conversation],
                 max_new_tokens: Sequence[int] | None = None) -> list[str]:
        """One answer per conversation, ``batch_size`` at a time; a failing batch is retried one by one
        and only the conversations that still fail become GenerationFailure."""
        texts = [self.prompt_text(c) for c in conversations]
        budgets = _budgets(self.cfg, len(texts), max_new_tokens)
        out: list[str] = []
        bs = self.cfg.batch_size
        for start in range(0, len(texts), bs):
            chunk, chunk_budgets = texts[start:start + bs], budgets[start:start + bs]
            try:
                out.extend(self._generate_batch(chunk, chunk_budgets))
            except Exception:  # noqa: BLE001 - isolate the failing sample(s)
                for t, b in zip(chunk, chunk_budgets, strict=True):
                    try:
                        out.extend(self._generate_batch([t], [b]))
                    except Exception as e:  # noqa: BLE001
                        out.append(GenerationFailure(f"{type(e).__name__}: {str(e)[:200]}"))
        return out


# --- OpenAI-compatible API ---------------------------------------------------------------------
class OpenAIBackend:
    """Chat completions through the shared :class:`~dtwinseg.openai_chat.ChatCompletionsClient`:
    concurrent, retried, key from ``cfg.api_key_env``; failures become GenerationFailure."""

    name = "openai"

    def __init__(self, cfg: ReasoningConfig, sleep: Callable[[float], None] = time.sleep):
        self.cfg = cfg
        endpoint = cfg.endpoint(backoff_max_s=30.0, retry_after_max_s=60.0, jitter=(1.0, 1.1))
        self.client = ChatCompletionsClient(ChatClientConfig.for_model(endpoint, cfg.model), sleep=sleep)
        self.url = self.client.url

    @property
    def retries_used(self) -> int:
        """Retries made so far (all conversations)."""
        return self.client.stats["retries"]

    def _backoff(self, attempt: int, retry_after: str | None) -> float:
        return self.client.backoff(attempt, retry_after)

    def _params(self, budget: int | None = None) -> dict[str, Any]:
        if budget is None:
            budget = _budgets(self.cfg, 1, None)[0]
        params: dict[str, Any] = {"max_tokens": int(budget),
                                  "temperature": self.cfg.temperature if self.cfg.do_sample else 0.0}
        if self.cfg.do_sample:
            params["top_p"] = self.cfg.top_p
        return params

    def complete(self, conversation: Conversation) -> str:
        """One conversation -> the answer text, or GenerationFailure after ``max_retries`` retries."""
        try:
            return self.client.complete(conversation, **self._params())
        except ChatCompletionsError as e:
            return self._failure(e)

    def _failure(self, e: ChatCompletionsError) -> GenerationFailure:
        """A secret-free reason: "HTTP 400", "HTTP 500 after 2 retries", "network error URLError after
        ...", "malformed response (KeyError)"."""
        if e.kind in ("malformed", "no_content"):
            return GenerationFailure(f"malformed response ({e.cause})")
        if e.kind == "config":  # the key variable is unusable: the detail names it, never the key
            return GenerationFailure(e.detail)
        short = f"HTTP {e.status}" if e.kind == "http" else f"network error {e.cause}"
        return GenerationFailure(f"{short} after {self.cfg.max_retries} retries" if e.retried_out else short)

    def generate(self, conversations: Sequence[Conversation],
                 max_new_tokens: Sequence[int] | None = None) -> list[str]:
        """All requests on at most ``concurrency`` threads, each with its own ``max_tokens``; answers in
        input order. An answer the server ends with ``finish_reason: length`` is :class:`Truncated`."""
        budgets = _budgets(self.cfg, len(conversations), max_new_tokens)
        if not conversations:
            return []

        def one(conversation: Conversation, budget: int) -> str:
            try:
                return self._answer(self.client.complete(conversation, **self._params(budget)), budget)
            except ChatCompletionsError as e:
                return self._failure(e)

        workers = max(1, min(self.cfg.concurrency, len(conversations)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(one, conversations, budgets))

    def _answer(self, a: str, budget: int) -> str:
        if getattr(a, "finish_reason", None) == "length":
            return Truncated(str(a), budget)
        return a


# --- vLLM (optional) ---------------------------------------------------------------------------
class VLLMBackend:
    """vLLM engine shared by all adapters of one base model; each adapter is a ``LoRARequest``."""

    name = "vllm"
    _engines: dict[str, Any] = {}
    _lora_ids: dict[str, int] = {}

    def __init__(self, cfg: ReasoningConfig):
        try:
            from vllm import LLM, SamplingParams
            from vllm.lora.request import LoRARequest
        except ImportError as e:  # pragma: no cover - optional extra
            raise ImportError("the vllm backend needs the optional extra: pip install 'dtwinseg[vllm]'") from e
        self.cfg = cfg
        if cfg.model not in self._engines:
            kwargs = {"enable_lora": True, "max_loras": 4, **cfg.vllm_kwargs}
            self._engines[cfg.model] = LLM(model=cfg.model, **kwargs)
        self.engine = self._engines[cfg.model]
        self.lora = None
        if cfg.adapter:
            lid = self._lora_ids.setdefault(os.path.abspath(cfg.adapter), len(self._lora_ids) + 1)
            self.lora = LoRARequest(os.path.basename(os.path.normpath(cfg.adapter)), lid, cfg.adapter)
        self._sampling = SamplingParams

    def _params(self, budget: int) -> Any:  # pragma: no cover - needs vllm
        cfg = self.cfg
        return self._sampling(max_tokens=budget, temperature=cfg.temperature if cfg.do_sample else 0.0,
                              top_p=cfg.top_p if cfg.do_sample else 1.0)

    def generate(self, conversations: Sequence[Conversation],
                 max_new_tokens: Sequence[int] | None = None) -> list[str]:  # pragma: no cover - needs vllm
        budgets = _budgets(self.cfg, len(conversations), max_new_tokens)
        params = [self._params(b) for b in budgets]
        outs = self.engine.chat(list(conversations), params, lora_request=self.lora, use_tqdm=False)
        answers: list[str] = []
        for o, b in zip(outs, budgets, strict=True):
            if not o.outputs:
                answers.append(GenerationFailure("no output"))
            elif o.outputs[0].finish_reason == "length":
                answers.append(Truncated(o.outputs[0].text, b))
            else:
                answers.append(o.outputs[0].text)
        return answers


_FACTORIES: dict[str, Callable[[ReasoningConfig], LLMBackend]] = {
    "transformers": TransformersBackend,
    "openai": OpenAIBackend,
    "vllm": VLLMBackend,
}


def make_backend(cfg: ReasoningConfig) -> LLMBackend:
    """The backend ``cfg.backend`` names, configured by ``cfg``."""
    return _FACTORIES[cfg.backend](cfg)
