"""One prompt per twin and query, fitted to the model's context, the same at training and at inference.

build-sft and the reasoners both build prompts with dtwinseg.formats.base.fit_prompt: the format's messages
degraded in a stated order (fewer relations, shorter numbers, then objects dropped, smallest first) until
they fit the context less the answer's reserve. These tests check the order, and that a record's training
prompt and the prompt the reasoner sends for the same twin are the same tokens, for 5, 50 and 150 objects.
"""

from __future__ import annotations

import numpy as np
import pytest
from dtwinseg.data_builders.programmatic import programmatic_record
from dtwinseg.data_builders.sft_dataset import (
    PROMPT,
    SFTDatasetConfig,
    build_sft_dataset,
    tokenizer_context,
)
from reasoning_helpers import save_tiny_llama

from dtwinseg.formats import FormatConfig, build_format
from dtwinseg.formats.base import answer_reserve, estimate_tokens, fit_prompt
from dtwinseg.spatial import SpatialConfig, degradation_ladder, fill_ladder, related_ids
from dtwinseg.twin import DigitalTwin

KINDS = ["cup", "chair", "lamp", "book", "plant", "bottle", "bowl", "clock"]
COLOURS = ["red", "blue", "green", "white"]


def cluttered_twin(n: int, seed: int = 0, size: int = 160) -> DigitalTwin:
    """n rectangles of varied sizes on a size x size image, some inside others, with descriptions."""
    rng = np.random.default_rng([seed, n])
    masks = np.zeros((n, size, size), bool)
    for k in range(n):
        w, h = rng.integers(4, 40, 2)
        x0, y0 = rng.integers(0, size - w), rng.integers(0, size - h)
        masks[k, y0:y0 + h, x0:x0 + w] = True
    sem = [f"a {COLOURS[k % 4]} {KINDS[(k * 7 + seed) % len(KINDS)]}" for k in range(n)]
    return DigitalTwin.from_masks(f"scene{n}", masks, semantics=sem)


def record(n: int, seed: int = 0):  # noqa: ANN201 - a SegDTRecord
    twin = cluttered_twin(n, seed)
    largest = max(twin.objects, key=lambda o: o.area)  # the answer: never the first object dropped
    gt = twin.masks()[twin.ids.index(largest.id)].astype(np.uint8)
    return programmatic_record(f"r{n}", f"{n}.png", "the red cup next to the largest lamp", twin, gt)


def test_degradation_order_relations_then_numbers_then_objects():
    """As the context shrinks the prompt walks down the ladder, and objects go only past its last rung,
    the smallest first; every prompt fits its budget while one can (filling off: see the fill tests)."""
    fmt = build_format("sftdt", FormatConfig(spatial=SpatialConfig(fill_tokens=None)))
    twin = cluttered_twin(40)
    query = "the red cup next to the largest lamp"
    rungs = degradation_ladder(fmt.config.spatial)
    sizes = [estimate_tokens(build_format("sftdt", FormatConfig(spatial=r)).messages(twin, query)) for r in rungs]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1]
    seen = []
    for context in range(sizes[0] * 3, 200, -97):
        fitted = fit_prompt(fmt, twin, query, context=context)
        seen.append((fitted.rung, fitted.objects_dropped))
        assert fitted.fits or len(fitted.twin) == 1  # one object is always shown
        assert fitted.tokens == estimate_tokens(fitted.messages)
        assert fitted.budget == context - answer_reserve(fitted.format, fitted.twin, context)
        if fitted.dropped:
            assert fitted.rung == len(rungs) - 1  # objects go only after the leanest rendering
            areas = {o.id: o.area for o in twin.objects}
            kept = min(areas[i] for i in fitted.twin.ids)
            assert all(areas[i] <= kept for i in fitted.dropped)  # the smallest first
            assert set(fitted.twin.ids) | set(fitted.dropped) == set(twin.ids)
        else:
            assert fitted.twin is twin
    assert seen == sorted(seen)  # monotone: a smaller context never gives a richer prompt
    assert {r for r, _ in seen} == set(range(len(rungs))) and seen[-1][1] > 0
    # the configured rendering whenever it fits
    assert fit_prompt(fmt, twin, query, context=100_000).messages == fmt.messages(twin, query)


