"""Shared builders for the reasoning / evaluation tests: small twins, a tiny random-weight Llama with a
BPE tokenizer trained on the fly (no download), and a ReasonSeg-format dataset written to disk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from perception_helpers import ChatServer

from dtwinseg.twin import DigitalTwin

SEMANTICS = ["red cup", "blue chair", "green tree", "yellow sun", "white house", "black cat", "orange ball"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def make_twin(seed: int, n: int | None = None, size: int = 32, image_id: str | None = None) -> DigitalTwin:
    """A twin of ``n`` (default 2-5) random rectangles on a ``size`` x ``size`` image."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 6)) if n is None else n
    masks = np.zeros((n, size, size), dtype=bool)
    for k in range(n):
        x0, y0 = rng.integers(0, size - 8, 2)
        w, h = rng.integers(3, 9, 2)
        masks[k, y0:y0 + h, x0:x0 + w] = True
    sem = [SEMANTICS[int(i)] for i in rng.integers(0, len(SEMANTICS), n)]
    return DigitalTwin.from_masks(image_id or f"img{seed}", masks, semantics=sem)


def train_tokenizer(texts: list[str]):
    """A byte-level BPE tokenizer (a few hundred tokens) with a chat template, trained in memory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def corpus() -> list[str]:
    from dtwinseg.formats.score import score_messages
    from dtwinseg.formats.select import select_messages

    texts = []
    for s in range(6):
        tw = make_twin(s)
        for m in select_messages(tw, "the red cup") + score_messages(tw, "the tree"):
            texts.append(m["content"])
    return texts + ["Answer: [0, 1, 2, 3, 4]", '{"0": 7, "1": 2}', "Step 1: keep"] * 5


def tiny_llama(tokenizer, seed: int = 0, hidden: int = 32, layers: int = 2):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                      tie_word_embeddings=False, initializer_range=0.2)
    return LlamaForCausalLM(cfg).eval()


def save_tiny_llama(folder: Path, seed: int = 0) -> Path:
    """Write a tiny Llama + tokenizer folder loadable with from_pretrained; returns the folder."""
    tok = train_tokenizer(corpus())
    model = tiny_llama(tok, seed)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def write_reasonseg(root: Path, split: str, items: list[dict]) -> Path:
    """ReasonSeg-format folder: ``<root>/<split>/<id>.jpg`` + ``.json`` with polygons (rectangles).

    items: ``{"id", "query", "is_sentence", "rects": [(x0, y0, x1, y1)], "size": (H, W), "dimension"?}``.
    """
    from PIL import Image

    d = root / split
    d.mkdir(parents=True, exist_ok=True)
    for it in items:
        h, w = it["size"]
        Image.new("RGB", (w, h), (90, 120, 150)).save(d / f"{it['id']}.jpg")
        shapes = [{"label": "target", "shape_type": "polygon",
                   "points": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]} for x0, y0, x1, y1 in it["rects"]]
        rec = {"text": [it["query"]], "is_sentence": it["is_sentence"], "shapes": shapes}
        if it.get("dimension"):
            rec["dimension"] = it["dimension"]
        (d / f"{it['id']}.json").write_text(json.dumps(rec))
    return root


def semantic_answer(body: dict) -> str:
    """``Answer: [ids]`` with the ids whose semantic text appears in the query of a reasoning prompt."""
    user = body["messages"][-1]["content"]
    twin = json.loads(user.split("Digital Twin:\n", 1)[1].split("\n\nQuery:", 1)[0])
    query = user.rsplit("Query:", 1)[1]
    # compact layout: "<semantic>; box ..." per object; paper layout: {"spatial", "semantic"}
    sem = {int(k): (v["semantic"] if isinstance(v, dict) else v.split("; box ", 1)[0]) for k, v in twin.items()}
    return f"Answer: {sorted(k for k, v in sem.items() if v and not v.startswith('box ') and v in query)}"


class SemanticChatServer(ChatServer):
    """A loopback OpenAI-compatible server: answers ``Answer: [ids]`` with the ids whose semantic text
    appears in the query (a deterministic stand-in for a zero-shot API model)."""

    def __init__(self):
        super().__init__(answer_fn=semantic_answer)


def save_tiny_bert(folder: Path) -> Path:
    """A tiny random causal BERT with the demo base's WordPiece tokenizer ("yes" / "no": one token each)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertLMHeadModel

    from dtwinseg.base_models import packaged_minilm_path

    tok = AutoTokenizer.from_pretrained(str(packaged_minilm_path()))
    torch.manual_seed(0)
    BertLMHeadModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, is_decoder=True)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
