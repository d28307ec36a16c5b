"""Reports of an evaluation run: markdown table, a tidy ``metrics.csv``, bar charts per split, worst-case
overlays embedded in report.md with their query, chosen ids and IoU, wandb."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from dtwinseg.eval.checkpoints import recorded_format
from dtwinseg.eval.records import iter_run_records

from dtwinseg.io import atomic_write_bytes, atomic_write_text


def pct(x: float | None) -> str:
    """A fraction as the papers print it: x100 with one decimal."""
    return "-" if x is None else f"{100.0 * x:.1f}"


def metrics_table(metrics: dict) -> str:
    """Markdown: one row per checkpoint; gIoU / cIoU (oracle) per group; parse counts."""
    cks = metrics["checkpoints"]
    groups = list(dict.fromkeys(g for c in cks.values() for g in c["groups"]))
    head = ["checkpoint", "format"] + [f"{g} gIoU / cIoU (oracle)" for g in groups] + \
        ["parse ok / repaired / failed", "truncated", "objects dropped", "errors", "missing twins", "bad twins",
         "bad inputs"]
    rows = [head, ["---"] * len(head)]
    for label, c in cks.items():
        row = [label, recorded_format(c) or ""]
        for g in groups:
            e = c["groups"].get(g)
            row.append("-" if e is None else f"{pct(e['giou'])} / {pct(e['ciou'])} "
                       f"({pct(e['oracle_giou'])} / {pct(e['oracle_ciou'])})")
        p = c["parse"]
        row += [f"{p.get('ok', 0)} / {p.get('repaired', 0)} / {p.get('failed', 0)}", str(c.get("truncated", 0)),
                str(c.get("objects_dropped", 0)), str(c["errors"]),
                str(c["missing_twins"]), str(c.get("bad_twins", 0)), str(c.get("input_errors", 0))]
        rows.append(row)
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def dimension_table(metrics: dict) -> str:
    cks = metrics["checkpoints"]
    dims = sorted({d for c in cks.values() for d in c.get("dimensions", {})})
    if not dims:
        return ""
    head = ["checkpoint"] + [f"{d} gIoU (oracle)" for d in dims]
    rows = [head, ["---"] * len(head)]
    for label, c in cks.items():
        row = [label]
        for d in dims:
            e = c["dimensions"].get(d)
            row.append("-" if e is None else f"{pct(e['giou'])} ({pct(e['oracle_giou'])}), n={e['n']}")
        rows.append(row)
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


CSV_COLUMNS = ("checkpoint", "split", "group", "giou", "ciou", "oracle", "n")


def metrics_rows(metrics: dict) -> list[dict]:
    """One row per checkpoint and group (overall, short, long, ...; then ``dimension:<tag>``): fractions, the
    oracle bound's gIoU and the number of samples; ``split`` is the dataset spec's split (NAME:ROOT:SPLIT)."""
    split = str(metrics["dataset"]).rsplit(":", 1)[-1]
    rows = []
    for label, c in metrics["checkpoints"].items():
        groups = list(c["groups"].items()) + [(f"dimension:{d}", e) for d, e in sorted(c.get("dimensions", {}).items())]
        rows += [{"checkpoint": label, "split": split, "group": g, "giou": e["giou"], "ciou": e["ciou"],
                  "oracle": e["oracle_giou"], "n": e["n"]} for g, e in groups]
    return rows


def write_metrics_csv(out: Path, metrics: dict) -> Path:
    """``metrics.csv`` beside metrics.json: the tidy table of :func:`metrics_rows` (one header line)."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(metrics_rows(metrics))
    return atomic_write_text(out / "metrics.csv", buf.getvalue())


def save_figure(fig, path: Path) -> Path:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