def test_context_comes_from_the_format_else_the_model():
    from dtwinseg.formats.base import DEFAULT_CONTEXT_TOKENS, model_context_length

    class Tok:
        model_max_length = int(1e30)

    class Cfg:
        max_position_embeddings = 2048

    assert model_context_length(Tok(), Cfg()) == 2048
    Tok.model_max_length = 512
    assert model_context_length(Tok(), Cfg()) == 512  # the tokenizer first: build-sft has it too
    assert model_context_length(None, None) is None
    twin = cluttered_twin(60)
    small = build_format("select", FormatConfig(context_tokens=6000))
    assert fit_prompt(small, twin, "q").budget == 6000 - answer_reserve(small, twin, 6000)
    default = fit_prompt(build_format("select", FormatConfig()), twin, "q")
    assert default.budget == DEFAULT_CONTEXT_TOKENS - answer_reserve(small, twin, DEFAULT_CONTEXT_TOKENS)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Llama folder (BPE of a few hundred tokens: JSON(D) is long in it) with a 4096-token context."""
    return save_tiny_llama(tmp_path_factory.mktemp("fit") / "llama")


@pytest.mark.parametrize("format_name", ["sftdt", "select"])
def test_training_prompt_is_the_inference_prompt(tiny, format_name):
    """build-sft's prompt tokens for a record are exactly the tokens the reasoner sends for the same twin
    and query (5 objects: as configured; 50: leaner relations; 150: objects left out), and both report
    the same objects dropped."""
    from transformers import AutoTokenizer

    from dtwinseg.reasoning import LLMReasoner, ReasoningConfig, TransformersBackend

    tok = AutoTokenizer.from_pretrained(tiny)
    recs = [record(5), record(50), record(150)]
    fc = FormatConfig()
    cfg = SFTDatasetConfig(max_length=0, format_name=format_name, format=fc)
    context = tokenizer_context(tok, str(tiny))
    assert context == 4096  # from the model's config (its tokenizer has no limit of its own)
    ds, stats = build_sft_dataset(recs, tok, cfg, context=context)
    assert stats["examples"] == 3 and stats["answer_dropped"] == 0

    rcfg = ReasoningConfig(format_name=format_name, format=fc, model=str(tiny), max_new_tokens=4, device="cpu",
                           dtype="float32")
    backend = TransformersBackend(rcfg)
    sent: list[str] = []

    def generate(conversations, max_new_tokens=None):  # noqa: ANN001, ANN202 - no generation needed here
        sent.extend(backend.prompt_text(c) for c in conversations)
        return ["Answer: []"] * len(conversations)

    backend.generate = generate  # type: ignore[method-assign]
    reasoner = LLMReasoner(rcfg, backend)
    outs = reasoner.reason([(r.twin, r.query) for r in recs])
    rungs, dropped = [], []
    for rec, row, text, out in zip(recs, ds, sent, outs, strict=True):
        kinds = np.array(row["token_kinds"])
        first = int(np.argmax(kinds != PROMPT))
        train_prompt = row["input_ids"][:first]
        assert train_prompt == tok(text, add_special_tokens=False)["input_ids"], rec.id  # token for token
        assert tok.decode(train_prompt) == tok.decode(tok(text, add_special_tokens=False)["input_ids"])
        assert out.objects_dropped == row["removed_objects"]
        fitted = reasoner.fit(rec.twin, rec.query)
        assert fitted.tokens == len(train_prompt) <= fitted.budget
        rungs.append(fitted.rung)
        dropped.append(fitted.objects_dropped)
    assert rungs[0] == 0 and dropped[0] == 0  # 5 objects: the configured rendering, filled
    assert reasoner.fit(recs[0].twin, recs[0].query).format.config.spatial.max_relations is None  # every pair
    assert dropped[1] == 0 and rungs == sorted(rungs)  # 50: every object kept
    if format_name == "sftdt":  # a long answer to reserve room for: the 50-object prompt is leaner
        assert rungs[1] > 0
    assert dropped[2] > 0 and stats["objects_dropped"] == dropped[2]  # 150: past the context
    assert stats["truncated_twin"] == 1


def _relations(fitted, query):  # noqa: ANN001, ANN202 - which ids each object's line names
    return related_ids(fitted.twin, fitted.format.config.spatial, query)


@pytest.mark.parametrize("n", [6, 40, 120])
def test_fill_takes_the_richest_rendering_within_fill_tokens(n):
    """With room to spare the prompt relates more pairs than the floor (max_relations nearest + the
    landmarks): the richest rung of fill_ladder within fill_tokens and the budget, never a poorer one than
    the floor, and the next richer rung would not fit."""
    query = "the red cup next to the largest lamp"
    twin = cluttered_twin(n)
    for fill in (600, 2500, 8192):
        fmt = build_format("select", FormatConfig(spatial=SpatialConfig(fill_tokens=fill)))
        floor = fit_prompt(build_format("select", FormatConfig(spatial=SpatialConfig(fill_tokens=None))), twin, query,
                           context=100_000)
        fitted = fit_prompt(fmt, twin, query, context=100_000)
        assert fitted.rung == 0 and not fitted.dropped
        base, rich = _relations(floor, query), _relations(fitted, query)
        assert all(set(base[i]) <= set(rich[i]) for i in base)  # filling only adds relations
        rungs = fill_ladder(fmt.config.spatial, n)
        chosen = fitted.format.config.spatial
        if chosen == fmt.config.spatial:  # nothing richer fits: the floor itself
            assert floor.messages == fitted.messages
            assert all(estimate_tokens(build_format("select", FormatConfig(spatial=r)).messages(twin, query)) > fill
                       for r in rungs)
            continue
        assert fitted.tokens <= fill and chosen in rungs
        richer = rungs[:rungs.index(chosen)]
        assert all(estimate_tokens(build_format("select", FormatConfig(spatial=r)).messages(twin, query)) > fill
                   for r in richer)
    if n == 6:  # a small twin: every pair, whatever the layout's floor
        assert fitted.format.config.spatial.max_relations is None
        assert all(len(v) == n - 1 for v in _relations(fitted, query).values())


def test_fill_respects_the_budget_and_is_off_when_asked():
    twin = cluttered_twin(40)
    query = "the red cup next to the largest lamp"
    fmt = build_format("select", FormatConfig())
    roomy = fit_prompt(fmt, twin, query, context=100_000)
    tight = fit_prompt(fmt, twin, query, context=roomy.tokens + answer_reserve(fmt, twin, 10_000) - 50)
    assert tight.fits and tight.tokens < roomy.tokens  # a smaller context fills less
    off = FormatConfig(spatial=SpatialConfig(fill_tokens=0))
    assert fit_prompt(build_format("select", off), twin, query, context=100_000).messages == \
        build_format("select", off).messages(twin, query)
    assert fill_ladder(SpatialConfig(max_relations="all"), 40) == []  # all pairs already: nothing to add
    with pytest.raises(Exception, match="fill_tokens"):
        SpatialConfig(fill_tokens=-1)


def test_fill_reserves_the_answer_of_a_path_that_repeats_the_relations():
    """sftdt with include_spatial writes T_i in every step: a filled prompt's answer is longer, and both
    the reserve it is fitted under and the generation budget are the filled format's."""
    twin = cluttered_twin(20)
    fmt = build_format("sftdt", FormatConfig(include_spatial=True))
    fitted = fit_prompt(fmt, twin, "the red cup next to the largest lamp", context=100_000)
    assert fitted.format.config.spatial.max_relations != fmt.config.spatial.max_relations  # filled
    assert fitted.format.budget(twin) > fmt.budget(twin)
    assert fitted.budget == 100_000 - answer_reserve(fitted.format, twin, 100_000) and fitted.fits


