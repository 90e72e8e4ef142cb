"""The OpenAI surface without Serve: the field table (ignored / refused / unknown), the SSE wire format frame by frame,
an error after the stream started, and the real `openai` client reading all of it, over the routes with an ingress
whose model answers are written out by hand. The same client against the real Serve app: test_serve_http.py."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import openai
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from openai import OpenAI
from pydantic import ValidationError

from lipo.config import load_config
from lipo.serving import schemas as S
from lipo.serving.config import ServeConfig
from lipo.serving.routes import install_error_handlers, router
from lipo.serving.security import ApiError

REPO = Path(__file__).resolve().parents[3]
MSG = [{"role": "user", "content": "Hi"}]

# Two choices as PolicyModel.generate returns them: "aé" from tokens a, 0xC3, 0xA9 (the partial byte has an empty
# span) and "b" from one token; log-probs for top-1 requests.
CHOICES = [
    {"text": "aé", "finish_reason": "stop", "tokens": 3, "bounds": [0, 1, 1, 2],
     "logprobs": {"tokens": ["a", "\ufffd", "\ufffd"], "values": [-0.5, -1.0, -0.25],
                  "top": [[["a", -0.5]], [["x", -0.75]], [["\ufffd", -0.25]]]}},
    {"text": "b", "finish_reason": "length", "tokens": 1, "bounds": [0, 1],
     "logprobs": {"tokens": ["b"], "values": [-2.0], "top": [[["c", -1.5]]]}},
]


def _app(choices: list[dict], prompt_tokens: int = 5, fail: Exception | None = None) -> TestClient:
    """The routes over an ingress whose answers are `choices`: whole (`sample`), or as `generate_stream` events
    (`sample_stream`: each choice's text in two deltas, step-major, then the final event; `fail` raised after
    the first delta)."""
    async def sample(model, prompts, n, max_tokens, req):
        want = req.top_k_logprobs()
        return [c if want is not None else {k: v for k, v in c.items() if k != "logprobs"} for c in choices], \
            prompt_tokens

    async def sample_stream(model, prompts, n, max_tokens, req):
        async def events():
            halves = [(c["text"][:len(c["text"]) // 2], c["text"][len(c["text"]) // 2:]) for c in choices]
            for h in (0, 1):
                yield {"deltas": [[i, parts[h]] for i, parts in enumerate(halves) if parts[h]]}
                if fail is not None:
                    raise fail
            yield {"choices": choices, "prompt_tokens": prompt_tokens, "rest": ["" for _ in choices]}
        return events()

    ingress = SimpleNamespace(cfg=load_config(ServeConfig, None, []), sample=sample, sample_stream=sample_stream)
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router(ingress))
    return TestClient(app, raise_server_exceptions=False)


def _frames(text: str) -> list[str]:
    return [f for f in text.split("\n\n") if f]


def test_completion_stream_wire_format():
    """Step-major token chunks, one finish chunk per choice, the usage chunk, [DONE]: exactly these frames."""
    r = _app(CHOICES).post("/v1/completions", json={"model": "policy", "prompt": "p", "n": 2, "stream": True,
                                                    "logprobs": 1, "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    frames = _frames(r.text)
    assert frames[-1] == "data: [DONE]" and all(f.startswith("data: {") for f in frames[:-1])
    chunks = [json.loads(f[len("data: "):]) for f in frames[:-1]]
    assert {c["object"] for c in chunks} == {"text_completion"} and len({c["id"] for c in chunks}) == 1
    got = [(c["choices"][0]["index"], c["choices"][0]["text"], c["choices"][0]["finish_reason"])
           for c in chunks[:-1]]
    # token 0 of both choices, then tokens 1 and 2 of choice 0, then the finish chunks
    assert got == [(0, "a", None), (1, "b", None), (0, "", None), (0, "é", None), (0, "", "stop"), (1, "", "length")]
    lp = [c["choices"][0]["logprobs"] for c in chunks[:4]]
    assert lp[2] == {"tokens": ["\ufffd"], "token_logprobs": [-1.0], "top_logprobs": [{"x": -0.75, "\ufffd": -1.0}],
                     "text_offset": [1]}
    assert [c["usage"] for c in chunks[:-1]] == [None] * 6
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 4,
                                                                   "total_tokens": 9}


def test_openai_client_reads_streams_and_logprobs():
    http = _app(CHOICES)
    client = OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0)
    chunks = list(client.chat.completions.create(model="policy", messages=MSG, n=2, stream=True, logprobs=True,
                                                 top_logprobs=1))
    assert [c.choices[0].delta.role for c in chunks[:2]] == ["assistant", "assistant"]
    text = {i: "".join(c.choices[0].delta.content or "" for c in chunks if c.choices[0].index == i) for i in (0, 1)}
    assert text == {0: "aé", 1: "b"} and chunks[-1].choices[0].finish_reason == "length"
    assert not any(hasattr(c, "usage") and c.usage for c in chunks)  # no include_usage: no usage chunk
    streamed = [t for c in chunks if c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [(t.token, t.logprob) for t in streamed] == [("a", -0.5), ("b", -2.0), ("\ufffd", -1.0), ("\ufffd", -0.25)]
    whole = client.chat.completions.create(model="policy", messages=MSG, n=2, logprobs=True, top_logprobs=1)
    first = whole.choices[0].logprobs.content
    assert [t.token for t in first] == ["a", "\ufffd", "\ufffd"] and first[1].top_logprobs[0].token == "x"
    assert first[0].bytes == [97] and whole.usage.completion_tokens == 4
    done = client.completions.create(model="policy", prompt="p", logprobs=1)
    assert done.choices[0].logprobs.text_offset == [0, 1, 1] and done.choices[1].logprobs.token_logprobs == [-2.0]
    assert client.completions.create(model="policy", prompt="p").choices[0].logprobs is None


def test_failure_after_the_stream_started_is_an_error_event():
    """A failure after the 200 (the whole path's renderer, or the incremental path's events) ends the stream with
    OpenAI's error body as an `error` event and no [DONE]; a designed error keeps its status (a 408 past the
    deadline); the openai client raises APIError instead of seeing a cut connection."""
    broken = [{**CHOICES[0], "bounds": None}]
    cases = [(_app(broken), {"logprobs": 1}, 500, "internal error while streaming"),  # whole answer, then chunked
             (_app(CHOICES, fail=RuntimeError("x")), {}, 500, "internal error while streaming"),  # incremental
             (_app(CHOICES, fail=ApiError(408, "the model did not answer within 30s")), {}, 408, "did not answer")]
    for http, extra, code, phrase in cases:
        r = http.post("/v1/completions", json={"model": "policy", "prompt": "p", "stream": True, **extra})
        frames = _frames(r.text)
        assert r.status_code == 200 and frames[-1].startswith("event: error\ndata: ") and "[DONE]" not in r.text
        err = json.loads(frames[-1].split("data: ", 1)[1])["error"]
        assert err["code"] == code and phrase in err["message"], err
    assert json.loads(_frames(cases[1][0].post("/v1/completions", json={
        "model": "policy", "prompt": "p", "stream": True}).text)[0][len("data: "):])["choices"][0]["text"] == "a"
    client = OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=cases[1][0], max_retries=0)
    with pytest.raises(openai.APIError, match="internal error while streaming"):
        list(client.chat.completions.create(model="policy", messages=MSG, stream=True))


def test_incremental_stream_wire_format():
    """Without log-probs a stream renders the policy's events as they come: chat's role chunks, each delta, the
    final event's finish chunks and usage, [DONE]; the pieces join to each choice's text."""
    r = _app(CHOICES).post("/v1/chat/completions", json={"model": "policy", "messages": MSG, "n": 2, "stream": True,
                                                         "stream_options": {"include_usage": True}})
    frames = _frames(r.text)
    assert r.status_code == 200 and frames[-1] == "data: [DONE]"
    chunks = [json.loads(f[len("data: "):]) for f in frames[:-1]]
    got = [(c["choices"][0]["index"], c["choices"][0]["delta"], c["choices"][0]["finish_reason"]) for c in chunks[:-1]]
    role = {"role": "assistant", "content": ""}
    assert got == [(0, role, None), (1, role, None), (0, {"content": "a"}, None), (0, {"content": "é"}, None),
                   (1, {"content": "b"}, None), (0, {}, "stop"), (1, {}, "length")]
    assert chunks[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}
    assert len({c["id"] for c in chunks}) == 1 and all(c["usage"] is None for c in chunks[:-1])


def test_field_table_ignored_refused_and_unknown():
    ok = S.CompletionRequest.model_validate(
        {"model": "m", "prompt": "p", "n": 2, "user": "u", "presence_penalty": 0, "frequency_penalty": 0.0,
         "logit_bias": {}, "best_of": 2, "echo": False, "suffix": None, "top_k": None, "stream_options": {}})
    assert ok.n == 2 and not ok.include_usage()  # ignored and neutral fields are dropped, nothing else changes
    chat = S.ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "developer", "content": [{"type": "text", "text": "a"},
                                                                       {"type": "text", "text": "b"}]}],
         "response_format": {"type": "text"}, "metadata": {"k": "v"}, "store": True, "service_tier": "auto",
         "parallel_tool_calls": True, "tool_choice": "none", "tools": [], "modalities": ["text"]})
    assert chat.messages[0].content == "ab"
    refused = [  # (endpoint model, body extra, field the 422 names)
        (S.CompletionRequest, {"presence_penalty": 0.5}, "presence_penalty"),
        (S.CompletionRequest, {"logit_bias": {"50256": -100}}, "logit_bias"),
        (S.CompletionRequest, {"echo": True}, "echo"),
        (S.CompletionRequest, {"best_of": 3}, "best_of"),
        (S.CompletionRequest, {"suffix": "end"}, "suffix"),
        (S.ChatCompletionRequest, {"response_format": {"type": "json_object"}}, "response_format"),
        (S.ChatCompletionRequest, {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        (S.ChatCompletionRequest, {"top_logprobs": 2}, "top_logprobs"),
    ]
    for cls, extra, field in refused:
        base = {"model": "m", "prompt": "p"} if cls is S.CompletionRequest else {"model": "m", "messages": MSG}
        with pytest.raises(ValidationError) as exc:
            cls.model_validate({**base, **extra})
        err = exc.value.errors()[0]
        assert err["type"] == "refused_field" and err["ctx"]["field"] == field and err["msg"].startswith(field)
    for body in ({"model": "m", "prompt": "p", "bogus": 1}, {"model": "m", "prompt": "p", "metadata": {}}):
        with pytest.raises(ValidationError) as exc:  # unknown, or another endpoint's field: named by extra=forbid
            S.CompletionRequest.model_validate(body)
        assert exc.value.errors()[0]["type"] == "extra_forbidden"


def test_refused_fields_are_a_422_naming_them():
    """One refused field: the client's error names it (message and param); two: both in the message, the first
    (in body order) as param."""
    http = _app(CHOICES)
    client = OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0)
    with pytest.raises(openai.UnprocessableEntityError) as exc:
        client.completions.create(model="policy", prompt="p", presence_penalty=0.5)
    assert exc.value.body["param"] == "presence_penalty"
    assert "presence_penalty: penalties are not implemented; send 0 or leave it out" in exc.value.message
    r = http.post("/v1/completions", json={"model": "policy", "prompt": "p", "frequency_penalty": 1.0, "echo": True})
    err = r.json()["error"]
    assert r.status_code == 422 and err["param"] == "frequency_penalty"
    assert err["message"] == ("frequency_penalty: penalties are not implemented; send 0 or leave it out; "
                              "echo: echo is not implemented; send false or leave it out")


def test_field_table_matches_the_request_models_and_the_readme():
    for cls, where in ((S.CompletionRequest, "completions"), (S.ChatCompletionRequest, "chat")):
        supported = {n for n, r in S.OPENAI_FIELDS.items() if r.action == "supported" and where in r.where}
        assert supported == set(cls.model_fields), cls
    assert S.compat_table() in (REPO / "README.md").read_text(encoding="utf-8")
