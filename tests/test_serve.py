"""`cuetune serve` over HTTP: adapters of several methods and tasks on one base, answers equal to
each run loaded alone, the `openai` client unchanged, and every refusal in OpenAI's error body
while the server keeps serving."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import httpx
import pytest
import torch
import uvicorn
from conftest import copy_rows, toy_config, write_jsonl
from fastapi.testclient import TestClient

import cuetune
from cuetune.data.examples import Example
from cuetune.errors import ArtifactError
from cuetune.serve.app import Limits, build_server

TEXTS = ["the movie was great", "the food was awful and dull", "a very poor day", "lovely phone",
         "the phone was broken and the day was quite dull", "fine"]


@pytest.fixture(scope="module")
def runs(tiny_dirs, toy_data, tmp_path_factory):
    """Three classification runs (soft, prefix, LoRA), two generation runs, one full run."""
    root = tmp_path_factory.mktemp("serve")
    model = tiny_dirs["causal"]
    for name, method, lr in (("soft", {"name": "soft"}, 0.1), ("prefix", {"name": "prefix"}, 0.01),
                             ("lora", {"name": "lora", "r": 4}, 0.02), ("full", {"name": "full"}, 1e-3)):
        raw = toy_config(model, toy_data, root / "runs" / name, method=method)
        raw["train"].update(lr=lr, max_steps=6)
        cuetune.train(raw)
    gen = {"train": write_jsonl(root / "gen.jsonl", copy_rows(24, 1))}
    for name, method in (("gen-soft", {"name": "soft"}), ("gen-lora", {"name": "lora", "r": 4})):
        template = ("{soft:4} " if name == "gen-soft" else "") + "review : {text} answer : {answer}"
        raw = toy_config(model, toy_data, root / "runs" / name, method=method, prompt={"template": template})
        raw["data"] = {"task": "generation", "train": str(gen["train"]), "dev": str(gen["train"])}
        raw["generate"] = {"max_new_tokens": 5}
        raw["train"].update(lr=0.05, max_steps=6, zero_shot_baseline=False)
        cuetune.train(raw)
    return root / "runs"


class Live:
    """A server on 127.0.0.1 on a free port (uvicorn in a thread), and an httpx client for it."""

    def __init__(self, app):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)

    def client(self, **headers) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def close(self):
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def live(runs):
    names = ["soft", "prefix", "lora", "gen-soft", "gen-lora"]
    app, registry = build_server([str(runs / n) for n in names], adapter_root=str(runs),
                                 api_key="sekret", limits=Limits(max_tokens=16, max_body_bytes=4000))
    server = Live(app)
    yield server, registry
    server.close()


@pytest.fixture
def server(live):
    server, registry = live
    with server.client(Authorization="Bearer sekret") as client:
        yield client, registry


def test_models_lists_every_adapter(server):
    client, _ = server
    data = client.get("/v1/models").json()["data"]
    assert {m["id"]: m["task"] for m in data} == {
        "soft": "classification", "prefix": "classification", "lora": "classification",
        "gen-soft": "generation", "gen-lora": "generation"}


def test_classify_equals_each_run_alone_under_concurrent_mixed_traffic(server, runs):
    client, _ = server
    names = ["soft", "prefix", "lora"]
    alone = {n: cuetune.load(runs / n).predict(TEXTS) for n in names}

    def ask(i):
        name = names[i % 3]
        text = TEXTS[i % len(TEXTS)]
        r = client.post("/v1/classify", json={"model": name, "input": text})
        return name, text, r

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(36)))
    for name, text, r in answers:
        assert r.status_code == 200, r.text
        got = r.json()["data"][0]
        want = alone[name][TEXTS.index(text)]
        assert got["label"] == want["label"]
        for lab, p in want["probs"].items():
            assert abs(got["probs"][lab] - p) < 1e-5
    metrics = client.get("/metrics").text
    assert 'cuetune_requests_total{adapter="lora",endpoint="/v1/classify",status="200"} 12.0' in metrics
    mixed = [line for line in metrics.splitlines()
             if line.startswith('cuetune_batch_adapters_bucket{kind="classify",le="1.0"}')
             or line.startswith('cuetune_batch_adapters_count{kind="classify"}')]
    one, total = (float(line.split()[-1]) for line in mixed)
    assert total > one  # some forwards held rows of several adapters


def test_openai_client_gets_each_runs_greedy_text(server, runs):
    openai = pytest.importorskip("openai")
    client, _ = server
    oa = openai.OpenAI(base_url=str(client.base_url).rstrip("/") + "/v1", api_key="sekret", max_retries=0)
    for name in ("gen-soft", "gen-lora"):
        want = cuetune.load(runs / name).generate(TEXTS[:3])
        got = oa.completions.create(model=name, prompt=TEXTS[:3], max_tokens=5, temperature=0)
        assert [c.text for c in got.choices] == want
        assert got.usage.completion_tokens > 0
    with pytest.raises(openai.NotFoundError):
        oa.completions.create(model="nope", prompt="x")


def test_streamed_pieces_join_into_the_same_text(server, runs, monkeypatch):
    openai = pytest.importorskip("openai")
    from cuetune.serve.decoding import Decoding

    slow_step = Decoding.step

    def step(self):  # 40 ms a token, so the text arrives in several pieces
        time.sleep(0.04)
        slow_step(self)

    monkeypatch.setattr(Decoding, "step", step)
    client, _ = server
    oa = openai.OpenAI(base_url=str(client.base_url).rstrip("/") + "/v1", api_key="sekret", max_retries=0)
    for name in ("gen-soft", "gen-lora"):
        texts = cuetune.load(runs / name).generate(TEXTS)
        text, want = max(zip(TEXTS, texts, strict=True), key=lambda p: len(p[1]))
        assert want
        pieces = [c.choices[0].text for c in oa.completions.create(
            model=name, prompt=text, max_tokens=5, temperature=0, stream=True)]
        assert "".join(pieces) == want and len([p for p in pieces if p]) >= 2


def _error(r, status: int, param=None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    if param is not None:
        assert err["param"] == param
    return err


def test_refusals_use_openai_error_bodies_and_serving_goes_on(server):
    client, _ = server
    _error(client.post("/v1/classify", json={"model": "nope", "input": "x"}), 404, "model")
    as_json = {"content-type": "application/json"}
    _error(client.post("/v1/classify", content=b"{not json", headers=as_json), 400)
    _error(client.post("/v1/classify", json={"model": "soft", "input": 3}), 422, "input.str")
    _error(client.post("/v1/classify", json={"model": "soft", "input": "x", "temperature": 1}), 422,
           "temperature")
    _error(client.post("/v1/classify", json={"model": "gen-soft", "input": "x"}), 400, "model")
    _error(client.post("/v1/completions", json={"model": "soft", "prompt": "x"}), 400, "model")
    _error(client.post("/v1/completions", json={"model": "gen-soft", "prompt": "x", "max_tokens": 17}),
           400, "max_tokens")
    _error(client.post("/v1/completions", json={"model": "gen-soft", "prompt": "x", "n": 2}), 400, "n")
    _error(client.post("/v1/completions", json={"model": "gen-soft", "prompt": ["x", "y"], "stream": True}),
           400, "stream")
    long = " ".join(["good"] * 300)
    assert "max_length" in _error(client.post("/v1/classify", json={"model": "soft", "input": long}),
                                  400, "input")["message"]
    _error(client.post("/v1/classify", json={"model": "soft", "input": "x" * 5000}), 413)
    chunks = iter([b'{"model": "soft", "input": "', b"x" * 5000, b'"}'])  # no content-length
    _error(client.post("/v1/classify", content=chunks, headers=as_json), 413)
    _error(client.get("/v1/nothing"), 404)
    assert _error(client.put("/v1/completions", json={}), 405)["message"].endswith("use POST")
    _error(client.post("/v1/classify", content=b"\xdc\xff\x00garbage", headers=as_json), 400)
    # valid JSON, yet no Unicode character: a lone surrogate anywhere is a 400 naming the field
    bad = b'{"model": "soft", "input": ["fine", "\\udcff"]}'
    refused = _error(client.post("/v1/classify", content=bad, headers=as_json), 400, "input[1]")
    assert "U+DCFF" in refused["message"]
    bad = b'{"model": "gen-soft", "prompt": "\\ud800 and more"}'
    _error(client.post("/v1/completions", content=bad, headers=as_json), 400, "prompt")
    bad = b'{"model": "s\\udcfft", "input": "x"}'
    _error(client.post("/v1/classify", content=bad, headers=as_json), 400, "model")
    bad = b'{"model": "gen-soft", "messages": [{"role": "user", "content": "\\udfff"}]}'
    _error(client.post("/v1/chat/completions", content=bad, headers=as_json), 400, "messages[0].content")
    wrong_key = {"Authorization": "Bearer no"}
    r = client.post("/v1/classify", json={"model": "soft", "input": "x"}, headers=wrong_key)
    assert _error(r, 401)["type"] == "authentication_error"
    assert client.get("/health").json()["status"] == "ok"
    assert client.post("/v1/classify", json={"model": "soft", "input": "fine"}).status_code == 200


def test_a_full_queue_answers_429_with_retry_after(runs):
    app, _ = build_server([str(runs / "soft")], max_queue=0)
    with TestClient(app) as client:
        r = client.post("/v1/classify", json={"model": "soft", "input": "fine"})
        assert _error(r, 429)["type"] == "rate_limit_error"
        assert r.headers["retry-after"] == "1"


def test_adapters_load_under_the_root_only_and_unload(server, runs):
    client, registry = server
    _error(client.post("/v1/adapters", json={"path": "../elsewhere"}), 403, "path")
    err = _error(client.post("/v1/adapters", json={"path": "full", "name": "full"}), 400, "path")
    assert "copy of every model weight" in err["message"]
    assert "full" not in registry.names()
    (runs / "broken").mkdir(exist_ok=True)
    _error(client.post("/v1/adapters", json={"path": "broken"}), 400, "path")
    r = client.post("/v1/adapters", json={"path": "lora", "name": "lora-2"})
    assert r.status_code == 201, r.text
    assert client.post("/v1/classify", json={"model": "lora-2", "input": "fine"}).status_code == 200
    assert client.delete("/v1/adapters/lora-2").json()["deleted"] is True
    _error(client.post("/v1/classify", json={"model": "lora-2", "input": "fine"}), 404, "model")
    _error(client.delete("/v1/adapters/lora-2"), 404)


def test_unloading_needs_the_adapter_root(runs):
    app, registry = build_server([str(runs / "soft")])
    with TestClient(app) as client:
        _error(client.delete("/v1/adapters/soft"), 403, "name")
    assert registry.names() == ["soft"]


def test_full_weight_runs_are_refused_at_start(runs):
    with pytest.raises(ArtifactError, match="copy of every model weight"):
        build_server([str(runs / "full")])


def test_a_cancelled_generation_leaves_the_running_batch(runs):
    from cuetune.serve.adapters import Registry
    from cuetune.serve.requests import CompletionRequest, generate_jobs
    from cuetune.serve.scheduler import Scheduler

    registry = Registry()
    adapter = registry.add(runs / "gen-soft")
    sched = Scheduler(registry, wait_ms=0)  # driven by hand here, not started
    body = CompletionRequest(model="gen-soft", prompt="x", max_tokens=16, temperature=0)
    jobs = generate_jobs(adapter, body, ["the movie was great", "a very poor day"], 16)
    for job in jobs:
        job.row.stops.ended = lambda tokens: False  # never stops early: only cancel can end it
    sched.waiting_gen = list(jobs)
    with torch.inference_mode():
        sched._generate()
        assert len(sched.decoding) == 2
        jobs[0].future.cancel()
        sched._generate()
    assert len(sched.decoding) == 1 and sched.decoding.rows[0] is jobs[1].row
    assert not jobs[1].future.done()


def test_stop_drains_queued_and_running_jobs_even_of_an_unloaded_adapter(runs):
    from cuetune.serve.adapters import Registry
    from cuetune.serve.requests import CompletionRequest, generate_jobs
    from cuetune.serve.scheduler import Job, Scheduler

    registry = Registry()
    gen, cls = registry.add(runs / "gen-lora"), registry.add(runs / "soft")
    sched = Scheduler(registry, wait_ms=50).start()
    body = CompletionRequest(model="gen-lora", prompt="x", max_tokens=8, temperature=0)
    jobs = generate_jobs(gen, body, TEXTS, 8)
    items = cls.pipe.encoder.encode([Example(t) for t in TEXTS], "inputs")
    jobs += [Job("classify", cls, item) for item in items]
    futures = sched.submit(jobs)
    registry.remove(cls.name)  # unloaded with rows queued: they still finish
    sched.stop()  # returns once every job is answered
    assert all(f.done() and f.exception() is None for f in futures)


@pytest.mark.slow  # a real server process
def test_cli_server_answers_then_drains_on_sigterm(runs):
    """A real `cuetune serve` process under SIGTERM with requests arriving: each gets a whole
    answer or is turned away at the connection (uvicorn closes connections whose request it
    has not read yet), never an error; the process ends cleanly. That queued and running jobs
    are finished is `test_stop_drains_queued_and_running_jobs_even_of_an_unloaded_adapter`."""
    import signal
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "cuetune", "serve", f"clf={runs / 'lora'}",
                             str(runs / "gen-soft"), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            pytest.fail(f"the server did not start: {proc.stdout.read() if proc.poll() is not None else ''}")

        def ask(i):
            body = {"model": "gen-soft", "prompt": TEXTS[i % len(TEXTS)], "max_tokens": 16}
            try:
                return httpx.post(f"{url}/v1/completions", json=body, timeout=60).status_code
            except httpx.ConnectError:
                return "refused"  # came after SIGTERM: not accepted, which is right
            except httpx.RemoteProtocolError:
                return "closed"  # connected, but its request was not yet read: uvicorn closes it
            except httpx.ReadError:
                # the same close when the request's bytes had already arrived: a socket closed
                # with unread data is reset (ECONNRESET), not shut; seen under load on 2 cores
                return "closed"

        with ThreadPoolExecutor(12) as pool:
            pending = [pool.submit(ask, i) for i in range(48)]
            # SIGTERM once the first answer is out (on a loaded machine 0.2 s was not always
            # enough for one request to connect), with the rest still arriving
            wait(pending, timeout=60, return_when=FIRST_COMPLETED)
            proc.send_signal(signal.SIGTERM)
            answers = [p.result() for p in pending]
        assert set(answers) <= {200, "refused", "closed"}, answers  # never a 5xx or a half answer
        assert 200 in answers
        # uvicorn re-raises the signal once drained, so the parent sees a SIGTERM exit
        assert proc.wait(60) in (0, -signal.SIGTERM)
        assert "Traceback" not in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("kind,prompt", [("masked", {}),
                                         ("causal", {"multi_token": "chain",
                                                     "verbalizer": {"negative": ["awful bad"],
                                                                    "positive": ["great good"]}})])
def test_runs_that_cannot_mix_are_served_apart_and_equal(kind, prompt, tiny_dirs, toy_data, tmp_path):
    """Encoder models and chain-rule scoring run through the run's own path, still batched."""
    raw = toy_config(tiny_dirs[kind], toy_data, tmp_path / "run", prompt=prompt)
    raw["train"].update(max_steps=3)
    cuetune.train(raw)
    app, registry = build_server([f"apart={tmp_path / 'run'}"])
    assert not registry.get("apart").mixable
    want = cuetune.load(tmp_path / "run").predict(TEXTS)
    with TestClient(app) as client:
        got = client.post("/v1/classify", json={"model": "apart", "input": TEXTS}).json()["data"]
    for g, w in zip(got, want, strict=True):
        assert g["label"] == w["label"]
        assert all(abs(g["probs"][k] - v) < 1e-5 for k, v in w["probs"].items())


