"""Shared builders for the perception tests: a tiny random-weight LLaVA with a processor assembled
offline, and a scripted OpenAI-compatible chat-completions server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def tiny_llava(seed: int = 0):
    """(model, processor): LLaVA with a 1-layer CLIP tower on 28 px images and a 1-layer Llama, random
    weights, and a byte-level BPE tokenizer trained in memory."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["Describe the outlined region. Answer with a digit: 0 group, 1 object, 2 part. Observation:"] * 3
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<s>", "</s>", "<image>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    image_proc = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    processor = LlavaProcessor(image_processor=image_proc, tokenizer=fast, patch_size=14,
                               vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE,
                               image_token="<image>", num_additional_image_tokens=1)
    torch.manual_seed(seed)
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=28, patch_size=14, projection_dim=16),
        text_config=LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=1,
                                eos_token_id=2),
        image_token_index=fast.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="default",
        vision_feature_layer=-1)
    return LlavaForConditionalGeneration(cfg).eval(), processor


def save_tiny_llava(folder: Path) -> Path:
    model, processor = tiny_llava()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


class ChatServer:
    """A real HTTP server speaking /v1/chat/completions on 127.0.0.1 (perception, reasoning and the
    shared client tests). ``script`` is a list of (status, content) consumed in order (then ``default``);
    ``answer_fn(request_json) -> str`` answers 200s dynamically; ``respond_fn(request_json) -> (status,
    content)`` decides every reply instead of the script; a 429 carries ``Retry-After: retry_after``
    (None: no header). Records request bodies, Authorization headers and peak concurrency."""

    def __init__(self, script=None, default=(200, "1"), answer_fn=None, delay_s: float = 0.0,
                 retry_after: str | None = "0", respond_fn=None):
        self.script = list(script or [])
        self.default = default
        self.answer_fn = answer_fn
        self.respond_fn = respond_fn
        self.delay_s = delay_s
        self.retry_after = retry_after
        self.requests: list[dict] = []
        self.auth: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(body)
                    server.auth.append(self.headers.get("Authorization", ""))
                    scripted = server.script.pop(0) if server.script else None
                    script_left = bool(server.script)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                time.sleep(server.delay_s)
                with server.lock:
                    server.in_flight -= 1
                if server.respond_fn is not None:
                    status, content = server.respond_fn(body)
                else:
                    status, content = scripted or server.default
                    if status == 200 and content is not None and server.answer_fn and not script_left:
                        content = server.answer_fn(body)
                if status == 200 and isinstance(content, bytes):
                    payload = content
                elif status == 200:
                    payload = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant",
                                                                               "content": content}}]}).encode()
                else:
                    payload = json.dumps({"error": {"message": str(content)}}).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    if status == 429 and server.retry_after is not None:
                        self.send_header("Retry-After", server.retry_after)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and hung up
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    url = base_url

    def __enter__(self) -> ChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
