"""Fault tests: the machine fails, not the data. A full disk (a real 300 KB tmpfs), a read-only ``--out``,
no permission, too many open files: build-dt and eval stop with one line naming the path and exit 1, leave
nothing torn (no half-written twin, no torn prediction line, no temporary file) and resume once the cause
is gone. Temporary files a killed (-9) writer left behind are removed by the next run, and nothing else."""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dtwinseg.cli.main import app
from dtwinseg.eval.records import load_records
from test_build_dt import oracle_config, write_reasonseg
from test_harness import N, build_bench
from typer.testing import CliRunner

from dtwinseg.twin import DigitalTwin

ROOT = Path(__file__).resolve().parent.parent


def _mount(folder: Path, options: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


@pytest.fixture
def small_fs(tmp_path):
    """A real 300 KB file system (tmpfs; needs root), unmounted afterwards."""
    folder = tmp_path / "fs"
    if not _mount(folder, "size=300k"):
        pytest.skip("mounting a tmpfs needs root here; the errno-injection tests below cover the same paths")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(folder: Path, leave_kb: int) -> Path:
    """Fill the file system of ``folder`` to ``leave_kb`` KB free; returns the filler file."""
    filler = folder / "filler.bin"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC
    with open(filler, "r+b") as f:
        f.truncate(max(0, filler.stat().st_size - leave_kb * 1024))
    return filler


def one_error_line(res, *parts: str) -> str:
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, res.output
    for part in parts:
        assert part in errors[0], errors[0]
    return errors[0]


def no_temporaries(folder: Path) -> None:
    assert not [p for p in folder.rglob("*.tmp")], list(folder.rglob("*.tmp"))


def test_build_dt_on_a_full_disk_stops_in_one_line_and_resumes(tmp_path, small_fs):
    root = write_reasonseg(tmp_path / "data", 12)
    args = ["build-dt", f"reasonseg:{root}:val", "-c", str(oracle_config(tmp_path)), "-o", str(small_fs / "dt"),
            "--no-progress"]
    filler = fill(small_fs, 24)
    line = one_error_line(CliRunner().invoke(app, args), "No space left on device", str(small_fs / "dt"),
                          "free some space and rerun")
    assert "failed" not in line
    no_temporaries(small_fs)
    twins = list(small_fs.glob("dt/*/twins/*.json"))
    for t in twins:
        DigitalTwin.load(t)  # every twin on disk is whole
    failures = list(small_fs.glob("dt/*/failures.jsonl"))
    assert not failures or not failures[0].read_text().strip()  # the disk is not a sample's failure
    filler.unlink()
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert f"build-dt: 12 samples: {12 - len(twins)} built, {len(twins)} existing, 0 failed" in res.output


def test_eval_on_a_full_disk_stops_in_one_line_and_resumes_to_the_one_shot_result(tmp_path, small_fs):
    spec, cache = build_bench(tmp_path / "bench")
    args = ["eval", spec, "--dt-cache", str(cache), "-c", "big=baseline:largest", "--worst", "0", "--no-progress"]
    one_shot = CliRunner().invoke(app, args + ["--out", str(tmp_path / "one")])
    assert one_shot.exit_code == 0, one_shot.output
    out = small_fs / "run"
    filler = fill(small_fs, 12)
    one_error_line(CliRunner().invoke(app, args + ["--out", str(out)]), "No space left on device", str(out))
    no_temporaries(small_fs)
    preds = out / "big" / "predictions.jsonl"
    if preds.exists():  # every line on disk is a whole record
        assert all(json.loads(ln) for ln in preds.read_text().splitlines())
    filler.unlink()
    res = CliRunner().invoke(app, args + ["--out", str(out)])
    assert res.exit_code == 0, res.output
    strip = ("time", "dataset")
    got = json.loads((out / "metrics.json").read_text())
    want = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert {k: v for k, v in got.items() if k not in strip} == {k: v for k, v in want.items() if k not in strip}
    assert len(load_records(preds)) == N


def test_read_only_out_is_one_line_for_build_dt_and_eval(tmp_path):
    ro = tmp_path / "ro"
    if not _mount(ro, "ro,size=300k"):
        pytest.skip("mounting a tmpfs needs root here; the errno-injection tests below cover the same paths")
    try:
        root = write_reasonseg(tmp_path / "data", 2)
        res = CliRunner().invoke(app, ["build-dt", f"reasonseg:{root}:val", "-c", str(oracle_config(tmp_path)),
                                       "-o", str(ro / "dt"), "--no-progress"])
        one_error_line(res, "Read-only file system", str(ro / "dt"))
        spec, cache = build_bench(tmp_path / "bench")
        res = CliRunner().invoke(app, ["eval", spec, "--dt-cache", str(cache), "-c", "big=baseline:largest",
                                       "--out", str(ro / "run"), "--no-progress"])
        one_error_line(res, "Read-only file system", str(ro / "run"))
    finally:
        subprocess.run(["umount", "-l", str(ro)], capture_output=True)


CASES = {errno.ENOSPC: "No space left on device", errno.EROFS: "Read-only file system",
         errno.EACCES: "Permission denied", errno.EMFILE: "Too many open files"}


def _fail_under(monkeypatch, folder: Path, code: int, after: int = 0) -> None:
    """Every open of a path under ``folder`` (os.open, open, Path.open) raises OSError(code) after ``after``
    successful ones: what the kernel answers on a full disk, a read-only mount, a folder without write
    permission (root ignores modes, so it is injected) or an exhausted file table."""
    folder = str(folder)
    count = [0]

    def blocked(path) -> bool:
        if not str(os.fspath(path) if isinstance(path, os.PathLike | str) else "").startswith(folder):
            return False
        count[0] += 1
        return count[0] > after

    real_os_open, real_open = os.open, builtins.open

    def os_open(path, flags, *a, **k):
        if blocked(path):
            raise OSError(code, os.strerror(code), os.fspath(path))
        return real_os_open(path, flags, *a, **k)

    def py_open(file, *a, **k):
        if isinstance(file, str | os.PathLike) and blocked(file):
            raise OSError(code, os.strerror(code), os.fspath(file))
        return real_open(file, *a, **k)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(builtins, "open", py_open)
    monkeypatch.setattr(io, "open", py_open)


@pytest.mark.parametrize("code", sorted(CASES))
def test_os_errors_of_eval_are_one_line_naming_the_path(tmp_path, monkeypatch, code):
    spec, cache = build_bench(tmp_path / "bench")
    out = tmp_path / "run"
    (out / "big").mkdir(parents=True)
    _fail_under(monkeypatch, out / "big", code, after=2)  # identity.json, then fail in the predictions
    res = CliRunner().invoke(app, ["eval", spec, "--dt-cache", str(cache), "-c", "big=baseline:largest", "--out",
                                   str(out), "--worst", "0", "--no-progress"])
    monkeypatch.undo()
    one_error_line(res, CASES[code], str(out / "big"))
    no_temporaries(out)


@pytest.mark.parametrize("code", sorted(CASES))
def test_os_errors_of_build_dt_are_one_line_naming_the_path(tmp_path, monkeypatch, code):
    root = write_reasonseg(tmp_path / "data", 3)
    out = tmp_path / "dt"
    cfg = oracle_config(tmp_path)
    _fail_under(monkeypatch, out, code, after=3)
    res = CliRunner().invoke(app, ["build-dt", f"reasonseg:{root}:val", "-c", str(cfg), "-o", str(out),
                                   "--no-progress"])
    monkeypatch.undo()
    one_error_line(res, CASES[code], str(out))
    no_temporaries(out)
    res = CliRunner().invoke(app, ["build-dt", f"reasonseg:{root}:val", "-c", str(cfg), "-o", str(out),
                                   "--no-progress"])
    assert res.exit_code == 0 and "0 failed" in res.output, res.output


def test_temporary_file_of_a_writer_killed_with_9_is_removed_by_the_next_run(tmp_path):
    root = write_reasonseg(tmp_path / "data", 2)
    args = ["build-dt", f"reasonseg:{root}:val", "-c", str(oracle_config(tmp_path)), "-o", str(tmp_path / "dt"),
            "--no-progress"]
    assert CliRunner().invoke(app, args).exit_code == 0
    twins = next((tmp_path / "dt").glob("*/twins"))
    victim = next(twins.glob("*.json"))
    # a real writer, stopped inside its write (fsync never returns) and killed with -9
    code = ("import os, sys, time; os.fsync = lambda fd: time.sleep(600); "
            "from dtwinseg.io import atomic_write_text; atomic_write_text(sys.argv[1], 'x' * 1000)")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-c", code, str(victim)], env=env)
    try:
        for _ in range(600):
            left = [p for p in twins.iterdir() if p.name.endswith(".tmp")]
            if left:
                break
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert left, "the writer never created its temporary file"
    mine = tmp_path / "dt" / "notes.tmp"  # the user's own files, whatever their names, are never touched
    mine.write_text("keep me")
    hidden = twins / ".keep.this.tmp"
    hidden.write_text("keep me too")
    assert CliRunner().invoke(app, args).exit_code == 0
    assert not [p for p in left if p.exists()]
    assert mine.read_text() == "keep me" and hidden.read_text() == "keep me too"
    DigitalTwin.load(victim)  # the finished twin was never replaced by the killed writer's half
