"""What `torch.compile` does to cuetune's training step (issue 24, "closer to the hardware").

The same soft-prompt run (P=20, batch 16, SST-2 sentences, smollm2-135m) in one process,
eager and then with each decoder layer compiled (inductor, dynamic shapes: batches differ in
length). Printed per mode: the first step (compilation included), the median of the later
steps, what a 60-step run would take, the achieved share of this machine's matmul peak, and
the largest loss difference from eager. Compilation is kept by default only if it is exact
and a 60-step run gains more than the first step loses.

    python benchmarks/compile_study.py --steps 12 --out compile.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import perf_vs_peft as pv  # noqa: E402

from cuetune.engine.fit import MetricsLog, fit  # noqa: E402
from cuetune.engine.pipeline import build  # noqa: E402
from cuetune.families.pretrained import load_model  # noqa: E402


def compile_layers(model) -> None:
    """Compile every decoder layer's forward (the small per-layer ops get fused)."""
    for layer in model.model.layers:
        layer.forward = torch.compile(layer.forward, dynamic=True)


def run(mode: str, steps: int, train, model_name: str) -> dict:
    torch.manual_seed(0)
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    cfg = pv._config("soft-P20", steps, 0.03, Path(tempfile.mkdtemp()))
    loaded = load_model(model_name)
    pipe = build(cfg, pv.LABELS, loaded)
    items = pipe.encoder.encode(train)
    flops = pv._count_flops(lambda: pv._cuetune_step(pipe, items[:16], loaded.tokenizer.pad_token_id)) / 16
    if mode == "compiled":  # after the FLOP count: a first call under a dispatch mode is never compiled
        compile_layers(loaded.model)
    log = MetricsLog(None)
    start = time.perf_counter()
    result = fit(pipe, items, [], cfg.train, log)
    total = time.perf_counter() - start
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    if mode == "compiled" and not graphs:
        raise SystemExit("compiled mode compiled nothing: the layers' compiled forward was never called")
    times = [r["elapsed_s"] for r in result.log]
    step_s = [b - a for a, b in zip(times, times[1:], strict=False)]
    median = statistics.median(step_s)
    return {"mode": mode, "graphs": graphs, "first_step_s": times[0], "median_step_s": median,
            "total_s": total,
            "projected_60_steps_s": times[0] + 59 * median, "losses": [r["loss"] for r in result.log],
            "gflop_per_example": flops / 1e9, "achieved_gflop_s": flops * 16 / median / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--modes", default="eager,compiled,eager")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    peak = pv.matmul_peak_gflops()
    train, _, source = pv.load_data(16 * args.steps, 1, seed=0)
    rows = [run(mode, args.steps, train, args.model) for mode in args.modes.split(",")]
    eager = next(r for r in rows if r["mode"] == "eager")
    print(f"data: {source}; fp32 matmul peak {peak:.0f} GFLOP/s; {torch.get_num_threads()} threads")
    print("| mode | first step s | median step s | 60 steps s | % of peak | max loss diff vs eager |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        r["of_peak"] = r["achieved_gflop_s"] / peak
        r["max_loss_diff"] = max(abs(a - b) for a, b in zip(r["losses"], eager["losses"], strict=True))
        print(f"| {r['mode']} | {r['first_step_s']:.2f} | {r['median_step_s']:.3f} | "
              f"{r['projected_60_steps_s']:.1f} | {100 * r['of_peak']:.0f}% | {r['max_loss_diff']:.2g} |")
    if args.out:
        args.out.write_text(json.dumps({"peak_gflop_s": peak, "source": source, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
