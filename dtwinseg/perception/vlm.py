"""Vision-language models behind one small protocol, and their two perception uses.

``VLM.chat(requests) -> list[str]``: one text answer per request (system text, user text, images).
Backends:

- ``openai``: any OpenAI-compatible chat-completions endpoint (GPT-4o, or a local vLLM / SGLang server
  serving Qwen2.5-VL); images as base64 data URLs; a thread pool bounds concurrency; 429 / 5xx / timeouts
  are retried with exponential backoff (honouring Retry-After). The API key is read from the environment
  (``DTWINSEG_VLM_API_KEY``, else the variable named by ``api_key_env``), never stored, logged or saved.
- ``transformers``: ``AutoModelForImageTextToText`` + ``AutoProcessor`` from a path or hub id, batched,
  left-padded, greedy generation.

Uses: :func:`decide_granularity` (answer parsed to 0/1/2, fallback 1 counted) and
:func:`assign_semantics` (crop + whole image + query per mask, strategies direct / in_context / system).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from PIL import Image

from dtwinseg.perception import prompts

log = logging.getLogger(__name__)

BACKENDS = ("none", "openai", "transformers")
KEY_ENV = "DTWINSEG_VLM_API_KEY"


class VLMError(RuntimeError):
    """A request failed for good (after retries, or with an answer that is not chat-completions)."""


@dataclass
class VLMRequest:
    """One chat turn: optional system text, user text, and the images shown with it (PIL, RGB)."""

    user: str
    images: list[Image.Image] = field(default_factory=list)
    system: str | None = None


class VLM(Protocol):
    name: str

    def chat(self, requests: Sequence[VLMRequest]) -> list[str]:
        """One answer per request, in order; raises VLMError when a request fails for good."""
        ...


@dataclass
class VLMConfig:
    """Which VLM and how to call it. Secrets are never fields: only the NAME of the key's env variable.

    Attributes:
        backend: "none" | "openai" | "transformers".
        model: model name for the endpoint (e.g. "gpt-4o", "Qwen/Qwen2.5-VL-7B-Instruct"), or a local
            path / hub id for transformers.
        base_url: OpenAI-compatible base URL (".../v1"); e.g. http://localhost:8000/v1 for vLLM.
        api_key_env: environment variable holding the key (DTWINSEG_VLM_API_KEY is tried first).
        max_concurrency: parallel HTTP requests (openai).
        max_retries: retries of a request on 429 / 5xx / timeouts / connection errors.
        timeout_s: seconds per HTTP request.
        backoff_s, backoff_max_s: first retry delay and its cap (doubling, with jitter).
        max_new_tokens, temperature: generation settings (temperature 0 = greedy).
        batch_size: requests per generate() call (transformers).
        device: torch device for transformers ("auto": cuda if available, else cpu).
        dtype: "auto" | "bfloat16" | "float16" | "float32" (transformers).
        image_max_side: images are downscaled to this longest side before sending (pixels).
    """

    backend: str = "none"
    model: str = ""
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = 8
    max_retries: int = 5
    timeout_s: float = 60.0
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0
    max_new_tokens: int = 128
    temperature: float = 0.0
    batch_size: int = 4
    device: str = "auto"
    dtype: str = "auto"
    image_max_side: int = 1024

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"vlm backend must be one of {BACKENDS}, got {self.backend!r}")

    @classmethod
    def from_dict(cls, d: dict | None) -> VLMConfig:
        d = dict(d or {})
        for secret in ("api_key", "key", "token"):
            if secret in d:
                raise ValueError(f"vlm.{secret}: never put a key in a config; set api_key_env to the name "
                                 "of an environment variable that holds it")
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown vlm config fields: {sorted(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


def make_vlm(config: VLMConfig) -> VLM | None:
    """The backend a config names (None for "none")."""
    if config.backend == "none":
        return None
    if config.backend == "openai":
        return OpenAIVLM(config)
    return TransformersVLM(config)


def _downscaled(image: Image.Image, max_side: int) -> Image.Image:
    image = image.convert("RGB")
    scale = max_side / max(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    return image


def image_data_url(image: Image.Image, max_side: int = 1024) -> str:
    """JPEG (quality 90) base64 data URL of an RGB image, downscaled to ``max_side``."""
    buf = io.BytesIO()
    _downscaled(image, max_side).save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# --- openai ------------------------------------------------------------------------------------------

class OpenAIVLM:
    """OpenAI-compatible chat-completions backend (stdlib HTTP, thread-pool concurrency, retries)."""

    name = "openai"
    RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})

    def __init__(self, config: VLMConfig):
        self.config = config
        self._key = os.environ.get(KEY_ENV) or os.environ.get(config.api_key_env) or ""
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self.stats = {"requests": 0, "retries": 0, "failures": 0}
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIVLM(model={self.config.model!r}, url={self.url!r})"

    def _count(self, what: str) -> None:
        with self._lock:
            self.stats[what] += 1

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _payload(self, req: VLMRequest) -> bytes:
        content: list[dict[str, Any]] = [{"type": "text", "text": req.user}]
        content += [{"type": "image_url", "image_url": {"url": image_data_url(im, self.config.image_max_side)}}
                    for im in req.images]
        messages = ([{"role": "system", "content": req.system}] if req.system else []) + [
            {"role": "user", "content": content}]
        body = {"model": self.config.model, "messages": messages, "max_tokens": self.config.max_new_tokens,
                "temperature": self.config.temperature}
        return json.dumps(body).encode("utf-8")

    def _post(self, data: bytes) -> tuple[int, dict[str, str], bytes]:
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout_s) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers or {}), e.read() if e.fp else b""

    def _delay(self, attempt: int, headers: dict[str, str]) -> float:
        retry_after = headers.get("Retry-After") or headers.get("retry-after")
        if retry_after:
            try:
                return min(float(retry_after), self.config.backoff_max_s)
            except ValueError:
                pass
        base = min(self.config.backoff_s * 2 ** attempt, self.config.backoff_max_s)
        return base * (0.5 + random.random() / 2)

    def _one(self, req: VLMRequest) -> str:
        data = self._payload(req)
        last = ""
        for attempt in range(self.config.max_retries + 1):
            self._count("requests")
            headers: dict[str, str] = {}
            try:
                status, headers, body = self._post(data)
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                status, body, last = -1, b"", f"connection error: {type(e).__name__}: {e}"
            if status == 200:
                return self._content(body)
            if status != -1:
                last = f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}"
            if status != -1 and status not in self.RETRY_STATUS:
                break
            if attempt < self.config.max_retries:
                self._count("retries")
                delay = self._delay(attempt, headers)
                log.warning("VLM request failed (%s); retry %d in %.1fs", self._redact(last), attempt + 1, delay)
                time.sleep(delay)
        self._count("failures")
        raise VLMError(self._redact(f"{self.url}: {last}"))

    def _content(self, body: bytes) -> str:
        try:
            content = json.loads(body)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise VLMError(f"{self.url}: not a chat-completions answer ({type(e).__name__})") from None
        if isinstance(content, list):  # some servers return content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return content if isinstance(content, str) else ""

    def chat(self, requests: Sequence[VLMRequest]) -> list[str]:
        if not requests:
            return []
        workers = max(1, min(self.config.max_concurrency, len(requests)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(self._one, requests))


# --- transformers ------------------------------------------------------------------------------------

class TransformersVLM:
    """Local ``AutoModelForImageTextToText`` + ``AutoProcessor``, batched left-padded greedy generation."""

    name = "transformers"

    def __init__(self, config: VLMConfig, model: Any = None, processor: Any = None):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.config = config
        device = config.device if config.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        if processor is None:
            processor = AutoProcessor.from_pretrained(config.model)
        if model is None:
            dtype = "auto" if config.dtype == "auto" else getattr(torch, config.dtype)
            model = AutoModelForImageTextToText.from_pretrained(config.model, dtype=dtype)
        self.processor = processor
        self.model = model.to(device).eval()
        self.device = device
        tok = getattr(processor, "tokenizer", processor)
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token

    def _messages(self, req: VLMRequest) -> list[dict]:
        content = [{"type": "image"} for _ in req.images] + [{"type": "text", "text": req.user}]
        msgs = [{"role": "system", "content": [{"type": "text", "text": req.system}]}] if req.system else []
        return msgs + [{"role": "user", "content": content}]

    def _generate(self, batch: Sequence[VLMRequest]) -> list[str]:
        import torch

        texts = [self.processor.apply_chat_template(self._messages(r), add_generation_prompt=True, tokenize=False)
                 for r in batch]
        images = [[_downscaled(im, self.config.image_max_side) for im in r.images] for r in batch]
        has_images = any(images)
        inputs = self.processor(text=texts, images=images if has_images else None, padding=True,
                                return_tensors="pt").to(self.device)
        gen_kwargs: dict[str, Any] = {"max_new_tokens": self.config.max_new_tokens}
        if self.config.temperature > 0:
            gen_kwargs.update(do_sample=True, temperature=self.config.temperature)
        else:
            gen_kwargs.update(do_sample=False)
        tok = getattr(self.processor, "tokenizer", self.processor)
        with torch.no_grad():
            out = self.model.generate(**inputs, **gen_kwargs, pad_token_id=tok.pad_token_id)
        new = out[:, inputs["input_ids"].shape[1]:]
        return tok.batch_decode(new, skip_special_tokens=True)

    def chat(self, requests: Sequence[VLMRequest]) -> list[str]:
        out: list[str] = []
        for start in range(0, len(requests), self.config.batch_size):
            try:
                out.extend(self._generate(requests[start:start + self.config.batch_size]))
            except (RuntimeError, ValueError) as e:
                raise VLMError(f"transformers VLM {self.config.model!r}: {type(e).__name__}: {e}") from e
        return out


# --- the two perception uses ----------------------------------------------------------------------------

def decide_granularity(vlm: VLM, image: Image.Image, query: str) -> tuple[int, bool]:
    """L = F_VLM(image, query) -> (level 0/1/2, fell_back). An unparseable answer gives level 1."""
    system, user = prompts.granularity_messages(query)
    answer = vlm.chat([VLMRequest(user=user, images=[image], system=system)])[0]
    return prompts.parse_granularity(answer)


def assign_semantics(vlm: VLM, views: Sequence[tuple[Image.Image, Image.Image]], query: str,
                     strategy: str = "system") -> tuple[list[str], int]:
    """S_i for each mask from its (crop, whole image with the mask outlined) views and the query.

    Returns (descriptions, number of answers that fell back to "")."""
    system, user = prompts.semantic_messages(query, strategy)
    answers = vlm.chat([VLMRequest(user=user, images=[crop, whole], system=system) for crop, whole in views])
    parsed = [prompts.parse_semantic(a, strategy) for a in answers]
    return [p[0] for p in parsed], sum(p[1] for p in parsed)
