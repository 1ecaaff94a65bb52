"""One training step of cuetune and PEFT from the same start state: loss and gradient agreement.

Separates "the two compute different things" from "the same computation drifts apart over many
Adam steps". docs/PERFORMANCE.md uses it to explain the P=100 accuracy gap.

    python benchmarks/first_step_vs_peft.py --setting soft-P100
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import perf_vs_peft as bench
import torch.nn.functional as F

from cuetune.engine.batching import BatchOrder
from cuetune.engine.pipeline import build
from cuetune.families.pretrained import load_model
from cuetune.prompt.batch import collate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", default="soft-P100", choices=list(bench.SETTINGS))
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()
    train, _, source = bench.load_data(640, 1, seed=0)
    cfg = bench._config(args.setting, 1, None, Path(tempfile.mkdtemp()))
    loaded = load_model(args.model)
    pipe = build(cfg, bench.LABELS, loaded)
    peft_config, tensors = pipe.method.peft_export()
    start = (peft_config, {k: v.detach().clone() for k, v in tensors.items()})
    items = pipe.encoder.encode(train)
    rows = [items[i] for i in BatchOrder(len(items), 16, cfg.train.seed).next()]
    pipe.model.train()
    batch = collate(rows, loaded.tokenizer.pad_token_id)
    ours = F.cross_entropy(pipe.model(batch), batch["labels"])
    ours.backward()
    ours_grads = [p.grad for p in pipe.method.trainable_parameters()]
    ctx = {"start": start, "items": rows, "dev_items": [], "verbalizer": pipe.verbalizer,
           "token_ids": pipe.model.token_ids.clone(), "pad": loaded.tokenizer.pad_token_id}
    side = bench.PeftSide(ctx, load_model(args.model).model, cfg.train)
    side.model.train()
    theirs = side.step(side.items)
    their_grads = [p.grad for p in side.model.parameters() if p.requires_grad]
    print(f"{args.setting} on {source}: loss cuetune {ours.item():.7f}, PEFT {theirs:.7f}, "
          f"|diff| {abs(ours.item() - theirs):.1e}")
    if len(ours_grads) == len(their_grads):
        pairs = zip(ours_grads, their_grads, strict=True)
        diff = max((a.reshape(b.shape) - b).abs().max().item() for a, b in pairs)
        print(f"max |grad diff| over {len(ours_grads)} tensors: {diff:.1e}")
    else:  # LoRA: PEFT and cuetune order their tensors differently; compare the norms
        print(f"grad norms: cuetune {sum(g.norm() ** 2 for g in ours_grads) ** 0.5:.6f}, "
              f"PEFT {sum(g.norm() ** 2 for g in their_grads) ** 0.5:.6f}")


if __name__ == "__main__":
    main()
