"""Serving pieces without a running Serve: config, model sources (MLflow URIs), the deployments' model code, the
ingress's timeout and the routes' error bodies, each called directly."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient

from lipo import tracking
from lipo.config import load_config
from lipo.data.collate import collate_lists
from lipo.data.tokenize import encode_prompt, encode_response
from lipo.errors import ConfigError, LipoError
from lipo.models.generate import SamplingParams, sample, sample_ids
from lipo.models.loading import load_causal_lm
from lipo.models.logps import sequence_logps
from lipo.models.reward import pairwise_matrix, pointwise_rewards, winrate_labels
from lipo.models.tiny import byte_tokenizer, tiny_llama
from lipo.serving.app import Ingress
from lipo.serving.config import ServeArgs, ServeConfig
from lipo.serving.deployments import PolicyModel, RewardModel, TextStream, token_bounds
from lipo.serving.model_source import check_source, resolve
from lipo.serving.routes import install_error_handlers, router
from lipo.serving.security import ApiError

REPO = Path(__file__).resolve().parents[3]


def test_config_defaults_names_and_deployment_options():
    cfg = load_config(ServeConfig, None, ["baseline.model=builtin:tiny-llama"])
    assert (cfg.policy.name, cfg.baseline.name, cfg.reward.name) == ("policy", "baseline", "reward")
    opts = cfg.policy.deployment.options("LipoPolicy")
    assert opts["num_replicas"] == 1 and opts["ray_actor_options"] == {"num_cpus": 0.25, "num_gpus": 0.0}
    assert opts["max_queued_requests"] == 32 and "autoscaling_config" not in opts
    auto = load_config(ServeConfig, None, ["reward.deployment.autoscaling.max_replicas=3"])
    ropts = auto.reward.deployment.options("LipoReward")
    assert ropts["autoscaling_config"]["max_replicas"] == 3 and "num_replicas" not in ropts
    with pytest.raises(ConfigError, match="model names must be distinct"):
        load_config(ServeConfig, None, ["baseline.name=policy"])
    with pytest.raises(ConfigError, match=r"batch.max_batch_size \(8\) exceeds deployment.max_ongoing_requests"):
        load_config(ServeConfig, None, ["reward.deployment.max_ongoing_requests=4"])
    with pytest.raises(ConfigError, match="min_replicas must not exceed max_replicas"):
        load_config(ServeConfig, None, ["policy.deployment.autoscaling={min_replicas: 3, max_replicas: 2}"])


def test_example_configs_load():
    cfg = load_config(ServeConfig, REPO / "configs/serve_example.yaml")
    assert set(cfg.policies()) == {"policy", "sft"} and cfg.http.host == "127.0.0.1"
    app = yaml.safe_load((REPO / "deploy/serve/lipo.yaml").read_text())["applications"][0]
    assert app["import_path"] == "lipo.serving.app:build_app"
    args = ServeArgs.model_validate(app["args"])  # what Serve's typed builder does with `args`
    load_config(ServeConfig, args.config, args.overrides)


def test_serve_args_section_of_a_larger_file(tmp_path):
    def load(args: ServeArgs) -> ServeConfig:  # what build_app does with its args
        return load_config(ServeConfig, args.config, args.overrides, section=args.section)

    f = tmp_path / "pipeline.yaml"
    f.write_text("train: {x: 1}\nserve:\n  policy: {model: builtin:tiny-llama, name: mine}\n")
    cfg = load(ServeArgs(config=str(f), section="serve", overrides=["limits.max_n=2"]))
    assert cfg.policy.name == "mine" and cfg.limits.max_n == 2
    with pytest.raises(ConfigError, match="has no `eval` section"):
        load(ServeArgs(config=str(f), section="eval"))
    with pytest.raises(ConfigError, match=r"\[serve\]: policy.bogus: unknown key"):
        load(ServeArgs(config=str(f), section="serve", overrides=["policy.bogus=1"]))
    with pytest.raises(ConfigError, match=r"limits.max_n \(16\) exceeds policy.batch.max_batch_size \(8\)"):
        load(ServeArgs(overrides=["limits.max_n=16"]))


def test_check_source():
    check_source("builtin:tiny-llama", "policy.model")
    check_source("builtin:tiny-reward", "reward.model", reward=True)
    check_source("models:/lipo-policy@champion", "policy.model")
    with pytest.raises(LipoError, match="policy.model: model directory not found"):
        check_source("/no/such/dir", "policy.model")
    with pytest.raises(LipoError, match="reward.model: unknown builtin reward model"):
        check_source("builtin:tiny-llama", "reward.model", reward=True)
    with pytest.raises(LipoError, match="incomplete MLflow URI"):
        check_source("runs:/", "policy.model")


def test_resolve_mlflow_uris(tmp_path):
    """The training stage logs its HF dir under `model/`; runs:/ID/model, runs:/ID and models:/NAME@ALIAS all
    resolve to a directory `load_causal_lm` reads."""
    hf = tmp_path / "hf"
    tiny_llama(seed=0).save_pretrained(hf)
    byte_tokenizer().save_pretrained(hf)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id, _ = tracking.open_run(uri, "lipo", "train-x", "train")
    tracking.log_artifacts(uri, run_id, hf, "model")
    c = tracking.client(uri)
    c.create_registered_model("lipo-policy")
    mv = c.create_model_version("lipo-policy", f"runs:/{run_id}/model", run_id=run_id)
    c.set_registered_model_alias("lipo-policy", "champion", mv.version)
    for spec in (f"runs:/{run_id}/model", f"runs:/{run_id}", "models:/lipo-policy@champion"):
        local = resolve(spec, uri, cache_dir=str(tmp_path / spec.replace(":", "").replace("/", "_")))
        assert (Path(local) / "config.json").is_file(), spec
    assert sum(p.numel() for p in load_causal_lm(local).parameters()) > 0
    assert resolve("builtin:tiny-llama") == "builtin:tiny-llama"
    with pytest.raises(LipoError, match="cannot download models:/missing@x"):
        resolve("models:/missing@x", uri, cache_dir=str(tmp_path / "missing"))


def test_policy_code_matches_the_shared_sampler_and_logps():
    """Choice j of prompt i with request seed s is sample(..., seeds=[s + i]) choice j, whatever shares the batch;
    /v1/logprobs is sequence_logps on the training tokenisation."""
    policy = PolicyModel.func_or_class({"model": "builtin:tiny-llama", "name": "policy"})
    base = {"n": 2, "max_tokens": 6, "temperature": 1.0, "top_p": 0.9, "stop": []}
    jobs = [{**base, "prompts": ["Hello", "Hi there"], "seed": 7},
            {**base, "prompts": ["Other"], "seed": 3, "temperature": 0.0}]  # different params: own pass
    out = policy._sample_jobs(jobs)
    want = sample(policy.model, policy.tok, ["Hello", "Hi there"], 2, [7, 8],
                  SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=6))
    assert [c["text"] for c in out[0]["choices"]] == want[0] + want[1]
    assert all(c["finish_reason"] in ("stop", "length") for c in out[0]["choices"])
    assert policy.stats() == {"generate_requests": 2, "forward_batches": 2}

    got = policy._logprobs({"prompt": "Hello", "responses": ["ab", "c"]})
    item = {"prompt_ids": encode_prompt("Hello", policy.tok), "labels": [0.0, 0.0],
            "response_ids": [encode_response(r, policy.tok) for r in ("ab", "c")]}
    with torch.no_grad():
        direct = sequence_logps(policy.model, collate_lists([item], policy.tok.pad_token_id))[0]
    assert got["logprobs"] == pytest.approx(direct.tolist(), abs=1e-6) and got["tokens"] == [3, 2]


def test_token_bounds_split_the_text_by_token():
    """Byte tokens of "aé b": a, 0xC3, 0xA9, space, b. The first byte of é completes no character (empty span), the
    second gets é: starts 0, 1, 1, 2, 3 and the end 4. Trailing special tokens (pad, BOS) decode to nothing. A stop
    cut after "aé" keeps the three tokens that start before it; an empty text keeps none."""
    tok = byte_tokenizer()
    ids = tok("aé b", add_special_tokens=False)["input_ids"]
    assert len(ids) == 5 and token_bounds(tok, ids, "aé b") == [0, 1, 1, 2, 3, 4]
    assert token_bounds(tok, ids + [0, 1], "aé b") == [0, 1, 1, 2, 3, 4, 4, 4]
    assert token_bounds(tok, ids, "aé") == [0, 1, 1, 2] and token_bounds(tok, ids, "") == [0]


def test_text_stream_holds_back_partial_characters_and_stop_prefixes():
    """Byte tokens of "aé b!": the first byte of é sends nothing (a partial character), the second sends é; a tail
    that may begin a stop sequence waits; a stop sequence cuts exactly like `truncate_at_stop` and ends the
    stream; `rest` sends what was held back, so the pieces always join to the final text."""
    tok = byte_tokenizer()
    ids = tok("aé b!", add_special_tokens=False)["input_ids"]  # a, 0xC3, 0xA9, space, b, !

    def pieces(stop, tokens):
        ts = TextStream(tok, stop)
        return [ts.push(i) for i in tokens], ts

    got, ts = pieces((), ids + [tok.eos_token_id, ids[0]])
    assert got == ["a", "", "é", " ", "b", "!", "", ""] and ts.rest("aé b!") == ""  # nothing after EOS
    got, ts = pieces((" x",), ids[:5])
    assert got == ["a", "", "é", "", " b"]  # " " may begin " x": held until "b" rules it out
    got, ts = pieces(("b!",), ids + ids)
    assert got == ["a", "", "é", " ", "", ""] + [""] * 6 and ts.rest("aé ") == ""  # cut before "b!", then ended
    got, ts = pieces(("b!",), ids[:5] + [tok.eos_token_id])
    assert got == ["a", "", "é", " ", "", ""] and ts.rest("aé b") == "b"  # the held "b" goes out at the end


@pytest.fixture(scope="module")
def stream_policy():
    return PolicyModel.func_or_class({"model": "builtin:tiny-llama", "name": "policy"})


STREAM_JOB = {"prompts": ["Hello"], "n": 2, "seed": 4, "max_tokens": 16, "temperature": 1.0, "top_p": 1.0,
              "stop": [], "logprobs": None}
STREAM_JOBS = [STREAM_JOB, {**STREAM_JOB, "prompts": ["Hi", "Yo"], "n": 1, "seed": 9, "stop": ["e", "a"]}]


def _held_stream(policy, jobs: list[dict], after_first=lambda: None) -> tuple[list, list, int]:
    """The policy's batched stream body (what Serve runs per batch) with the sampler held at its first decode
    forward until the test has read the first event (then `after_first()` runs and the hold ends): (the first
    event, the later events, forwards run). A stream that was not incremental would time out on the first read."""
    gate, forwards = threading.Event(), []

    def hold(module, args, kwargs):
        forwards.append(1)
        if len(forwards) == 2:  # the prefill was forward 1; step 0 is drawn, step 1's forward waits for the gate
            gate.wait(30)

    async def run():
        events = type(policy)._generate_stream.__wrapped__(policy, jobs)
        first = await asyncio.wait_for(events.__anext__(), 30)
        assert not gate.is_set() and len(forwards) <= 2  # read while the sampler cannot pass its 2nd forward
        after_first()
        gate.set()
        return first, [e async for e in events]

    hook = policy.model.register_forward_pre_hook(hold, with_kwargs=True)
    try:
        first, rest = asyncio.run(run())
    finally:
        gate.set()
        hook.remove()
    return first, rest, len(forwards)


def test_policy_stream_yields_each_step_while_the_sampler_is_still_running(stream_policy):
    """The deterministic proof of incremental streaming: the first step's event is read while the sampler is held
    after the prefill and one draw, with 15 of 16 steps still to come. Then: one event per job per sampler step,
    and each choice's deltas + rest join to exactly `generate`'s text (two jobs in the batch, one with stop
    sequences: two sampler passes)."""
    policy = stream_policy
    want = [[c["text"] for c in out["choices"]] for out in policy._sample_jobs(STREAM_JOBS)]
    steps_before = policy.calls["stream_steps"]
    first, rest, forwards = _held_stream(policy, [dict(j) for j in STREAM_JOBS])
    assert len(first) == 2 and set(first[0]) == {"deltas"} and forwards > 2  # the pass went on after the hold
    steps, final = [first] + rest[:-1], rest[-1]
    assert len(steps) == policy.calls["stream_steps"] - steps_before  # one event per job per sampler step
    for ji, out in enumerate(final):
        joined = ["".join(t for e in steps for i, t in e[ji]["deltas"] if i == c) + out["rest"][c]
                  for c in range(len(out["choices"]))]
        assert joined == [c["text"] for c in out["choices"]] == want[ji]


def test_policy_stream_stops_when_every_reader_has_gone(stream_policy):
    """When every stream of a batch has gone (`generate_stream` flags its job when Serve cancels it), the sampler
    stops at the next step: the held pass ends after its 2nd step, the second pass after its first (prefill + 0
    decode forwards), where 16 steps each were asked; one gone stream of two changes nothing."""
    policy = stream_policy
    jobs = [dict(j) for j in STREAM_JOBS]

    def leave():
        for job in jobs:
            job["abandoned"] = True

    before = policy.calls["abandoned_passes"]
    _, rest, forwards = _held_stream(policy, jobs, after_first=leave)
    assert forwards == 3 and policy.calls["abandoned_passes"] - before == 2
    assert len(rest) == 1 and len(rest[0]) == 2  # no step event after the flag, only the (unread) results
    jobs = [dict(j) for j in STREAM_JOBS]
    _, rest, forwards = _held_stream(policy, jobs, after_first=lambda: jobs[0].update(abandoned=True))
    assert forwards > 3 and policy.calls["abandoned_passes"] - before == 2


def test_policy_logprobs_are_the_raw_model_logprobs():
    """Sampled at temperature 1.3 with top-p 0.8, the log-probs are still the model's own: log_softmax of one
    forward over prompt + completion, gathered at the sampled ids (which are the shared sampler's); top-k sorted."""
    policy = PolicyModel.func_or_class({"model": "builtin:tiny-llama", "name": "policy"})
    job = {"prompts": ["Hello"], "n": 2, "seed": 4, "max_tokens": 6, "temperature": 1.3, "top_p": 0.8, "stop": [],
           "logprobs": 3}
    out = policy._sample_jobs([job])[0]
    prompt_ids = encode_prompt("Hello", policy.tok)
    params = SamplingParams(temperature=1.3, top_p=0.8, max_new_tokens=6)
    ids = sample_ids(policy.model, [prompt_ids] * 2, [4000, 4001], params, policy.tok.pad_token_id,
                     policy.tok.eos_token_id)
    assert out["prompt_tokens"] == len(prompt_ids)
    for choice, row in zip(out["choices"], ids):
        with torch.no_grad():
            ref = torch.log_softmax(policy.model(input_ids=torch.tensor([prompt_ids + row])).logits[0], -1)  # [L, V]
        ref = ref[len(prompt_ids) - 1:-1]  # [T, V]: position t predicts row[t]
        lp = choice["logprobs"]
        assert choice["tokens"] == len(row) == len(lp["values"]) and choice["bounds"][-1] == len(choice["text"])
        assert lp["values"] == pytest.approx([ref[t, i].item() for t, i in enumerate(row)], abs=1e-5)
        assert lp["tokens"] == [policy.tok.decode([i]) for i in row]
        for t, top in enumerate(lp["top"]):
            assert [v for _, v in top] == pytest.approx(ref[t].topk(3).values.tolist(), abs=1e-5)
    assert "logprobs" not in policy._sample_jobs([{**job, "logprobs": None}])[0]["choices"][0]


@pytest.mark.parametrize("kind", ["pointwise", "pairwise"])
def test_reward_code_matches_the_reward_functions(kind):
    rm = RewardModel.func_or_class({"model": "builtin:tiny-reward", "kind": kind})
    prompt, responses = [{"role": "user", "content": "2+2?"}], ["4", "five", "22"]
    score, compare, other = rm._run([("score", prompt, responses), ("compare", "q", ["a", "bb"]),
                                     ("score", "other", ["x", "yyyy"])])
    if kind == "pointwise":
        want = pointwise_rewards(rm.model, rm.tok, prompt, responses)
        r = pointwise_rewards(rm.model, rm.tok, "q", ["a", "bb"])
        want_p = torch.sigmoid(r[0] - r[1]).item()
    else:
        want = winrate_labels(pairwise_matrix(rm.model, rm.tok, prompt, responses))
        want_p = pairwise_matrix(rm.model, rm.tok, "q", ["a", "bb"])[0, 1].item()
    assert score == pytest.approx(want.tolist(), abs=1e-5)
    assert compare == pytest.approx(want_p, abs=1e-5) and len(other) == 2


def test_ingress_timeout_is_a_408_and_cancels_the_call():
    class SlowCall:
        cancelled = False

        def remote(self, *args, budget):
            SlowCall.budget = budget  # the replica's deadline: the same timeout, on the wall clock
            return self

        def __await__(self):
            return asyncio.sleep(10).__await__()

        def cancel(self):
            SlowCall.cancelled = True

    ingress = SimpleNamespace(cfg=load_config(ServeConfig, None, ["limits.request_timeout_s=0.05"]))
    before = time.time()
    with pytest.raises(ApiError) as exc:
        asyncio.run(Ingress.func_or_class.call(ingress, SlowCall()))
    assert exc.value.status == 408 and "within 0.05s" in exc.value.message and SlowCall.cancelled
    assert before + 0.05 <= SlowCall.budget.deadline <= time.time() and SlowCall.budget.max_logprob_tokens == 8192


@pytest.mark.parametrize("exc", [RuntimeError("secret detail"), ApiError(503, "at capacity")])
def test_routes_render_model_errors_as_openai_bodies(exc):
    """The router and error handlers without Serve: a model error is a bare 500, an overload a 503 + Retry-After."""
    async def call(*args):
        raise exc

    ingress = SimpleNamespace(cfg=load_config(ServeConfig, None, []), call=call,
                              reward_handle=lambda name: SimpleNamespace(score=None))
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router(ingress))
    r = TestClient(app, raise_server_exceptions=False).post("/v1/score", json={"prompt": "p", "responses": ["a"]})
    status = 503 if isinstance(exc, ApiError) else 500
    assert r.status_code == status and r.json()["error"]["code"] == status
    assert "secret" not in r.text and r.headers.get("retry-after") == ("1" if status == 503 else None)
