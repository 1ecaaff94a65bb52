"""Prompt search on the LM-BFF K=16 splits, then the test score of what dev chose.

Per task and seed: `cuetune search` (resumable: a finished seed is read back), then on the full
test set the dev-chosen searched prompt and the dev-chosen frozen hand baseline (raw, as the
hand baselines are written). Test scores are cached by prompt in the output folder, so a
prompt that several seeds choose is scored once. Writes results.json and results.md.

    python benchmarks/search_lmbff.py --tasks sst-2 --seeds 13 21 42 87 100 --out bench-out/search
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import cuetune.search as search
from cuetune import atomic
from cuetune.data import load_splits
from cuetune.pipeline import load_for
from cuetune.search.candidates import Candidate, SearchLog
from cuetune.search.scoring import Scorer, calibrate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", nargs="+", default=["sst-2"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[13, 21, 42, 87, 100])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--searchers", nargs="+", default=["labels", "pool", "labels"])
    ap.add_argument("--out", default="bench-out/search")
    ap.add_argument("--compare", action="store_true",
                    help="searchers compared, each from the best baseline (search.chain false): "
                         "the test score of each stage's dev-chosen prompt")
    ap.add_argument("--set", nargs="*", default=[], help="search config overrides, key=value")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache_path = out / "test_cache.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    rows = []
    for task in args.tasks:
        for seed in args.seeds:
            folder = out / f"{task}-{seed}"
            config = folder.parent / f"{task}-{seed}.yaml"
            config.write_text(json.dumps({
                "model": {"name": args.model}, "method": {"name": "zero-shot"},
                "search": {"task": task, "data_root": args.data_root, "k": 16, "seed": seed,
                           "searchers": args.searchers, "out": str(folder),
                           "chain": not args.compare}}), encoding="utf-8")
            cfg, settings = search.load_config(config, args.set)
            start = time.perf_counter()
            summary = search.run(cfg, settings)
            seconds = time.perf_counter() - start
            chosen, baseline = summary["best"], summary["best_baseline"]
            stages = _stage_bests(folder, cfg) if args.compare else {}
            test = _test_scores(cfg, [chosen["prompt"], baseline["prompt"]]
                                + [r["prompt"] for r in stages.values()], cache, cache_path)
            rows.append({"task": task, "seed": seed, "search_seconds": round(seconds, 1),
                         "dev_searched": chosen["dev"], "dev_baseline": baseline["dev"],
                         "test_searched": test[0], "test_baseline": test[1],
                         "searched": chosen["prompt"], "searched_how": f"{chosen['stage']}: {chosen['how']}",
                         "baseline": baseline["how"], "candidates": summary["candidates"],
                         "stages": {name: {**r, "test": t} for (name, r), t in zip(stages.items(), test[2:],
                                                                                    strict=True)},
                         "stage_costs": summary["stages"]})
            atomic.write_json(out / "results.json", rows)
            atomic.write_text(out / "results.md", table(rows))
            print(json.dumps(rows[-1], ensure_ascii=False), flush=True)


def _test_scores(cfg, prompts: list[dict], cache: dict, cache_path: Path) -> list[float]:
    """Test accuracy of each prompt (calibrated when the prompt says so), cached by prompt."""
    splits = load_splits(cfg.data)
    labels = splits.labels
    todo = [p for p in prompts if _key(cfg, p) not in cache]
    if todo:
        loaded = load_for(cfg)
        scorer = Scorer(cfg, loaded, labels, splits.test, SearchLog(cache_path.with_suffix(".log"), labels))
        for prompt in todo:
            cand = Candidate.from_prompt(prompt, labels)
            probs, free = scorer.probs(cand, splits.test)
            probs = calibrate(probs, free) if cand.calibrate else probs
            gold = [e.label for e in splits.test]
            cache[_key(cfg, prompt)] = sum(int(p == g) for p, g in zip(probs.argmax(-1).tolist(), gold,
                                                                        strict=True)) / len(gold)
        atomic.write_json(cache_path, cache)
    return [cache[_key(cfg, p)] for p in prompts]


def _stage_bests(folder: Path, cfg) -> dict:
    """Each searcher stage's dev-chosen record (ties: the earliest)."""
    out = {}
    for line in (folder / "prompts.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if r["stage"] != "baseline" and (r["stage"] not in out or r["dev"] > out[r["stage"]]["dev"]):
            out[r["stage"]] = {"dev": r["dev"], "prompt": r["prompt"], "how": r["how"], "step": r["step"]}
    return out


def _key(cfg, prompt: dict) -> str:
    return json.dumps({"test": cfg.data.test, "model": cfg.model.name, **prompt}, sort_keys=True)


def table(rows: list[dict]) -> str:
    lines = ["| task | seed | dev: searched | dev: best hand | test: searched | test: best hand (dev-chosen) "
             "| search s | chosen |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        chosen = Candidate.from_prompt(r["searched"], list(r["searched"]["verbalizer"])).short()
        lines.append(f"| {r['task']} | {r['seed']} | {r['dev_searched']:.3f} | {r['dev_baseline']:.3f} | "
                     f"{r['test_searched']:.3f} | {r['test_baseline']:.3f} | {r['search_seconds']:.0f} | "
                     f"{r['searched_how']}: `{chosen}` |")
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        series = {key: [r[key] for r in mine] for key in ("dev_searched", "test_searched", "test_baseline")}
        for stage in dict.fromkeys(s for r in mine for s in r.get("stages", {})):
            series[f"{stage} dev"] = [r["stages"][stage]["dev"] for r in mine if stage in r["stages"]]
            series[f"{stage} test"] = [r["stages"][stage]["test"] for r in mine if stage in r["stages"]]
        lines.append("")
        for key, vals in series.items():
            vals = [v * 100 for v in vals]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            per = " / ".join(f"{v:.1f}" for v in vals)
            mean = statistics.mean(vals)
            lines.append(f"- {task} {key}: {mean:.1f} ({sd:.1f}) over {len(vals)} seeds: {per}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
