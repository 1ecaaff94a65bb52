"""Server-sent events for `stream: true` (OpenAI's chunk format, ending with `data: [DONE]`).

The worker appends a row's tokens as it decodes; the handler reads them every few
milliseconds and sends the new text. What it sends is always a prefix of the final text (the
text `cuetune generate` would print): it holds back a tail that could still change, i.e. an
unfinished stop string, trailing white space (the final text is stripped), and an incomplete
UTF-8 character.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from cuetune.serve.decoding import GenRow

POLL_S = 0.02


def settled(row: GenRow) -> str:
    """The part of the text so far that the final text is sure to begin with: the finished
    text of the tokens so far (`Stops.finish`: cut at a stop string, stripped), less a tail
    that could be the start of a stop string or half a UTF-8 character."""
    text = row.stops.finish(row.tokens)
    hold = max((n for stop in row.stops.strings for n in range(1, len(stop))
                if text.endswith(stop[:n])), default=0)
    text = text[:len(text) - hold].rstrip()
    return text[:-1] if text.endswith("\ufffd") else text


def chunk(kind: str, ident: str, model: str, delta: str, finish: str | None) -> str:
    if kind == "chat.completion.chunk":
        choice = {"index": 0, "delta": {"content": delta} if delta else {}, "finish_reason": finish,
                  "logprobs": None}
    else:
        choice = {"index": 0, "text": delta, "finish_reason": finish, "logprobs": None}
    body = {"id": ident, "object": kind, "created": int(time.time()), "model": model, "choices": [choice]}
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


async def events(request, job, future, kind: str):
    """The SSE body for one generation job; a client that leaves cancels it."""
    ident = f"cmpl-{uuid.uuid4().hex[:24]}"
    model = job.adapter.name
    if kind == "chat.completion.chunk":
        first = {"id": ident, "object": kind, "created": int(time.time()), "model": model,
                 "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                              "finish_reason": None, "logprobs": None}]}
        yield f"data: {json.dumps(first)}\n\n"
    sent = ""
    wrapped = asyncio.wrap_future(future)
    while not wrapped.done():
        await asyncio.wait({wrapped}, timeout=POLL_S)
        if await request.is_disconnected():
            future.cancel()
            return
        text = settled(job.row)
        if len(text) > len(sent) and text.startswith(sent):
            yield chunk(kind, ident, model, text[len(sent):], None)
            sent = text
    if wrapped.exception() is not None:
        error = {"error": {"message": str(wrapped.exception()), "type": "server_error", "param": None,
                           "code": 500}}
        yield f"data: {json.dumps(error)}\n\n"
        return
    row = wrapped.result()
    final = row.text()
    rest = final[len(sent):] if final.startswith(sent) else final
    yield chunk(kind, ident, model, rest, row.finish_reason)
    yield "data: [DONE]\n\n"
