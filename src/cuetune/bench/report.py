"""Bench reports: results.csv/json, a markdown table of mean (std), PNG plots and one
self-contained HTML page (plots inlined), all rewritten atomically after every cell."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import statistics
from pathlib import Path

from matplotlib.figure import Figure

from cuetune import atomic
from cuetune.bench.grid import Cell
from cuetune.metrics.plots import save_png

COLUMNS = ["task", "method", "k", "seed", "metric", "dev_score", "test_score", "test_macro_f1",
           "test_majority", "test_size", "test_truncated", "train_examples", "trainable_parameters",
           "grid_size",
           "hyperparameters", "wall_seconds", "run_dir", "error"]


def summarize(rows: list[dict]) -> dict:
    """{(task, method, k): {mean, std, n, macro_f1, wall_s}} over seeds, in first-seen order."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["method"], r["k"]), []).append(r)
    out = {}
    for key, group in groups.items():
        acc = [r["test_score"] for r in group if r["test_score"] is not None]
        f1 = [r["test_macro_f1"] for r in group if r["test_macro_f1"] is not None]
        walls = [r["wall_seconds"] for r in group if not r.get("error")]
        out[key] = {"mean": statistics.fmean(acc) if acc else None,
                    "std": statistics.pstdev(acc) if len(acc) > 1 else 0.0, "n": len(acc),
                    "macro_f1": statistics.fmean(f1) if f1 else None,
                    "wall_s": statistics.fmean(walls) if walls else None,
                    "failed": sum(1 for r in group if r.get("error"))}
    return out


def failures(rows: list[dict]) -> list[str]:
    """One line per failed cell: its key and the error."""
    return [f"{Cell(r['task'], r['method'], r['k'], r['seed']).key}: {r['error']}"
            for r in rows if r.get("error")]


def markdown(rows: list[dict], seeds_expected: dict[str, int] | None = None) -> str:
    """One table per K: methods x tasks, the task's test metric mean (std) in %, wall time per cell.

    `seeds_expected`: per method, how many seeds its cells should have (a method entry may run
    a subset of the grid's seeds); a cell with fewer is marked [n]."""
    summary = summarize(rows)
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    metrics = {r["task"]: r.get("metric", "accuracy") for r in rows}
    methods = list(dict.fromkeys(r["method"] for r in rows))
    parts = []
    for k in dict.fromkeys(r["k"] for r in rows):
        parts.append(f"### K = {k} (test score %, mean (std) over seeds; wall s per cell)\n")
        parts.append("| method | " + " | ".join(f"{t} ({metrics[t]})" for t in tasks) + " | mean wall s |")
        parts.append("|---|" + "---:|" * (len(tasks) + 1))
        for m in methods:
            cells, walls = [], []
            for t in tasks:
                s = summary.get((t, m, k))
                if not s or s["mean"] is None:
                    cells.append("failed" if s and s["failed"] else "–")
                    continue
                want = (seeds_expected or {}).get(m)
                short = f" [{s['n']}]" if want and s["n"] < want else ""
                cells.append(_mean_std(s) + short)
                walls.append(s["wall_s"])
            wall = f"{statistics.fmean(walls):.0f}" if walls else "–"
            parts.append(f"| {m} | " + " | ".join(cells) + f" | {wall} |")
        parts.append("")
    if seeds_expected and any(s["n"] < seeds_expected.get(m, 0) for (_, m, _), s in summary.items()):
        parts.append("[n]: only n of the method's seeds finished for that cell.\n")
    return "\n".join(parts)


TEXT_METRICS = ("rouge_1", "rouge_2", "rouge_l", "bleu", "chrf", "exact_match", "token_f1")


