"""OpenAI's response bodies from the policy's choices: whole, or streamed as Server-Sent Events (`stream: true`).

    choices, prompt_tokens = await ingress.sample(...)                  # PolicyModel.generate's choices
    return completion_body(req, choices, prompt_tokens)                  # or chat_body(...)
    events = await ingress.sample_stream(...)                            # PolicyModel.generate_stream's events
    return sse_response(incremental_chunks(req, events, n_choices))      # stream: true
    return sse_response(completion_chunks(req, choices, prompt_tokens))  # stream: true with logprobs (or chat_chunks)

What streaming is here: **incremental**. `PolicyModel.generate_stream` batches concurrent streams (`@serve.batch`
on an async generator) into one pass of the shared sampler, whose per-step callback hands each step's new text
(`deployments.TextStream`: a partial UTF-8 character or a possible stop-sequence prefix is held back) to the
ingress, which sends it at once: the first text leaves after the prefill and about one decode step. The final
event carries the whole choices (finish reasons, usage) and the held-back rest, so the streamed pieces join to
exactly the non-streamed text for the same seed. A stream that asks for `logprobs` is the exception: log-probs come
from a forward over the finished answer (`PolicyModel._token_logprobs`), so that stream is generated whole, then
sent one chunk per token with its log-probs (`completion_chunks` / `chat_chunks`, `token_bounds` giving each
token's span). Incremental chunks carry text only where a step produced some, so their count is not the token count
(`usage` is).

Wire format (as OpenAI sends it): `data: {json}\\n\\n` frames; completions chunks have `object: "text_completion"`,
chat chunks `object: "chat.completion.chunk"` and a first delta `{"role": "assistant", "content": ""}` per choice;
text goes out as it comes (step by step, across choices); each choice ends with an empty chunk carrying its
`finish_reason`; with `stream_options.include_usage` every chunk has `usage: null` and a last chunk has `usage` and
no choices; then `data: [DONE]`.

Errors: the response starts only once the policy's first event is in (or, with log-probs, its whole answer), so
limits, auth, 404, 408 and 503 are ordinary HTTP errors (and the `openai` client's retries apply). A failure after
the 200 (a replica dying mid-answer, the request timeout passing, a bug) is sent as `event: error` with OpenAI's
error body (a designed error keeps its status, e.g. 408), and the stream ends without `[DONE]`: the `openai` client
raises `APIError` from it instead of seeing a broken connection. A client that disconnects cancels its stream at
the policy; the sampler pass stops at its next step once every stream sharing it has gone.

Log-probs are the raw model's (before temperature and top-p), from `PolicyModel._token_logprobs`.

The replica side lives here too: `token_bounds` (each token's span of a choice's text) and `TextStream` (one
choice's text as it grows, what `PolicyModel.generate_stream` sends step by step).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator

from fastapi.responses import StreamingResponse

from lipo.serving import schemas as S
from lipo.serving.security import ApiError

log = logging.getLogger("ray.serve")


def token_bounds(tok, ids: list[int], text: str) -> list[int]:
    """Where each returned token starts in `text`, plus len(text): token k produced text[b[k]:b[k + 1]].

    A token that completes no character (the first bytes of a UTF-8 sequence, a skipped special token) gets an empty
    span, and the token that completes the character gets all of it: a prefix whose decoding is not a prefix of the
    full text (it ends in a partial character) does not move the start. When a stop sequence cut the text, only
    the tokens that start before the cut are returned (and counted in `usage`).
    """
    prefixes = tok.batch_decode([ids[:k] for k in range(len(ids) + 1)], skip_special_tokens=True)
    raw = prefixes[-1]
    starts = [0]
    for p in prefixes[1:]:
        starts.append(len(p) if raw.startswith(p) and len(p) >= starts[-1] else starts[-1])
    kept = len(ids) if text == raw else sum(1 for b in starts[:-1] if b < len(text))
    return starts[:kept] + [len(text)]


class TextStream:
    """One choice's text as it grows, step by step: `push(id)` returns the new text that is safe to send now.

    Held back: a trailing partial UTF-8 character (the decoded prefix ends in U+FFFD) and a tail that could begin a
    stop sequence. Once a stop sequence appears the text is cut there, exactly as `truncate_at_stop` cuts the whole
    text, and nothing more is sent; EOS ends it too. `rest(text)` is what remains to send of the final text (the
    held-back tail), so the sent pieces always join to the non-streamed text. Each push decodes the whole prefix
    (O(T) per token, O(T^2) per answer: small next to a forward for the answers Serve allows), because a
    tokenizer's decode of a suffix alone can differ from the suffix of the decode (leading spaces, merges)."""

    def __init__(self, tok, stop: tuple[str, ...]):
        self.tok, self.stop, self.ids, self.sent, self.ended = tok, stop, [], "", False

    def push(self, token: int) -> str:
        from lipo.models.generate import truncate_at_stop  # imports torch: replica only

        if self.ended:
            return ""
        if token == self.tok.eos_token_id:
            self.ended = True
            return ""
        self.ids.append(token)
        raw = self.tok.decode(self.ids, skip_special_tokens=True)
        safe = truncate_at_stop(raw, self.stop)
        if safe != raw:
            self.ended = True
        else:
            safe = raw.rstrip("\ufffd")  # a partial character: wait for the token that completes it
            hold = max((j for s in self.stop for j in range(1, len(s)) if safe.endswith(s[:j])), default=0)
            safe = safe[:len(safe) - hold]
        if not safe.startswith(self.sent) or len(safe) <= len(self.sent):
            return ""  # nothing new (or a decode that rewrote earlier text: the final `rest` settles it)
        new, self.sent = safe[len(self.sent):], safe
        return new

    def restart(self) -> None:
        """For a rerun of the same choice (a failed batch, re-run alone): its ids start again, while the text
        already sent stays sent (push returns only text beyond it)."""
        self.ids, self.ended = [], False

    def rest(self, text: str) -> str:
        if not text.startswith(self.sent):  # a tokenizer whose prefix decodes are not prefixes of the whole decode
            log.warning("lipo stream: sent text %r is not a prefix of the final text %r", self.sent, text)
            return ""
        return text[len(self.sent):]


