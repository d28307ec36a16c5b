"""``dtwinseg compare runs/A runs/B ...``: one table (markdown + JSON + PNG) across runs, checkpoints and
splits, with the paper's published numbers as reference rows wherever the dataset and split match.

Units: compare.json holds fractions (0-1), as metrics.json does; compare.md and the terminal show the same
values x100 (percent) and say so. Rows are ``RUN/CHECKPOINT`` where RUN is the shortest trailing part of the
run folder's path that tells the runs apart (``demo/eval`` vs ``demo-long/eval``); the same folder twice is
refused. Every row carries its dataset and sample count.

Reference numbers are seed 002 (DTwinSeger) Tables 1-3 (published in percent, stored here as fractions):
zero-shot (GPT-4o) and fine-tuned (SFTDT, Llama-3.3-70B). RefCOCO-family tables report cIoU only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from dtwinseg.io import DataError, atomic_write_json, atomic_write_text, read_json

# (dataset, split, group) -> {method: (gIoU, cIoU)} in percent; None where the paper gives no value.
PAPER: dict[tuple[str, str, str], dict[str, tuple[float | None, float | None]]] = {
    ("reasonseg", "val", "overall"): {"DTwinSeger (paper)": (65.4, 71.1), "DTwinSeger ft (paper)": (73.1, 72.4)},
    ("reasonseg", "test", "short"): {"DTwinSeger (paper)": (63.3, 69.1), "DTwinSeger ft (paper)": (69.7, 70.3)},
    ("reasonseg", "test", "long"): {"DTwinSeger (paper)": (64.7, 70.6), "DTwinSeger ft (paper)": (71.6, 70.9)},
    ("reasonseg", "test", "overall"): {"DTwinSeger (paper)": (64.4, 70.2), "DTwinSeger ft (paper)": (70.5, 70.6)},
    ("llmseg40k", "val", "overall"): {"DTwinSeger (paper)": (52.74, 57.77), "DTwinSeger ft (paper)": (54.68, 58.92)},
    ("llmseg40k", "test", "overall"): {"DTwinSeger (paper)": (50.82, 54.71), "DTwinSeger ft (paper)": (51.97, 55.81)},
}
_REFER = {
    "refcoco": {"val": (79.8, 80.0), "testA": (82.9, 83.1), "testB": (76.6, 78.9)},
    "refcoco+": {"val": (75.4, 77.5), "testA": (78.8, 79.5), "testB": (69.4, 70.2)},
    "refcocog": {"val": (76.6, 77.4), "test": (77.1, 78.1)},
}
for _ds, _splits in _REFER.items():
    for _split, (_zs, _ft) in _splits.items():
        PAPER[(_ds, _split, "overall")] = {"DTwinSeger (paper)": (None, _zs), "DTwinSeger ft (paper)": (None, _ft)}
_SPLIT_ALIASES = {"validation": "val", "valid": "val", "testa": "testA", "testb": "testB"}
_DATASET_ALIASES = {"llmseg": "llmseg40k", "llm-seg40k": "llmseg40k", "refcocoplus": "refcoco+"}


def dataset_and_split(spec: str) -> tuple[str, str]:
    """Normalised (dataset, split) of a DATASET_SPEC, for matching the paper's tables."""
    parts = spec.split(":")
    name, split = parts[0].lower(), parts[-1]
    split = _SPLIT_ALIASES.get(split.lower(), split)
    return _DATASET_ALIASES.get(name, name), split


def load_run(run: str | os.PathLike) -> dict:
    path = Path(run) / "metrics.json"
    if not path.exists():
        raise DataError(path, None, "missing: run `dtwinseg eval` (or `dtwinseg eval-merge`) on this run first")
    m = read_json(path)
    if not isinstance(m, dict) or "checkpoints" not in m or "dataset" not in m:
        raise DataError(path, "checkpoints", "not a dtwinseg eval metrics file")
    return m


def run_names(runs: Sequence[str | os.PathLike]) -> list[str]:
    """Shortest trailing path parts that make every run's name unique; the same folder twice is an error."""
    paths = [Path(r).resolve() for r in runs]
    seen = {}
    for given, p in zip(runs, paths, strict=True):
        if p in seen:
            raise DataError(given, None, f"given twice (also as {seen[p]}): compare each run once")
        seen[p] = given
    depth = 1
    while True:
        names = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(names)) == len(names) or depth >= max(len(p.parts) for p in paths):
            return names
        depth += 1


def _overall_n(row: dict) -> int | None:
    for key in ("overall", "all"):
        for col, cell in row["cells"].items():
            if col.endswith(f"/{key}"):
                return cell["n"]
    return next(iter(row["cells"].values()))["n"] if row["cells"] else None


