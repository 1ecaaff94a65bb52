"""Generation speed: cuetune's decoding against PEFT's `generate()`, same adapter, same prompts.

A soft prompt (P = 20) on smollm2-135m, exported to PEFT with cuetune's PEFT export so both
sides hold the same tensors. Both decode greedily from the same token ids (left padded, batch
16), up to `--max-new` tokens or the end token. Printed: generated tokens/s per side, the
ratio, and how many inputs got identical token ids, split into rows PEFT's batch left-padded
and rows it did not. Unpadded rows must agree (the same model, soft prompt included); PEFT
drops position ids in `generate()` for prompt tuning, so its left-padded rows run at shifted
positions and can differ. cuetune's batched output equals its one-by-one output (tested).

PEFT 0.21 with transformers >= 5.24 breaks cached decoding for prompt tuning: transformers renamed
the forward's `past_key_values` argument to `cache`, PEFT still looks for the old name, sees no
cache, and prepends the virtual tokens again at every step, so only the first new token is right.
The report counts such steps (`peft_reinjected_steps`, from a hook on the base model); while it is
not 0, the speed ratio is against a wrong peer. `--peft-no-cache` runs PEFT with
`use_cache=False`, which is correct but recomputes every prefix: an agreement check, not a race.

Inputs: E2E meaning representations from ../shared/data/e2e, else the packaged demo facts.

    python benchmarks/generate_vs_peft.py                 # 64 inputs, 32 new tokens
    python benchmarks/generate_vs_peft.py --n 16 --max-new 8 --out gen.json
    python benchmarks/generate_vs_peft.py --n 16 --max-new 8 --peft-no-cache   # agreement only
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import torch

import cuetune
from cuetune.config import GenerateConfig
from cuetune.data.examples import Example
from cuetune.data.readers import read_rows
from cuetune.engine.generation import generate_ids
from cuetune.engine.pipeline import build
from cuetune.families.pretrained import load_model

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "e2e" / "testset_w_refs.csv"
TEMPLATE = "{soft:20} Facts: {text}\nSentence: {answer}"


def inputs(n: int) -> tuple[list[str], str]:
    if SHARED.is_file():
        with open(SHARED, encoding="utf-8", newline="") as f:
            mrs = list(dict.fromkeys(r["mr"] for r in csv.DictReader(f)))
        return mrs[:n], "E2E test meaning representations"
    demo = Path(cuetune.__file__).parent / "resources" / "data2text" / "test.jsonl"
    return [r["text"] for _, r in read_rows(demo)][:n], "packaged demo facts"


def peft_generate(model, tok, prompts: list[list[int]], max_new: int, batch: int,
                  use_cache: bool = True) -> list[list[int]]:
    out = []
    for start in range(0, len(prompts), batch):
        rows = prompts[start:start + batch]
        width = max(len(r) for r in rows)
        ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        with torch.inference_mode():
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new,
                                 do_sample=False, use_cache=use_cache, pad_token_id=tok.pad_token_id,
                                 eos_token_id=tok.eos_token_id)
        for row in gen[:, width:].tolist():
            cut = row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
            out.append(row[:cut])
    return out


def count_reinjections(model) -> list[int]:
    """Hook PEFT's base model: a forward that carries a filled cache yet feeds more than one
    position is a decode step that prepended the virtual tokens again. Returns a live counter."""
    count = [0]

    def pre(_module, args, kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        embeds = kwargs.get("inputs_embeds")
        if cache is not None and cache.get_seq_length() > 0 and embeds is not None and embeds.shape[1] > 1:
            count[0] += 1

    model.get_base_model().model.register_forward_pre_hook(pre, with_kwargs=True)
    return count


def main() -> None:
    from peft import get_peft_model, set_peft_model_state_dict

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--max-new", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--peft-no-cache", action="store_true",
                        help="run PEFT's generate with use_cache=False (correct, slow): agreement check")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    texts, source = inputs(args.n)
    cfg = cuetune.config.validate({"model": {"name": args.model}, "data": {"task": "generation"},
                                   "prompt": {"template": TEMPLATE}, "method": {"name": "soft"}})
    pipe = build(cfg, [], load_model(args.model))
    items = pipe.encoder.encode([Example(t) for t in texts], with_target=False)
    gen_cfg = GenerateConfig(max_new_tokens=args.max_new, batch_size=args.batch)
    warm = gen_cfg.model_copy(update={"max_new_tokens": 2})
    generate_ids(pipe.model, pipe.loaded.tokenizer, items[:2], warm)  # warm-up
    start = time.perf_counter()
    ours = generate_ids(pipe.model, pipe.loaded.tokenizer, items, gen_cfg)
    ours_s = time.perf_counter() - start

    peft_config, tensors = pipe.method.peft_export()
    peft_config.inference_mode = True
    model = get_peft_model(load_model(args.model).model, peft_config)
    set_peft_model_state_dict(model, tensors)
    model.eval()
    reinjected = count_reinjections(model)
    use_cache = not args.peft_no_cache
    prompts = [[t for t, s in zip(e.input_ids, e.soft_index, strict=True) if s < 0] for e in items]
    tok = pipe.loaded.tokenizer
    peft_generate(model, tok, prompts[:2], 2, args.batch, use_cache)  # warm-up
    reinjected[0] = 0
    start = time.perf_counter()
    theirs = peft_generate(model, tok, prompts, args.max_new, args.batch, use_cache)
    theirs_s = time.perf_counter() - start

    ours_tok, theirs_tok = sum(map(len, ours)), sum(map(len, theirs))
    same = sum(a == b for a, b in zip(ours, theirs, strict=True))
    # which rows PEFT's generate saw left-padded (shorter than the longest in their batch)
    padded = [len(p) < max(map(len, prompts[i - i % args.batch:i - i % args.batch + args.batch]))
              for i, p in enumerate(prompts)]
    by_pad = {flag: [a == b for a, b, f in zip(ours, theirs, padded, strict=True) if f == flag]
              for flag in (False, True)}
    report = {"inputs": len(texts), "source": source, "max_new_tokens": args.max_new, "batch": args.batch,
              "threads": torch.get_num_threads(),
              "cuetune": {"seconds": round(ours_s, 2), "tokens": ours_tok,
                          "tokens_per_s": round(ours_tok / ours_s, 1)},
              "peft": {"seconds": round(theirs_s, 2), "tokens": theirs_tok,
                       "tokens_per_s": round(theirs_tok / theirs_s, 1)},
              "peft_use_cache": use_cache,
              "peft_reinjected_steps": reinjected[0],
              "ratio_tokens_per_s": round((ours_tok / ours_s) / (theirs_tok / theirs_s), 2),
              "identical_outputs": f"{same}/{len(texts)}",
              "identical_unpadded_rows": f"{sum(by_pad[False])}/{len(by_pad[False])}",
              "identical_left_padded_rows": f"{sum(by_pad[True])}/{len(by_pad[True])}",
              "sample": {"cuetune": tok.decode(ours[0]), "peft": tok.decode(theirs[0])}}
    print(json.dumps(report, indent=1, ensure_ascii=False))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
