"""What the input's cache saves the token searchers (RL, random, sampled, gradient swaps).

Scores S candidate prompts of n tokens on B training inputs, as the RL searcher does each step,
two ways on the same model: with the inputs' keys and values computed once and each candidate
appending only its own tokens (`TokenPrompts.label_logprobs` on a causal model), and with the
full prompt run for every (candidate, input) row (`TokenPrompts.from_embeddings`). Prints the
median seconds of each over interleaved repeats, the ratio, and the largest difference in
label log-probabilities (they must agree).

    python benchmarks/search_token_scoring.py --model smollm2-135m --task sst-2 --seed 13
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import cuetune.search as search
from cuetune.data.splits import load_splits
from cuetune.engine.pipeline import load_for
from cuetune.search.candidates import Candidate, SearchLog
from cuetune.search.scoring import Scorer
from cuetune.search.settings import SearchSettings
from cuetune.search.stage import Stage
from cuetune.search.tokens import TokenPrompts, search_vocab


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="sst-2")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "search.yaml"
        config.write_text(json.dumps({"model": {"name": args.model}, "method": {"name": "zero-shot"},
                                      "search": {"task": args.task, "data_root": args.data_root,
                                                 "seed": args.seed, "out": tmp}}))
        cfg, _ = search.load_config(config)
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"test": None})})
        splits = load_splits(cfg.data)
        loaded = load_for(cfg.model)
        slog = SearchLog(Path(tmp) / "p.jsonl", splits.labels)
        scorer = Scorer(cfg, loaded, splits.labels, splits.dev, slog, (False,))
        stage = Stage("bench", cfg, SearchSettings(), splits.labels, splits.train, scorer, slog,
                      Path(tmp), 0, loaded)
        prompts = TokenPrompts(stage, Candidate.from_prompt(cfg.prompt.model_dump(), splits.labels),
                               args.tokens, "after")
        vocab = search_vocab(prompts.tok, 5000)
        gen = torch.Generator().manual_seed(0)
        items = prompts.encoder.encode(splits.train[: args.batch])
        times = {"cached": [], "full": []}
        diff = 0.0
        for _ in range(args.repeats):
            ids = vocab[torch.randint(len(vocab), (args.samples, args.tokens), generator=gen)]
            start = time.perf_counter()
            cached = prompts.label_logprobs(ids, items)
            times["cached"].append(time.perf_counter() - start)
            start = time.perf_counter()
            with torch.inference_mode():
                full = prompts.from_embeddings(prompts.embedding(ids), items)
            times["full"].append(time.perf_counter() - start)
            diff = max(diff, (cached - full).abs().max().item())
    med = {k: statistics.median(v) for k, v in times.items()}
    lengths = [len(e.input_ids) for e in items]
    print(json.dumps({"model": args.model, "samples": args.samples, "batch": args.batch,
                      "tokens": args.tokens, "mean_prompt_tokens": round(sum(lengths) / len(lengths), 1),
                      "cached_s": round(med["cached"], 3), "full_s": round(med["full"], 3),
                      "full_over_cached": round(med["full"] / med["cached"], 2),
                      "max_abs_logprob_diff": diff}))


if __name__ == "__main__":
    main()