def usage(prompt_tokens: int, choices: list[dict]) -> S.Usage:
    """Prompt tokens (once per prompt, after truncation) and the returned completion tokens of every choice."""
    used = sum(c["tokens"] for c in choices)
    return S.Usage(prompt_tokens=prompt_tokens, completion_tokens=used, total_tokens=prompt_tokens + used)


def _span(choice: dict, t: int) -> str:
    return choice["text"][choice["bounds"][t]:choice["bounds"][t + 1]]


def completion_logprobs(choice: dict, lo: int = 0, hi: int | None = None) -> S.CompletionLogprobs | None:
    """Tokens lo..hi of a choice in OpenAI's legacy shape; None when the request asked for no log-probs."""
    lp = choice.get("logprobs")
    if lp is None:
        return None
    hi = choice["tokens"] if hi is None else hi
    top = [{**dict(pairs), tok: v} for tok, v, pairs in zip(lp["tokens"][lo:hi], lp["values"][lo:hi],
                                                            lp["top"][lo:hi])]  # the sampled token always listed
    return S.CompletionLogprobs(tokens=lp["tokens"][lo:hi], token_logprobs=lp["values"][lo:hi], top_logprobs=top,
                                text_offset=choice["bounds"][lo:hi])


def chat_logprobs(choice: dict, lo: int = 0, hi: int | None = None) -> S.ChatLogprobs | None:
    """Tokens lo..hi of a choice in the chat shape (`content` entries with bytes and top tokens)."""
    lp = choice.get("logprobs")
    if lp is None:
        return None
    hi = choice["tokens"] if hi is None else hi

    def entry(tok: str, v: float) -> dict:
        return {"token": tok, "logprob": v, "bytes": list(tok.encode("utf-8"))}

    return S.ChatLogprobs(content=[
        S.TokenLogprob(**entry(tok, v), top_logprobs=[S.TopLogprob(**entry(a, b)) for a, b in pairs])
        for tok, v, pairs in zip(lp["tokens"][lo:hi], lp["values"][lo:hi], lp["top"][lo:hi])])


def completion_body(req: S.CompletionRequest, choices: list[dict], prompt_tokens: int) -> S.Completion:
    return S.Completion(
        id=f"cmpl-{uuid.uuid4().hex}", created=int(time.time()), model=req.model, usage=usage(prompt_tokens, choices),
        choices=[S.CompletionChoice(index=i, text=c["text"], logprobs=completion_logprobs(c),
                                    finish_reason=c["finish_reason"]) for i, c in enumerate(choices)])


def chat_body(req: S.ChatCompletionRequest, choices: list[dict], prompt_tokens: int) -> S.ChatCompletion:
    return S.ChatCompletion(
        id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()), model=req.model,
        usage=usage(prompt_tokens, choices),
        choices=[S.ChatChoice(index=i, message=S.AssistantMessage(content=c["text"]), logprobs=chat_logprobs(c),
                              finish_reason=c["finish_reason"]) for i, c in enumerate(choices)])


def _steps(choices: list[dict]) -> Iterator[tuple[int, int]]:
    """(choice, token) in sending order: token t of every choice that has it, then t + 1."""
    for t in range(max((c["tokens"] for c in choices), default=0)):
        yield from ((i, t) for i, c in enumerate(choices) if t < c["tokens"])


