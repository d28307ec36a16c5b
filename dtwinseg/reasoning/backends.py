"""LLM backends behind one small protocol: ``generate(conversations) -> texts``.

- :class:`TransformersBackend`: a local causal LM (``AutoModelForCausalLM``; BERT-style encoders are
  loaded with ``is_decoder=True``) plus an optional peft LoRA adapter; batched, LEFT-padded, greedy by
  default.
- :class:`OpenAIBackend`: any OpenAI-compatible ``/chat/completions`` endpoint; concurrent requests
  on a thread pool, retries with exponential backoff on 429 / 5xx / network errors; the key comes from
  an environment variable and never appears in a log, an error message or a saved config.
- :class:`VLLMBackend` (optional extra ``pip install dtwinseg[vllm]``): one vLLM engine per base model,
  shared by every adapter, each adapter served through a ``LoRARequest``.

A request that still fails after its retries comes back as a :class:`GenerationFailure` (an empty str
carrying ``.error``) instead of raising, so one bad sample never stops a 1,000-sample evaluation; the
reasoner counts it as a failed parse. Nothing outside this module branches on the backend.
"""

from __future__ import annotations

import json
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, runtime_checkable

from dtwinseg.prompting import chat_prompt
from dtwinseg.reasoning.config import ReasoningConfig

Conversation = list[dict]
ENCODER_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "electra", "camembert", "bert-generation")


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

    def generate(self, conversations: Sequence[Conversation]) -> list[str]: ...


