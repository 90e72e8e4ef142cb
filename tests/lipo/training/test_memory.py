"""Training memory: the `deepspeed.stage: auto` arithmetic, weights in the training dtype, ZeRO-3 models built
partitioned, the rank-0 16-bit export, gradient checkpointing, and no reference model when lists carry ref_logps.

The DeepSpeed cases run in this process on a world-size-1 gloo group (CPU, fp32), with the builtin tiny Llama.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
from helpers import load_weights, max_abs_diff, train_config

from lipo.models.loading import count_params, load_causal_lm
from lipo.models.tiny import tiny_llama
from lipo.training import engine as eng
from lipo.training import memory
from lipo.training.memory import GiB, choose_stage, zero_bytes

N = 480e6  # a 0.48B model


def test_bytes_per_gpu_follow_the_zero_formulas():
    assert zero_bytes(0, N, 4) == 16 * N
    assert zero_bytes(1, N, 4) == 4 * N + 3 * N  # 4N + 12N/4
    assert zero_bytes(2, N, 4) == 2 * N + 3.5 * N  # 2N + 14N/4
    assert zero_bytes(3, N, 4) == 4 * N  # 16N/4
    assert zero_bytes(2, N, 4, with_reference=True) == 7.5 * N  # + 2N
    assert zero_bytes(3, N, 4, with_reference=True) == 4.5 * N  # + 2N/4
    assert zero_bytes(2, 1e9, 1, trainable=1e6) == 2e9 + 14e6  # LoRA: 2N frozen weights + 14T


def test_auto_picks_stage_2_when_it_fits_and_3_otherwise():
    stage, why = choose_stage(N, 1, 139 * GiB, with_reference=True)  # 8.64e9 B = 8.0 GiB <= 83.4 GiB
    assert stage == 2 and "0.48B params on 1 GPU of 139 GiB" in why and "~8.0 GiB" in why
    stage, why = choose_stage(8e9, 4, 80 * GiB, with_reference=True)  # stage 2: 60e9 B = 55.9 GiB > 48 GiB
    assert stage == 3 and "~33.5 GiB" in why  # 36e9 B
    stage, why = choose_stage(70e9, 2, 80 * GiB, with_reference=True)  # 630e9 B: nothing fits
    assert stage == 3 and "offload_optimizer" in why
    assert choose_stage(70e9, 1, 80 * GiB, trainable=20e6)[0] == 3  # LoRA: 2N = 140e9 B alone is over 48 GiB
    assert choose_stage(7e9, 1, 80 * GiB, trainable=20e6)[0] == 2
    assert memory.FRACTION == 0.6


def test_stage_config_defaults_to_auto_and_resolves_on_cpu(tmp_path):
    cfg = train_config(tmp_path, tmp_path / "x.jsonl")
    assert cfg.deepspeed.stage == "auto"
    assert eng.resolve_stage(cfg, 2, True) == (2, "auto: 2 on CPU")
    with pytest.raises(ValueError, match="resolve"):
        eng.ds_config(cfg, 1)
    three = train_config(tmp_path, tmp_path / "x.jsonl", "deepspeed.stage=3")
    assert eng.resolve_stage(three, 2, True) == (3, "set in the config")
    resolved = eng.with_stage(cfg, 3)
    assert resolved.deepspeed.stage == 3 and cfg.deepspeed.stage == "auto"
    assert eng.ds_config(resolved, 1)["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]
    assert eng.train_dtype(cfg) == "float32"
    assert eng.train_dtype(train_config(tmp_path, tmp_path / "x.jsonl", "scaling.use_gpu=true")) == "bfloat16"


def test_param_count_needs_no_weights():
    n, t = count_params("builtin:tiny-llama")
    assert n == t == sum(p.numel() for p in tiny_llama(seed=0).parameters())
    n_lora, t_lora = count_params("builtin:tiny-llama", 4, ["q_proj", "v_proj"])
    assert t_lora == 2 * 4 * ((64 + 64) + (64 + 32)) and n_lora == n + t_lora  # 2 layers; v_proj: 2 kv heads


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    from lipo.models.loading import enable_checkpointing

    ids = torch.randint(3, 259, (2, 24), generator=torch.Generator().manual_seed(0))

    def loss_and_grads(checkpointing: bool):
        model = load_causal_lm("builtin:tiny-llama")
        if checkpointing:
            enable_checkpointing(model)
        saved = []  # tensors kept for the backward pass during the forward
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.item(), {n: p.grad for n, p in model.named_parameters()}, sum(saved)

    loss_a, grads_a, saved_a = loss_and_grads(False)
    loss_b, grads_b, saved_b = loss_and_grads(True)
    assert saved_b < saved_a / 2  # the layers' activations were not kept: they were checkpointed
    assert loss_a == pytest.approx(loss_b, abs=1e-6)
    assert max_abs_diff(grads_a, grads_b) < 1e-6


def test_precomputed_ref_logps_load_no_reference_model(tmp_path, monkeypatch):
    from lipo.training import tasks

    loaded = []
    monkeypatch.setattr(tasks, "load_causal_lm", lambda *a, **k: loaded.append(a) or tiny_llama(seed=0))
    task = tasks.ListwiseTask(eng.with_stage(train_config(tmp_path, tmp_path / "x.jsonl"), 2))
    assert task.build_reference(2, has_ref=True) is None
    assert loaded == []


# --------------------------------------------------------------------------- DeepSpeed, in process


@pytest.fixture(scope="module")
def gloo():
    """A world-size-1 gloo process group, as Ray Train gives each CPU worker."""
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()
    for k, v in old.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def _gathered(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _zero3_cfg(tmp_path, *overrides):
    return eng.with_stage(train_config(tmp_path, tmp_path / "x.jsonl", "scaling.num_workers=1", *overrides), 3)


@pytest.mark.parametrize("source", ["builtin", "saved"])
def test_zero3_builds_partitioned_with_the_seeded_weights(gloo, tmp_path, source):
    from lipo.training.tasks import causal_lm

    spec = "builtin:tiny-llama"
    if source == "saved":  # a Hugging Face directory: from_pretrained under zero.Init
        tiny_llama(seed=0).save_pretrained(tmp_path / "hf")
        spec = str(tmp_path / "hf")
    model = causal_lm(_zero3_cfg(tmp_path, f"model.path={spec}"))
    params = list(model.parameters())
    assert all(hasattr(p, "ds_id") and p.numel() == 0 and p.ds_numel > 0 for p in params)  # no full copy
    assert max_abs_diff(_gathered(model), tiny_llama(seed=0).state_dict()) == 0.0
    from transformers.integrations import is_deepspeed_zero3_enabled

    assert not is_deepspeed_zero3_enabled()  # the loading context does not leak


def _train_and_export(tmp_path, stage: int, name: str, *overrides) -> dict[str, torch.Tensor]:
    from lipo.models.loading import load_tokenizer
    from lipo.training.tasks import causal_lm

    cfg = eng.with_stage(train_config(tmp_path, tmp_path / "x.jsonl", "scaling.num_workers=1", "optim.lr=1e-2",
                                      *overrides), stage)
    torch.manual_seed(0)  # LoRA's adapter init draws from the global RNG (in training: seeded per rank, as here)
    engine = eng.build_engine(causal_lm(cfg), cfg, 1, total_steps=3)
    ids = torch.randint(3, 259, (2, 16), generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        engine.backward(engine(input_ids=ids, labels=ids).loss)
        engine.step()
    out = tmp_path / name
    eng.export_model(engine, load_tokenizer("builtin:tiny-llama"), str(out), stage, rank=0)
    trained = _gathered(engine.module) if stage == 3 else engine.module.state_dict()
    return load_weights(out), trained


@pytest.mark.parametrize("lora", [False, True])
def test_zero3_export_equals_the_zero2_export(gloo, tmp_path, lora):
    from transformers import AutoModelForCausalLM

    extra = ("model.lora.r=4", "optim.lr=5e-2") if lora else ()
    two, _ = _train_and_export(tmp_path, 2, "two", *extra)
    three, trained = _train_and_export(tmp_path, 3, "three", *extra)
    init = tiny_llama(seed=0).state_dict()
    assert two.keys() == init.keys()  # a LoRA adapter is merged away
    assert max_abs_diff(two, init) > 1e-3  # training moved the weights
    if not lora:
        assert max_abs_diff(three, trained) == 0.0  # exactly the trained ZeRO-3 weights
    # ZeRO-2 and ZeRO-3 reduce gradients in another order: Adam's 3 steps of lr 1e-2 differ by float noise only.
    assert max_abs_diff(two, three) < 2e-4
    assert all(v.dtype == torch.float32 for v in three.values())  # CPU trains in fp32
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "three")
    assert max_abs_diff(loaded.state_dict(), three) == 0.0