def text_metrics(rows: list[dict]) -> str:
    """Per generation task, every text metric's mean (std) over seeds per method and K: a
    summary is judged on ROUGE-2 and ROUGE-L too, not only the headline (rows that predate
    `test_metrics` are left out, and the seeds column says which seeds each row averages)."""
    parts = []
    for task in dict.fromkeys(r["task"] for r in rows if r.get("metric") in TEXT_METRICS):
        group = [r for r in rows if r["task"] == task and r.get("test_metrics")]
        names = [m for m in TEXT_METRICS if any(m in r["test_metrics"] for r in group)]
        if not names:
            continue
        parts.append(f"**{task}** (test, 0-100, mean (std) over seeds)\n")
        parts.append("| method | K | seeds | " + " | ".join(names) + " |")
        parts.append("|---|---:|---|" + "---:|" * len(names))
        for m, k in dict.fromkeys((r["method"], r["k"]) for r in group):
            cell = [r for r in group if (r["method"], r["k"]) == (m, k)]
            stats = []
            for name in names:
                vals = [r["test_metrics"][name] for r in cell if name in r["test_metrics"]]
                stats.append("–" if not vals else f"{statistics.fmean(vals):.1f}"
                             f" ({statistics.pstdev(vals) if len(vals) > 1 else 0.0:.1f})")
            seeds = ", ".join(str(r["seed"]) for r in sorted(cell, key=lambda r: r["seed"]))
            parts.append(f"| {m} | {k} | {seeds} | " + " | ".join(stats) + " |")
        parts.append("")
    return "\n".join(parts)


def per_seed(rows: list[dict], seeds: list[int] | None = None,
             method_seeds: dict[str, list[int]] | None = None) -> str:
    """Per task and K, each method's mean (std), its score on every seed and what dev chose:
    the spread behind a mean (std), e.g. one seed stuck at chance. docs/RESULTS.md pastes these
    tables as they are (benchmarks/fill_results.py).

    `seeds`: the bench's seed list, so a seed no method has finished still shows as missing;
    `method_seeds`: a method's own subset of them, where its entry names one."""
    parts = []
    for task, k in dict.fromkeys((r["task"], r["k"]) for r in rows):
        group = [r for r in rows if r["task"] == task and r["k"] == k]
        seeds_shown = sorted(set(seeds or ()) | {r["seed"] for r in group})
        summary = summarize(group)
        grid = any(r["hyperparameters"] for r in group)
        metric = group[0].get("metric", "accuracy")
        parts.append(f"**{task}** (test {metric} %, K = {k}; per seed "
                     + " / ".join(str(s) for s in seeds_shown) + ")\n")
        parts.append("| method | mean (std) | per seed |" + (" chosen on dev |" if grid else "")
                     + " mean wall s per cell |")
        parts.append("|---|---:|---|" + ("---|" if grid else "") + "---:|")
        for m in dict.fromkeys(r["method"] for r in group):
            by_seed = {r["seed"]: r for r in group if r["method"] == m}
            s = summary[(task, m, k)]
            mean = _mean_std(s)
            own = (method_seeds or {}).get(m, seeds_shown)
            if s["n"] < len(own):
                mean += f" [{s['n']} of {len(own)} seeds]"
            elif len(own) < len(seeds_shown):
                mean += f" [its {len(own)} seed{'s' * (len(own) > 1)}]"
            scores = " / ".join(_seed_score(by_seed.get(x)) for x in seeds_shown)
            chosen = [_point(by_seed[x]["hyperparameters"]) if x in by_seed else "–" for x in seeds_shown]
            chosen = chosen[0] if len(set(chosen)) == 1 else " / ".join(chosen)
            wall = "–" if s["wall_s"] is None else f"{s['wall_s']:.0f}"
            parts.append(f"| {m} | {mean} | {scores} |" + (f" {chosen} |" if grid else "")
                         + f" {wall} |")
        parts.append("")
    return "\n".join(parts)


def _seed_score(row: dict | None) -> str:
    if row is None or row["test_score"] is None:
        return "failed" if row and row.get("error") else "–"
    return f"{100 * row['test_score']:.1f}"


