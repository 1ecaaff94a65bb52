"""cuetune against PEFT on the same model, data and hyperparameters, in one process run.

For soft prompts (P = 20 and P = 100), prefix tuning and LoRA on smollm2-135m, both sides start
from the same adapter (cuetune's initial state, loaded into PEFT through cuetune's PEFT
export), train the same number of AdamW steps at the same learning rate and schedule, and
evaluate the same dev set. Printed per setting: train examples/s, eval examples/s, peak RSS,
dev accuracy, FLOPs per training example, achieved FLOP/s against this machine's measured fp32
matmul peak, and the cuetune/PEFT ratios.

PEFT side, as its users write it: a shuffled batch order padded to the longest row, the PEFT
model's forward (full-vocabulary logits at every position), cross-entropy over the label words'
logits at the answer position. cuetune side: `cuetune.training.fit` and `predict_probs`, the
code `cuetune train` runs.

Data: SST-2 from ../shared/data/sst2 (training sentences sampled from train.tsv, dev = the 872
labelled GLUE dev sentences in test.tsv); without it, the packaged demo sentiment data.

    python benchmarks/perf_vs_peft.py --quick            # < 2 minutes
    python benchmarks/perf_vs_peft.py --out perf.json    # the numbers in docs/PERFORMANCE.md
    python benchmarks/perf_vs_peft.py --device cuda --dtype bfloat16 --random-model  # gpu_check.sh

On CUDA, memory is the device's peak allocation (not RSS) and the peak is the dtype's matmul
rate. `--random-model` builds a model at smollm2-135m's shapes with random weights and a
word-level tokenizer (for a machine without the model package): speed ratios hold, accuracy
means nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import ctypes
import gc
import json
import os
import random
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import cuetune
from cuetune.data.examples import Example
from cuetune.data.readers import read_rows
from cuetune.engine.batching import BatchOrder
from cuetune.engine.fit import MetricsLog, fit
from cuetune.engine.inference import predict_probs
from cuetune.engine.pipeline import build
from cuetune.families.pretrained import load_model
from cuetune.prompt.batch import collate

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "sst2"
LABELS = ["negative", "positive"]
FLOP_BATCHES = 4
SOFT = "prompt.template={{soft:{}}} Review: {{text}} Sentiment: {{answer}}"
SETTINGS = {
    "soft-P20": ["method.name=soft", SOFT.format(20)],
    "soft-P100": ["method.name=soft", SOFT.format(100)],
    "prefix-P20": ["method.name=prefix", "method.num_tokens=20",
                   "prompt.template=Review: {text} Sentiment: {answer}"],
    "lora-r8": ["method.name=lora", "method.r=8", "prompt.template=Review: {text} Sentiment: {answer}"],
}


class PeakRSS:
    """Samples this process's resident memory every 2 ms; `.peak_mb` after the block."""

    def __enter__(self):
        self.peak_mb, self._stop = _rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.002):
            self.peak_mb = max(self.peak_mb, _rss_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, _rss_mb())


def _release_memory() -> None:
    """Free what the last side left, and hand it back to the OS, so peaks are comparable."""
    gc.collect()
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def matmul_peak_gflops(size: int = 1024, seconds: float = 2.0) -> float:
    device, dtype = DEVICE["device"], getattr(torch, DEVICE["dtype"])
    size = size if device == "cpu" else 8192
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    a @ b
    _sync()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
        if device != "cpu" and n % 10 == 0:
            _sync()
    _sync()
    return 2 * size**3 * n / (time.perf_counter() - start) / 1e9


def _sync() -> None:
    if DEVICE["device"] != "cpu":
        torch.cuda.synchronize()


