"""The PEFT baselines of benchmarks/serve_load.py: the same HTTP shape as `cuetune serve`
(`/v1/classify`, `/v1/completions`, `/health`) over a PEFT model holding LoRA adapters.

    python benchmarks/peft_server.py --mode switch|mixed --port P NAME=RUN_DIR ...

- `switch`: how PEFT users serve several adapters: one request at a time, `set_adapter` to its
  adapter before each forward or `generate`.
- `mixed`: PEFT's own mixed-adapter batches for LoRA (`adapter_names=[...]` per row): the worker
  takes every waiting request (up to 32; 5 ms to gather when idle, as cuetune's server does) and
  runs them in one forward, or one `generate` call (a static batch: rows that arrive meanwhile
  wait for it to finish; PEFT has no continuous batching).

The runs are cuetune LoRA runs, exported to PEFT folders (`cuetune export`); token ids come from
each run's own encoder, so both servers read the same prompts. Classification reads the label
words' logits at the last position (`logits_to_keep=1`, so PEFT is not charged for
full-vocabulary logits at every position).
"""

from __future__ import annotations

import argparse
import asyncio
import queue
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from peft import PeftModel

import cuetune
from cuetune.data.examples import Example
from cuetune.prompt.batch import collate
from cuetune.runs.peft import export_peft


def load(specs: list[str]):
    """Runs -> (peft model, {name: tuned run}); every run must be LoRA on one base."""
    runs = {}
    base = None
    for spec in specs:
        name, path = spec.split("=", 1)
        runs[name] = cuetune.load(path, base=base)
        base = runs[name].pipe.loaded
    tmp = Path(tempfile.mkdtemp(prefix="peft-serve-"))
    model = None
    for name, tuned in runs.items():
        folder = export_peft(tuned.run_dir, tmp / name)
        if model is None:
            model = PeftModel.from_pretrained(base.model, str(folder), adapter_name=name)
        else:
            model.load_adapter(str(folder), adapter_name=name)
    model.eval()
    return model, runs


class Worker:
    def __init__(self, model, runs, mode: str):
        self.model, self.runs, self.mode = model, runs, mode
        self.tok = next(iter(runs.values())).pipe.loaded.tokenizer
        self.jobs: queue.Queue = queue.Queue()
        threading.Thread(target=self.loop, daemon=True).start()

    def submit(self, kind: str, name: str, item, cfg=None) -> Future:
        future: Future = Future()
        self.jobs.put((kind, name, item, cfg, future))
        return future

    def loop(self):
        while True:
            batch = [self.jobs.get()]
            if self.mode == "mixed":
                deadline = time.perf_counter() + 0.005
                while len(batch) < 32:
                    try:
                        batch.append(self.jobs.get(timeout=max(0.0, deadline - time.perf_counter())))
                    except queue.Empty:
                        break
            groups = [batch] if self.mode == "mixed" else [[job] for job in batch]
            for kind in ("classify", "generate"):
                for group in groups:
                    rows = [j for j in group if j[0] == kind]
                    if rows:
                        try:
                            with torch.inference_mode():
                                results = getattr(self, kind)(rows)
                            for job, result in zip(rows, results, strict=True):
                                job[4].set_result(result)
                        except Exception as exc:  # reported to the client as a 500
                            for job in rows:
                                job[4].set_exception(exc)

    def _inputs(self, rows):
        batch = collate([j[2] for j in rows], self.tok.pad_token_id, "left")
        names = [j[1] for j in rows]
        if self.mode == "switch":
            self.model.set_adapter(names[0])
            return batch, {}
        return batch, {"adapter_names": names}

    def classify(self, rows):
        batch, extra = self._inputs(rows)
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         logits_to_keep=1, **extra)
        last = out.logits[:, -1].float()  # [B, V]
        results = []
        for row, (_, name, *_rest) in zip(last, rows, strict=True):
            pipe = self.runs[name].pipe
            results.append(pipe.verbalizer.label_logits(row[pipe.model.token_ids][None])[0].softmax(-1))
        return results

    def generate(self, rows):
        batch, extra = self._inputs(rows)
        cfg = rows[0][3]
        out = self.model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                  max_new_tokens=cfg.max_new_tokens, do_sample=False,
                                  pad_token_id=self.tok.pad_token_id, stop_strings=cfg.stop or None,
                                  tokenizer=self.tok, **extra)
        new = out[:, batch["input_ids"].size(1):]
        results = []
        for seq in new.tolist():
            seq = [t for t in seq if t != self.tok.pad_token_id]
            results.append((self.tok.decode(seq, skip_special_tokens=True), len(seq)))
        return results


def app_for(worker: Worker) -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.post("/v1/classify")
    async def classify(body: dict):
        tuned = worker.runs[body["model"]]
        item = tuned.pipe.encoder.encode([Example(body["input"])], "inputs")[0]
        probs = await asyncio.wrap_future(worker.submit("classify", body["model"], item))
        labels = tuned.labels
        return {"data": [{"index": 0, "label": labels[int(probs.argmax())],
                          "probs": dict(zip(labels, probs.tolist(), strict=True))}]}

    @app.post("/v1/completions")
    async def completions(body: dict):
        tuned = worker.runs[body["model"]]
        item = tuned.pipe.encoder.encode([Example(body["prompt"])], "inputs", with_target=False)[0]
        cfg = tuned.config.generate
        if body.get("max_tokens"):
            cfg = cfg.model_copy(update={"max_new_tokens": body["max_tokens"]})
        try:
            text, n = await asyncio.wrap_future(worker.submit("generate", body["model"], item, cfg))
        except Exception as exc:
            return JSONResponse({"error": {"message": str(exc)}}, 500)
        return {"id": "peft", "object": "text_completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
                "usage": {"prompt_tokens": len(item.input_ids), "completion_tokens": n,
                          "total_tokens": len(item.input_ids) + n}}

    return app


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["switch", "mixed"], required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("runs", nargs="+")
    args = ap.parse_args()
    model, runs = load(args.runs)
    print(f"peft server ({args.mode}): {len(runs)} adapters on port {args.port}", flush=True)
    uvicorn.run(app_for(Worker(model, runs, args.mode)), host="127.0.0.1", port=args.port,
                log_level="warning")


if __name__ == "__main__":
    main()