def test_a_client_that_leaves_cancels_its_generation(live, monkeypatch):
    from cuetune.serve.decoding import Decoding

    server, registry = live
    slow_step = Decoding.step

    def step(self):  # 50 ms a token: 16 tokens outlast the client's 0.3 s
        time.sleep(0.05)
        slow_step(self)

    monkeypatch.setattr(Decoding, "step", step)
    monkeypatch.setattr(registry.get("gen-soft").tuned.config.generate, "stop", ["never-written"])
    with server.client(Authorization="Bearer sekret") as client:
        before = _cancelled(client)
        body = {"model": "gen-soft", "prompt": "the movie was great", "max_tokens": 16}
        with pytest.raises(httpx.ReadTimeout):
            client.post("/v1/completions", json=body, timeout=0.3)
        deadline = time.time() + 5
        while _cancelled(client) == before and time.time() < deadline:
            time.sleep(0.05)
        assert _cancelled(client) == before + 1


def _cancelled(client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('cuetune_cancelled_total{adapter="gen-soft"}'):
            return float(line.split()[-1])
    return 0.0


def test_a_fault_in_the_model_fails_its_requests_and_serving_goes_on(server, monkeypatch):
    import cuetune.serve.scheduler as scheduler

    client, _ = server

    def broken(*args, **kwargs):
        raise RuntimeError("simulated kernel failure")

    monkeypatch.setattr(scheduler, "mixed_probs", broken)
    err = _error(client.post("/v1/classify", json={"model": "soft", "input": "fine"}), 500)
    assert err["type"] == "server_error" and "simulated kernel failure" in err["message"]
    monkeypatch.undo()
    assert client.post("/v1/classify", json={"model": "soft", "input": "fine"}).status_code == 200


def test_beam_rows_run_apart_batched_per_adapter_and_equal_alone(runs):
    from cuetune.serve.adapters import Registry
    from cuetune.serve.requests import CompletionRequest, generate_jobs
    from cuetune.serve.scheduler import Scheduler

    registry = Registry()
    adapter = registry.add(runs / "gen-lora")
    sched = Scheduler(registry, wait_ms=0)  # driven by hand
    jobs = generate_jobs(adapter, CompletionRequest(model="gen-lora", prompt="x"), TEXTS[:3], 16)
    beam = adapter.tuned.config.generate.model_copy(update={"strategy": "beam", "num_beams": 3})
    for job in jobs:
        job.row.cfg = beam
    sched.waiting_gen = list(jobs)
    with torch.inference_mode():
        sched._generate()
    want = cuetune.load(runs / "gen-lora").generate(TEXTS[:3], strategy="beam", num_beams=3)
    assert [j.future.result().text() for j in jobs] == want
