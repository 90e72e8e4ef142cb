"""Run one evaluation against a lipo server over HTTP: sample both sides, judge, estimate the KL, summarise.

    rows = read_prompts(["data/heldout.jsonl"])
    samples, metrics, plan = evaluate(cfg, rows, url="http://127.0.0.1:8000", api_key="...")

Everything goes through the server's public endpoints (/v1/completions or /v1/chat/completions, /v1/score or
/v1/compare, /v1/logprobs), so the numbers describe exactly what a user of the server gets. Requests run
`server.concurrency` prompts at a time; a 503 (a full queue) or a dropped connection is retried after the server's
Retry-After, so a busy server slows the evaluation down rather than failing it.

KL estimate: the mean over the policy's samples y of log pi(y|x) - log pi_ref(y|x), each summed over the response
tokens with EOS (`lipo.models.logps.sequence_logps` on the server, the training loss's own quantity), where the
reference is the baseline model.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import httpx
import numpy as np
import pyarrow as pa

from lipo.data.readers import read_records
from lipo.data.records import LIST_SCHEMA, InvalidRecord, Problem, content_id, prompt_of, record_to_row, row_to_record
from lipo.errors import LipoError
from lipo.evaluation.config import EvalConfig
from lipo.evaluation.winrate import load_judge, outcomes_from_probs, outcomes_from_rewards, win_rate


@dataclass
class Sample:
    id: str
    prompt: Any
    policy: str
    baseline: str
    policy_tokens: int | None = None
    baseline_tokens: int | None = None
    reward_policy: float | None = None  # pairwise judge: P(policy beats baseline) and 1 - P
    reward_baseline: float | None = None
    outcome: float | None = None
    fn_policy: float | None = None
    fn_baseline: float | None = None
    fn_outcome: float | None = None
    log_ratio: float | None = None  # log pi(y|x) - log pi_ref(y|x) of the policy's sample


EVAL_PROMPT_SCHEMA = pa.schema([("id", pa.string()), ("prompt", pa.string()),
                                LIST_SCHEMA.field("prompt_messages"), ("reference", pa.string())])


def _prompt_row(item: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """`to_row` for `read_records`: the prompt and id are checked by the list-record rules; `reference` is optional."""
    rec = row_to_record({"id": item.get("id"), "prompt": item.get("prompt"),
                         "prompt_messages": item.get("prompt_messages"), "responses": ["a", "b"],
                         "labels": [0.0, 0.0]})  # placeholder responses: only the prompt is being validated
    ref = item.get("reference")
    if ref is not None and not isinstance(ref, str):
        raise InvalidRecord([Problem("reference", f"must be a string, got {type(ref).__name__}",
                                     "reference: not a string")])
    rid = rec.id if item.get("id") is not None else content_id(rec.prompt, [])
    row = record_to_row(rec)
    return rid, {"id": rid, "prompt": row["prompt"], "prompt_messages": row["prompt_messages"], "reference": ref}


def read_prompts(paths: list[str], max_prompts: int | None = None) -> list[dict]:
    """Rows {id, prompt (text or messages), reference (or None)}; a bad row is a DataError naming file, row, field.

    Any file with a `prompt` works: prompt files, SFT demonstrations, list records (held-out lists).
    """
    table, _ = read_records(paths, _prompt_row, EVAL_PROMPT_SCHEMA)
    if max_prompts is not None:
        table = table.slice(0, max_prompts)
    return [{"id": r["id"], "prompt": prompt_of(r), "reference": r["reference"]} for r in table.to_pylist()]


class Client:
    """A tiny async client for a lipo server: bearer auth, bounded retries on 503 and dropped connections."""

    def __init__(self, url: str, api_key: str | None, timeout_s: float, retries: int):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s)
        self.retries = retries

    async def request(self, method: str, path: str, body: dict | None = None) -> dict:
        for attempt in range(self.retries + 1):
            try:
                r = await self.http.request(method, path, json=body)
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    raise LipoError(f"{path}: cannot reach the server at {self.http.base_url} ({exc})") from None
                await asyncio.sleep(1.0)
                continue
            if r.status_code == 503 and attempt < self.retries:
                await asyncio.sleep(float(r.headers.get("retry-after", 1)))
                continue
            if r.status_code != 200:
                try:
                    message = r.json()["error"]["message"]
                except Exception:  # not lipo's error body (a proxy's): show the text
                    message = r.text[:200]
                raise LipoError(f"{path}: server answered {r.status_code}: {message}")
            return r.json()
        raise AssertionError("unreachable")

    async def close(self) -> None:
        await self.http.aclose()


async def _sample(client: Client, model: str, prompt: Any, seed: int, cfg: EvalConfig) -> tuple[str, int]:
    s = cfg.sampling
    body = {"model": model, "max_tokens": s.max_tokens, "temperature": s.temperature, "top_p": s.top_p,
            "seed": seed, "n": 1, **({"stop": s.stop} if s.stop else {})}
    if isinstance(prompt, str):
        out = await client.request("POST", "/v1/completions", {**body, "prompt": prompt})
        return out["choices"][0]["text"], out["usage"]["completion_tokens"]
    out = await client.request("POST", "/v1/chat/completions", {**body, "messages": prompt})
    return out["choices"][0]["message"]["content"], out["usage"]["completion_tokens"]


async def _one(client: Client, i: int, row: dict, plan: dict, cfg: EvalConfig, judge_fn) -> Sample:
    seed = cfg.sampling.seed + 2 * i
    policy_task = _sample(client, plan["policy"], row["prompt"], seed, cfg)
    if plan["use_reference"]:
        (a, a_tok), (b, b_tok) = await policy_task, (row["reference"], None)
    else:
        (a, a_tok), (b, b_tok) = await asyncio.gather(
            policy_task, _sample(client, plan["baseline"], row["prompt"], seed + 1, cfg))
    s = Sample(id=row["id"], prompt=row["prompt"], policy=a, baseline=b, policy_tokens=a_tok, baseline_tokens=b_tok)
    calls = {}
    if plan["reward_kind"] == "pointwise":
        calls["score"] = client.request("POST", "/v1/score", {"prompt": row["prompt"], "responses": [a, b]})
    elif plan["reward_kind"] == "pairwise":
        calls["compare"] = client.request("POST", "/v1/compare", {"prompt": row["prompt"], "first": a, "second": b})
    if plan["kl_ref"] is not None:
        for side, model in (("lp_policy", plan["policy"]), ("lp_ref", plan["kl_ref"])):
            calls[side] = client.request("POST", "/v1/logprobs", {"model": model, "prompt": row["prompt"],
                                                                  "responses": [a]})
    got = dict(zip(calls, await asyncio.gather(*calls.values())))
    if "score" in got:
        s.reward_policy, s.reward_baseline = got["score"]["rewards"]
    if "compare" in got:
        p = got["compare"]["probability"]
        s.reward_policy, s.reward_baseline = p, 1.0 - p
    if "lp_policy" in got:
        s.log_ratio = got["lp_policy"]["logprobs"][0] - got["lp_ref"]["logprobs"][0]
    if judge_fn is not None:
        s.fn_policy, s.fn_baseline = float(judge_fn(row["prompt"], a)), float(judge_fn(row["prompt"], b))
    return s


async def _plan(client: Client, cfg: EvalConfig, rows: list[dict]) -> dict:
    """Which models answer for each side, checked against the server's /v1/models before any sampling."""
    cards = {c["id"]: c for c in (await client.request("GET", "/v1/models"))["data"]}
    policies = [k for k, c in cards.items() if c.get("role", "policy") == "policy"]
    rewards = [c for c in cards.values() if c.get("role") == "reward"]
    if cfg.policy_id() not in policies:
        raise LipoError(f"policy_model: '{cfg.policy_id()}' is not served (served: {', '.join(policies)})")
    has_refs = all(r["reference"] is not None for r in rows)
    use_reference = cfg.baseline == "reference" or (cfg.baseline == "auto" and has_refs)
    if use_reference and not has_refs:
        missing = next(r["id"] for r in rows if r["reference"] is None)
        raise LipoError(f"baseline: reference: prompt '{missing}' has no `reference` response")
    baseline = cfg.baseline_id()
    if baseline is not None and baseline not in policies:
        raise LipoError(f"baseline_model: '{baseline}' is not served (served: {', '.join(policies)})")
    if not use_reference and baseline is None:
        raise LipoError("baseline: no baseline model (set baseline_model or serve.baseline) and the prompts carry "
                        "no `reference` responses")
    if cfg.judge.reward_model and not rewards:
        raise LipoError("judge.reward_model: the server has no reward model (set serve.reward, or judge.function)")
    return {"policy": cfg.policy_id(), "baseline": baseline, "use_reference": use_reference,
            "reward_kind": rewards[0].get("kind", "pointwise") if cfg.judge.reward_model else None,
            "kl_ref": baseline if cfg.kl and baseline is not None else None}


