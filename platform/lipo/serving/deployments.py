"""The model deployments behind the ingress: a policy (sampling, log-probs) and a reward model (score, compare).

Each is a Ray Serve deployment whose replica loads one model once and serves it through DeploymentHandles; the
FastAPI ingress in `lipo.serving.app` is their only caller. Concurrent requests are batched with `@serve.batch`
and the batch runs in a worker thread, so the replica's event loop keeps answering health checks meanwhile.

Torch and transformers are imported inside the replicas only, so the ingress replica (and `lipo serve`'s driver)
start without them. Sampling is `lipo.models.generate.sample_ids`, the seeded sampler build-lists uses: choice j
of prompt i with request seed s uses the sample seed (s + i) * 1000 + j, so
`sample(model, tok, [prompt], n, [s + i], params)` reproduces the server's output, whichever other requests shared
its batch (exactly on CPU in fp32; on a GPU the random draws are batch-free but kernels may round logits
differently for another batch shape). Scores are `lipo.models.reward.classify` / `pairwise_matrices`, so /v1/score
equals `pointwise_rewards`.

Each choice also carries its tokens' spans of the text (`token_bounds`: what a stream with log-probs sends chunk
by chunk and what `text_offset` reports) and, when the request asks for log-probs, the raw model's log-probs of the
sampled tokens and the most likely alternatives (`_token_logprobs`). The sampler does not return the log-probs it
drew from, and those are tempered and top-p filtered anyway, so they come from a second forward over prompt +
completion, per choice, only when asked. (Were `sample_ids` to return the raw log-softmax of each drawn token and
its top-k, that forward would go, and streams with log-probs could be incremental too.)

Streaming (`generate_stream`, called with `handle.options(stream=True)`): a second `@serve.batch` queue, on an async
generator, batches concurrent streams into one pass of the same sampler; `sample_ids`'s `on_step` callback turns
each step into per-choice text (`TextStream`) and the batch yields one event per stream per step. Decision: batched
rather than one sampler pass per stream. Measured on the tiny model (CPU, one thread): 4 concurrent 64-token streams
take 234 ms batched against 626 ms as 4 separate passes (first text of all 4 after 9 ms against 63 ms), and one
stream's first text comes after ~4 ms against ~150 ms for its whole answer; the per-step host copy and decode cost
~8% over a whole answer. Trade-offs: streams and whole answers
never share a pass (separate queues; both may run at once, in two threads on the model); jobs of one batch with
different sampling params run as consecutive passes, so a stream in a later pass waits for the earlier ones (as whole
answers do); a stream whose client left is cancelled here, but its rows are in the batch's pass, which stops only
once every stream of the batch has gone (`abandoned_passes` in `stats()`).

`stats()` counts model calls (and `stream_steps`, sampler steps streamed); tests use it to show that rejected
requests (401, 413, 422, 503) never reached a model.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter
from itertools import groupby
from typing import Any

from ray import serve

from lipo.data.tokenize import encode_prompt, encode_response
from lipo.serving.config import PolicyConfig, RewardConfig
from lipo.serving.model_source import load_reward, resolve

log = logging.getLogger("ray.serve")


def _job_rows(jobs: list[dict]) -> int:
    """Effective batch size: one row per sampled choice (n times the prompts of each request)."""
    return sum(len(j["prompts"]) * j["n"] for j in jobs)


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

    def rest(self, text: str) -> str:
        if not text.startswith(self.sent):  # a tokenizer whose prefix decodes are not prefixes of the whole decode
            log.warning("lipo stream: sent text %r is not a prefix of the final text %r", self.sent, text)
            return ""
        return text[len(self.sent):]


@serve.deployment(name="LipoPolicy")
class PolicyModel:
    """A causal LM: `generate(job)` samples completions, `logprobs(job)` scores given responses."""

    def __init__(self, cfg: dict, tracking_uri: str | None = None):
        import torch  # torch-loading imports stay in the replicas: the ingress and the driver run without torch

        from lipo.models.loading import load_causal_lm, load_tokenizer

        self.cfg = PolicyConfig.model_validate(cfg)
        spec = resolve(self.cfg.model, tracking_uri)
        self.tok = load_tokenizer(spec)
        self.model = load_causal_lm(spec, self.cfg.dtype)
        if torch.cuda.is_available():
            self.model = self.model.cuda()
        self.calls: Counter = Counter()
        self._generate.set_max_batch_size(self.cfg.batch.max_batch_size)
        self._generate.set_batch_wait_timeout_s(self.cfg.batch.batch_wait_timeout_s)
        self._generate_stream.set_max_batch_size(self.cfg.batch.max_batch_size)
        self._generate_stream.set_batch_wait_timeout_s(self.cfg.batch.batch_wait_timeout_s)

    def info(self) -> dict:
        return {"name": self.cfg.name, "model": self.cfg.model, "loaded": self.model is not None}

    def stats(self) -> dict:
        return dict(self.calls)

    def check_health(self) -> None:
        if self.model is None or self.tok is None:
            raise RuntimeError(f"policy '{self.cfg.name}' has no model loaded")

    async def generate(self, job: dict) -> dict:
        """job: prompts (text or chat messages), n, seed, max_tokens, temperature, top_p, stop, logprobs (None, or
        how many most likely tokens to list per step).

        Returns {"choices": [...] (prompt-major), "prompt_tokens"}; a choice is {"text", "finish_reason",
        "tokens" (returned tokens T), "bounds" ([T + 1] `token_bounds`), "logprobs" (when asked: "tokens" [T] text
        of each token, "values" [T] log-probs, "top" [T][k] (token, log-prob) pairs)}.
        """
        return await self._generate(job)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01, batch_size_fn=_job_rows)
    async def _generate(self, jobs: list[dict]) -> list[dict]:
        return await asyncio.to_thread(self._sample_jobs, jobs)

    async def generate_stream(self, job: dict):
        """`generate`, streamed (call it through `handle.options(stream=True)`): yields {"deltas": [[choice, text],
        ...]} as tokens are drawn (a step with nothing safe to send yields nothing), then once {"choices",
        "prompt_tokens"} as `generate` returns them, plus "rest" (per choice, the held-back text still to send; see
        `TextStream`). Concurrent streams are batched like `generate`'s calls, in a separate batch queue."""
        try:
            async for event in self._generate_stream(job):
                if event.get("deltas") or "choices" in event:
                    yield event
        finally:  # also when Serve cancels this call (the client left): the batch's sampler reads the flag
            job["abandoned"] = True

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01, batch_size_fn=_job_rows)
    async def _generate_stream(self, jobs: list[dict]):
        """Yields one event per job per sampler step (Serve's batched generator protocol), then the results. The
        sampler runs in a worker thread; its per-step callback hands each step's text to this loop through a
        queue. Once every stream of the batch has gone (its clients left), the sampler stops at the next step."""
        loop, queue, end = asyncio.get_running_loop(), asyncio.Queue(), object()
        rows, prompt_tokens = self._plan(jobs)
        texts = [TextStream(self.tok, params.stop) for params, *_ in rows]
        choice = [sum(1 for q in rows[:r] if q[1] == rows[r][1]) for r in range(len(rows))]  # index in its job

        def on_step(group: list[int], t: int, nxt) -> bool:  # in the sampler's thread; True: stop the pass
            self.calls["stream_steps"] += 1
            if all(job.get("abandoned") for job in jobs):  # every stream of the batch has gone: stop computing
                self.calls["abandoned_passes"] += 1
                return True
            events = [{"deltas": []} for _ in jobs]
            for r, token in zip(group, nxt.tolist()):  # [N] ids to the host: the one sync per streamed step
                new = texts[r].push(token)
                if new:
                    events[rows[r][1]]["deltas"].append([choice[r], new])
            loop.call_soon_threadsafe(queue.put_nowait, events)
            return False

        def run() -> list[dict]:
            try:
                return self._sample_rows(jobs, rows, prompt_tokens, on_step)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, end)

        task = asyncio.ensure_future(asyncio.to_thread(run))
        while (events := await queue.get()) is not end:
            yield events
        outs = await task
        for r, (_, ji, *_) in enumerate(rows):
            outs[ji].setdefault("rest", []).append(texts[r].rest(outs[ji]["choices"][choice[r]]["text"]))
        yield outs

    def _plan(self, jobs: list[dict]) -> tuple[list[tuple], list[int]]:
        """One row per choice, (params, job index, prompt ids, seed), prompt-major; and each job's prompt tokens."""
        from lipo.models.generate import SamplingParams  # imports torch: replica only

        rows = []
        prompt_tokens = [0] * len(jobs)
        for ji, job in enumerate(jobs):
            params = SamplingParams(temperature=job["temperature"], top_p=job["top_p"],
                                    max_new_tokens=job["max_tokens"], stop=tuple(job["stop"]))
            for i, prompt in enumerate(job["prompts"]):
                ids = encode_prompt(prompt, self.tok)[-self.cfg.max_prompt_tokens:]
                prompt_tokens[ji] += len(ids)
                rows += [(params, ji, ids, (job["seed"] + i) * 1000 + j) for j in range(job["n"])]
        return rows, prompt_tokens

    def _sample_jobs(self, jobs: list[dict]) -> list[dict]:
        return self._sample_rows(jobs, *self._plan(jobs))

    def _sample_rows(self, jobs: list[dict], rows: list[tuple], prompt_tokens: list[int], on_step=None) -> list[dict]:
        """Sample the planned rows, one sampler call per distinct sampling params; `on_step(group, t, nxt)`
        (optional) sees each step's ids of the rows `group`."""
        from lipo.models.generate import sample_ids, truncate_at_stop  # imports torch: replica only

        self.calls["generate_requests"] += len(jobs)
        results: list[dict] = [{} for _ in rows]
        order = sorted(range(len(rows)), key=lambda r: repr(rows[r][0]))  # rows that share params share a pass
        for _, group in groupby(order, key=lambda r: repr(rows[r][0])):
            group = list(group)
            params = rows[group[0]][0]
            self.calls["forward_batches"] += 1
            step = None if on_step is None else (lambda t, nxt, group=group: on_step(group, t, nxt))
            out = sample_ids(self.model, [rows[r][2] for r in group], [rows[r][3] for r in group], params,
                             self.tok.pad_token_id, self.tok.eos_token_id, on_step=step)
            for r, ids in zip(group, out):
                raw = self.tok.decode(ids, skip_special_tokens=True)
                text = truncate_at_stop(raw, params.stop)
                done = len(ids) < params.max_new_tokens or text != raw  # EOS or a stop sequence
                bounds = token_bounds(self.tok, ids, text)
                results[r] = {"text": text, "finish_reason": "stop" if done else "length",
                              "tokens": len(bounds) - 1, "bounds": bounds}
                top = jobs[rows[r][1]].get("logprobs")
                if top is not None:
                    results[r]["logprobs"] = self._token_logprobs(rows[r][2], ids[:len(bounds) - 1], top)
        return [{"choices": [results[r] for r in range(len(rows)) if rows[r][1] == ji],
                 "prompt_tokens": prompt_tokens[ji]} for ji in range(len(jobs))]

    def _token_logprobs(self, prompt_ids: list[int], ids: list[int], top: int) -> dict:
        """Raw log p(token | prefix) of each sampled token and the `top` most likely tokens at each step, from one
        full forward of prompt + completion (the distribution before temperature and top-p). The forward holds
        [P + T, V] logits: for a 152k vocabulary and 768 positions, 470 MB in fp32, so only when asked."""
        import torch  # replica only, like every torch-loading import in this module

        if not ids:
            return {"tokens": [], "values": [], "top": []}
        device = next(self.model.parameters()).device
        x = torch.tensor([prompt_ids + ids], device=device)  # [1, P + T]
        with torch.no_grad():
            logits = self.model(input_ids=x[:, :-1]).logits[0, len(prompt_ids) - 1:]  # [T, V]: predicts ids
        lp = torch.log_softmax(logits.float(), dim=-1)  # [T, V]
        values = lp.gather(-1, x[0, len(prompt_ids):, None])[:, 0]  # [T]
        best = lp.topk(top, dim=-1)  # [T, top] (top may be 0)
        names = [[self.tok.decode([i]) for i in row] for row in best.indices.tolist()]
        return {"tokens": [self.tok.decode([i]) for i in ids], "values": values.tolist(),
                "top": [[[n, v] for n, v in zip(ns, vs)] for ns, vs in zip(names, best.values.tolist())]}

    async def logprobs(self, job: dict) -> dict:
        """job: prompt, responses -> {"logprobs": [summed log p(response + EOS | prompt)], "tokens": [counts]}."""
        return await asyncio.to_thread(self._logprobs, job)

    def _logprobs(self, job: dict) -> dict:
        import torch  # replica only, like every torch-loading import in this module

        from lipo.data.collate import collate_lists
        from lipo.models.logps import sequence_logps

        self.calls["logprobs_requests"] += 1
        resp = [encode_response(r, self.tok) for r in job["responses"]]
        item = {"prompt_ids": encode_prompt(job["prompt"], self.tok)[-self.cfg.max_prompt_tokens:],
                "response_ids": resp, "labels": [0.0] * len(resp)}
        batch = collate_lists([item], pad_id=self.tok.pad_token_id)
        device = next(self.model.parameters()).device
        with torch.no_grad():
            logps = sequence_logps(self.model, {k: v.to(device) for k, v in batch.items()})[0]  # [K]
        return {"logprobs": [float(x) for x in logps.cpu()], "tokens": [len(r) for r in resp]}


