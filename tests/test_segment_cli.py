"""dtwinseg segment: twin -> reasoning (loopback API model) -> mask.png / overlay.png / twin.json /
reasoning.txt; and the Segmenter with a perception stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dtwinseg.cli.main import app
from PIL import Image
from reasoning_helpers import SemanticChatServer
from typer.testing import CliRunner

from dtwinseg.pipeline import Segmenter
from dtwinseg.reasoning import ReasoningConfig, build_reasoner
from dtwinseg.twin import DigitalTwin


def scene() -> DigitalTwin:
    masks = np.zeros((3, 80, 120), dtype=bool)
    masks[0, 10:35, 10:45] = True
    masks[1, 45:75, 60:110] = True
    masks[2, 45:70, 10:35] = True
    return DigitalTwin.from_masks("img", masks, semantics=["red cup", "blue chair", "red cup"])


@pytest.fixture
def server():
    with SemanticChatServer() as s:
        yield s


def test_segment_cli_writes_all_outputs(tmp_path, server):
    twin = scene()
    twin.save(tmp_path / "twin_in.json")
    Image.new("RGB", (120, 80), (30, 90, 160)).save(tmp_path / "img.jpg")
    (tmp_path / "pipeline.yaml").write_text(
        f"reasoning:\n  format: select\n  backend: openai\n  model: fake\n  base_url: {server.url}\n")
    res = CliRunner().invoke(app, ["segment", str(tmp_path / "img.jpg"), "find every red cup", "--config",
                                   str(tmp_path / "pipeline.yaml"), "--twin", str(tmp_path / "twin_in.json"),
                                   "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    out = tmp_path / "out"
    mask = np.asarray(Image.open(out / "mask.png"))
    assert np.array_equal(mask > 0, twin.union([0, 2]))
    full = np.asarray(Image.open(out / "overlay.png").convert("RGB")).astype(int)
    assert full.shape[1] == 120 and full.shape[0] > 80  # the image, then the caption band
    overlay, band = full[:80], full[80:]
    assert (band == 255).all(axis=2).mean() > 0.8  # a white band ...
    inked = np.flatnonzero((band.max(axis=2) < 100).any(axis=1))  # ... with two lines of dark text
    assert len(inked) and inked.max() - inked.min() >= 12
    from dtwinseg.visualize import segment_caption

    assert segment_caption("find every  red cup", [0, 2], "ok") == "query: find every red cup\nanswer: ids [0, 2]"
    assert segment_caption("q", [], "failed").endswith("ids [] (parse failed)")
    reddish = (overlay[..., 0] > 100) & (overlay[..., 2] < 140)  # the base image is (30, 90, 160)
    assert reddish[twin.union([0, 2])].mean() > 0.5 and reddish[twin.union([1])].mean() < 0.2
    text = (out / "reasoning.txt").read_text()
    assert "ids: [0, 2]" in text and "parse: ok" in text and "Answer: [0, 2]" in text
    saved = DigitalTwin.load(out / "twin.json")
    assert saved.query == "find every red cup" and len(saved) == 3


def test_segment_cli_errors_name_the_problem(tmp_path):
    Image.new("RGB", (120, 80)).save(tmp_path / "img.jpg")
    (tmp_path / "p.yaml").write_text("reasoning:\n  format: select\n")
    res = CliRunner().invoke(app, ["segment", str(tmp_path / "img.jpg"), "q", "--config", str(tmp_path / "p.yaml")])
    assert res.exit_code == 2 and "perception" in res.output and "Traceback" not in res.output, res.output
    scene().save(tmp_path / "t.json")
    Image.new("RGB", (10, 10)).save(tmp_path / "small.jpg")
    res = CliRunner().invoke(app, ["segment", str(tmp_path / "small.jpg"), "q", "--config", str(tmp_path / "p.yaml"),
                                   "--twin", str(tmp_path / "t.json")])
    assert res.exit_code == 2 and "height/width" in res.output, res.output


def test_segmenter_runs_perception_then_reasoning(server):
    class FakePerception:
        def __init__(self):
            self.calls = []

        def build(self, image, query, image_id):
            self.calls.append((image.shape, query, image_id))
            return scene()

    perception = FakePerception()
    cfg = ReasoningConfig(backend="openai", model="fake", base_url=server.url)
    seg = Segmenter(perception, build_reasoner(cfg)).segment(np.zeros((80, 120, 3), np.uint8), "the blue chair", "x")
    assert perception.calls == [((80, 120, 3), "the blue chair", "x")]
    assert seg.output.ids == [1] and np.array_equal(seg.mask, seg.twin.union([1]))


PIPELINES = sorted((Path(__file__).resolve().parent.parent / "recipes" / "pipeline").glob("*.yaml"))


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_shipped_pipelines_build_and_segment(path, server, monkeypatch):
    """Each recipes/pipeline/*.yaml builds both stages (no weights are loaded before the first image); its
    reasoning section answers through the loopback server in place of the real endpoint / model."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-only")
    seg = Segmenter.from_config(path)
    assert seg.perception is not None and seg.perception.config.source == "sam"
    reasoning_only = Segmenter.from_config(path, with_perception=False, reasoning_overrides={
        "backend": "openai", "model": "fake", "adapter": None, "base_url": server.url, "format_name": "select"})
    result = reasoning_only.segment_twin(scene(), "find every red cup")
    assert result.output.ids == [0, 2]


def test_segment_cli_with_section_paths(tmp_path, server):
    """The CLI reads a pipeline whose sections are files relative to it (as recipes/pipeline/*.yaml are)."""
    scene().save(tmp_path / "t.json")
    Image.new("RGB", (120, 80)).save(tmp_path / "img.jpg")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "reasoning.yaml").write_text(f"format: select\nbackend: openai\nmodel: fake\n"
                                                      f"base_url: {server.url}\n")
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "p.yaml").write_text("reasoning: ../conf/reasoning.yaml\n")
    res = CliRunner().invoke(app, ["segment", str(tmp_path / "img.jpg"), "find every red cup", "--config",
                                   str(tmp_path / "pipe" / "p.yaml"), "--twin", str(tmp_path / "t.json"),
                                   "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert "ids [0, 2]" in res.output
    (tmp_path / "pipe" / "p.yaml").write_text("reasoning: ../conf/missing.yaml\n")
    res = CliRunner().invoke(app, ["segment", str(tmp_path / "img.jpg"), "q", "--config",
                                   str(tmp_path / "pipe" / "p.yaml"), "--twin", str(tmp_path / "t.json")])
    assert res.exit_code == 2 and "missing.yaml" in res.output and "p.yaml" in res.output
