"""`dtwinseg data stats` on ReasonSeg-format folders the tests write."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from dtwinseg.cli.main import app
from PIL import Image
from typer.testing import CliRunner


def write(folder: Path, stem: str, text: str, is_sentence: bool, shapes: list, **tags) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 10)).save(folder / f"{stem}.jpg")
    (folder / f"{stem}.json").write_text(json.dumps({"text": [text], "is_sentence": is_sentence, "shapes": shapes,
                                                     **tags}))


def box(label: str, x0: int, y0: int, x1: int, y1: int) -> dict:
    return {"label": label, "points": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]], "shape_type": "polygon"}


def make_root(tmp_path: Path) -> Path:
    d = tmp_path / "ReasonSeg" / "test"
    write(d, "a", "the red cup", False, [box("target", 0, 0, 4, 4), box("ignore", 1, 1, 2, 2)], dimension="spatial")
    write(d, "b", "Something you can sit on.", True, [box("target", 5, 5, 9, 9)], dimension="function", granularity=1)
    write(d, "c", "nothing here", True, [])
    write(d, "d", "long one", True, [box("target", 0, 0, 19, 9)], dimension="spatial", granularity=2)
    return tmp_path


def test_stats_json_counts(tmp_path: Path):
    root = make_root(tmp_path)
    res = CliRunner().invoke(app, ["data", "stats", f"reasonseg:{root}:test", "--json"])
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert (s["samples"], s["short"], s["long"], s["empty_ground_truth"], s["with_ignore_region"]) == (4, 1, 3, 1, 1)
    assert s["dimensions"] == {"function": 1, "spatial": 2, "untagged": 1}
    assert s["granularity"] == {"1": 1, "2": 1, "untagged": 2}
    assert s["skipped"] == 0 and s["spec"] == f"reasonseg:{root}:test"


def test_stats_strict_error_and_lenient_skips(tmp_path: Path):
    root = make_root(tmp_path)
    (root / "ReasonSeg" / "test" / "b.json").write_text('{"text": ["x"], "is_sent')  # truncated
    res = CliRunner().invoke(app, ["data", "stats", f"reasonseg:{root}:test"])
    assert res.exit_code == 2
    assert "b.json" in res.output and "invalid JSON" in res.output and "--lenient" in res.output
    for flag in ("--no-strict", "--lenient"):  # one spelling, --strict/--lenient, in every command (+ old alias)
        res = CliRunner().invoke(app, ["data", "stats", f"reasonseg:{root}:test", flag, "--json"])
        assert res.exit_code == 0, res.output
        s = json.loads(res.stdout)
        assert s["samples"] == 3 and s["skipped"] == 1
    assert s["skipped_files"][0]["file"].endswith("b.json") and "invalid JSON" in s["skipped_files"][0]["reason"]
    # a field name with brackets reaches the terminal intact (not eaten as rich markup)
    (root / "ReasonSeg" / "test" / "b.json").write_text(json.dumps({"text": ["x"], "is_sentence": True,
                                                                    "shapes": [{"label": "[bold]t", "points": [[1]]}]}))
    res = CliRunner().invoke(app, ["data", "stats", f"reasonseg:{root}:test"])
    assert res.exit_code == 2 and "shapes[0].points" in res.output


def test_stats_tables_and_bad_spec(tmp_path: Path):
    root = make_root(tmp_path)
    res = CliRunner().invoke(app, ["data", "stats", f"reasonseg:{root}:test", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "empty ground truth" in res.output and "dimension tags" in res.output and "function" in res.output
    res = CliRunner().invoke(app, ["data", "stats", "nosuchset:/x:val"])
    assert res.exit_code == 2 and "unknown dataset" in res.output


def test_help_from_a_subprocess():
    out = subprocess.run([sys.executable, "-m", "dtwinseg.cli", "data", "stats", "--help"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert "DATASET_SPEC" in out and "--strict / --lenient" in out and "--json" in out
    assert "--no-strict" not in out  # the old spelling still works, hidden (cli/options.py)


def test_one_spelling_of_strict_and_lenient_in_every_command():
    """Every command that reads dataset files spells it --strict/--lenient (cli/options.py); the old
    --no-strict is a hidden alias of --lenient with a one-line note."""
    import click
    import typer

    def commands(cmd: click.Command, path: str = ""):
        yield path, cmd
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from commands(sub, f"{path} {name}".strip())

    spelled = {}
    for path, cmd in commands(typer.main.get_command(app)):
        for p in cmd.params:
            flags = set(p.opts) | set(getattr(p, "secondary_opts", []))
            if any("strict" in f or "lenient" in f for f in flags):
                spelled[path] = (p.opts, p.secondary_opts)
    assert set(spelled) == {"data stats", "build-dt", "build-segdt", "eval"}
    assert set(map(repr, spelled.values())) == {repr((["--strict"], ["--lenient"]))}
    res = CliRunner().invoke(app, ["data", "stats", "nosuchset:/x:val", "--no-strict"])
    assert "note: --no-strict is deprecated; use --lenient" in res.output and "unknown dataset" in res.output
