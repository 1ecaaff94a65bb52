"""What a mixture of M prompts costs against M separate single-prompt runs, in one process.

Method `mixture` puts the M encodings of an input as M rows of one batch, so the frozen model
runs once per batch over M times the rows. The peer is what a user would do without it: M
soft-prompt runs, one after another. Both sides use the same template (LM-BFF's `{text} It was
{answer}` behind a 20-token soft prompt), the same 8-example training batches and the same
SST-2 sentences, on smollm2-135m. Printed: milliseconds per training step (forward and backward
of one batch of 8 inputs) and inference examples/s, for the mixture and for the M single runs
together, and their ratio (mixture / M singles; below 1 is cheaper). The sides alternate
(ABAB) so drift on a shared machine hits both.

    python benchmarks/mixture_cost.py                # M = 2 and 4, both layouts
    python benchmarks/mixture_cost.py --m 4 --rounds 5 --layout hard

Layouts: `soft` puts the prompt first (M 20-token soft prompts on one wording; each prompt's
rows share their start); `hard` puts the input first (M wordings after `{text}`, training only
the prior; each input runs once for its M prompts). The peers are M soft runs, or M zero-shot
runs of the M wordings.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from cuetune.config import validate
from cuetune.data.examples import Example
from cuetune.data.readers import read_rows
from cuetune.engine.pipeline import build
from cuetune.families.pretrained import load_model
from cuetune.prompt.batch import collate

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "sst2" / "test.tsv"
TEMPLATE = "{text} It was {answer}"
LABELS = ["0", "1"]


def sentences(n: int) -> list[Example]:
    if SHARED.is_file():
        rows = read_rows(SHARED)
        return [Example(r["sentence"].strip(), None, int(r["label"])) for _, r in rows[:n]]
    words = ["a gorgeous, moving film", "tedious and overlong", "a small miracle", "nothing works here"]
    return [Example(words[i % 4], None, int(i % 4 in (0, 2))) for i in range(n)]


def pipeline(loaded, method: dict, template: str = TEMPLATE):
    raw = {"model": {"name": "smollm2-135m"}, "data": {"labels": LABELS},
           "prompt": {"template": template, "verbalizer": {"0": "terrible", "1": "great"}},
           "method": method, "output_dir": "unused"}
    return build(validate(raw), LABELS, loaded)


def step_ms(pipe, batch: dict) -> float:
    """One training step's forward and backward, in ms."""
    pipe.model.train()
    start = time.perf_counter()
    loss = pipe.objective.loss(pipe.model, batch, 0.0)
    loss.backward()
    ms = (time.perf_counter() - start) * 1000
    pipe.method.zero_grad(set_to_none=True)
    return ms


def infer_s(pipe, items) -> float:
    start = time.perf_counter()
    pipe.label_probs(items, 32)
    return time.perf_counter() - start


HARD = ["{text} It was {answer}", "{text} In summary, the film was {answer}",
        "{text} Overall, it was {answer}", "{text} The movie was {answer}"]
"""Input-first wordings (from the SST-2 search's pool) for the `hard` layout."""


def build_sides(loaded, m: int, layout: str):
    """(one single-prompt pipeline per prompt, the mixture over them)."""
    if layout == "soft":  # prompt first: M soft prompts on one wording
        single = pipeline(loaded, {"name": "soft", "num_tokens": 20})
        return [single] * m, pipeline(loaded, {"name": "mixture", "copies": m, "num_tokens": 20})
    singles = [pipeline(loaded, {"name": "zero-shot"}, t) for t in HARD[:m]]
    return singles, pipeline(loaded, {"name": "mixture", "prompts": HARD[:m]})


def measure(loaded, m: int, rounds: int, examples: list[Example], layout: str) -> dict:
    singles, mixture = build_sides(loaded, m, layout)
    if layout == "hard":
        return measure_inference(singles, mixture, rounds, examples, m)
    single = singles[0]
    pad = loaded.tokenizer.pad_token_id
    train = examples[:8]
    sides = {name: (pipe, collate(pipe.encoder.encode(train), pad), pipe.encoder.encode(examples))
             for name, pipe in (("single", single), ("mixture", mixture))}
    for pipe, batch, items in sides.values():  # warm up
        step_ms(pipe, batch)
        infer_s(pipe, items[:32])
    steps: dict = {k: [] for k in sides}
    infer: dict = {k: [] for k in sides}
    for _ in range(rounds):
        for name, (pipe, batch, items) in sides.items():
            steps[name].append(step_ms(pipe, batch))
            infer[name].append(infer_s(pipe, items))
    single_step, mix_step = statistics.median(steps["single"]), statistics.median(steps["mixture"])
    single_inf, mix_inf = statistics.median(infer["single"]), statistics.median(infer["mixture"])
    n = len(examples)
    return {"layout": "soft (prompt first)", "m": m, "single_step_ms": round(single_step, 1),
            "m_singles_step_ms": round(m * single_step, 1),
            "mixture_step_ms": round(mix_step, 1), "step_ratio": round(mix_step / (m * single_step), 3),
            "single_infer_ex_s": round(n / single_inf, 1),
            "m_singles_infer_ex_s": round(n / (m * single_inf), 1),
            "mixture_infer_ex_s": round(n / mix_inf, 1), "infer_ratio": round(mix_inf / (m * single_inf), 3),
            "threads": torch.get_num_threads(), "rounds": rounds, "examples": n}


def measure_inference(singles, mixture, rounds: int, examples: list[Example], m: int) -> dict:
    """Hard prompts train only the prior, so inference is the cost that matters: the M
    zero-shot runs one after another against the mixture."""
    items = [p.encoder.encode(examples) for p in singles]
    mixed = mixture.encoder.encode(examples)
    infer_s(mixture, mixed[:32])
    apart, together = [], []
    for _ in range(rounds):
        apart.append(sum(infer_s(p, i) for p, i in zip(singles, items, strict=True)))
        together.append(infer_s(mixture, mixed))
    a, t, n = statistics.median(apart), statistics.median(together), len(examples)
    return {"layout": "hard (input first)", "m": m, "m_singles_infer_ex_s": round(n / a, 1),
            "mixture_infer_ex_s": round(n / t, 1), "infer_ratio": round(t / a, 3),
            "threads": torch.get_num_threads(), "rounds": rounds, "examples": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--m", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--examples", type=int, default=128)
    ap.add_argument("--layout", nargs="+", choices=["soft", "hard"], default=["soft", "hard"])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.manual_seed(0)
    loaded = load_model("smollm2-135m")
    examples = sentences(args.examples)
    rows = [measure(loaded, m, args.rounds, examples, layout) for layout in args.layout for m in args.m]
    for row in rows:
        print(json.dumps(row))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
