"""Open-loop load against `cuetune serve` and the PEFT baselines, loopback only.

    python benchmarks/serve_load.py --out bench-out/serve            # the docs/PERFORMANCE.md table
    python benchmarks/serve_load.py --quick --out bench-out/serve-q  # a few minutes
    python benchmarks/serve_load.py --out bench-out/serve --table    # the table from the JSON

Adapters (trained once into OUT/runs, a few steps each: speed does not depend on quality), on
smollm2-135m: 4 classification runs on the packaged sentiment data (soft, prefix, p-tuning,
LoRA) and 4 generation runs on the packaged data-to-text data (same methods); for the PEFT
comparison 8 LoRA runs (the two LoRA runs and 3 more seeds of each), since PEFT cannot put
prompt-learning and LoRA adapters in one model.

Load: Poisson arrivals at increasing rates, `--duration` seconds each, adapter and input drawn
at random; classification through `/v1/classify` (httpx), generation through the `openai`
client (`max_retries=0`, temperature 0, `max_tokens` 40, the runs stop at a line break). A rate
is sustained when nothing failed, p99 latency is under 1 s (classification) or 10 s
(generation), and latency does not grow during the step (the median of the last third of
arrivals within 1.5x the first third's + 0.2 s, judged once a third holds 10 requests): an
open loop the server cannot keep up with shows as a queue that keeps growing. Each server's
peak is the highest achieved rate of any step (answers from the first arrival to the last
answer).
The ladder stops at the first rate that is not sustained. Servers (each its own process, 2 torch threads):

- `mixed`: `cuetune serve` with the 8 mixed-method adapters, traffic spread over them;
- `single`: the same server, the same traffic sent to one adapter (the soft runs);
- `one-per-batch`: `cuetune serve --one-adapter-per-batch`, traffic spread;
- `lora-mixed`: `cuetune serve` with the 8 LoRA adapters, spread;
- `peft-switch`, `peft-mixed`: benchmarks/peft_server.py with the same 8 LoRA adapters.

Then, on the `mixed` server: memory (RSS with 8 adapters minus RSS with 1, against the
adapter files), 1,000 hostile requests mixed into good load (no 5xx, every good answer equal
to the answer the same request gets alone), and an overload burst against `--max-queue 16`
(429s with Retry-After, no errors).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from importlib.resources import files
from pathlib import Path

import httpx
import openai
import yaml

import cuetune
from cuetune.config import validate
from cuetune.data.readers import read_rows
from cuetune.runs.config_file import resolve_paths

ROOT = Path(__file__).resolve().parent
METHODS = {"soft": {"name": "soft"}, "prefix": {"name": "prefix", "num_tokens": 10},
           "ptuning": {"name": "ptuning"}, "lora": {"name": "lora", "r": 8}}
HARD = {"cls": "Review: {text} Sentiment: {answer}", "gen": "Facts: {text}\nSentence: {answer}"}


def train_runs(out: Path) -> dict[str, Path]:
    """name -> run folder; trains what is missing."""
    runs = {}
    for task, packaged in (("cls", "default.yaml"), ("gen", "data2text.yaml")):
        base = yaml.safe_load(files("cuetune.resources").joinpath(packaged).read_text())
        plan = [(m, METHODS[m]) for m in METHODS]
        plan += [(f"lora{s}", {**METHODS["lora"], "seed": s}) for s in (1, 2, 3)]
        for name, method in plan:
            raw = json.loads(json.dumps(base))
            raw["method"] = method
            raw["prompt"]["template"] = HARD[task]
            raw["data"].pop("test", None)
            raw["train"] = {"batch_size": 8, "max_steps": 4, "eval_every": 4, "patience": None,
                            "zero_shot_baseline": False, "progress": False}
            raw["output_dir"] = str(out / f"{task}-{name}")
            if not (out / f"{task}-{name}" / "cuetune.json").exists():
                cuetune.train(resolve_paths(validate(raw, f"{task}-{name}"), None))
            runs[f"{task}-{name}"] = out / f"{task}-{name}"
    return runs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


THREADS = "1"
"""Server torch threads. On 2 cores the load generator needs one: a 2-thread server beside it
spins on OpenMP barriers while a thread waits for the core (10x slower, measured)."""


class Server:
    def __init__(self, argv: list[str]):
        self.port = free_port()
        env = {**os.environ, "OMP_NUM_THREADS": THREADS}
        self.proc = subprocess.Popen(argv + ["--port", str(self.port)], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.url = f"http://127.0.0.1:{self.port}"
        for _ in range(1200):
            if self.proc.poll() is not None:
                raise RuntimeError(f"server died: {self.proc.stdout.read()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.25)
        raise RuntimeError("server did not start")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def close(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def ours(runs: dict, names: list[str], *flags) -> Server:
    return Server([sys.executable, "-m", "cuetune", "serve", *[f"{n}={runs[n]}" for n in names], *flags])


def peft(runs: dict, names: list[str], mode: str) -> Server:
    return Server([sys.executable, str(ROOT / "peft_server.py"), "--mode", mode,
                   *[f"{n}={runs[n]}" for n in names]])


async def request(client, oa, kind: str, name: str, text: str) -> dict:
    start = time.perf_counter()
    try:
        if kind == "cls":
            r = await client.post("/v1/classify", json={"model": name, "input": text})
            status, body = r.status_code, r.json()
            result = body["data"][0]["probs"] if status == 200 else None
            tokens = 0
        else:
            c = await oa.completions.create(model=name, prompt=text, max_tokens=40, temperature=0)
            status, result, tokens = 200, c.choices[0].text, c.usage.completion_tokens
    except openai.APIStatusError as exc:
        status, result, tokens = exc.status_code, None, 0
    except (httpx.HTTPError, openai.APIConnectionError) as exc:
        status, result, tokens = f"transport: {type(exc).__name__}", None, 0
    end = time.perf_counter()
    return {"kind": kind, "name": name, "text": text, "status": status, "result": result,
            "tokens": tokens, "latency": end - start, "end": end}


def clients(url: str):
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    client = httpx.AsyncClient(base_url=url, timeout=120, limits=limits)
    oa = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120,
                            http_client=httpx.AsyncClient(timeout=120, limits=limits))
    return client, oa


async def open_loop(url: str, kind: str, names: list[str], texts: list[str], rate: float,
                    duration: float, seed: int) -> list[dict]:
    rng = random.Random(seed)
    client, oa = clients(url)
    tasks, t, start = [], 0.0, time.perf_counter()
    while True:
        t += rng.expovariate(rate)
        if t > duration:
            break
        await asyncio.sleep(max(0.0, start + t - time.perf_counter()))
        tasks.append(asyncio.create_task(request(client, oa, kind, rng.choice(names), rng.choice(texts))))
    out = await asyncio.gather(*tasks)
    await client.aclose()
    return start, out


def summary(start: float, rows: list[dict], rate: float) -> dict:
    """Achieved rates count from the first arrival to the last answer; an open loop the
    server cannot keep up with shows as growing latency (p99), which is the criterion."""
    ok = [r for r in rows if r["status"] == 200]
    lat = sorted(r["latency"] for r in ok) or [float("inf")]
    span = max((r["end"] for r in rows), default=start + 1) - start
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    by_send = [r["latency"] for r in sorted(ok, key=lambda r: r["end"] - r["latency"])]
    third = max(1, len(by_send) // 3)
    first, last = sorted(by_send[:third]), sorted(by_send[-third:])
    growing = third >= 10 and last[len(last) // 2] > 1.5 * first[len(first) // 2] + 0.2
    return {"offered": rate, "sent": len(rows), "achieved": round(len(ok) / span, 2), "growing": growing,
            "failed": len(rows) - len(ok), "p50": round(lat[len(lat) // 2], 3), "p99": round(p99, 3),
            "tokens_per_s": round(sum(r["tokens"] for r in ok) / span, 1)}


def ladder(url: str, kind: str, names: list[str], texts: list[str], rates: list[float],
           duration: float) -> dict:
    bound = 1.0 if kind == "cls" else 10.0
    steps, best = [], None
    for i, rate in enumerate(rates):
        s = summary(*asyncio.run(open_loop(url, kind, names, texts, rate, duration, i)), rate)
        steps.append(s)
        print(f"    {kind} {rate:>6} req/s -> {s}", flush=True)
        if s["failed"] or s["p99"] > bound or s["growing"]:
            break
        best = s
    peak = max(steps, key=lambda s: s["achieved"])
    return {"sustained": best, "peak_rate": peak["achieved"], "peak_tokens_per_s": peak["tokens_per_s"],
            "steps": steps}


def inputs() -> dict[str, list[str]]:
    pkg = files("cuetune.resources")
    return {"cls": [r["text"] for _, r in read_rows(str(pkg / "sentiment/test.jsonl"), "auto", {})],
            "gen": [r["text"] for _, r in read_rows(str(pkg / "data2text/test.jsonl"), "auto", {})]}


def hostile(url: str, names: dict[str, list[str]]) -> list[tuple[str, str, dict]]:
    """A cycle of bad requests: (method, path, httpx keyword arguments)."""
    cls, gen = names["cls"][0], names["gen"][0]
    j = {"content-type": "application/json"}
    user = {"role": "user", "content": "x"}
    return [
        ("POST", "/v1/classify", {"content": b"{not json", "headers": j}),
        ("POST", "/v1/classify", {"content": os.urandom(64), "headers": j}),
        ("POST", "/v1/classify", {"json": {"model": "no-such-adapter", "input": "x"}}),
        ("POST", "/v1/classify", {"json": {"model": cls, "input": 42}}),
        ("POST", "/v1/classify", {"json": {"model": cls, "input": "x", "surprise": 1}}),
        ("POST", "/v1/classify", {"json": {"model": cls, "input": []}}),
        ("POST", "/v1/classify", {"json": {"model": gen, "input": "x"}}),
        ("POST", "/v1/classify", {"json": {"model": cls, "input": "great " * 3000}}),
        ("POST", "/v1/classify", {"json": {"model": cls, "input": "x" * (2 << 20)}}),
        ("POST", "/v1/completions", {"json": {"model": cls, "prompt": "x"}}),
        ("POST", "/v1/completions", {"json": {"model": gen, "prompt": "x", "max_tokens": 100000}}),
        ("POST", "/v1/completions", {"json": {"model": gen, "prompt": "x", "max_tokens": -1}}),
        ("POST", "/v1/completions", {"json": {"model": gen, "prompt": "x", "n": 3}}),
        ("POST", "/v1/completions", {"json": {"model": gen, "prompt": ["x", "y"], "stream": True}}),
        ("POST", "/v1/chat/completions", {"json": {"model": gen, "messages": [user]}}),
        ("POST", "/v1/chat/completions", {"json": {"model": gen, "messages": "hello"}}),
        ("POST", "/v1/adapters", {"json": {"path": "../../etc"}}),
        ("DELETE", f"/v1/adapters/{cls}", {}),
        ("GET", "/v1/nothing-here", {}),
        ("PUT", "/v1/completions", {"json": {}}),
    ]


async def hostile_phase(url: str, names: dict, texts: dict, duration: float, count: int) -> dict:
    client, oa = clients(url)
    bad = hostile(url, names)
    rng = random.Random(7)
    good_tasks, bad_tasks = [], []

    async def send_bad(i):
        method, path, kwargs = bad[i % len(bad)]
        try:
            return (await client.request(method, path, **kwargs)).status_code
        except httpx.HTTPError as exc:
            return f"transport: {type(exc).__name__}"

    start = time.perf_counter()
    for i in range(count):
        await asyncio.sleep(max(0.0, start + i * duration / count - time.perf_counter()))
        bad_tasks.append(asyncio.create_task(send_bad(i)))
        if i % 10 == 0:
            kind = "cls" if i % 20 == 0 else "gen"
            good_tasks.append(asyncio.create_task(request(
                client, oa, kind, rng.choice(names[kind]), rng.choice(texts[kind][:8]))))
    bad_status = await asyncio.gather(*bad_tasks)
    good = await asyncio.gather(*good_tasks)
    alone = {}
    for r in good:  # the same request again, with nothing else in flight
        key = (r["kind"], r["name"], r["text"])
        if key not in alone:
            alone[key] = await request(client, oa, *key)
    same = 0
    for r in good:
        ref = alone[(r["kind"], r["name"], r["text"])]["result"]
        if r["kind"] == "cls" and r["result"] and ref:
            same += all(abs(r["result"][k] - ref[k]) < 1e-5 for k in ref)
        else:
            same += r["result"] is not None and r["result"] == ref
    healthy = (await client.get("/health")).status_code == 200
    await client.aclose()
    codes: dict = {}
    for s in bad_status:
        codes[str(s)] = codes.get(str(s), 0) + 1
    return {"hostile": count, "hostile_status": codes,
            "hostile_5xx_or_transport": sum(v for k, v in codes.items() if not k.startswith(("4",))),
            "good": len(good), "good_ok": sum(r["status"] == 200 for r in good),
            "good_equal_to_alone": same, "healthy_after": healthy}


async def overload(url: str, name: str, text: str, n: int) -> dict:
    client, _ = clients(url)
    replies = await asyncio.gather(*(client.post("/v1/classify", json={"model": name, "input": text})
                                     for _ in range(n)), return_exceptions=True)
    await client.aclose()
    codes: dict = {}
    retry = 0
    for r in replies:
        code = f"transport: {type(r).__name__}" if isinstance(r, Exception) else str(r.status_code)
        codes[code] = codes.get(code, 0) + 1
        retry += not isinstance(r, Exception) and r.status_code == 429 and "retry-after" in r.headers
    return {"burst": n, "status": codes, "429_with_retry_after": retry}


def table(results: dict) -> str:
    """The docs/PERFORMANCE.md table from serve_load.json."""
    lines = ["| server | traffic | classify: sustained req/s (p50 / p99 s) | classify: peak req/s | "
             "generate: sustained req/s (p50 / p99 s) | generate: tokens/s there | generate: peak tokens/s |",
             "|---|---|---:|---:|---:|---:|---:|"]
    four = "8 adapters, 4 methods"
    traffic = {"mixed": four, "single": "1 adapter (soft)", "one-per-batch": four, "lora-mixed": "8 LoRA",
               "peft-switch": "8 LoRA", "peft-mixed": "8 LoRA"}
    for name, label in traffic.items():
        if name not in results:
            continue
        row = [name, label]
        for kind in ("cls", "gen"):
            r = results[name][kind]
            s = r["sustained"]
            row.append(f"{s['offered']} ({s['p50']} / {s['p99']})" if s else "-")
            if kind == "gen":
                row.append(f"{s['tokens_per_s']}" if s else "-")
                row.append(f"{max(x['tokens_per_s'] for x in r['steps'])}")
            else:
                row.append(f"{max(x['achieved'] for x in r['steps'])}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench-out/serve"))
    ap.add_argument("--quick", action="store_true", help="short steps, fewer rates, no PEFT")
    ap.add_argument("--duration", type=float, default=None, help="seconds per rate (default 15; quick 5)")
    ap.add_argument("--only", nargs="*", help="servers to run (default: all), and 'faults'")
    ap.add_argument("--threads", default="1", help="torch threads per server process")
    ap.add_argument("--table", action="store_true", help="print OUT/serve_load.json as a table")
    args = ap.parse_args()
    if args.table:
        print(table(json.loads((args.out / "serve_load.json").read_text())))
        return
    global THREADS
    THREADS = args.threads
    duration = args.duration or (5.0 if args.quick else 15.0)
    args.out.mkdir(parents=True, exist_ok=True)
    runs = train_runs(args.out / "runs")
    texts = inputs()
    mixed = {t: [f"{t}-{m}" for m in METHODS] for t in ("cls", "gen")}
    lora = {t: [f"{t}-lora"] + [f"{t}-lora{s}" for s in (1, 2, 3)] for t in ("cls", "gen")}
    rates = {"cls": [2, 4, 6, 8, 10, 12, 16, 20, 24, 32, 48], "gen": [0.5, 1, 2, 3, 4, 5, 6, 8]}
    every, loras = mixed["cls"] + mixed["gen"], lora["cls"] + lora["gen"]
    servers = {
        "mixed": (lambda: ours(runs, every), mixed),
        "single": (lambda: ours(runs, every), {"cls": ["cls-soft"], "gen": ["gen-soft"]}),
        "one-per-batch": (lambda: ours(runs, every, "--one-adapter-per-batch"), mixed),
        "lora-mixed": (lambda: ours(runs, loras), lora),
        "peft-switch": (lambda: peft(runs, loras, "switch"), lora),
        "peft-mixed": (lambda: peft(runs, loras, "mixed"), lora),
    }
    chosen = args.only or (["mixed", "single", "one-per-batch"] if args.quick else list(servers))
    path = args.out / "serve_load.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for name in chosen:
        start, traffic = servers[name]
        print(f"== {name}", flush=True)
        server = start()
        try:
            results[name] = {kind: ladder(server.url, kind, traffic[kind], texts[kind],
                                          rates[kind][:4] if args.quick else rates[kind], duration)
                             for kind in ("cls", "gen")}
        finally:
            server.close()
        path.write_text(json.dumps(results, indent=1))
    if not args.only or "faults" in args.only:
        results["faults"] = faults(runs, mixed, texts, duration)
        path.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


def faults(runs: dict, mixed: dict, texts: dict, duration: float) -> dict:
    one = ours(runs, ["cls-soft"])
    try:
        for _ in range(3):
            httpx.post(f"{one.url}/v1/classify", json={"model": "cls-soft", "input": texts["cls"][0]})
        rss_one = one.rss_mb()
    finally:
        one.close()
    server = ours(runs, mixed["cls"] + mixed["gen"])
    try:
        for name in mixed["cls"]:
            httpx.post(f"{server.url}/v1/classify", json={"model": name, "input": texts["cls"][0]})
        rss_all = server.rss_mb()
        others = [n for n in mixed["cls"] + mixed["gen"] if n != "cls-soft"]
        size = sum((runs[n] / "adapter.safetensors").stat().st_size for n in others)
        out = {"rss_1_adapter_mb": round(rss_one, 1), "rss_8_adapters_mb": round(rss_all, 1),
               "other_7_adapter_files_mb": round(size / 2**20, 3)}
        out.update(asyncio.run(hostile_phase(server.url, mixed, texts, max(duration, 10.0), 1000)))
    finally:
        server.close()
    small = ours(runs, mixed["cls"], "--max-queue", "16")
    try:
        out["overload"] = asyncio.run(overload(small.url, mixed["cls"][0], texts["cls"][0], 300))
    finally:
        small.close()
    return out


if __name__ == "__main__":
    main()
