"""Fault tests: hostile config files. A YAML anchor bomb (aliases of aliases: 9 levels of 9 expand to
9 ** 9 nodes from a few hundred bytes) under any typed section, a recursive alias, deep nesting and a 10 MB
file are refused in one line, in well under a second, before anything walks them (dtwinseg.io.parse_yaml:
one parser with a size cap and a node / depth budget)."""

from __future__ import annotations

import signal
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from dtwinseg.cli.main import app
from typer.testing import CliRunner

from dtwinseg.io import DataError, load_yaml
from dtwinseg.reasoning import ReasoningConfig

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging the suite) when the body runs longer than ``seconds``."""
    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def bomb(levels: int = 9, indent: str = "") -> str:
    """YAML lines defining anchors a0..a{levels}: each a list of 9 aliases of the previous one."""
    lines = [f"{indent}a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"{indent}a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines)


def tiny_recipe_with(tmp_path: Path, section_yaml: str) -> Path:
    base = (ROOT / "recipes" / "tiny_cpu.yaml").read_text()
    p = tmp_path / "recipe.yaml"
    p.write_text(base.replace("model:\n", "model:\n" + section_yaml + "\n", 1))
    return p


def test_anchor_bomb_in_model_kwargs_is_refused_in_one_line(tmp_path):
    recipe = tiny_recipe_with(tmp_path, "  kwargs:\n    bombs:\n" + bomb(indent="      ") + "\n    payload: *a9")
    with deadline(60):  # (importing the trainer takes seconds on a busy machine; expanding the bomb, hours)
        res = CliRunner().invoke(app, ["train", str(recipe), "--dry-run"])
    assert res.exit_code == 2, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert "Traceback" not in res.output
    assert len(errors) == 1 and errors[0].startswith(f"error: {recipe}: refused: the YAML expands to more than")


def test_anchor_bomb_in_a_reasoning_format_section_is_refused(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("format:\n  name: compact\n  options:\n    bombs:\n" + bomb(indent="      ")
                 + "\n    extra: *a9\n")
    with deadline(30), pytest.raises(DataError, match="expands to more than"):
        ReasoningConfig.from_yaml(p)


def test_anchor_bomb_in_an_override_is_refused():
    from dtwinseg.training.recipe import load_recipe

    flow = "{" + ", ".join([f"a0: &a0 [{', '.join(['x'] * 9)}]"] + [
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]) + "}"
    with deadline(30), pytest.raises(DataError, match="model.kwargs.*expands to more than"):
        load_recipe(ROOT / "recipes" / "tiny_cpu.yaml", [f"model.kwargs={flow}"])


def test_anchor_bomb_in_a_recipe_being_published_is_refused(tmp_path):
    import torch
    from dtwinseg.workflows.publish import PublishError, publish
    from safetensors.torch import save_file

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')
    save_file({"w": torch.zeros(2)}, str(model / "model.safetensors"))
    (model / "recipe.yaml").write_text(bomb() + "\nmodel:\n  kwargs: *a9\n")
    with deadline(30), pytest.raises(PublishError, match="expands to more than"):
        publish(model, "me/x", dry_run=True, stage_dir=tmp_path / "stage", log=lambda s: None)


@pytest.mark.parametrize("text,why", [
    ("a: &x [1, *x]\n", "refers to the node that contains it"),
    ("a: " + "[" * 200 + "]" * 200 + "\n", "nested more than"),
    ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nested more than"),
])
def test_recursive_and_deeply_nested_yaml_is_refused(tmp_path, text, why):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with deadline(30), pytest.raises(DataError, match=why):
        load_yaml(p)


def test_a_10mb_recipe_is_refused_by_its_size_before_parsing(tmp_path):
    recipe = tmp_path / "long.yaml"
    recipe.write_text((ROOT / "recipes" / "tiny_cpu.yaml").read_text() + "\nnote: " + "x" * 10_000_000 + "\n")
    t0 = time.perf_counter()
    with pytest.raises(DataError, match="larger than 1,048,576 bytes"):
        load_yaml(recipe)
    assert time.perf_counter() - t0 < 2  # read up to the cap, never parsed (parsing it took 22 s)
    with deadline(60):
        res = CliRunner().invoke(app, ["train", str(recipe), "--dry-run"])
    assert res.exit_code == 2 and "larger than 1,048,576 bytes" in res.output, res.output


def test_ordinary_aliases_and_merge_keys_still_work(tmp_path):
    p = tmp_path / "ok.yaml"
    p.write_text("base: &b {lr: 1.0e-4, steps: 3}\nrun: {<<: *b, steps: 5}\nlist: [*b, *b]\n")
    assert load_yaml(p) == {"base": {"lr": 1e-4, "steps": 3}, "run": {"lr": 1e-4, "steps": 5},
                            "list": [{"lr": 1e-4, "steps": 3}] * 2}