def bar_chart(title: str, labels: list[str], series: dict[str, list[float]], oracle: list[float] | None,
              path: Path) -> Path:
    """Grouped bars (one group per label, one bar per series, in percent); oracle as black ticks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.arange(len(labels))
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(labels) + 2), 3.6))
    for k, (name, vals) in enumerate(series.items()):
        ax.bar(x + (k - (len(series) - 1) / 2) * width, [100 * v for v in vals], width, label=name)
    if oracle is not None:
        ax.scatter(x, [100 * v for v in oracle], marker="_", s=900, color="black", label="oracle gIoU", zorder=3)
    ax.set_xticks(x, labels, rotation=20, ha="right")
    ax.set_ylim(0, 105)
    ax.set_ylabel("%")
    ax.set_title(title)
    ax.legend(fontsize=8)
    out = save_figure(fig, path)
    plt.close(fig)
    return out


def split_plots(out: Path, metrics: dict) -> list[Path]:
    """plots/<group>.png: gIoU / cIoU of every checkpoint on one split group, oracle marked."""
    cks = metrics["checkpoints"]
    groups = list(dict.fromkeys(g for c in cks.values() for g in c["groups"]))
    paths = []
    for g in groups:
        labels = [lab for lab, c in cks.items() if g in c["groups"]]
        series = {m: [cks[lab]["groups"][g][m] for lab in labels] for m in ("giou", "ciou")}
        oracle = [cks[lab]["groups"][g]["oracle_giou"] for lab in labels]
        paths.append(bar_chart(f"{metrics['dataset']} - {g}", labels, series, oracle, out / "plots" / f"{g}.png"))
    return paths


def worst_overlays(out: Path, metrics: dict, k: int, log: Callable[[str], None] = print) -> list[tuple[Path, dict]]:
    """worst/<label>/<rank>_<id>.png for the k lowest-IoU samples of each checkpoint, with the prediction
    record each shows (an overlay that cannot be drawn is skipped with one log line)."""
    from dtwinseg.data_builders.dt_cache import DTCache, sample_key

    if k <= 0:
        return []
    try:
        cache = DTCache.open(metrics["dt_cache"])
    except (FileNotFoundError, ValueError):
        return []
    dataset = _open_quietly(metrics["dataset"])
    paths = []
    for label in metrics["checkpoints"]:
        scored = [r for r in iter_run_records(out, label) if "iou" in r]
        for rank, r in enumerate(sorted(scored, key=lambda r: (r["iou"], r["id"]))[:k]):
            try:
                png = _overlay_png(cache, dataset, r)
            except Exception as e:  # noqa: BLE001 - a corrupt twin or unreadable image costs one overlay only
                log(f"worst-case overlay of {r['id']} skipped: {type(e).__name__}: {e}")
                continue
            if png is not None:
                path = atomic_write_bytes(out / "worst" / label / f"{rank:02d}_{sample_key(r['id'])}.png", png)
                paths.append((path, {"checkpoint": label, **r}))
    return paths


def worst_case_lines(out: Path, worst: list[tuple[Path, dict]]) -> list[str]:
    """report.md's worst cases: each overlay embedded, under its checkpoint, sample id, query, chosen ids and
    IoU (the query and any text quoted so that markdown leaves it as written)."""
    lines: list[str] = []
    for path, r in worst:
        query = " ".join(str(r.get("query", "")).split()).replace("`", "'")
        lines += [f"**{r['checkpoint']}**, `{r['id']}`: IoU {pct(r.get('iou'))}, ids {r.get('ids')}, query `{query}`",
                  "", f"![{r['checkpoint']} {r['id']}]({path.relative_to(out).as_posix()})", ""]
    return lines


def _overlay_png(cache, dataset, record: dict) -> bytes | None:
    """PNG bytes of one record's overlay (None when neither a twin nor a ground truth is available)."""
    import io

    from dtwinseg.twin import DigitalTwin
    from dtwinseg.visualize import load_rgb, render_overlay

    twin = cache.get(record["id"])
    gt = _ground_truth(dataset, record)
    if twin is None:  # missing twin: show the image and the ground truth alone
        if gt is None:
            return None
        twin = DigitalTwin(record["id"], int(gt.shape[0]), int(gt.shape[1]))
    elif gt is not None and gt.shape != (twin.height, twin.width):
        gt = None
    ids = record["ids"] if all(i in set(twin.ids) for i in record["ids"]) else []
    img = render_overlay(load_rgb(record.get("image_path"), twin.height, twin.width), twin, ids, gt)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _open_quietly(spec: str):
    from dtwinseg.data_builders.registry import open_dataset

    try:
        return open_dataset(spec, strict=False)
    except Exception:  # noqa: BLE001 - the data may have moved since the run; overlays still work
        return None


def _ground_truth(dataset, record: dict):
    """The sample's ground truth (re-read from the dataset by position), or None when unavailable."""
    try:
        sample = dataset[record["index"]] if dataset is not None else None
    except (IndexError, KeyError, TypeError, ValueError, OSError):
        sample = None
    if sample is None or sample.id != record["id"]:
        return None
    return sample.gt_mask


def write_report(out: Path, metrics: dict, *, worst_k: int = 4, wandb_log: bool = False,
                 log: Callable[[str], None] = print) -> Path:
    """metrics.csv, report.md + plots + worst-case overlays (+ a wandb table when asked); returns report.md."""
    write_metrics_csv(out, metrics)
    plots = split_plots(out, metrics)
    worst = worst_overlays(out, metrics, worst_k, log)
    lines = [f"# Evaluation: {metrics['dataset']}", "",
             f"DT cache: `{metrics.get('dt_cache')}`; samples: {metrics.get('n_samples')}. "
             "gIoU / cIoU in percent (reference metric); in brackets the oracle bound: the best greedy union "
             "of the twin's own objects, i.e. what perfect reasoning over these twins would reach (over the "
             "objects its prompt showed, when a twin was too large for the model's context: objects dropped).",
             "",
             metrics_table(metrics), ""]
    dims = dimension_table(metrics)
    if dims:
        lines += ["## Per dimension", "", dims, ""]
    lines += ["## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in plots] + [""]
    if worst:
        lines += ["## Worst cases", "", "Red: chosen objects (ids drawn); green outline: ground truth; "
                  "white outlines: the twin's other objects. IoU in percent.", ""]
        lines += worst_case_lines(out, worst)
    report = atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    if wandb_log:
        log_wandb(out, metrics)
    log(f"report: {report}")
    return report


def log_wandb(out: Path, metrics: dict) -> None:
    """Log the table to wandb (WANDB_MODE=offline works without network)."""
    import wandb

    run = wandb.init(project="dtwinseg-eval", name=out.name, dir=str(out), config={"dataset": metrics["dataset"]})
    cols = ["checkpoint", "group", "giou", "ciou", "oracle_giou", "oracle_ciou", "n"]
    data = [[lab, g, e["giou"], e["ciou"], e["oracle_giou"], e["oracle_ciou"], e["n"]]
            for lab, c in metrics["checkpoints"].items() for g, e in c["groups"].items()]
    run.log({"eval/table": wandb.Table(columns=cols, data=data)})
    run.finish()