def _dump(model) -> dict | None:
    return None if model is None else model.model_dump()


class _Chunks:
    """The chunks of one streamed response: one id and `created` for all, `usage: null` on each with include_usage;
    completions carry `text`, chat a `delta`."""

    def __init__(self, req: S.CompletionRequest | S.ChatCompletionRequest, chat: bool):
        prefix, kind = ("chatcmpl", "chat.completion.chunk") if chat else ("cmpl", "text_completion")
        self.chat = chat
        self.head = {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()),
                     "model": req.model}
        self.tail = {"usage": None} if req.include_usage() else {}

    def one(self, i: int, text: str | None, logprobs: dict | None = None, finish: str | None = None) -> dict:
        """Choice i's chunk: a piece of text (None: the finish chunk, or chat's role chunk when finish is None)."""
        if self.chat:
            body = {"delta": {"role": "assistant", "content": ""} if text is None and finish is None
                    else {} if text is None else {"content": text}}
        else:
            body = {"text": text or ""}
        return {**self.head, "choices": [{"index": i, **body, "logprobs": logprobs, "finish_reason": finish}],
                **self.tail}

    def opening(self, n: int) -> list[dict]:
        return [self.one(i, None) for i in range(n)] if self.chat else []

    def closing(self, choices: list[dict], prompt_tokens: int) -> list[dict]:
        """A finish chunk per choice, then (with include_usage) the usage chunk with no choices."""
        out = [self.one(i, None, None, c["finish_reason"]) for i, c in enumerate(choices)]
        if self.tail:
            out.append({**self.head, "choices": [], "usage": usage(prompt_tokens, choices).model_dump()})
        return out


def completion_chunks(req: S.CompletionRequest, choices: list[dict], prompt_tokens: int) -> Iterator[dict]:
    """A whole answer's chunks, one per returned token with its log-probs (the path of streams with `logprobs`)."""
    c = _Chunks(req, chat=False)
    for i, t in _steps(choices):
        yield c.one(i, _span(choices[i], t), _dump(completion_logprobs(choices[i], t, t + 1)))
    yield from c.closing(choices, prompt_tokens)


def chat_chunks(req: S.ChatCompletionRequest, choices: list[dict], prompt_tokens: int) -> Iterator[dict]:
    c = _Chunks(req, chat=True)
    yield from c.opening(len(choices))
    for i, t in _steps(choices):
        yield c.one(i, _span(choices[i], t), _dump(chat_logprobs(choices[i], t, t + 1)))
    yield from c.closing(choices, prompt_tokens)


async def incremental_chunks(req: S.CompletionRequest | S.ChatCompletionRequest, events: AsyncIterator[dict],
                             n_choices: int) -> AsyncIterator[dict]:
    """Chunks of `PolicyModel.generate_stream`'s events as they arrive: each delta at once, then the held-back
    rest of each choice, the finish chunks and usage from the final event."""
    c = _Chunks(req, chat=isinstance(req, S.ChatCompletionRequest))
    for chunk in c.opening(n_choices):
        yield chunk
    async for event in events:
        for i, text in event.get("deltas", []):
            yield c.one(i, text)
        if "choices" in event:
            for i, rest in enumerate(event["rest"]):
                if rest:
                    yield c.one(i, rest)
            for chunk in c.closing(event["choices"], event["prompt_tokens"]):
                yield chunk


async def _frames(chunks: Iterator[dict] | AsyncIterator[dict]) -> AsyncIterator[str]:
    try:
        if hasattr(chunks, "__aiter__"):
            async for c in chunks:
                yield f"data: {json.dumps(c, separators=(',', ':'))}\n\n"
        else:
            for c in chunks:
                yield f"data: {json.dumps(c, separators=(',', ':'))}\n\n"
    except ApiError as exc:  # a designed error after the 200 (a 408 past the deadline, a 503 from a dead replica)
        yield f"event: error\ndata: {json.dumps(S.error_body(exc.message, exc.status, exc.param))}\n\n"
        return
    except Exception as exc:  # after the 200: tell the client in the stream, never just drop the connection
        log.exception("lipo stream failed")
        body = S.error_body(f"internal error while streaming ({type(exc).__name__}); see the server log", 500)
        yield f"event: error\ndata: {json.dumps(body)}\n\n"
        return
    yield "data: [DONE]\n\n"


def sse_response(chunks: Iterator[dict] | AsyncIterator[dict]) -> StreamingResponse:
    """The chunks as an SSE stream; `X-Accel-Buffering: no` keeps nginx-style proxies from holding it back."""
    return StreamingResponse(_frames(chunks), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
