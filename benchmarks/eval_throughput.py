"""Evaluation reasoning throughput: batched left-padded generation vs one sample at a time.

Same tiny random-weight Llama (the test suite's builder: BPE tokenizer trained on the fly, no
download), same twins and queries, greedy decoding, through the real LLMReasoner + TransformersBackend.
Both variants are timed alternately in the same process (warm-up + repetitions, medians); the outputs
are checked to be identical, so the speed-up is not bought with different answers.

Run: ``python benchmarks/eval_throughput.py [--quick]``; writes benchmarks/results/eval_throughput.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from common import interleaved, median, write_result  # noqa: E402


def main(quick: bool = False) -> dict:
    import torch
    from reasoning_helpers import corpus, make_twin, tiny_llama, train_tokenizer

    from dtwinseg.reasoning import LLMReasoner, ReasoningConfig, TransformersBackend

    n_samples = 8 if quick else 16
    batch_size = 8
    max_new_tokens = 16 if quick else 24
    repeats = 2 if quick else 3
    torch.manual_seed(0)
    tok = train_tokenizer(corpus())
    model = tiny_llama(tok, hidden=64, layers=2)
    queries = ["the red cup", "something to sit on", "all green things left of the house",
               "the largest object below the sun"]
    items = [(make_twin(s), queries[s % len(queries)]) for s in range(n_samples)]

    def reasoner(bs: int) -> LLMReasoner:
        cfg = ReasoningConfig(max_new_tokens=max_new_tokens, batch_size=bs, device="cpu")
        return LLMReasoner(cfg, TransformersBackend(cfg, model, tok))

    batched, single = reasoner(batch_size), reasoner(1)
    same = [o.text for o in batched.reason(items)] == [o.text for o in single.reason(items)]
    times = interleaved({"batched": lambda: batched.reason(items), "one_by_one": lambda: single.reason(items)},
                        repeats=repeats, warmup=0)  # the equality check above was the warm-up
    med = {k: median(v) for k, v in times.items()}
    sps = {k: n_samples / v for k, v in med.items()}
    prompt_tokens = [len(tok(batched.backend.prompt_text(batched.messages(t, q)))["input_ids"]) for t, q in items]
    result = {
        "settings": {"quick": quick, "n_samples": n_samples, "batch_size": batch_size,
                     "max_new_tokens": max_new_tokens, "repeats": repeats, "greedy": True,
                     "model": f"LlamaForCausalLM hidden 64, 2 layers, vocab {len(tok)} (random weights)",
                     "mean_prompt_tokens": sum(prompt_tokens) / len(prompt_tokens)},
        "raw_seconds": times,
        "median_seconds": med,
        "samples_per_s": sps,
        "speedup_batched_vs_one_by_one": sps["batched"] / sps["one_by_one"],
        "speedup": sps["batched"] / sps["one_by_one"],  # the headline make bench reports
        "outputs_identical": same,
    }
    write_result("eval_throughput", result)
    return result


if __name__ == "__main__":
    r = main(quick="--quick" in sys.argv)
    print(f"batched {r['samples_per_s']['batched']:.2f} samples/s, one by one "
          f"{r['samples_per_s']['one_by_one']:.2f} samples/s, speed-up "
          f"{r['speedup_batched_vs_one_by_one']:.2f}x, identical outputs: {r['outputs_identical']}")
