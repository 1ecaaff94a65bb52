"""The HTTP request bodies (OpenAI's shapes where OpenAI has one) and turning them into jobs.

Unknown fields are refused (422 naming the field) rather than ignored, so a client never
believes a setting took effect when it did not; OpenAI fields this server does not implement
(n > 1, logprobs, echo, best_of) are refused with the reason.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from cuetune.data.examples import Example, check_text
from cuetune.engine.generation import Stops
from cuetune.errors import DataError
from cuetune.serve.decoding import GenRow
from cuetune.serve.scheduler import Job


class Refused(Exception):
    """A request the server answers with an OpenAI error body."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 kind: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.status}}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Decoding(Strict):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    stream: bool = False
    user: str | None = None
    """Accepted and ignored, as OpenAI only logs it."""


class CompletionRequest(Decoding):
    prompt: str | list[str]
    logprobs: int | None = None
    echo: bool = False
    best_of: int | None = None


class Message(Strict):
    role: Literal["system", "user", "assistant", "developer"]
    content: str
    name: str | None = None


class ChatRequest(Decoding):
    messages: list[Message] = Field(min_length=1)


class ClassifyRequest(Strict):
    model: str
    input: str | list[str]
    input_pair: str | list[str] | None = None


class AdapterRequest(Strict):
    path: str
    """A run folder under the server's --adapter-root."""
    name: str | None = None


def refuse_invalid_text(body: BaseModel) -> None:
    """Refuse (400, naming the field) any text of a request that holds a lone surrogate: valid
    JSON (`"\\udcff"`), but no Unicode character, which no tokenizer takes and no UTF-8 response
    can echo. Checked before anything reads the request, the adapter's name included."""

    def walk(value, where: str) -> None:
        if isinstance(value, str):
            try:
                check_text(value, where)
            except DataError as exc:
                raise Refused(400, str(exc), where) from None
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, f"{where}[{i}]")
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{where}.{key}" if where else key)

    walk(body.model_dump(), "")


def refuse_unsupported(req: Decoding) -> None:
    if req.n != 1:
        raise Refused(400, "n: this server writes one completion per prompt; send n=1", "n")
    for name in ("logprobs", "best_of"):
        if getattr(req, name, None) not in (None, 1):
            raise Refused(400, f"{name}: not supported by this server; leave it out", name)
    if getattr(req, "echo", False):
        raise Refused(400, "echo: not supported by this server; leave it out", "echo")


def as_list(value: str | list[str], param: str, limit: int) -> list[str]:
    texts = [value] if isinstance(value, str) else list(value)
    if not texts:
        raise Refused(400, f"{param}: give at least one text", param)
    if len(texts) > limit:
        raise Refused(400, f"{param}: {len(texts)} texts; at most {limit} per request", param)
    return texts


def encode_inputs(adapter, texts: list[str], pairs: list[str] | None, param: str, generation: bool):
    """Encoded prompts; an input the run would have to cut is refused with the limit."""
    if pairs is not None and len(pairs) != len(texts):
        raise Refused(400, f"input_pair: {len(pairs)} texts for {len(texts)} inputs", "input_pair")
    if pairs is not None and not adapter.pipe.encoder.template.has("text_pair"):
        raise Refused(400, f"input_pair: adapter {adapter.name!r} reads one text; leave it out",
                      "input_pair")
    examples = [Example(t, p, where=f"{param}[{i}]")
                for i, (t, p) in enumerate(zip(texts, pairs or [None] * len(texts), strict=True))]
    items = adapter.pipe.encoder.encode(examples, "inputs", with_target=False) if generation else \
        adapter.pipe.encoder.encode(examples, "inputs")
    for i, item in enumerate(items):
        if item.truncated:
            raise Refused(400, f"{param}[{i}]: longer than adapter {adapter.name!r} takes "
                               f"({adapter.max_input_tokens} tokens with its prompt, data.max_length); "
                               "shorten the text", param)
    return items


def generate_jobs(adapter, req: Decoding, texts: list[str], max_tokens: int) -> list[Job]:
    """One generation job per prompt, decoding as the run's `generate` settings say, changed
    by the request's fields (temperature 0 is greedy)."""
    refuse_unsupported(req)
    if adapter.task != "generation":
        raise Refused(400, f"model: adapter {adapter.name!r} classifies; use /v1/classify", "model")
    base = adapter.tuned.config.generate
    update: dict = {}
    if req.max_tokens is not None:
        if req.max_tokens > max_tokens:
            raise Refused(400, f"max_tokens: {req.max_tokens} is over this server's limit of "
                               f"{max_tokens}", "max_tokens")
        update["max_new_tokens"] = req.max_tokens
    elif base.max_new_tokens > max_tokens:
        update["max_new_tokens"] = max_tokens
    if req.temperature is not None:
        update.update({"strategy": "greedy"} if req.temperature == 0 else
                      {"strategy": "sample", "temperature": req.temperature})
    if req.top_p is not None:
        update["top_p"] = req.top_p
    if req.seed is not None:
        update["seed"] = req.seed
    if req.stop:
        update["stop"] = list(base.stop) + ([req.stop] if isinstance(req.stop, str) else list(req.stop))
    if req.stream and len(texts) > 1:
        raise Refused(400, "stream: a streamed request takes one prompt; send a list without "
                           "stream, or one request per prompt", "stream")
    cfg = base.model_copy(update=update)
    loaded = adapter.pipe.loaded
    items = encode_inputs(adapter, texts, None, "prompt", generation=True)
    return [Job("generate", adapter, item, GenRow(adapter.pipe, item, cfg,
                                                  Stops(loaded.tokenizer, cfg.stop, loaded.family)))
            for item in items]


def chat_text(adapter, req: ChatRequest) -> str:
    """The user message a chat-template run answers: the last one; its trained prompt takes the
    place of the system prompt, so a conversation with earlier turns is refused."""
    if not adapter.chat:
        raise Refused(400, f"model: adapter {adapter.name!r} was trained without a chat template "
                           "(prompt.chat); use /v1/completions", "model")
    users = [m for m in req.messages if m.role == "user"]
    if len(users) != 1 or any(m.role == "assistant" for m in req.messages):
        raise Refused(400, "messages: this adapter answers one user message with its trained "
                           "prompt; send exactly one user message and no assistant turns", "messages")
    return users[0].content