async def _run(cfg: EvalConfig, rows: list[dict], url: str, api_key: str | None) -> tuple[list[Sample], dict]:
    judge_fn = load_judge(cfg.judge.function) if cfg.judge.function else None
    client = Client(url, api_key, cfg.server.timeout_s, cfg.server.retries)
    try:
        plan = await _plan(client, cfg, rows)
        gate = asyncio.Semaphore(cfg.server.concurrency)

        async def bounded(i: int, row: dict) -> Sample:
            async with gate:
                return await _one(client, i, row, plan, cfg, judge_fn)

        samples = await asyncio.gather(*(bounded(i, r) for i, r in enumerate(rows)))
    finally:
        await client.close()
    return list(samples), plan


def _same_text_ties(samples: list[Sample], out: np.ndarray) -> np.ndarray:
    """Identical answers tie, whatever the judge's numbers say: a reward model can score the same text a few 1e-6
    apart in differently padded batches, which would turn ties into coin-flip wins and losses."""
    same = np.array([s.policy == s.baseline for s in samples])
    return np.where(same, 0.5, out)


def summarize(samples: list[Sample], cfg: EvalConfig, plan: dict) -> dict[str, float]:
    """The evaluation's metrics (names as logged to MLflow)."""
    b, tie = cfg.bootstrap, cfg.judge.tie_eps
    m: dict[str, float] = {"eval/prompts": float(len(samples)),
                           "eval/len_chars_policy": float(np.mean([len(s.policy) for s in samples])),
                           "eval/len_chars_baseline": float(np.mean([len(s.baseline) for s in samples]))}
    if samples[0].policy_tokens is not None:
        m["eval/len_tokens_policy"] = float(np.mean([s.policy_tokens for s in samples]))
    if samples[0].baseline_tokens is not None:
        m["eval/len_tokens_baseline"] = float(np.mean([s.baseline_tokens for s in samples]))
    if plan["reward_kind"] is not None:
        ra = [s.reward_policy for s in samples]
        rb = [s.reward_baseline for s in samples]
        out = outcomes_from_probs(ra, tie) if plan["reward_kind"] == "pairwise" else outcomes_from_rewards(ra, rb, tie)
        out = _same_text_ties(samples, out)
        for s, o in zip(samples, out):
            s.outcome = float(o)
        m.update(win_rate(out, b.resamples, b.confidence, b.seed).as_metrics("eval/"))
        m.update({"eval/reward_policy": float(np.mean(ra)), "eval/reward_baseline": float(np.mean(rb)),
                  "eval/reward_gain": float(np.mean(ra) - np.mean(rb))})
    if cfg.judge.function is not None:
        fa, fb = [s.fn_policy for s in samples], [s.fn_baseline for s in samples]
        out = _same_text_ties(samples, outcomes_from_rewards(fa, fb, tie))
        for s, o in zip(samples, out):
            s.fn_outcome = float(o)
        m.update(win_rate(out, b.resamples, b.confidence, b.seed).as_metrics("eval/fn_"))
        m.update({"eval/fn_policy": float(np.mean(fa)), "eval/fn_baseline": float(np.mean(fb))})
    if plan["kl_ref"] is not None:
        m["eval/kl"] = float(np.mean([s.log_ratio for s in samples]))
    return m


def evaluate(cfg: EvalConfig, rows: list[dict], url: str, api_key: str | None) -> tuple[list[Sample], dict, dict]:
    """(samples, metrics, plan) of one evaluation against the server at `url`."""
    samples, plan = asyncio.run(_run(cfg, rows, url, api_key))
    return samples, summarize(samples, cfg, plan), plan


def sample_rows(samples: list[Sample]) -> list[dict]:
    return [asdict(s) for s in samples]