def random_smollm2(folder: Path) -> str:
    """A Llama at smollm2-135m's shapes, random weights, and a word-level tokenizer of the
    same vocabulary size (the words of the data, then fillers), saved to `folder`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    train, dev, _ = load_data(640, 872, seed=0)
    words = ["<|endoftext|>", "<|im_start|>", "[UNK]", "{", "}", ":"]
    for e in train + dev:
        words += e.text.split()
    words += ["Review:", "Sentiment:", "negative", "positive"]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    vocab.update({f"w{i}": i for i in range(len(vocab), 49152)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", unk_token="[UNK]")
    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                         tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=100000.0,
                         bos_token_id=1, eos_token_id=0, pad_token_id=0)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return str(folder)


def load_data(n_train: int, n_dev: int, seed: int) -> tuple[list[Example], list[Example], str]:
    if (SHARED / "train.tsv").exists():
        def rows(name):
            with open(SHARED / name, encoding="utf-8", newline="") as f:
                return [Example(r["sentence"].strip(), None, int(r["label"]))
                        for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
        train = random.Random(seed).sample(rows("train.tsv"), n_train)
        return train, rows("test.tsv")[:n_dev], "SST-2 (../shared/data/sst2)"
    pkg = Path(cuetune.__file__).parent / "resources" / "sentiment"
    def demo(name):
        return [Example(r["text"], None, LABELS.index(r["label"])) for _, r in read_rows(pkg / name)]
    train = demo("train.jsonl")
    return (train * (n_train // len(train) + 1))[:n_train], demo("test.jsonl")[:n_dev], "packaged demo"


DEVICE = {"device": "cpu", "dtype": "float32"}
"""Set from --device/--dtype in main()."""


def _config(setting: str, steps: int, lr: float | None, out: Path):
    over = SETTINGS[setting] + [f"model.device={DEVICE['device']}", f"model.dtype={DEVICE['dtype']}",
                                "train.batch_size=16", f"train.max_steps={steps}",
                                "train.warmup_ratio=0", "train.patience=null",
                                "train.checkpoint_every=null", "train.progress=false",
                                "train.zero_shot_baseline=false", f"output_dir={out}"]
    over += [f"train.lr={lr}"] if lr else []
    return cuetune.load_config(None, over)


def run_cuetune(cfg, loaded, train, dev) -> tuple[dict, tuple]:
    """Train and evaluate with cuetune; return the numbers and the PEFT copy of the start state."""
    pipe = build(cfg, LABELS, loaded)
    peft_config, tensors = pipe.method.peft_export()  # the start state, before training
    start_state = (peft_config, {k: v.detach().clone() for k, v in tensors.items()})
    train_items, dev_items = pipe.encoder.encode(train), pipe.encoder.encode(dev)
    pad = loaded.tokenizer.pad_token_id
    # FLOPs per example over the first batches the trainer will form (length-grouped or not)
    lengths = [len(e.input_ids) for e in train_items] if cfg.train.group_by_length else None
    order = BatchOrder(len(train_items), 16, cfg.train.seed, lengths=lengths)
    batches = [[train_items[i] for i in order.next()] for _ in range(FLOP_BATCHES)]
    flops = sum(_count_flops(lambda b=b: _cuetune_step(pipe, b, pad)) for b in batches)
    flops /= sum(len(b) for b in batches)
    start_rss = _rss_mb()
    _reset_peak()
    with PeakRSS() as mem:
        log = MetricsLog(Path(tempfile.mkdtemp()) / "metrics.jsonl")
        result = fit(pipe, train_items, [], cfg.train, log)
        log.close()
        rows = result.log
        train_s = rows[-1]["elapsed_s"] - rows[0]["elapsed_s"]  # step 1 (warm-up) left out
        start = time.perf_counter()
        probs = predict_probs(pipe.model, dev_items, pad, cfg.train.eval_batch_size)
        _sync()
        eval_s = time.perf_counter() - start
    _device_peak(mem)
    acc = (probs.argmax(-1) == torch.tensor([e.label for e in dev_items])).float().mean().item()
    return {"train_ex_s": (len(rows) - 1) * cfg.train.batch_size / train_s,
            "eval_ex_s": len(dev_items) / eval_s, "peak_rss_mb": mem.peak_mb,
            "rss_growth_mb": mem.peak_mb - start_rss, "dev_accuracy": acc,
            "gflop_per_example": flops / 1e9, "final_loss": rows[-1]["loss"]}, {
        "start": start_state, "items": train_items, "dev_items": dev_items,
        "verbalizer": pipe.verbalizer, "token_ids": pipe.model.token_ids.clone(), "pad": pad}


def _reset_peak() -> None:
    if DEVICE["device"] != "cpu":
        torch.cuda.reset_peak_memory_stats()


def _device_peak(mem) -> None:
    """On CUDA the memory that matters is the device's: its peak allocation replaces RSS."""
    if DEVICE["device"] != "cpu":
        mem.peak_mb = torch.cuda.max_memory_allocated() / 2**20


