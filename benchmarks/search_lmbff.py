"""Prompt search on the LM-BFF K=16 splits, then the test score of what dev chose.

Per task and seed: `cuetune search` (resumable: a finished seed is read back), then on the full
test set the dev-chosen searched prompt and the dev-chosen frozen hand baseline (raw, as the
hand baselines are written). Test scores are cached by prompt in the output folder, so a
prompt that several seeds choose is scored once. Writes results.json and results.md.

    python benchmarks/search_lmbff.py --tasks sst-2 --seeds 13 21 42 87 100 --out bench-out/search

`--all-candidates N` also scores every candidate a search logged (raw and calibrated, as
logged) on a seeded sample of N test sentences, for the mean candidate and the best one on test
(an oracle, for context only). One forward per template gives every candidate of that template
its label scores (`_Shapes`); each candidate's recomputed dev score must equal the one its
search logged, else it is scored through the full pipeline instead and counted.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch

import cuetune.search as search
from cuetune import atomic
from cuetune.data.examples import Example
from cuetune.data.splits import load_splits
from cuetune.engine.pipeline import load_for
from cuetune.prompt.verbalizers import Verbalizer
from cuetune.search.candidates import Candidate, SearchLog
from cuetune.search.scoring import Scorer, answer_logprobs, calibrate


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
    ap.add_argument("--all-candidates", type=int, default=0, metavar="N",
                    help="score every logged candidate on a seeded sample of N test sentences "
                         "(mean candidate and oracle); 0: off")
    ap.add_argument("--read-back", action="store_true",
                    help="take each seed's row from results.json instead of searching: adds "
                         "--all-candidates to searches an older version made, without resuming "
                         "them under today's code (which could add candidates)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache_path = out / "test_cache.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    rows = []
    saved = json.loads((out / "results.json").read_text()) if args.read_back else []
    for task in args.tasks:
        for seed in args.seeds:
            if args.read_back:
                rows.append(next(r for r in saved if (r["task"], r["seed"]) == (task, seed)))
                continue
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
        if args.all_candidates:
            mine = [r for r in rows if r["task"] == task]
            loaded = {r["seed"]: search.load_config(out / f"{task}-{r['seed']}.yaml", args.set) for r in mine}
            if any(settings.selection != "dev" for _, settings in loaded.values()):
                raise SystemExit("--all-candidates checks each candidate's dev score: use selection dev")
            cfgs = {seed: cfg for seed, (cfg, _) in loaded.items()}
            summaries = _all_candidates(task, cfgs, args.all_candidates, out,
                                        {r["seed"]: r["searched"] for r in mine})
            for r in mine:
                r["all_candidates"] = summaries[r["seed"]]
            atomic.write_json(out / "results.json", rows)
            atomic.write_text(out / "results.md", table(rows))


def _test_scores(cfg, prompts: list[dict], cache: dict, cache_path: Path) -> list[float]:
    """Test accuracy of each prompt (calibrated when the prompt says so), cached by prompt."""
    splits = load_splits(cfg.data)
    labels = splits.labels
    todo = [p for p in prompts if _key(cfg, p) not in cache]
    if todo:
        loaded = load_for(cfg.model)
        scorer = Scorer(cfg, loaded, labels, splits.test, SearchLog(cache_path.with_suffix(".log"), labels))
        for prompt in todo:
            cand = Candidate.from_prompt(prompt, labels)
            probs, free = scorer.probs(cand, splits.test)
            probs = calibrate(probs, free) if cand.calibrate else probs
            cache[_key(cfg, prompt)] = _acc(probs, splits.test)
        atomic.write_json(cache_path, cache)
    return [cache[_key(cfg, p)] for p in prompts]


def _all_candidates(task: str, cfgs: dict, n: int, out: Path, chosen: dict[int, dict]) -> dict[int, dict]:
    """Per seed: every candidate its search logged (not the hand baselines), scored on one
    seeded sample of `n` test sentences: the mean, the best (an oracle), the count, and the
    dev-chosen prompt on the same sentences (None when dev chose a hand baseline). Prompt
    shapes repeat across seeds, so each shape's test forward runs once per task."""
    first = next(iter(cfgs.values()))
    splits = {seed: load_splits(cfg.data) for seed, cfg in cfgs.items()}
    full = next(iter(splits.values())).test
    test = full if n >= len(full) else random.Random(0).sample(full, n)
    cache_path = out / f"all_candidates_{task}_{len(test)}.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    records: dict[int, list[dict]] = {}
    for seed in cfgs:
        lines = (out / f"{task}-{seed}" / "prompts.jsonl").read_text(encoding="utf-8").splitlines()
        records[seed] = [r for r in map(json.loads, lines) if r["stage"] != "baseline"]
    todo = [(seed, r) for seed, rs in records.items() for r in rs
            if _key(first, r["prompt"], seed) not in cache]
    todo.sort(key=lambda sr: _shape(sr[1]["prompt"], sr[0]))
    fallbacks = 0
    if todo:
        shapes = _Shapes(first, splits, test, out)
        for i, (seed, r) in enumerate(todo, 1):
            cache[_key(first, r["prompt"], seed)], exact = shapes.accuracy(seed, r["prompt"], r["dev"])
            fallbacks += not exact
            if i % 50 == 0 or i == len(todo):
                atomic.write_json(cache_path, cache)
                print(f"all candidates: {i}/{len(todo)} scored, {shapes.forwards} template forwards, "
                      f"{fallbacks} through the full pipeline", flush=True)
    summaries = {}
    for seed, rs in records.items():
        scores = [cache[_key(first, r["prompt"], seed)] for r in rs]
        best = max(range(len(rs)), key=lambda i: scores[i])
        summaries[seed] = {"test_sample": len(test), "candidates": len(rs), "mean": statistics.mean(scores),
                           "best": scores[best], "best_prompt": rs[best]["prompt"],
                           "chosen": cache.get(_key(first, chosen[seed], seed))}
    return summaries


