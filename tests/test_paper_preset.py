"""The paper preset on a real chat LLM: SmolLM2-135M-Instruct converted from the packaged GGUF into a cached
folder, the sftdt format with its chat template at training and at inference, and the quick run of
``dtwinseg demo --preset paper`` (build-sft -> LoRA training -> generation -> summary.json)."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import numpy as np
import pytest

from dtwinseg.formats import FormatConfig, Target, build_format
from dtwinseg.io import DataError
from dtwinseg.twin import DigitalTwin

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2 = "base:smollm2-135m-instruct"


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model cache for the test session (the GGUF is converted once, ~30 s), set as DTWINSEG_MODEL_CACHE."""
    pytest.importorskip("gguf")
    before = os.environ.get("DTWINSEG_MODEL_CACHE")
    folder = tmp_path_factory.mktemp("model-cache")
    os.environ["DTWINSEG_MODEL_CACHE"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("DTWINSEG_MODEL_CACHE", None)
    else:
        os.environ["DTWINSEG_MODEL_CACHE"] = before


@pytest.fixture(scope="session")
def smollm2(model_cache: Path) -> Path:
    from dtwinseg.base_models import resolve_model_path

    return Path(resolve_model_path(SMOLLM2))


def small_twin() -> DigitalTwin:
    masks = np.zeros((3, 20, 30), dtype=bool)
    masks[0, 2:6, 3:9] = True
    masks[1, 10:20, 20:30] = True
    masks[2, 12:16, 2:6] = True
    return DigitalTwin.from_masks("t", masks, semantics=["a small red circle", "a large blue square", "a green star"])


# --- the base model ---------------------------------------------------------------------------------
def test_smollm2_is_converted_once_into_a_cached_llama_folder(smollm2: Path, model_cache: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dtwinseg.base_models import cached_base_model, resolve_model_path

    assert smollm2 == model_cache / "smollm2-135m-instruct"
    assert {"model.safetensors", "config.json", "tokenizer.json", "base_model.json"} <= set(os.listdir(smollm2))
    assert [p.name for p in model_cache.iterdir()] == ["smollm2-135m-instruct"]  # no temporary folder left
    info = json.loads((smollm2 / "base_model.json").read_text())
    assert info["config"]["name"] == "smollm2-135m-instruct" and "dequantised" in info["source"]
    config = json.loads((smollm2 / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    stamp = (smollm2 / "model.safetensors").stat().st_mtime_ns
    assert cached_base_model("smollm2-135m-instruct") == smollm2  # reused, not converted again
    assert resolve_model_path(SMOLLM2) == str(smollm2)
    assert (smollm2 / "model.safetensors").stat().st_mtime_ns == stamp

    model = AutoModelForCausalLM.from_pretrained(str(smollm2), dtype=torch.bfloat16)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert 134e6 < sum(p.numel() for p in model.parameters()) < 135e6
    tok = AutoTokenizer.from_pretrained(str(smollm2))
    text = tok.apply_chat_template([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
                                   tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    assert tok.eos_token == "<|im_end|>"


def test_model_cache_location_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from dtwinseg.base_models import model_cache_dir, resolve_model_path

    monkeypatch.setenv("DTWINSEG_MODEL_CACHE", str(tmp_path / "m"))
    assert model_cache_dir() == tmp_path / "m"
    monkeypatch.delenv("DTWINSEG_MODEL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert model_cache_dir() == tmp_path / "xdg" / "dtwinseg" / "models"
    with pytest.raises(DataError, match="unknown base model 'nope'"):
        resolve_model_path("base:nope")


def test_a_failed_preparation_leaves_no_folder_and_keeps_the_previous_one(monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: Path) -> None:
    from dtwinseg import base_models
    from dtwinseg.base_models import BaseModelConfig, prepare_base_model

    def broken(folder: Path, cfg: BaseModelConfig) -> dict:
        (folder / "config.json").write_text("{}")  # half written, then the conversion dies
        raise OSError("disk full")

    monkeypatch.setattr(base_models, "_write_minilm", broken)
    with pytest.raises(OSError, match="disk full"):
        prepare_base_model(tmp_path / "base", BaseModelConfig(init_seed=3))
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its temporary sibling
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "weights").write_text("previous")
    with pytest.raises(OSError):
        prepare_base_model(tmp_path / "base", BaseModelConfig(init_seed=3))
    assert [p.name for p in tmp_path.iterdir()] == ["base"] and (tmp_path / "base" / "weights").read_text() == "previous"


# --- the format ---------------------------------------------------------------------------------------
def test_sftdt_target_without_a_path_is_the_answer_line_its_parser_reads() -> None:
    fmt = build_format("sftdt", FormatConfig())
    comp = fmt.target(small_twin(), Target([2, 0]))
    assert comp.text == "Answer: [0, 2]" and [comp.text[a:b] for a, b in comp.answer_spans] == ["[0, 2]"]
    assert fmt.parse(comp.text, small_twin()).parse.ids == [0, 2]


def test_paper_recipe_loads_and_refuses_bad_rows(tmp_path: Path) -> None:
    from dtwinseg.workflows.paper import PaperConfig

    cfg = PaperConfig.load()
    assert set(cfg.rows) == {"sftdt", "sftdt-unweighted", "answer-only"} and cfg.main == "auto"
    assert cfg.base == SMOLLM2 and cfg.recipe == "recipes/smollm2_lora_cpu.yaml"
    quick = PaperConfig.load(preset="quick")
    assert quick.max_steps == 2 and quick.rows == cfg.rows
    # The shipped reasoning config of the trained model writes and reads the format the preset trains.
    from dtwinseg.workflows.demo import project_path

    from dtwinseg.reasoning import ReasoningConfig

    shipped = ReasoningConfig.from_yaml(project_path("recipes/reasoning/smollm2_sftdt.yaml"))
    assert shipped.format_name == "sftdt" and shipped.model == cfg.base
    assert shipped.format.to_dict() == FormatConfig.from_dict(cfg.format).to_dict()
    assert shipped.format.options["style"] == "concise"
    bad = tmp_path / "p.yaml"
    bad.write_text("rows:\n  x: {target: paths, weighted: true}\n")
    with pytest.raises(DataError, match="target"):
        PaperConfig.load(bad)
    bad.write_text("format:\n  system_promt: hi\n")
    with pytest.raises(DataError, match="system_prompt"):
        PaperConfig.load(bad)


# --- the quick run ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick_run(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    """``dtwinseg demo --preset paper --quick`` through the CLI, as the README shows it."""
    from dtwinseg.cli.main import app
    from typer.testing import CliRunner

    out = tmp_path_factory.mktemp("paper") / "demo-paper"
    readme = (ROOT / "README.md").read_text().split("## The paper's method on a chat LLM", 1)[1]
    make, quick = [ln.split("#")[0].strip() for ln in readme.split("\n\n", 2)[1].splitlines()]
    assert make == "make demo-paper"  # and the Makefile target runs the preset into runs/demo-paper:
    assert "dtwinseg.cli demo --preset paper --out runs/demo-paper" in (ROOT / "Makefile").read_text()
    args = shlex.split(quick.replace("runs/demo-paper-quick", str(out)))
    assert args[:2] == ["dtwinseg", "demo"]
    res = CliRunner().invoke(app, args[1:] + ["--no-progress"])
    assert res.exit_code == 0, res.output
    return out, json.loads((out / "summary.json").read_text()), res.output


@pytest.mark.slow
def test_quick_paper_preset_trains_generates_and_reports_every_row(quick_run: tuple[Path, dict, str]) -> None:
    from dtwinseg.workflows.demo import project_path

    out, summary, output = quick_run
    trained = {"sftdt", "sftdt-unweighted", "answer-only"}
    assert set(summary["rows"]) == trained | {"zero-shot", "zero-shot-free", "random", "largest", "embedding",
                                              "constrained"}
    for key in ("synth_config", "perception_config", "main", "rows", "oracle", "test", "val", "stage_times_s"):
        assert key in summary  # the schema of runs/demo/summary.json
    best_val = max(summary["rows"][k]["val_giou"] for k in trained)
    assert summary["main"] in trained and summary["rows"][summary["main"]]["val_giou"] == best_val
    zero = summary["rows"]["zero-shot"]
    variant = {"free": "zero-shot-free", "constrained": "constrained"}[zero["zero_shot_variant"]]
    assert zero["giou"] == summary["rows"][variant]["giou"]
    assert zero["val_giou"] >= max(summary["rows"][k]["val_giou"] for k in ("zero-shot-free", "constrained")) - 1e-12
    for name, row in summary["rows"].items():
        assert 0.0 <= row["giou"] <= 1.0, name
        lo, hi = row["giou_ci95"]
        assert lo <= row["giou"] + 1e-9 <= hi + 2e-9
        assert project_path(row["reasoning_config"]).is_file()
    for name in trained:  # LoRA adapters over the cached base, with the format they were trained on
        ck = project_path(summary["rows"][name]["checkpoint"])
        adapter = json.loads((ck / "adapter_config.json").read_text())
        assert Path(adapter["base_model_name_or_path"]).name == "smollm2-135m-instruct"
        assert json.loads((ck / "format.json").read_text())["format"] == ("select" if name == "answer-only" else "sftdt")
    assert summary["rows"]["constrained"]["parse"]["failed"] == 0  # constrained answers always parse
    n = summary["test"]["n"]
    texts = [json.loads(line)["text"] for line in (out / "eval" / "sftdt" / "predictions.jsonl").read_text().splitlines()]
    assert len(texts) == n and all(isinstance(t, str) and t for t in texts)  # generated by the LoRA model
    diff = summary["weighted_minus_unweighted"]["test"]
    assert diff["n"] == n and diff["diff_ci95"][0] <= diff["diff"] + 1e-9 <= diff["diff_ci95"][1] + 2e-9
    assert f"| {summary['main']} (main) |" in output and "sftdt minus sftdt-unweighted" in output
    readme = (out / "README.md").read_text()
    assert readme.startswith("| row | gIoU |")
    # the judgement is of the SFTDT row (issue 24's question), whichever row val chose as main
    j = summary["judgement"]["test"]
    assert j["main"] == "sftdt" and j["giou"] == summary["rows"]["sftdt"]["giou"]
    best = max((k for k, r in summary["rows"].items() if not r.get("trained")), key=lambda k: summary["rows"][k]["giou"])
    assert summary["rows"][j["best_baseline"]]["giou"] == summary["rows"][best]["giou"]
    assert "Judgement (test split): sftdt " in readme
    assert summary["training_precision"] == "bf16 weights" and "training in bf16 weights" in readme
    assert "s of CPU" not in readme  # not measured by this preset, so not printed as 0


@pytest.mark.slow
def test_training_and_inference_see_byte_identical_prompts(quick_run: tuple[Path, dict, str]) -> None:
    """The chat template and format build-sft trained on are the ones eval generates with: the inference prompt
    (from the row's reasoning config and the adapter's format.json) is the training example's prompt, as text
    and as token ids, and every token after it is a trained completion token."""
    from datasets import load_from_disk
    from dtwinseg.data_builders.segdt import load_records
    from dtwinseg.eval.checkpoints import parse_checkpoint
    from dtwinseg.workflows.demo import project_path

    from dtwinseg.reasoning import LLMReasoner, ReasoningConfig

    out, summary, _ = quick_run
    records = {r.id: r for r in load_records(out / "segdt.jsonl")}
    for name in ("sftdt", "answer-only"):
        row = summary["rows"][name]
        ck = parse_checkpoint(f"{name}={project_path(row['checkpoint'])}",
                              ReasoningConfig.from_yaml(project_path(row["reasoning_config"])))
        reasoner = LLMReasoner(ck.cfg)  # refuses a format other than the adapter's format.json
        ds = load_from_disk(str(out / ("sft-path" if name == "sftdt" else "sft-answer")))
        for example in ds.select(range(2)):
            rec = records[example["id"]]
            prompt = reasoner.backend.prompt_text(reasoner.messages(rec.twin, rec.query))
            tok = reasoner.backend._ensure_loaded()[1]
            ids = tok(prompt, add_special_tokens=False)["input_ids"]
            assert example["input_ids"][:len(ids)] == ids
            assert tok.decode(example["input_ids"]).startswith(prompt)
            assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
            kinds = example["token_kinds"]
            assert set(kinds[:len(ids)]) == {0} and min(kinds[len(ids):]) >= 1
