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

`stats()` counts model calls; tests use it to show that rejected requests (401, 413, 422, 503) never reached a model.
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
from lipo.serving.model_source import load_reward, resolve


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

    def info(self) -> dict:
        return {"name": self.cfg.name, "model": self.cfg.model, "loaded": self.model is not None}

    def stats(self) -> dict:
        return dict(self.calls)

    def check_health(self) -> None:
        if self.model is None or self.tok is None:
            raise RuntimeError(f"policy '{self.cfg.name}' has no model loaded")

    async def generate(self, job: dict) -> dict:
        """job: prompts (text or chat messages), n, seed, max_tokens, temperature, top_p, stop.

        Returns {"choices": [{"text", "finish_reason", "tokens"}] (prompt-major), "prompt_tokens"}.
        """
        return await self._generate(job)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01, batch_size_fn=_job_rows)
    async def _generate(self, jobs: list[dict]) -> list[dict]:
        return await asyncio.to_thread(self._sample_jobs, jobs)

    def _sample_jobs(self, jobs: list[dict]) -> list[dict]:
        from lipo.models.generate import SamplingParams, truncate_at_stop, sample_ids  # imports torch: replica only

        self.calls["generate_requests"] += len(jobs)
        rows = []  # (params, job index, prompt ids, seed), one per choice
        prompt_tokens = [0] * len(jobs)
        for ji, job in enumerate(jobs):
            params = SamplingParams(temperature=job["temperature"], top_p=job["top_p"],
                                    max_new_tokens=job["max_tokens"], stop=tuple(job["stop"]))
            for i, prompt in enumerate(job["prompts"]):
                ids = encode_prompt(prompt, self.tok)[-self.cfg.max_prompt_tokens:]
                prompt_tokens[ji] += len(ids)
                rows += [(params, ji, ids, (job["seed"] + i) * 1000 + j) for j in range(job["n"])]
        results: list[dict] = [{} for _ in rows]
        order = sorted(range(len(rows)), key=lambda r: repr(rows[r][0]))  # rows that share params share a pass
        for _, group in groupby(order, key=lambda r: repr(rows[r][0])):
            group = list(group)
            params = rows[group[0]][0]
            self.calls["forward_batches"] += 1
            out = sample_ids(self.model, [rows[r][2] for r in group], [rows[r][3] for r in group], params,
                             self.tok.pad_token_id, self.tok.eos_token_id)
            for r, ids in zip(group, out):
                raw = self.tok.decode(ids, skip_special_tokens=True)
                text = truncate_at_stop(raw, params.stop)
                done = len(ids) < params.max_new_tokens or text != raw  # EOS or a stop sequence
                results[r] = {"text": text, "finish_reason": "stop" if done else "length", "tokens": len(ids)}
        return [{"choices": [results[r] for r in range(len(rows)) if rows[r][1] == ji],
                 "prompt_tokens": prompt_tokens[ji]} for ji in range(len(jobs))]

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
