"""The model deployments behind the ingress: a policy (sampling, log-probs) and a reward model (score, compare).

Each is a Ray Serve deployment whose replica loads one model once and serves it through DeploymentHandles; the
FastAPI ingress in `lipo.serving.app` is their only caller. Concurrent requests are batched with `@serve.batch`
and the batch runs in a worker thread, so the replica's event loop keeps answering health checks meanwhile.

Torch and transformers are imported inside the replicas only, so the ingress replica (and `lipo serve`'s driver)
start without them. Sampling is `lipo.models.generate.sample_ids`, the seeded sampler build-lists uses: choice j
of prompt i with request seed s uses the row seed `sample_seed(s + i, j)` = (s + i) * 1000 + j, so
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

Isolation and bounds (`lipo.serving.isolation`): each request is validated and encoded per request, where the
tokenizer is, before it joins a batch (`PolicyModel._prepare`: text UTF-8, a prompt of at least one token, kept
prompt + `max_tokens` within the model's context length, `n` and row seeds within the sampler's range; a 422 naming
the field); a failure inside a batch stays with its request (the batch is re-run one request at a time, and each
caller gets its own answer or error). Every call carries a `Budget` from the ingress: a request past its deadline is
not started, its sampler rows end at the next step, `/v1/logprobs` stops between chunked forwards (408); and
`/v1/logprobs` scores at most `limits.max_logprob_tokens` tokens (prompt + response, summed over responses; 422).
Reward inputs keep their end within `max_tokens` (as before), so their work is bounded by truncation.

`stats()` counts model calls (and `stream_steps`, sampler steps streamed); tests use it to show that rejected
requests (401, 413, 422, 503) never reached a model.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from itertools import groupby
from typing import Any

from ray import serve

from lipo.data.tokenize import encode_prompt, encode_response
from lipo.serving.config import PolicyConfig, RewardConfig
from lipo.serving.isolation import UNBOUNDED, Budget, RequestError, check_text, expired, isolated, late_error, raised
from lipo.serving.model_source import load_reward, resolve
from lipo.serving.streaming import TextStream, token_bounds

LOGPROB_CHUNK_TOKENS = 4096  # /v1/logprobs: padded tokens per forward, between deadline checks


def _chunks(lengths: list[int], budget: int) -> list[tuple[int, int]]:
    """Consecutive [lo, hi) groups whose padded size (count x longest) stays within `budget` tokens (a longer
    single row is its own group): one group for a small request, so its forward is unchanged."""
    out, lo = [], 0
    for hi in range(1, len(lengths) + 1):
        if hi - lo > 1 and (hi - lo) * max(lengths[lo:hi]) > budget:
            out.append((lo, hi - 1))
            lo = hi - 1
    return out + [(lo, len(lengths))] if lengths else out


def _job_rows(jobs: list[dict]) -> int:
    """Effective batch size: one row per sampled choice (n times the prompts of each request)."""
    return sum(len(j["prompts"]) * j["n"] for j in jobs)


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

    async def generate(self, job: dict, budget: Budget = UNBOUNDED) -> dict:
        """job: prompts (text or chat messages), n, seed, max_tokens, temperature, top_p, stop, logprobs (None, or
        how many most likely tokens to list per step), and optionally "field" (the request field of the prompts,
        named in errors: "prompt" or "messages"). `budget` (from the ingress): the deadline the work stops at.

        Returns {"choices": [...] (prompt-major), "prompt_tokens"}; a choice is {"text", "finish_reason",
        "tokens" (returned tokens T), "bounds" ([T + 1] `token_bounds`), "logprobs" (when asked: "tokens" [T] text
        of each token, "values" [T] log-probs, "top" [T][k] (token, log-prob) pairs)}. Raises `RequestError` (422
        naming the field, 408 past the deadline) for this request only.
        """
        job = await asyncio.to_thread(self._prepare, {**job, "deadline": budget.deadline})  # before the batch
        return raised(await self._generate(job))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01, batch_size_fn=_job_rows)
    async def _generate(self, jobs: list[dict]) -> list[dict]:
        return await asyncio.to_thread(self._sample_jobs, jobs)

    async def generate_stream(self, job: dict, budget: Budget = UNBOUNDED):
        """`generate`, streamed (call it through `handle.options(stream=True)`): yields {"deltas": [[choice, text],
        ...]} as tokens are drawn (a step with nothing safe to send yields nothing), then once {"choices",
        "prompt_tokens"} as `generate` returns them, plus "rest" (per choice, the held-back text still to send; see
        `TextStream`). Concurrent streams are batched like `generate`'s calls, in a separate batch queue. A request
        error (422, 408) is raised before the first event when the request is invalid, else in place of an event."""
        job = await asyncio.to_thread(self._prepare, {**job, "deadline": budget.deadline})  # before the batch
        try:
            async for event in self._generate_stream(job):
                if isinstance(raised(event), dict) and (event.get("deltas") or "choices" in event):
                    yield event
        finally:  # also when Serve cancels this call (the client left): the batch's sampler reads the flag
            job["abandoned"] = True

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01, batch_size_fn=_job_rows)
    async def _generate_stream(self, jobs: list[dict]):
        """Yields one event per job per sampler step (Serve's batched generator protocol), then the results (a
        job's own error in its place). The sampler runs in a worker thread; its per-step callback hands each step's
        text to this loop through a queue. Once every stream of the pass has gone (its clients left), the sampler
        stops at the next step. A failed pass is re-run one job at a time (`isolated`); the choices' `TextStream`s
        keep what they sent, so a rerun sends only text beyond it."""
        loop, queue, end = asyncio.get_running_loop(), asyncio.Queue(), object()
        at = {id(job): ji for ji, job in enumerate(jobs)}
        texts: dict[tuple[int, int], TextStream] = {}  # (job, choice) -> its text so far

        def run_pass(part: list[dict]) -> list:  # in the sampler's thread: one pass over some of the jobs
            rows, prompt_tokens = self._plan(part)
            where = [(at[id(part[q[1]])], sum(1 for o in rows[:r] if o[1] == q[1])) for r, q in enumerate(rows)]
            for (ji, c), (params, *_) in zip(where, rows):
                texts.setdefault((ji, c), TextStream(self.tok, params.stop)).restart()

            def on_step(group: list[int], t: int, nxt) -> bool:  # True: stop the pass
                self.calls["stream_steps"] += 1
                if all(job.get("abandoned") for job in part):  # every stream of the pass has gone: stop computing
                    self.calls["abandoned_passes"] += 1
                    return True
                events = [{"deltas": []} for _ in jobs]
                for r, token in zip(group, nxt.tolist()):  # [N] ids to the host: the one sync per streamed step
                    if new := texts[where[r]].push(token):
                        events[where[r][0]]["deltas"].append([where[r][1], new])
                loop.call_soon_threadsafe(queue.put_nowait, events)
                return False

            return self._sample_rows(part, rows, prompt_tokens, on_step)

        def prepare_in_place(job: dict) -> dict:  # the batch's own dicts: `generate_stream` flags them when abandoned
            job.update(self._prepare(job))
            return job

        def run() -> list:
            try:
                return isolated(run_pass, jobs, [job.get("deadline") for job in jobs], prepare_in_place)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, end)

        task = asyncio.ensure_future(asyncio.to_thread(run))
        while (events := await queue.get()) is not end:
            yield events
        outs = await task
        for ji, out in enumerate(outs):
            if isinstance(out, dict):
                out["rest"] = [texts[ji, c].rest(choice["text"]) for c, choice in enumerate(out["choices"])]
        yield outs

    def _prepare(self, job: dict) -> dict:
        """The job, checked completely and encoded where the tokenizer is, before it may join a batch: `ids` (each
        prompt's kept ids: its end, within `max_prompt_tokens`) added. Raises `RequestError` (422 naming the field)
        for text no tokenizer takes, a prompt of no tokens, a kept prompt + max_tokens past the model's context
        length, an `n` or seed past the sampler's row seeds (`sample_seed`)."""
        from lipo.models.generate import SEED_MAX, SEED_MIN, SEEDS_PER_PROMPT, context_length, sample_seed

        if "ids" in job:
            return job
        field, prompts, n, seed = job.get("field", "prompt"), job["prompts"], job["n"], job["seed"]
        check_text(list(job["stop"]), "stop")
        if not 1 <= n <= SEEDS_PER_PROMPT:
            raise RequestError(422, f"n: must be 1..{SEEDS_PER_PROMPT} (choices per prompt), got {n}", "n")
        if not (SEED_MIN <= sample_seed(seed, 0) and sample_seed(seed + len(prompts) - 1, n - 1) <= SEED_MAX):
            raise RequestError(422, f"seed: {seed} puts the sampler's row seeds past int64", "seed")
        ids, ctx = [], context_length(self.model)
        for i, prompt in enumerate(prompts):
            name = f"{field}.{i}" if len(prompts) > 1 else field
            check_text(prompt, name)
            kept = encode_prompt(prompt, self.tok)[-self.cfg.max_prompt_tokens:]
            if not kept:
                raise RequestError(422, f"{name}: encodes to no tokens", name)
            if ctx is not None and len(kept) + job["max_tokens"] > ctx:
                raise RequestError(422, f"max_tokens: {name} keeps {len(kept)} tokens (its end, within "
                                        f"max_prompt_tokens {self.cfg.max_prompt_tokens}); with max_tokens "
                                        f"{job['max_tokens']} that exceeds the model's context length {ctx}",
                                   "max_tokens")
            ids.append(kept)
        return {**job, "ids": ids}

    def _plan(self, jobs: list[dict]) -> tuple[list[tuple], list[int]]:
        """One row per choice, (params, job index, prompt ids, row seed), prompt-major; and each job's prompt
        tokens. Jobs not yet `_prepare`d (direct calls) are prepared here."""
        from lipo.models.generate import SamplingParams, sample_seed  # imports torch: replica only

        rows = []
        prompt_tokens = [0] * len(jobs)
        for ji, job in enumerate(self._prepare(job) for job in jobs):
            params = SamplingParams(temperature=job["temperature"], top_p=job["top_p"],
                                    max_new_tokens=job["max_tokens"], stop=tuple(job["stop"]))
            for i, ids in enumerate(job["ids"]):
                prompt_tokens[ji] += len(ids)
                rows += [(params, ji, ids, sample_seed(job["seed"] + i, j)) for j in range(job["n"])]
        return rows, prompt_tokens

    def _sample_jobs(self, jobs: list[dict]) -> list:
        """Each job's answer, or its own error (see `isolated`): a bad job never fails the others."""
        return isolated(lambda part: self._sample_rows(part, *self._plan(part)), jobs,
                        [job.get("deadline") for job in jobs], self._prepare)

    def _sample_rows(self, jobs: list[dict], rows: list[tuple], prompt_tokens: list[int], on_step=None) -> list:
        """Sample the planned rows, one sampler call per distinct sampling params; `on_step(group, t, nxt)`
        (optional) sees each step's ids of the rows `group`. Rows end at their job's deadline; a job past it gets
        `late_error()` instead of its (cut) answer."""
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
                             self.tok.pad_token_id, self.tok.eos_token_id, on_step=step,
                             deadlines=[jobs[rows[r][1]].get("deadline") for r in group])
            for r, ids in zip(group, out):
                if expired(jobs[rows[r][1]].get("deadline")):
                    continue  # the row was cut at the deadline: its job gets a 408 below
                raw = self.tok.decode(ids, skip_special_tokens=True)
                text = truncate_at_stop(raw, params.stop)
                done = len(ids) < params.max_new_tokens or text != raw  # EOS or a stop sequence
                bounds = token_bounds(self.tok, ids, text)
                results[r] = {"text": text, "finish_reason": "stop" if done else "length",
                              "tokens": len(bounds) - 1, "bounds": bounds}
                top = jobs[rows[r][1]].get("logprobs")
                if top is not None:
                    results[r]["logprobs"] = self._token_logprobs(rows[r][2], ids[:len(bounds) - 1], top)
        return [late_error() if expired(jobs[ji].get("deadline")) else
                {"choices": [results[r] for r in range(len(rows)) if rows[r][1] == ji],
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

    async def logprobs(self, job: dict, budget: Budget = UNBOUNDED) -> dict:
        """job: prompt, responses -> {"logprobs": [summed log p(response + EOS | prompt)], "tokens": [counts]}.
        Per request (not batched): its errors are its own. 422 past the model's context length or
        `budget.max_logprob_tokens`; 408 at `budget.deadline`, checked between forwards."""
        return await asyncio.to_thread(self._logprobs, job, budget)

    def _logprobs(self, job: dict, budget: Budget = UNBOUNDED) -> dict:
        import torch  # replica only, like every torch-loading import in this module

        from lipo.data.collate import collate_lists
        from lipo.models.generate import context_length
        from lipo.models.logps import sequence_logps

        self.calls["logprobs_requests"] += 1
        check_text(job["prompt"], "prompt")
        check_text(job["responses"], "responses")
        prompt = encode_prompt(job["prompt"], self.tok)[-self.cfg.max_prompt_tokens:]
        resp = [encode_response(r, self.tok) for r in job["responses"]]
        lengths = [len(prompt) + len(r) for r in resp]  # [K] tokens each forward row holds
        ctx, cap = context_length(self.model), budget.max_logprob_tokens
        if ctx is not None and max(lengths) > ctx:
            k = lengths.index(max(lengths))
            raise RequestError(422, f"responses.{k}: prompt + response are {lengths[k]} tokens, past the model's "
                                    f"context length {ctx}", f"responses.{k}")
        if cap is not None and sum(lengths) > cap:
            raise RequestError(422, f"responses: prompt + response tokens summed over the responses are "
                                    f"{sum(lengths)}, past limits.max_logprob_tokens ({cap})", "responses")
        device = next(self.model.parameters()).device
        logps: list[float] = []
        for lo, hi in _chunks(lengths, LOGPROB_CHUNK_TOKENS):  # a long request checks its deadline between forwards
            if expired(budget.deadline):
                raise late_error()
            item = {"prompt_ids": prompt, "response_ids": resp[lo:hi], "labels": [0.0] * (hi - lo)}
            batch = collate_lists([item], pad_id=self.tok.pad_token_id)
            with torch.no_grad():
                part = sequence_logps(self.model, {k: v.to(device) for k, v in batch.items()})[0]  # [hi - lo]
            logps += [float(x) for x in part.cpu()]
        return {"logprobs": logps, "tokens": [len(r) for r in resp]}


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

    async def score(self, prompt: Any, responses: list[str], budget: Budget = UNBOUNDED) -> list[float]:
        check_text(prompt, "prompt")  # checked before the batch: text no tokenizer takes fails only this request
        check_text(responses, "responses")
        return raised(await self._judge(("score", prompt, responses, budget.deadline)))

    async def compare(self, prompt: Any, first: str, second: str, budget: Budget = UNBOUNDED) -> float:
        for name, text in (("prompt", prompt), ("first", first), ("second", second)):
            check_text(text, name)
        return raised(await self._judge(("compare", prompt, [first, second], budget.deadline)))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _judge(self, jobs: list[tuple]) -> list:
        """Each job's result or its own error (`isolated`); a job past its deadline is not scored (408)."""
        return await asyncio.to_thread(isolated, self._run, jobs, [j[3] if len(j) > 3 else None for j in jobs])

    def _run(self, jobs: list[tuple]) -> list:
        """jobs: (what, prompt, responses[, deadline]); "score" -> rewards, "compare" -> P(first beats second)."""
        from lipo.models import reward as rw  # imports torch: replica only

        jobs = [j[:3] for j in jobs]
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