def comparison(runs: Sequence[str | os.PathLike]) -> dict:
    """Columns (dataset:split/group) and rows (run/checkpoint, then paper references); values are fractions."""
    columns: list[str] = []
    rows: dict[str, dict] = {}
    refs: dict[str, dict[str, dict]] = {}
    for run, name in zip(runs, run_names(runs), strict=True):
        m = load_run(run)
        ds, split = dataset_and_split(m["dataset"])
        for label, c in m["checkpoints"].items():
            row = rows.setdefault(f"{name}/{label}", {"run": str(run), "checkpoint": label,
                                                      "dataset": m["dataset"], "cells": {}})
            for group, e in c["groups"].items():
                col = f"{ds}:{split}/{group}"
                if col not in columns:
                    columns.append(col)
                row["cells"][col] = {"giou": e["giou"], "ciou": e["ciou"], "oracle_giou": e["oracle_giou"],
                                     "n": e["n"]}
                for method, (g, ci) in PAPER.get((ds, split, group), {}).items():
                    refs.setdefault(method, {})[col] = {"giou": None if g is None else g / 100,
                                                        "ciou": None if ci is None else ci / 100}
            row["n"] = _overall_n(row)
    return {"unit": "fraction (0-1); compare.md shows x100", "columns": columns, "rows": rows,
            "references": refs}


def _cell(v: dict | None) -> str:
    if v is None:
        return "-"
    g = "-" if v.get("giou") is None else f"{100 * v['giou']:.1f}"
    c = "-" if v.get("ciou") is None else f"{100 * v['ciou']:.1f}"
    return f"{g} / {c}"


def markdown(table: dict) -> str:
    """The table in markdown, values in percent (x100 of compare.json)."""
    head = ["run / checkpoint"] + [f"{c} gIoU / cIoU (%)" for c in table["columns"]] + ["dataset", "n"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, row in table["rows"].items():
        cells = [_cell(row["cells"].get(c)) for c in table["columns"]]
        lines.append("| " + " | ".join([name, *cells, f"`{row['dataset']}`", str(row.get("n", ""))]) + " |")
    for name, row in table["references"].items():
        cells = [_cell(row.get(c)) for c in table["columns"]]
        lines.append("| " + " | ".join([f"*{name}*", *cells, "published", ""]) + " |")
    return "\n".join(lines)


def compare(runs: Sequence[str | os.PathLike], out: str | os.PathLike) -> dict:
    """Write compare.md, compare.json and compare.png under ``out``; return the table."""
    from dtwinseg.eval.report import bar_chart

    out = Path(out)
    table = comparison(runs)
    md = "# Comparison\n\ngIoU / cIoU in percent (compare.json and metrics.json hold the same values as " \
         "fractions); n = samples of the overall group. Oracle bound per run in compare.json. Italic rows: " \
         "published numbers (DTwinSeger paper, Tables 1-3).\n\n" + markdown(table) + "\n"
    atomic_write_text(out / "compare.md", md)
    atomic_write_json(out / "compare.json", table)
    allrows = {**{n: r["cells"] for n, r in table["rows"].items()}, **table["references"]}
    series = {n: [((cells.get(c) or {}).get("giou") or 0.0) for c in table["columns"]] for n, cells in allrows.items()}
    bar_chart("gIoU by split", table["columns"], series, None, out / "compare.png")
    return table


# --- Table 4 layout (the paper's ablation table; rows run by workflows/table4.py) --------------------------
def table4_values(run: str | os.PathLike, label: str, group: str = "overall") -> dict:
    """gIoU, cIoU and oracle gIoU (percent) and n of one label's ``group`` in an eval run."""
    e = load_run(run)["checkpoints"][label]["groups"][group]
    return {"giou": 100 * e["giou"], "ciou": 100 * e["ciou"], "oracle_giou": 100 * e["oracle_giou"], "n": e["n"]}


def table4_markdown(rows: Sequence[dict]) -> str:
    """Rows ``{"component", "configuration", "giou", "ciou", "oracle_giou", "paper": [g, c] | None, "note"}``
    (percent; ``giou`` None = not run) in the paper's Table 4 layout, the component named on its first row."""
    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    lines = ["| Component | Configuration | gIoU | cIoU | oracle gIoU | paper gIoU | paper cIoU | run here with |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    previous = None
    for r in rows:
        paper = r.get("paper") or [None, None]
        comp = r["component"] if r["component"] != previous else ""
        previous = r["component"]
        lines.append(f"| {comp} | {r['configuration']} | {num(r.get('giou'))} | {num(r.get('ciou'))} | "
                     f"{num(r.get('oracle_giou'))} | {num(paper[0])} | {num(paper[1])} | {r.get('note', '')} |")
    return "\n".join(lines)
