"""Measure every method on the packaged model and data: the numbers behind docs/methods.md.

Each method trains with its own default learning rate for the same number of steps on the
packaged sentiment data (180 train / 60 dev / 90 test) and the default template, then reports
trainable parameters, adapter size, training examples/s, wall time and test accuracy.

    python benchmarks/methods_table.py --steps 30 --out /tmp/methods.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cuetune
from cuetune import methods

EXTRA = {"two-stage": {"second": "lora"}}


def run(method: str, steps: int, model: str, out_root: Path) -> dict:
    cfg = cuetune.load_config(None, [f"model.name={model}", f"method.name={method}",
                                     f"train.max_steps={steps}", "train.eval_every=10",
                                     "train.patience=null", "train.zero_shot_baseline=false",
                                     "train.progress=false", f"output_dir={out_root / method}"])
    if method in EXTRA:
        cfg = cfg.model_copy(update={"method": cfg.method.model_copy(update=EXTRA[method])})
    start = time.perf_counter()
    manifest = cuetune.train(cfg)
    wall = time.perf_counter() - start
    training = manifest.training
    examples = steps * cfg.train.batch_size
    return {"method": method, "trainable_parameters": manifest.trainable_parameters,
            "adapter_bytes": manifest.adapter_bytes,
            "train_examples_per_s": round(examples / training.seconds, 2) if training else None,
            "train_seconds": training.seconds if training else None, "wall_seconds": round(wall, 1),
            "test_accuracy": manifest.metrics["test"]["accuracy"],
            "dev_best": (manifest.metrics.get("dev_best") or {}).get("accuracy")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--methods", default=",".join(methods.REGISTRY))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.methods.split(","):
            rows.append(run(name, args.steps, args.model, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
            if args.out:
                args.out.write_text(json.dumps(rows, indent=1))
    print("| method | trainable params | adapter | train ex/s | test acc |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['method']} | {r['trainable_parameters']:,} | {r['adapter_bytes']:,} B | "
              f"{r['train_examples_per_s'] or '-'} | {r['test_accuracy']:.3f} |")


if __name__ == "__main__":
    main()
