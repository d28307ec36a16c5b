"""Vision-language models behind one small protocol, and their two perception uses.

``VLM.chat(requests) -> list[str]``: one text answer per request (system text, user text, images).
Backends:

- ``openai``: any OpenAI-compatible chat-completions endpoint (GPT-4o, or a local vLLM / SGLang server
  serving Qwen2.5-VL); images as base64 data URLs; HTTP, retries (429 / 5xx / timeouts, honouring
  Retry-After), concurrency and key redaction come from :mod:`dtwinseg.openai_chat`. The API key is read
  from the environment (``DTWINSEG_VLM_API_KEY``, else the variable named by ``api_key_env``), never
  stored, logged or saved.
- ``transformers``: ``AutoModelForImageTextToText`` + ``AutoProcessor`` from a path or hub id, batched,
  left-padded, greedy generation.

Uses: :func:`decide_granularity` (answer parsed to 0/1/2, fallback 1 counted) and
:func:`assign_semantics` (crop + whole image + query per mask, strategies direct / in_context / system;
with the other masks {m_j} as context, eq. 4, or alone).
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image

from dtwinseg.config import StrictConfig
from dtwinseg.io import DataError
from dtwinseg.openai_chat import (
    RETRY_STATUS,
    ChatClientConfig,
    ChatCompletionsClient,
    ChatCompletionsError,
    EndpointFields,
)
from dtwinseg.perception import prompts
from dtwinseg.runtime import resolve_device

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
class VLMConfig(EndpointFields, StrictConfig):
    """Which VLM and how to call it. Secrets are never fields: only the NAME of the key's env variable.

    Attributes:
        backend: "none" | "openai" | "transformers".
        model: model name for the endpoint (e.g. "gpt-4o", "Qwen/Qwen2.5-VL-7B-Instruct"), or a local
            path / hub id for transformers.
        base_url, api_key_env, timeout_s, max_retries, backoff_s: the openai backend's endpoint
            (dtwinseg.openai_chat.EndpointFields; e.g. base_url http://localhost:8000/v1 for vLLM;
            DTWINSEG_VLM_API_KEY is tried before ``api_key_env``).
        max_concurrency: parallel HTTP requests (openai).
        backoff_max_s: cap of the doubling retry delay (with jitter).
        max_new_tokens, temperature: generation settings (temperature 0 = greedy).
        batch_size: requests per generate() call (transformers).
        device: torch device for transformers ("auto": cuda:LOCAL_RANK if available, else cpu).
        dtype: "auto" | "bfloat16" | "float16" | "float32" (transformers).
        image_max_side: images are downscaled to this longest side before sending (pixels).
    """

    backend: str = "none"
    model: str = ""
    max_concurrency: int = 8
    backoff_max_s: float = 30.0
    max_new_tokens: int = 128
    temperature: float = 0.0
    batch_size: int = 4
    device: str = "auto"
    dtype: str = "auto"
    image_max_side: int = 1024
    SECTION = "vlm"  # from_dict errors name vlm.<field>, as in a perception config

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"vlm backend must be one of {BACKENDS}, got {self.backend!r}")
        for name, lowest in (("max_concurrency", 1), ("max_new_tokens", 1), ("batch_size", 1), ("image_max_side", 32)):
            if getattr(self, name) < lowest:
                raise DataError(None, name, f"must be >= {lowest}, got {getattr(self, name)}")
        for name in ("temperature", "backoff_max_s"):
            if not getattr(self, name) >= 0:  # NaN too
                raise DataError(None, name, f"must be >= 0, got {getattr(self, name)}")
        self.check_endpoint()



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
    """OpenAI-compatible chat-completions backend: VLMRequests as text + image data-URL messages, sent
    through the shared :class:`~dtwinseg.openai_chat.ChatCompletionsClient` (retries, concurrency)."""

    name = "openai"
    RETRY_STATUS = RETRY_STATUS

    def __init__(self, config: VLMConfig, sleep: Callable[[float], None] = time.sleep):
        self.config = config
        endpoint = config.endpoint(extra_key_envs=(KEY_ENV,), backoff_max_s=config.backoff_max_s, jitter=(0.5, 1.0))
        self.client = ChatCompletionsClient(ChatClientConfig.for_model(endpoint, config.model), sleep=sleep)
        self.url = self.client.url

    @property
    def stats(self) -> dict[str, int]:
        """HTTP ``requests`` (attempts), ``retries`` and ``failures`` so far."""
        return self.client.stats

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIVLM(model={self.config.model!r}, url={self.url!r})"

    def _messages(self, req: VLMRequest) -> list[dict[str, Any]]:
        content: list[dict[str, Any]] = [{"type": "text", "text": req.user}]
        content += [{"type": "image_url", "image_url": {"url": image_data_url(im, self.config.image_max_side)}}
                    for im in req.images]
        system = [{"role": "system", "content": req.system}] if req.system else []
        return system + [{"role": "user", "content": content}]

    def chat(self, requests: Sequence[VLMRequest]) -> list[str]:
        answers = self.client.complete_many([self._messages(r) for r in requests],
                                            max_tokens=self.config.max_new_tokens,
                                            temperature=self.config.temperature)
        return [_answer_or_raise(a) for a in answers]


def _answer_or_raise(answer: str | ChatCompletionsError) -> str:
    """An answer text; a null-content answer is "" (the parsers count it as a fallback); errors raise."""
    if not isinstance(answer, ChatCompletionsError):
        return answer
    if answer.kind == "no_content":
        return ""
    raise VLMError(str(answer)) from None


# --- transformers ------------------------------------------------------------------------------------

class TransformersVLM:
    """Local ``AutoModelForImageTextToText`` + ``AutoProcessor``, batched left-padded greedy generation."""

    name = "transformers"

    def __init__(self, config: VLMConfig, model: Any = None, processor: Any = None):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.config = config
        device = resolve_device(config.device)  # "auto" -> cuda:LOCAL_RANK, else cpu
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
                     strategy: str = "system",
                     contexts: Sequence[tuple[int, list[str]]] | None = None) -> tuple[list[str], int]:
    """S_i for each mask from its (crop, whole image) views and the query.

    ``contexts`` (eq. 4, one per mask): the mask's number on its whole-image view and the lines that
    describe the other masks {m_j}; None asks about each mask alone (the whole image then outlines only it).
    Returns (descriptions, number of answers that fell back to "")."""
    if contexts is not None and len(contexts) != len(views):
        raise ValueError(f"{len(contexts)} contexts for {len(views)} masks")
    requests = []
    for k, (crop, whole) in enumerate(views):
        index, others = contexts[k] if contexts is not None else (None, None)
        system, user = prompts.semantic_messages(query, strategy, index, others)
        requests.append(VLMRequest(user=user, images=[crop, whole], system=system))
    answers = vlm.chat(requests)
    parsed = [prompts.parse_semantic(a, strategy) for a in answers]
    return [p[0] for p in parsed], sum(p[1] for p in parsed)