@serve.deployment(name="LipoReward")
class RewardModel:
    """A reward model: `score(prompt, responses)` -> one reward each; `compare(prompt, a, b)` -> P(a beats b).

    Pointwise: the reward is the classifier's logit and P(a beats b) = sigmoid(r_a - r_b) (Bradley-Terry).
    Pairwise (LiPO's ranking model): P(a beats b) is the position-debiased pairwise probability, and a response's
    reward is its mean win probability against the others (`winrate_labels`).
    """

    def __init__(self, cfg: dict, tracking_uri: str | None = None):
        import torch  # replica only, like every torch-loading import in this module

        self.cfg = RewardConfig.model_validate(cfg)
        self.model, self.tok = load_reward(resolve(self.cfg.model, tracking_uri), self.cfg.dtype)
        if torch.cuda.is_available():
            self.model = self.model.cuda()
        self.calls: Counter = Counter()
        self._judge.set_max_batch_size(self.cfg.batch.max_batch_size)
        self._judge.set_batch_wait_timeout_s(self.cfg.batch.batch_wait_timeout_s)

    def info(self) -> dict:
        return {"name": self.cfg.name, "model": self.cfg.model, "kind": self.cfg.kind, "loaded": self.model is not None}

    def stats(self) -> dict:
        return dict(self.calls)

    def check_health(self) -> None:
        if self.model is None or self.tok is None:
            raise RuntimeError(f"reward model '{self.cfg.name}' is not loaded")

    async def score(self, prompt: Any, responses: list[str]) -> list[float]:
        return await self._judge(("score", prompt, responses))

    async def compare(self, prompt: Any, first: str, second: str) -> float:
        return await self._judge(("compare", prompt, [first, second]))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _judge(self, jobs: list[tuple]) -> list:
        return await asyncio.to_thread(self._run, jobs)

    def _run(self, jobs: list[tuple]) -> list:
        from lipo.models import reward as rw  # imports torch: replica only

        self.calls["judge_requests"] += len(jobs)
        self.calls["forward_batches"] += 1
        if self.cfg.kind == "pointwise":  # every text of every request in one classify call
            texts = [rw.pointwise_text(p, r, self.tok) for _, p, rs in jobs for r in rs]
            flat = rw.classify(self.model, self.tok, texts, self.cfg.max_tokens).tolist()
            out, at = [], 0
            for what, _, rs in jobs:
                r, at = flat[at:at + len(rs)], at + len(rs)
                out.append(r if what == "score" else 1.0 / (1.0 + math.exp(min(700.0, r[1] - r[0]))))
            return out
        template = {"template": self.cfg.pair_template} if self.cfg.pair_template else {}
        # every ordered pair of every request in length-sorted, full forwards (`pairwise_matrices`)
        Ps = rw.pairwise_matrices(self.model, self.tok, [(p, rs) for _, p, rs in jobs],
                                  max_tokens=self.cfg.max_tokens, **template)
        return [rw.winrate_labels(P).tolist() if what == "score" else float(P[0, 1])
                for (what, _, _), P in zip(jobs, Ps)]