def _shape(prompt: dict, seed: int) -> str:
    """What one forward serves: the prompt less its words and calibration (demonstrations come
    from the seed's own training split, so a shape with them is the seed's own)."""
    own = seed if prompt.get("demonstrations") else None
    return json.dumps({**prompt, "verbalizer": None, "calibrate": None, "seed": own}, sort_keys=True)


class _Shapes:
    """Label scores of many candidates from one forward per prompt shape: the answer position's
    log-probabilities over the vocabulary [N, V] are computed once, and each candidate's words
    are read from them as its verbalizer reads them. Valid for one-position scoring; `accuracy`
    checks it against the dev score the search logged."""

    def __init__(self, cfg, splits: dict, test: list[Example], out: Path):
        self.cfg, self.splits, self.test = cfg, splits, test
        self.labels = next(iter(splits.values())).labels
        self.loaded = load_for(cfg.model)
        self.log = SearchLog(out / "all_candidates.log", self.labels)  # unused: probs() reads no log
        self.held: tuple[str, dict] = ("", {})
        self.forwards = 0

    def scorer(self, seed: int) -> Scorer:
        s = self.splits[seed]
        return Scorer(self.cfg, self.loaded, self.labels, s.dev, self.log, train=s.train)

    def accuracy(self, seed: int, prompt: dict, logged_dev: float) -> tuple[float, bool]:
        """(test accuracy, whether the shared forward reproduced the logged dev score)."""
        cand = Candidate.from_prompt(prompt, self.labels)
        shape = _shape(prompt, seed)
        if self.held[0] != shape:  # todo is sorted by shape; one held at a time: [N, V] is large
            self.held = (shape, {})
            self.forwards += 1
        held = self.held[1]
        dev = self.splits[seed].dev
        if "pipe" not in held:
            pipe = held["pipe"] = self.scorer(seed).pipeline(cand)
            held["free"] = self._logprobs(pipe, pipe.content_free_examples())
            held["test"] = self._logprobs(pipe, self.test)
        if seed not in held:
            held[seed] = self._logprobs(held["pipe"], dev)
        if self.cfg.prompt.multi_token != "chain":
            verbalizer = Verbalizer(self.labels, prompt["verbalizer"], self.cfg.prompt.multi_token)
            verbalizer.bind(self.loaded.tokenizer, held["pipe"].encoder.answer_space)
            cf = _read(verbalizer, held["free"]).mean(0)  # [L]
            dev_probs, test_probs = _read(verbalizer, held[seed]), _read(verbalizer, held["test"])  # [N, L]
            if cand.calibrate:
                dev_probs, test_probs = calibrate(dev_probs, cf), calibrate(test_probs, cf)
            if abs(_acc(dev_probs, dev) - logged_dev) < 1e-9:
                return _acc(test_probs, self.test), True
        probs, free_probs = self.scorer(seed).probs(cand, self.test)
        return _acc(calibrate(probs, free_probs) if cand.calibrate else probs, self.test), False

    def _logprobs(self, pipe, examples: list[Example]) -> torch.Tensor:
        return answer_logprobs(pipe, examples, self.cfg.train.eval_batch_size)  # [N, V]


def _read(verbalizer: Verbalizer, logprobs: torch.Tensor) -> torch.Tensor:
    """Vocabulary log-probabilities [N, V] -> label probabilities [N, L], as the verbalizer reads
    its words' logits (a per-row shift of the logits changes nothing)."""
    return verbalizer.label_logits(logprobs[:, verbalizer.token_ids]).softmax(-1)


def _acc(probs: torch.Tensor, examples: list[Example]) -> float:
    hits = sum(int(p == e.label) for p, e in zip(probs.argmax(-1).tolist(), examples, strict=True))
    return hits / len(examples)


def _stage_bests(folder: Path, cfg) -> dict:
    """Each searcher stage's dev-chosen record (ties: the earliest)."""
    out = {}
    for line in (folder / "prompts.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if r["stage"] != "baseline" and (r["stage"] not in out or r["dev"] > out[r["stage"]]["dev"]):
            out[r["stage"]] = {"dev": r["dev"], "prompt": r["prompt"], "how": r["how"], "step": r["step"]}
    return out


def _key(cfg, prompt: dict, seed: int | None = None) -> str:
    """Cache key of a prompt's test score (`seed`: set when the prompt's demonstrations make
    its score depend on the seed's training split)."""
    own = {"seed": seed} if seed is not None and prompt.get("demonstrations") else {}
    return json.dumps({"test": cfg.data.test, "model": cfg.model.name, **prompt, **own}, sort_keys=True)


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
        every = [r["all_candidates"] for r in mine if "all_candidates" in r]
        if every:
            n = every[0]["test_sample"]
            series[f"every candidate, mean ({n} test sentences)"] = [a["mean"] for a in every]
            picked = [a["chosen"] for a in every if a.get("chosen") is not None]
            series[f"dev-chosen ({n} test sentences; {len(picked)} seeds chose a candidate)"] = picked
            series[f"best candidate on test, an oracle ({n} test sentences)"] = [a["best"] for a in every]
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
