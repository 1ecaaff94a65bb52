"""Prediction speed of finished runs and ensembles side by side, in one process: examples per
second of `cuetune.load(folder).predict` over the same sentences, the folders taking turns
(ABAB) so drift on a shared machine hits all of them. Used for a distilled student against the
ensemble it learned from (docs/RESULTS.md): the student should predict at one prompt's speed.

    python benchmarks/predict_speed.py RUN_OR_ENSEMBLE... [--examples 872] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import cuetune

SST2_TEST = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "sst2" / "test.tsv"


def sentences(n: int) -> list[str]:
    if SST2_TEST.is_file():
        lines = SST2_TEST.read_text(encoding="utf-8").splitlines()[1:]
        return [line.split("\t")[0].strip() for line in lines[:n]]
    fallback = ["a gorgeous, moving film", "tedious and overlong", "a small miracle", "nothing works"]
    return fallback * (n // 4 + 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--examples", type=int, default=872)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    texts = sentences(args.examples)[: args.examples]
    models = {str(f): cuetune.load(f) for f in args.folders}
    for model in models.values():
        model.predict(texts[:32])  # warm up
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            start = time.perf_counter()
            model.predict(texts)
            times[name].append(time.perf_counter() - start)
    for name, spent in times.items():
        print(json.dumps({"folder": name, "examples": len(texts), "examples_per_s":
                          round(len(texts) / statistics.median(spent), 1), "rounds": args.rounds}))


if __name__ == "__main__":
    main()
