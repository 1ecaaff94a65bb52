"""Generation on real data: zero-shot against a tuned prompt, on CPU-sized subsets.

- E2E data-to-text (`../shared/data/e2e`): train on the dev set, test on the test set. The
  test set has several references per meaning representation.
- Multi30k English->German (`../shared/data/multi30k`): a training subset, test_2016_flickr.
- BoolQ (`../shared/data/fewglue/BoolQ`) as yes/no question answering: the answer is the text
  "yes" or "no", scored by exact match.

The shared files are converted to JSONL in a temporary folder (nothing is copied into the
repository). Each task trains `cuetune.train` with its method, then reports the test metrics
next to the zero-shot baseline that the same run measures.

    python benchmarks/generation_real.py --out generation.json             # all three tasks
    python benchmarks/generation_real.py --tasks e2e --test 100 --steps 50
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import random
import tempfile
import time
from pathlib import Path

import cuetune

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def e2e(tmp: Path, n_train: int, n_test: int, seed: int) -> dict:
    def read(name):
        with open(SHARED / "e2e" / name, encoding="utf-8", newline="") as f:
            return [{"text": r["mr"], "target": r["ref"]} for r in csv.DictReader(f)]

    train = read("devset.csv")
    random.Random(seed).shuffle(train)
    test = read("testset_w_refs.csv")
    mrs = list(dict.fromkeys(r["text"] for r in test))[:n_test]  # whole inputs, every reference
    keep = set(mrs)
    return {"train": _write(tmp / "e2e-train.jsonl", train[:n_train]),
            "dev": _write(tmp / "e2e-dev.jsonl", train[n_train:n_train + 50]),
            "test": _write(tmp / "e2e-test.jsonl", [r for r in test if r["text"] in keep]),
            "template": "Facts: {text}\nDescription: {answer}", "max_new_tokens": 48}


def multi30k(tmp: Path, n_train: int, n_test: int, seed: int) -> dict:
    def read(name):
        with gzip.open(SHARED / "multi30k" / name, "rt", encoding="utf-8") as f:
            return [line.strip() for line in f]

    pairs = [{"text": en, "target": de}
             for en, de in zip(read("train.en.gz"), read("train.de.gz"), strict=True)]
    random.Random(seed).shuffle(pairs)
    val = [{"text": en, "target": de} for en, de in zip(read("val.en.gz"), read("val.de.gz"), strict=True)]
    test = [{"text": en, "target": de}
            for en, de in zip(read("test_2016_flickr.en.gz"), read("test_2016_flickr.de.gz"), strict=True)]
    return {"train": _write(tmp / "mt-train.jsonl", pairs[:n_train]),
            "dev": _write(tmp / "mt-dev.jsonl", val[:50]),
            "test": _write(tmp / "mt-test.jsonl", test[:n_test]),
            "template": "English: {text}\nGerman: {answer}", "max_new_tokens": 48}


def boolq(tmp: Path, n_train: int, n_test: int, seed: int) -> dict:
    def read(name):
        text = (SHARED / "fewglue" / "BoolQ" / name).read_text(encoding="utf-8")
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        return [{"text": r["passage"], "text_pair": r["question"],
                 "target": "yes" if r["label"] else "no"} for r in rows]

    test = read("val.jsonl")
    random.Random(seed).shuffle(test)
    return {"train": _write(tmp / "bq-train.jsonl", read("train.jsonl")[:n_train]),
            "dev": _write(tmp / "bq-dev.jsonl", read("dev32.jsonl")),
            "test": _write(tmp / "bq-test.jsonl", test[:n_test]),
            "template": "{text}\nQuestion: {text_pair}?\nAnswer (yes or no): {answer}",
            "max_new_tokens": 3, "pair": True}


TASKS = {"e2e": e2e, "multi30k": multi30k, "boolq": boolq}


def run(task: str, args, tmp: Path) -> dict:
    spec = TASKS[task](tmp, args.train, args.test, args.seed)
    data = {"task": "generation", "train": spec["train"], "dev": spec["dev"], "test": spec["test"],
            "max_length": 320, "max_target_length": 48,
            "clean": {"drop_duplicates": False, "drop_test_overlap": False}}
    if spec.get("pair"):
        data["text_pair_column"] = "text_pair"
    cfg = {"model": {"name": args.model}, "data": data, "prompt": {"template": spec["template"]},
           "method": {"name": args.method, "num_tokens": 20},
           "train": {"batch_size": 8, "max_steps": args.steps, "eval_every": max(1, args.steps // 2),
                     "patience": None, "progress": False, "seed": args.seed,
                     "checkpoint_every": None},
           "generate": {"max_new_tokens": spec["max_new_tokens"], "stop": ["\n"], "batch_size": 16},
           "output_dir": str(tmp / f"run-{task}")}
    start = time.perf_counter()
    manifest = cuetune.train(cfg)
    metrics = manifest.metrics
    keys = ("bleu", "chrf", "rouge_l", "exact_match", "token_f1", "token_nll", "n", "references_per_input")
    return {"task": task, "method": args.method, "steps": args.steps, "train_examples": args.train,
            "seconds": round(time.perf_counter() - start, 1),
            "zero_shot": {k: metrics["zero_shot_test"][k] for k in keys},
            "tuned": {k: metrics["test"][k] for k in keys},
            "samples": metrics["test"]["examples"][:3]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="e2e,multi30k,boolq")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--method", default="prefix")
    parser.add_argument("--train", type=int, default=400, help="training examples per task")
    parser.add_argument("--test", type=int, default=100, help="test inputs per task")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED}: the shared datasets are not here; nothing to run")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks.split(","):
            rows.append(run(task, args, Path(tmp)))
            print(json.dumps(rows[-1], ensure_ascii=False), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "rows": rows},
                                       indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
