"""The user's journey, exactly as the README writes it: synth -> build-dt -> build-segdt -> build-sft -> train
(tiny full fine-tune, tiny LoRA) -> eval (full model, adapter, merged) -> compare -> publish --dry-run ->
the staged card's "Use" command on the local folder.

The commands are the ```bash block of the README's "Fine-tuning with SFTDT" section, run one by one with the
installed ``dtwinseg`` console script in a temporary folder that holds ``recipes/`` (a link to the
repository's): the only substitution. README and test cannot drift."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Fine-tuning with SFTDT"


def readme_commands(readme: Path = ROOT / "README.md") -> list[str]:
    """The command lines of the first ```bash block after the fine-tuning heading (continuations joined)."""
    text = readme.read_text(encoding="utf-8")
    section = text[text.index(SECTION):]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "the fine-tuning section has no ```bash block"
    lines = block.group(1).replace("\\\n", " ").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def dtwinseg_executable() -> str:
    exe = Path(sys.executable).parent / "dtwinseg"
    return str(exe) if exe.exists() else "dtwinseg"


def run(line: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    argv = shlex.split(line)
    assert argv[0] == "dtwinseg", line
    proc = subprocess.run([dtwinseg_executable(), *argv[1:]], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, f"{line}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def card_use_command(card_text: str) -> str:
    use = card_text[card_text.index("## Use"):]
    block = re.search(r"```bash\n(.*?)```", use, re.S)
    assert block, "the card has no Use command"
    return block.group(1).strip()


def test_readme_block_is_the_whole_chain():
    steps = [shlex.split(c)[1] for c in readme_commands()]
    assert steps == ["synth", "build-dt", "build-dt", "build-segdt", "build-sft", "train", "train", "eval",
                     "compare", "publish"]


@pytest.mark.slow
def test_journey_as_the_readme_writes_it(tmp_path):
    from huggingface_hub import ModelCard

    (tmp_path / "recipes").symlink_to(ROOT / "recipes", target_is_directory=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "WANDB_MODE": "offline"}
    env.pop("DTWINSEG_DEBUG", None)
    for line in readme_commands():
        proc = run(line, tmp_path, env)
        if shlex.split(line)[1] == "build-sft":  # the README's chain drops no record
            stats = json.loads(proc.stdout)
            assert stats["examples"] == stats["records"] == 8 and stats["dropped_too_long"] == 0, stats
            assert "warning" not in proc.stderr

    tiny = tmp_path / "runs" / "tiny"
    assert (tiny / "train" / "model.safetensors").stat().st_size > 0
    assert (tiny / "lora" / "adapter_model.safetensors").stat().st_size > 0
    adapter_cfg = json.loads((tiny / "lora" / "adapter_config.json").read_text())
    assert Path(adapter_cfg["base_model_name_or_path"]) == (tiny / "lora" / "base").resolve()
    metrics = json.loads((tiny / "eval" / "metrics.json").read_text())
    assert set(metrics["checkpoints"]) == {"full", "lora", "merged"}
    assert all(c["groups"]["overall"]["n"] == 4 for c in metrics["checkpoints"].values())
    # the adapter on its saved base and the merged model are one model: the same generated text
    answers = {}
    for label in ("lora", "merged"):
        lines = (tiny / "eval" / label / "predictions.jsonl").read_text().splitlines()
        answers[label] = {r["id"]: r["text"] for r in map(json.loads, lines)}
    assert len(answers["lora"]) == 4 and answers["lora"] == answers["merged"]
    table = json.loads((tiny / "compare" / "compare.json").read_text())
    assert set(table["rows"]) == {"eval/full", "eval/lora", "eval/merged"}
    assert all(r["n"] == 4 for r in table["rows"].values())
    # the recipe a run saved reruns to the same resolved configuration
    res = subprocess.run([dtwinseg_executable(), "train", "runs/tiny/lora/recipe.yaml", "--dry-run"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]

    staged = tiny / "publish"
    card = ModelCard.load(staged / "README.md")
    assert card.data.library_name == "peft" and card.data.model_name == "dtwinseg-tiny-lora"
    assert {r.metric_type for r in card.data.eval_results} == {"giou", "ciou"}
    use = card_use_command(card.text)
    assert "me/dtwinseg-tiny-lora" in use
    local = (use.replace("me/dtwinseg-tiny-lora", str(staged)).replace("DATASET_SPEC", "synthetic:runs/tiny/data:test")
             .replace("CACHE", "runs/tiny/dt").replace("runs/eval", "runs/tiny/use"))
    run(local + " --no-progress", tmp_path, env)
    used = json.loads((tiny / "use" / "metrics.json").read_text())
    (label, ck), = used["checkpoints"].items()
    assert ck["groups"]["overall"]["n"] == 4 and Path(ck["adapter"]).resolve() == staged.resolve()
