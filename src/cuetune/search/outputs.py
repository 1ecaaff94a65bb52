"""A search folder's outputs, rewritten after every stage (so an interrupted search still has
them): `ranking.md` (the best candidates and every baseline), `search.png` (dev score over
the search's scorings), `best.yaml` (a ready run config: the best prompt, or with
`search.combine` the best few combined, then `single.yaml` holds the best one) and
`summary.json`."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from matplotlib.figure import Figure

from cuetune import atomic
from cuetune.metrics.plots import save_png
from cuetune.search import combination
from cuetune.search.candidates import Record, SearchLog
from cuetune.search.stage import best_of

TOP = 25


def write_outputs(out: Path, cfg, settings, slog: SearchLog, scorer, warnings: list[str]) -> dict:
    records = slog.records
    baselines = [r for r in records if r.stage == "baseline"]
    searched = [r for r in records if r.stage != "baseline"]
    best = best_of(records)
    raw_baselines = [r for r in baselines if not r.candidate.calibrate]
    summary = {
        "metric": scorer.metric,
        "selection": f"{len(scorer.folds)}-fold over train+dev" if scorer.folds else "dev",
        "dev_examples": len(scorer.dev),
        "candidates": len(searched),
        "best": _row(best),
        "best_searched": _row(best_of(searched)),
        "best_baseline": _row(best_of(raw_baselines)),
        "best_baseline_calibrated_or_not": _row(best_of(baselines)),
        "stages": _stages(records),
        "label_words": _label_words(records),
        "combined": None,
        "scorings": scorer.scorings,
        "warnings": warnings,
    }
    notes = []
    n_dev = len(scorer.dev)
    members = combination.members(records, settings.combine, n_dev) if settings.combine > 1 else []
    chosen = False
    if best is not None and len(members) > 1:
        method = cfg.model_dump(mode="json", exclude_unset=True).get("method", {"name": cfg.method.name})
        prompts = [r.candidate.prompt() for r in members]
        prompt, method = combination.sections(method, prompts, getattr(cfg.method, "num_tokens", None))
        dev = scorer.combined(*combination.sections({"name": "zero-shot"}, prompts, None))
        bar = best.dev - combination.noise(best.dev, n_dev)
        chosen = dev is None or dev[scorer.metric] >= bar
        summary["combined"] = {"dev": dev, "members": [_row(r) for r in members], "prompt": prompt,
                               "method": method, "chosen": chosen}
        if chosen:
            head = (f"# The top {len(members)} prompts of `cuetune search`, combined (search.combine); dev "
                    f"{'(k-fold: not scored)' if dev is None else round(dev[scorer.metric], 4)} for the "
                    f"hard prompts under a uniform prior. One prompt: {out / 'single.yaml'}\n")
            atomic.write_text(out / "best.yaml", run_config(cfg, prompt, method, out, head, "best.yaml"))
            atomic.write_text(out / "single.yaml", best_config(cfg, best, out, "single.yaml"))
        else:
            notes.append(f"search.combine: the top {len(members)} prompts combined scored "
                         f"{dev[scorer.metric]:.4f} on dev, below the best prompt's {best.dev:.4f} by more "
                         "than one standard error; best.yaml holds the single best (summary.json has "
                         "the combination)")
    elif best is not None and settings.combine > 1:
        notes.append(f"search.combine: {settings.combine}, but no other template scored within one "
                     "standard error of the best on dev; best.yaml holds the single best prompt")
    if best is not None and not chosen:
        atomic.write_text(out / "best.yaml", best_config(cfg, best, out))
        (out / "single.yaml").unlink(missing_ok=True)  # a combination written before no longer holds
    summary["warnings"] = warnings + notes
    atomic.write_json(out / "summary.json", summary)
    atomic.write_text(out / "ranking.md", ranking(records, scorer.metric))
    if len(records) > 1:
        plot(records, out / "search.png", scorer.metric)
    return summary


def _row(rec: Record | None) -> dict | None:
    if rec is None:
        return None
    return {"dev": rec.dev, "metrics": rec.metrics, "stage": rec.stage, "how": rec.how,
            "step": rec.step, "prompt": rec.candidate.prompt()}


def _label_words(records: list[Record]) -> list[dict]:
    """Per label-word stage: its best found words' dev score against the bar they had to clear
    (the starting words' dev plus one standard error), and whether they replaced them."""
    out = []
    for stage in dict.fromkeys(r.stage for r in records if "needs" in r.extra):
        top = max((r for r in records if r.stage == stage and "needs" in r.extra), key=lambda r: r.dev)
        out.append({"stage": stage, "best_found_dev": top.dev, "start_dev": top.extra["start_dev"],
                    "gain": round(top.dev - top.extra["start_dev"], 6), "needed": top.extra["needs"],
                    "replaced": top.dev > top.extra["needs"], "words": top.candidate.prompt()["verbalizer"]})
    return out


def _stages(records: list[Record]) -> dict:
    """Per stage: candidates logged, best dev score, seconds, and the model scorings (one prompt
    on one example) it spent."""
    out: dict = {}
    before = 0
    for rec in records:
        if rec.stage not in out:
            before = max((s["_end"] for s in out.values()), default=0)
            out[rec.stage] = {"candidates": 0, "best_dev": rec.dev, "seconds": 0.0, "_start": before}
        st = out[rec.stage]
        st["candidates"] += 1
        st["best_dev"] = max(st["best_dev"], rec.dev)
        st["seconds"] = round(max(st["seconds"], rec.seconds), 2)
        st["_end"] = rec.scorings
    for st in out.values():
        st["scorings"] = st.pop("_end") - st.pop("_start")
    return out


def ranking(records: list[Record], metric: str) -> str:
    """Markdown: the top candidates by dev score, then every baseline."""
    order = sorted(range(len(records)), key=lambda i: (-records[i].dev, i))
    lines = [f"# Prompt search: dev {metric}", "", "| rank | dev | stage | how | prompt |",
             "|---:|---:|---|---|---|"]
    for rank, i in enumerate(order[:TOP], 1):
        lines.append(_line(rank, records[i]))
    lines += ["", "## Baselines", "", "| rank | dev | stage | how | prompt |", "|---:|---:|---|---|---|"]
    for rank, i in enumerate(order, 1):
        if records[i].stage == "baseline":
            lines.append(_line(rank, records[i]))
    return "\n".join(lines) + "\n"


def _line(rank: int, rec: Record) -> str:
    prompt = rec.candidate.short().replace("|", "\\|").replace("\n", "\\n")
    return f"| {rank} | {rec.dev:.4f} | {rec.stage} | {rec.how} | `{prompt}` |"


def best_config(cfg, best: Record, out: Path, name: str = "best.yaml") -> str:
    """The search's run config with the chosen prompt: the keys the config set (and the search
    chose), not every default, so `cuetune train best.yaml` takes it as written and `--set
    method.name=X` starts method X from its own defaults (a dump of every default key named
    keys that the new method, or this one's other settings, make moot, and was refused). Data
    paths are made absolute, since the file sits in the search folder."""
    head = f"# Chosen by `cuetune search` ({best.stage}, {best.how}): dev {best.dev:.4f}.\n"
    return run_config(cfg, best.candidate.prompt(), None, out, head, name)


def run_config(cfg, prompt: dict, method: dict | None, out: Path, head: str, name: str) -> str:
    """The search's run config with these prompt (and method) sections, as `best_config` says."""
    raw = cfg.model_dump(mode="json", exclude_unset=True)
    raw["prompt"] = {**raw.get("prompt", {}), **prompt}
    if method is not None:
        raw["method"] = method
    raw.setdefault("data", {})
    for key in ("train", "dev", "test"):
        value = raw["data"].get(key)
        if value and not raw["data"].get("dataset") and Path(value).exists():
            raw["data"][key] = str(Path(value).resolve())
    raw["output_dir"] = f"runs/{out.name}-best"
    raw = json.loads(json.dumps(raw))  # no shared objects, so the file has no YAML anchors
    return head + f"# Train it: cuetune train {out / name}\n" + yaml.safe_dump(
        raw, sort_keys=False, allow_unicode=True)


def plot(records: list[Record], path: Path, metric: str) -> None:
    fig = Figure(figsize=(8, 4))
    ax = fig.subplots()
    stages = list(dict.fromkeys(r.stage for r in records))
    for stage in stages:
        xs = [i for i, r in enumerate(records) if r.stage == stage]
        ax.scatter(xs, [records[i].dev for i in xs], s=10, label=stage)
    running, best = [], float("-inf")
    for r in records:
        best = max(best, r.dev)
        running.append(best)
    ax.plot(range(len(records)), running, color="black", lw=1, label="best so far")
    base = [r.dev for r in records if r.stage == "baseline" and not r.candidate.calibrate]
    if base:
        ax.axhline(max(base), color="grey", ls="--", lw=1, label="best hand baseline")
    ax.set_xlabel("candidate (in the order scored)")
    ax.set_ylabel(f"dev {metric}")
    ax.legend(fontsize=7, loc="lower right")
    save_png(fig, path)