# --- transformers ------------------------------------------------------------------------------
def resolve_device(device: str) -> str:
    """"auto" -> cuda:LOCAL_RANK when CUDA is available, else cpu; anything else as given."""
    import torch

    if device == "auto":
        if not torch.cuda.is_available():
            return "cpu"
        # one GPU per process under torchrun / accelerate launch (sharded evaluation)
        local = int(os.environ.get("LOCAL_RANK", "0") or 0)
        return f"cuda:{local % torch.cuda.device_count()}"
    return device


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
    """(model, tokenizer) for generation: AutoModelForCausalLM (+ peft adapter), in eval mode.

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

        lm = PeftModel.from_pretrained(lm, adapter)
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

    def _ensure_loaded(self) -> tuple[Any, Any]:
        if self._model is None:
            if not self.cfg.model:
                raise ValueError("reasoning config: 'model' is empty (a local folder or Hub id is needed)")
            self._model, self._tokenizer = load_causal_lm(
                self.cfg.model, adapter=self.cfg.adapter, dtype=resolve_dtype(self.cfg.dtype, self.device),
                device=self.device, model_kwargs=self.cfg.model_kwargs)
        tok = self._tokenizer
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token or tok.sep_token or tok.unk_token
        return self._model, tok

    def prompt_text(self, conversation: Conversation) -> str:
        _, tok = self._ensure_loaded()
        return chat_prompt(tok, conversation, self.cfg.chat_template)

    def _gen_kwargs(self, tok: Any) -> dict:
        eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
        kw: dict[str, Any] = {"max_new_tokens": self.cfg.max_new_tokens, "do_sample": self.cfg.do_sample,
                              "pad_token_id": tok.pad_token_id}
        if eos is not None:
            kw["eos_token_id"] = eos
        if self.cfg.do_sample:
            kw.update(temperature=max(self.cfg.temperature, 1e-5), top_p=self.cfg.top_p)
        else:
            kw.update(temperature=None, top_p=None, top_k=None)
        return kw

    def _generate_batch(self, texts: list[str]) -> list[str]:
        import torch

        model, tok = self._ensure_loaded()
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        with torch.inference_mode():
            out = model.generate(**enc, **self._gen_kwargs(tok))
        new_tokens = out[:, enc["input_ids"].shape[1]:]
        return [tok.decode(row, skip_special_tokens=True).strip() for row in new_tokens]

    def generate(self, conversations: Sequence[Conversation]) -> list[str]:
        """One answer per conversation, ``batch_size`` at a time; a failing batch is retried one by one
        and only the conversations that still fail become GenerationFailure."""
        texts = [self.prompt_text(c) for c in conversations]
        out: list[str] = []
        bs = self.cfg.batch_size
        for start in range(0, len(texts), bs):
            chunk = texts[start:start + bs]
            try:
                out.extend(self._generate_batch(chunk))
            except Exception:  # noqa: BLE001 - isolate the failing sample(s)
                for t in chunk:
                    try:
                        out.extend(self._generate_batch([t]))
                    except Exception as e:  # noqa: BLE001
                        out.append(GenerationFailure(f"{type(e).__name__}: {str(e)[:200]}"))
        return out


# --- OpenAI-compatible API ---------------------------------------------------------------------
RETRY_STATUS = (408, 409, 425, 429, 500, 502, 503, 504)


class OpenAIBackend:
    """Chat completions over HTTP (stdlib only): concurrent, retried, key from ``cfg.api_key_env``."""

    name = "openai"

    def __init__(self, cfg: ReasoningConfig, sleep: Callable[[float], None] = time.sleep):
        self.cfg = cfg
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self._sleep = sleep
        self.retries_used = 0

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.cfg.api_key_env, "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _body(self, conversation: Conversation) -> bytes:
        body: dict[str, Any] = {"model": self.cfg.model, "messages": conversation,
                                "max_tokens": self.cfg.max_new_tokens}
        body["temperature"] = self.cfg.temperature if self.cfg.do_sample else 0.0
        if self.cfg.do_sample:
            body["top_p"] = self.cfg.top_p
        return json.dumps(body).encode("utf-8")

    def _backoff(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(float(retry_after), 60.0)
            except ValueError:
                pass
        return min(self.cfg.backoff_s * (2 ** attempt), 30.0) * (1 + 0.1 * random.random())

    def complete(self, conversation: Conversation) -> str:
        """One conversation -> the answer text, or GenerationFailure after ``max_retries`` retries."""
        data = self._body(conversation)
        error = "no attempt made"
        for attempt in range(self.cfg.max_retries + 1):
            retry_after = None
            req = urllib.request.Request(self.url, data=data, headers=self._headers(), method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as resp:
                    payload = json.loads(resp.read().decode("utf-8"))
                return _answer_text(payload)
            except urllib.error.HTTPError as e:
                error = f"HTTP {e.code}"
                retry_after = e.headers.get("Retry-After") if e.headers else None
                if e.code not in RETRY_STATUS:
                    return GenerationFailure(error)
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                error = f"network error {type(e).__name__}"
            except (ValueError, KeyError, IndexError, TypeError) as e:
                return GenerationFailure(f"malformed response ({type(e).__name__})")
            if attempt < self.cfg.max_retries:
                self.retries_used += 1
                self._sleep(self._backoff(attempt, retry_after))
        return GenerationFailure(f"{error} after {self.cfg.max_retries} retries")

    def generate(self, conversations: Sequence[Conversation]) -> list[str]:
        if not conversations:
            return []
        with ThreadPoolExecutor(max_workers=min(self.cfg.concurrency, len(conversations))) as pool:
            return list(pool.map(self.complete, conversations))


def _answer_text(payload: Any) -> str:
    content = payload["choices"][0]["message"]["content"]
    if isinstance(content, list):  # content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if content is None:
        raise ValueError("null content")
    return str(content)


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
        self.params = SamplingParams(max_tokens=cfg.max_new_tokens,
                                     temperature=cfg.temperature if cfg.do_sample else 0.0,
                                     top_p=cfg.top_p if cfg.do_sample else 1.0)

    def generate(self, conversations: Sequence[Conversation]) -> list[str]:  # pragma: no cover - needs vllm
        outs = self.engine.chat(list(conversations), self.params, lora_request=self.lora, use_tqdm=False)
        return [o.outputs[0].text if o.outputs else GenerationFailure("no output") for o in outs]


_FACTORIES: dict[str, Callable[[ReasoningConfig], LLMBackend]] = {
    "transformers": TransformersBackend,
    "openai": OpenAIBackend,
    "vllm": VLLMBackend,
}


def make_backend(cfg: ReasoningConfig) -> LLMBackend:
    """The backend ``cfg.backend`` names, configured by ``cfg``."""
    return _FACTORIES[cfg.backend](cfg)