def test_format_json_saved_before_filling_reads_as_never_filled(tmp_path):
    """An adapter trained before fill_tokens existed keeps its prompts: its format.json reads as null."""
    import json

    from dtwinseg.formats.base import format_record, load_format, save_format

    save_format(tmp_path, "select", FormatConfig())
    assert load_format(tmp_path)[1].spatial.fill_tokens == 8192  # saved now: the field is written
    old = format_record("select", FormatConfig())
    del old["config"]["spatial"]["fill_tokens"]
    (tmp_path / "format.json").write_text(json.dumps(old))
    assert load_format(tmp_path)[1].spatial.fill_tokens is None
    from dtwinseg.formats.base import check_same_format
    from dtwinseg.io import DataError

    with pytest.raises(DataError, match="fill_tokens: null"):  # its prompts differ from today's default's
        check_same_format(load_format(tmp_path), ("select", FormatConfig()), source=tmp_path)
    check_same_format(("select", FormatConfig(spatial=SpatialConfig(fill_tokens=None))),
                      ("select", FormatConfig(spatial=SpatialConfig(fill_tokens=None))))
    # the compact format writes its own object lines: JSON(D)'s spatial options change none of its prompts
    twin = cluttered_twin(12)
    a, b = FormatConfig(spatial=SpatialConfig(fill_tokens=None)), FormatConfig()
    assert fit_prompt(build_format("compact", a), twin, "q").messages == \
        fit_prompt(build_format("compact", b), twin, "q").messages
    check_same_format(("compact", a), ("compact", b))