def _mean_std(s: dict) -> str:
    """A summary's "mean (std)" in %, or "–" when no seed has a score."""
    return "–" if s["mean"] is None else f"{100 * s['mean']:.1f} ({100 * s['std']:.1f})"


def _point(point: dict) -> str:
    return ", ".join(f"{key.split('.')[-1]}={v:g}" if isinstance(v, float) else f"{key.split('.')[-1]}={v}"
                     for key, v in point.items()) or "default"


def plot_bars(rows: list[dict], k: int, seeds: list[int] | None = None, references: dict | None = None,
              method_seeds: dict[str, list[int]] | None = None):
    """Per task, one bar per method (mean test score) with std error bars and each seed's score
    as a point; a dashed line at the majority-class rate of the test set (chance for a
    classifier that learnt only the class balance) and, where `references` names one for the
    task, a dotted line at that score (e.g. a published result) with its label.

    A method with no score yet is marked "not run" rather than drawn as a bar at 0, and a
    bar over fewer seeds than the bench's (`seeds`, else every seed in `rows`) says "n of N",
    so a half-finished grid cannot be read as a finished one (`method_seeds`: a method's own
    subset of the seeds, where its entry names one)."""
    summary = summarize([r for r in rows if r["k"] == k])
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    n_seeds = len(seeds) if seeds else len({r["seed"] for r in rows})
    fig = Figure(figsize=(max(4.0, 3.2 * len(tasks)), 3.6))
    axes = fig.subplots(1, len(tasks), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        stats = [summary.get((task, m, k)) or {"mean": None, "std": 0.0, "n": 0} for m in methods]
        for i, st in enumerate(stats):
            if st["mean"] is None:
                ax.text(i, 2, "not run", rotation=90, ha="center", va="bottom", fontsize=7, color="gray")
                continue
            ax.bar(i, 100 * st["mean"], yerr=100 * st["std"], capsize=3, color="tab:blue", alpha=0.6)
            points = [100 * r["test_score"] for r in rows if (r["task"], r["method"], r["k"]) ==
                      (task, methods[i], k) and r["test_score"] is not None]
            ax.scatter([i + 0.18 * (j / max(len(points) - 1, 1) - 0.5) for j in range(len(points))], points,
                       s=9, color="black", zorder=3, label="seeds" if i == 0 else None)
            want = len((method_seeds or {}).get(methods[i], ())) or n_seeds
            if st["n"] < want:
                ax.text(i, 100 * (st["mean"] + st["std"]) + 2, f"{st['n']} of {want}",
                        ha="center", fontsize=7)
        _baselines(ax, [r for r in rows if r["task"] == task and r["k"] == k], (references or {}).get(task))
        ax.set_xticks(range(len(methods)), methods, rotation=60, ha="right", fontsize=8)
        ax.set_xlim(-0.6, len(methods) - 0.4)  # room for a "not run" mark at either end
        ax.set_title(f"{task} (K={k})", fontsize=10)
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("test score % (the task's metric)")
    return fig


def _baselines(ax, rows: list[dict], reference: dict | None) -> None:
    """The chance line (mean majority-class rate of the cells' test sets) and a reference."""
    majority = [r["test_majority"] for r in rows if r.get("test_majority") is not None]
    if majority:
        chance = 100 * sum(majority) / len(majority)
        ax.axhline(chance, color="tab:red", ls="--", lw=1, label=f"majority class {chance:.1f}")
    if reference:
        ax.axhline(reference["score"], color="tab:green", ls=":", lw=1.5,
                   label=f"{reference['label']} {reference['score']:g}")
    if majority or reference:
        ax.legend(fontsize=6, loc="lower right")


def plot_vs_k(rows: list[dict]):
    """Mean test accuracy against K, one line per method, one panel per task."""
    summary = summarize(rows)
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    ks = sorted({r["k"] for r in rows})
    fig = Figure(figsize=(max(4.0, 3.6 * len(tasks)), 3.4))
    axes = fig.subplots(1, len(tasks), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for m in methods:
            pts = [(k, summary[(task, m, k)]) for k in ks if (task, m, k) in summary]
            pts = [(k, s) for k, s in pts if s["mean"] is not None]
            if pts:
                ax.errorbar([k for k, _ in pts], [100 * s["mean"] for _, s in pts],
                            yerr=[100 * s["std"] for _, s in pts], marker="o", capsize=2, label=m)
        ax.set_xscale("log", base=2)
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("K per class")
    axes[0][0].set_ylabel("test score % (the task's metric)")
    axes[0][-1].legend(fontsize=7)
    return fig


def write_all(cfg, rows: list[dict], out: Path) -> None:
    atomic.write_json(out / "results.json", {"bench": cfg.model_dump(mode="json"), "cells": rows,
                                             "summary": [{"task": t, "method": m, "k": k, **s} for
                                                         (t, m, k), s in summarize(rows).items()]})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "hyperparameters": json.dumps(r["hyperparameters"])})
    atomic.write_text(out / "results.csv", buf.getvalue())
    own = {m: [s for s in cfg.seeds if e.seeds is None or s in e.seeds] for m, e in cfg.methods.items()}
    table = markdown(rows, {m: len(v) for m, v in own.items()})
    failed = failures(rows)
    failed_md = ""
    if failed:
        failed_md = (f"\n## Failed cells ({len(failed)}; the same command retries them)\n\n"
                     + "".join(f"- {line}\n" for line in failed))
    model = f"Model: `{cfg.model.get('name')}`\n\n"  # the name may predate a --set model.name=
    texts = text_metrics(rows)
    texts = f"## Every text metric\n\n{texts}\n" if texts else ""
    atomic.write_text(out / "results.md", f"# {cfg.name}\n\n{model}{table}\n{texts}## Per seed\n\n"
                      f"{per_seed(rows, cfg.seeds, own)}{failed_md}")
    images = {}
    for k in dict.fromkeys(r["k"] for r in rows):
        references = {t: r.model_dump() for t, r in cfg.references.items()}
        images[f"bars_k{k}.png"] = plot_bars(rows, k, cfg.seeds, references, own)
    if len({r["k"] for r in rows}) > 1:
        images["accuracy_vs_k.png"] = plot_vs_k(rows)
    inline = {}
    for name, fig in images.items():
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=110, bbox_inches="tight")
        inline[name] = base64.b64encode(png.getvalue()).decode()
        save_png(fig, out / name)
    atomic.write_text(out / "report.html", _html(cfg, table, inline, rows, failed))