def _cuetune_step(pipe, items, pad):
    batch = {k: v.to(pipe.model.device) for k, v in collate(items, pad).items()}
    F.cross_entropy(pipe.model(batch), batch["labels"]).backward()
    for p in pipe.method.trainable_parameters():
        p.grad = None


def _count_flops(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


class PeftSide:
    """PEFT as its users drive it, on the same token ids cuetune trains on."""

    def __init__(self, ctx: dict, model, train_cfg):
        from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

        peft_config, tensors = ctx["start"]
        peft_config.inference_mode = False
        self.model = get_peft_model(model, peft_config)
        set_peft_model_state_dict(self.model, tensors)
        loaded = get_peft_model_state_dict(self.model)
        assert all(torch.equal(loaded[k], v) for k, v in tensors.items()), "start states differ"
        self.verbalizer, self.token_ids, self.pad = ctx["verbalizer"], ctx["token_ids"], ctx["pad"]
        self.cfg = train_cfg
        self.items = [self._strip(e) for e in ctx["items"]]
        self.dev_items = [self._strip(e) for e in ctx["dev_items"]]

    @staticmethod
    def _strip(e):
        """PEFT puts its virtual tokens itself: drop cuetune's soft placeholders (they lead)."""
        keep = [i for i, s in enumerate(e.soft_index) if s < 0]
        dropped = len(e.input_ids) - len(keep)
        return {"ids": [e.input_ids[i] for i in keep], "answer": e.answer_pos - dropped, "label": e.label}

    def _batch(self, rows):
        width = max(len(r["ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r["ids"])], mask[i, :len(r["ids"])] = torch.tensor(r["ids"]), 1
        answer, labels = torch.tensor([r["answer"] for r in rows]), torch.tensor([r["label"] for r in rows])
        tensors = ids, mask, answer, labels
        return tuple(t.to(DEVICE["device"]) for t in tensors)

    def scores(self, ids, mask, answer):
        logits = self.model(input_ids=ids, attention_mask=mask).logits  # [B, P? + T, V]
        answer = answer + (logits.size(1) - ids.size(1))  # virtual tokens lead the output
        token_logits = logits[torch.arange(ids.size(0), device=ids.device), answer][:, self.token_ids]
        return self.verbalizer.label_logits(token_logits.float())

    def step(self, rows, optimizer=None, scheduler=None, params=()):
        ids, mask, answer, labels = self._batch(rows)
        loss = F.cross_entropy(self.scores(ids, mask, answer), labels)
        loss.backward()
        if optimizer is not None:
            torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        return loss.item()

    def run(self, steps: int, lr: float) -> dict:
        from transformers import get_scheduler

        params = [p for p in self.model.parameters() if p.requires_grad]
        order = BatchOrder(len(self.items), 16, self.cfg.seed)
        batches = [[self.items[i] for i in order.next()] for _ in range(FLOP_BATCHES)]
        flops = sum(_count_flops(lambda b=b: self.step(b)) for b in batches)
        flops /= sum(len(b) for b in batches)
        for p in params:
            p.grad = None
        start_rss = _rss_mb()
        _reset_peak()
        with PeakRSS() as mem:
            optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=self.cfg.weight_decay)
            scheduler = get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=steps)
            order = BatchOrder(len(self.items), 16, self.cfg.seed)  # shuffled, as a DataLoader
            self.model.train()
            times = []
            for _ in range(steps):
                rows = [self.items[i] for i in order.next()]
                times.append(time.perf_counter())
                loss = self.step(rows, optimizer, scheduler, params)
            times.append(time.perf_counter())
            self.model.eval()
            start, correct = time.perf_counter(), 0
            with torch.no_grad():
                for i in range(0, len(self.dev_items), self.cfg.eval_batch_size):
                    rows = self.dev_items[i:i + self.cfg.eval_batch_size]
                    ids, mask, answer, labels = self._batch(rows)
                    correct += (self.scores(ids, mask, answer).argmax(-1) == labels).sum().item()
            eval_s = time.perf_counter() - start
        _device_peak(mem)
        return {"train_ex_s": (steps - 1) * 16 / (times[-1] - times[1]),
                "eval_ex_s": len(self.dev_items) / eval_s, "peak_rss_mb": mem.peak_mb,
                "rss_growth_mb": mem.peak_mb - start_rss,
                "dev_accuracy": correct / len(self.dev_items), "gflop_per_example": flops / 1e9,
                "final_loss": loss}


def compare(setting: str, steps: int, train, dev, model_name: str, peak: float) -> dict:
    out = Path(tempfile.mkdtemp())
    cfg = _config(setting, steps, None, out)
    lr = cfg.train.lr or cuetune.methods.get_method(cfg.method.name).default_lr
    cfg = _config(setting, steps, lr, out)
    _release_memory()
    ours, ctx = run_cuetune(cfg, load_model(model_name, **DEVICE), train, dev)
    _release_memory()  # cuetune's model is gone; PEFT gets a fresh base (LoRA injects into it)
    side = PeftSide(ctx, load_model(model_name, **DEVICE).model, cfg.train)
    theirs = side.run(steps, lr)
    del side, ctx
    _release_memory()
    row = {"setting": setting, "steps": steps, "lr": lr, "cuetune": ours, "peft": theirs}
    for r in (ours, theirs):
        r["achieved_gflop_s"] = r["gflop_per_example"] * r["train_ex_s"]
        r["of_peak"] = r["achieved_gflop_s"] / peak
    row["ratios"] = {k: ours[k] / theirs[k] for k in ("train_ex_s", "eval_ex_s", "peak_rss_mb")}
    row["ratios"]["dev_accuracy_points"] = 100 * (ours["dev_accuracy"] - theirs["dev_accuracy"])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few steps, small dev set: < 2 min")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--train", type=int, default=640)
    parser.add_argument("--dev", type=int, default=872)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", help="the base model's dtype (bfloat16 on CUDA)")
    parser.add_argument("--random-model", action="store_true",
                        help="a random model at smollm2-135m's shapes (no model package needed)")
    args = parser.parse_args()
    DEVICE.update(device=args.device, dtype=args.dtype)
    if args.random_model:
        args.model = random_smollm2(Path(tempfile.mkdtemp()) / "random-smollm2")
    if args.quick:
        args.steps, args.train, args.dev = 4, 64, 64
    torch.manual_seed(0)
    start = time.perf_counter()
    load_model(args.model, **DEVICE)  # converted once before; this is the load every run pays
    load_s = time.perf_counter() - start
    _release_memory()
    peak = matmul_peak_gflops()
    train, dev, source = load_data(args.train, args.dev, seed=0)
    print(f"data: {source}; {len(train)} train, {len(dev)} dev; {args.dtype} matmul peak {peak:.0f} GFLOP/s "
          f"on {args.device}; "
          f"{torch.get_num_threads()} threads; model load {load_s:.1f} s", flush=True)
    rows = []
    for setting in args.settings.split(","):
        rows.append(compare(setting, args.steps, train, dev, args.model, peak))
        print(json.dumps(rows[-1]), flush=True)
    report = {"data": source, "matmul_peak_gflop_s": peak, "threads": torch.get_num_threads(),
              "model_load_s": load_s,
              "device": args.device, "dtype": args.dtype, "random_model": args.random_model, "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    print(table(report))


def table(report: dict) -> str:
    lines = ["| setting | side | train ex/s | eval ex/s | peak RSS MB | dev acc | GFLOP/ex | % of peak |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        for side in ("cuetune", "peft"):
            s = r[side]
            lines.append(f"| {r['setting']} | {side} | {s['train_ex_s']:.1f} | {s['eval_ex_s']:.1f} | "
                         f"{s['peak_rss_mb']:.0f} | {s['dev_accuracy']:.3f} | {s['gflop_per_example']:.2f} | "
                         f"{100 * s['of_peak']:.0f}% |")
        q = r["ratios"]
        lines.append(f"| {r['setting']} | **ratio** | **{q['train_ex_s']:.2f}x** | "
                     f"**{q['eval_ex_s']:.2f}x** | {q['peak_rss_mb']:.2f}x | "
                     f"{q['dev_accuracy_points']:+.1f} pt | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