def test_eval_records_count_dropped_objects_and_the_oracle_sees_what_was_shown():
    from dtwinseg.data_builders.sample import Sample
    from dtwinseg.eval.records import metrics_from_state, sample_record, state_from_records, summary_line

    from dtwinseg.parsing import ParseResult
    from dtwinseg.reasoning import ReasoningOutput

    twin = cluttered_twin(8)
    target = twin.objects[3]
    gt = twin.masks()[3].astype(np.uint8)
    sample = Sample(id="s", image_path="s.jpg", query="q", is_sentence=False, gt_mask=gt, split="val")
    shown = ReasoningOutput([], ParseResult("ok", []), "Answer: []", "select")
    cut = ReasoningOutput([], ParseResult("ok", []), "Answer: []", "select", dropped=[target.id, 5])
    full, short = sample_record(sample, twin, shown), sample_record(sample, twin, cut)
    assert full["oracle_iou"] == pytest.approx(1.0) and "objects_dropped" not in full
    assert short["objects_dropped"] == 2 and short["oracle_iou"] < 0.99  # the target was not shown
    assert target.id not in short["oracle_ids"]
    state = state_from_records([full, short])
    assert metrics_from_state(state)["objects_dropped"] == 2
    assert "2 objects left out of prompts" in summary_line("m", state)
    assert cut.to_dict()["objects_dropped"] == 2 and "objects_dropped" not in shown.to_dict()


def test_no_shipped_reasoning_config_truncates_a_50_object_answer():
    """Every shipped reasoning config (and the pipelines' reasoning sections) sizes answers from the twin,
    and the budget its format needs for a 50-object twin is within its cap."""
    from pathlib import Path

    from dtwinseg.reasoning import ReasoningConfig, make_format

    root = Path(__file__).resolve().parent.parent / "recipes"
    paths = sorted((root / "reasoning").rglob("*.yaml"))
    paths += [(p.parent / line.split(":", 1)[1].strip()).resolve()
              for p in sorted((root / "pipeline").glob("*.yaml"))
              for line in p.read_text().splitlines() if line.startswith("reasoning:")]
    assert len(paths) >= 10
    twin = cluttered_twin(50)
    for path in paths:
        cfg = ReasoningConfig.from_yaml(path)
        assert cfg.max_new_tokens == "auto", path
        assert make_format(cfg).budget(twin) <= cfg.max_new_tokens_cap, path