def _html(cfg, table_md: str, images: dict[str, str], rows: list[dict], failed: list[str]) -> str:
    lines = [line for line in table_md.splitlines() if line.startswith("|") and "---" not in line]
    body = ["<table>"]
    for i, line in enumerate(lines):
        tag = "th" if line.startswith("| method") else "td"
        cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
        body.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
        if i + 1 < len(lines) and lines[i + 1].startswith("| method"):
            body.append("</table><table>")
    body.append("</table>")
    imgs = "".join(f'<h3>{html.escape(n)}</h3><img alt="{html.escape(n)}" src="data:image/png;base64,{b}">'
                   for n, b in images.items())
    if failed:
        items = "".join(f"<li>{html.escape(line)}</li>" for line in failed)
        imgs += f"<h3>Failed cells (the same command retries them)</h3><ul>{items}</ul>"
    config = html.escape(json.dumps(cfg.model_dump(mode="json"), indent=1))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(cfg.name)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse;
margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}th{{background:#eee}}
img{{max-width:100%}}</style></head><body><h1>{html.escape(cfg.name)}</h1>
<p>{len(rows)} cells. Test score % (each task's metric, named in its column), mean (std) over
seeds; hyperparameters chosen on dev.</p>
{''.join(body)}{imgs}<h3>bench config</h3><pre>{config}</pre></body></html>
"""
