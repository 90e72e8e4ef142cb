"""GPU check: ZeRO-3 bf16 LiPO-lambda training of a ~0.5B Llama-style model at K=8, single process, no Ray.

Run on a GPU machine:  bash benchmarks/gpu_check.sh          (about 2 minutes on one H100/H200)
CPU smoke test:        python benchmarks/gpu_check.py --smoke  (tiny model, gloo, fp32; checks the code path only)

One process initialises torch.distributed itself (world size 1, nccl) and wraps a random-init Llama (hidden 1024,
24 layers, GQA 16/8 heads, MLP 4608, vocab 32000: ~0.48B parameters) in a DeepSpeed ZeRO-3 bf16 engine with torch
AdamW, like `lipo.training.engine` does. A frozen bf16 copy is the reference. Each step: pack lists (prompt 256
tokens, K=8 responses of 128 tokens) -> reference log-probs (no grad) -> policy log-probs -> LiPO-lambda ->
engine.backward -> engine.step. Packed and unpacked steps alternate so their speed can be compared on the card.

Prints one JSON object (last line of stdout) with tokens/s, MFU against the card's bf16 dense peak (spec sheet, and
a measured 8192^3 bf16 matmul), and peak memory; writes benchmarks/results/gpu_check.json, and $OUT/gpu_check.json
when $OUT is set. On any failure the JSON holds "error" and the traceback, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "platform"))  # lipo importable without installing it

from lipo.losses import LOSSES  # noqa: E402
from lipo.models.packed_logps import batch_logps, batch_token_count, make_batch, supports_packing  # noqa: E402

# Dense bf16 tensor-core peaks from NVIDIA's spec sheets (FLOP/s, no sparsity), matched on the device name.
BF16_PEAK = [("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12),
             ("A10G", 70e12), ("L4", 121e12)]
BETA = 0.1


def model_config(smoke: bool):
    from transformers import LlamaConfig

    if smoke:
        return LlamaConfig(vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                           tie_word_embeddings=False)
    return LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=4608, num_hidden_layers=24,
                       num_attention_heads=16, num_key_value_heads=8, max_position_embeddings=4096,
                       tie_word_embeddings=False)


def random_lists(n: int, k: int, prompt_len: int, response_len: int, vocab: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt_ids": [rng.randrange(3, vocab) for _ in range(prompt_len)],
             "response_ids": [[rng.randrange(3, vocab) for _ in range(response_len)] for _ in range(k)],
             "labels": [float(k - 1 - j) for j in range(k)], "ref_logps": None} for _ in range(n)]


def ds_config(lists_per_step: int, bf16: bool, n_params: int) -> dict:
    bucket = int(max(1e5, min(5e8, n_params)))
    return {"train_micro_batch_size_per_gpu": lists_per_step, "gradient_accumulation_steps": 1,
            "train_batch_size": lists_per_step,
            "zero_optimization": {"stage": 3, "reduce_bucket_size": bucket, "allgather_bucket_size": bucket},
            "bf16": {"enabled": bf16}, "gradient_clipping": 1.0, "steps_per_print": 10**9,
            "optimizer": {"type": "AdamW", "params": {"lr": 1e-6, "weight_decay": 0.0, "torch_adam": True}}}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    t0, reps = time.perf_counter(), 10
    for _ in range(reps):
        a @ b
    sync(device)
    return reps * 2 * n**3 / (time.perf_counter() - t0)


def parity_check(device: torch.device) -> float:
    """Max |packed - unpacked| summed log-prob on this device's kernels, tiny fp32 Llama (must be ~1e-5)."""
    from lipo.models.tiny import tiny_llama

    model = tiny_llama(seed=0).to(device)
    items = random_lists(3, 4, 40, 12, 259, seed=1)
    with torch.no_grad():
        a = batch_logps(model, {k: v.to(device) for k, v in make_batch(items, 0, False).items()})
        b = batch_logps(model, {k: v.to(device) for k, v in make_batch(items, 0, True, token_budget=400).items()})
    return float((a - b).abs().max())


def run(args) -> dict:
    import deepspeed
    from transformers import LlamaForCausalLM

    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        raise RuntimeError("no CUDA device visible; use --smoke for a CPU check of the code path")
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    for key, val in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29533"), ("RANK", "0"), ("WORLD_SIZE", "1"),
                     ("LOCAL_RANK", "0")):
        os.environ.setdefault(key, val)
    if cuda:
        torch.cuda.set_device(device)
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    out: dict = {"device": torch.cuda.get_device_name(0) if cuda else "cpu (smoke)", "torch": torch.__version__,
                 "deepspeed": deepspeed.__version__, "engine": "deepspeed ZeRO-3", "bf16": cuda}
    out["parity_max_abs_diff_fp32"] = parity_check(device)

    config = model_config(args.smoke)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config)  # fp32 init on the device (fast); DeepSpeed casts to bf16
    ref = copy.deepcopy(model).to(torch.bfloat16 if cuda else torch.float32).eval().requires_grad_(False)
    emb = model.get_input_embeddings().weight
    n_params = sum(p.numel() for p in model.parameters())
    n_matmul = n_params - emb.numel()
    engine, *_ = deepspeed.initialize(model=model, model_parameters=list(model.parameters()),
                                      config=ds_config(args.lists_per_step, cuda, n_params))
    engine.train()
    assert supports_packing(engine) and supports_packing(ref)
    out.update({"params": n_params, "matmul_params": n_matmul, "K": args.k, "prompt_len": args.prompt_len,
                "response_len": args.response_len, "lists_per_step": args.lists_per_step})

    items = random_lists(args.lists_per_step * 4, args.k, args.prompt_len, args.response_len, config.vocab_size, 0)
    batches = [items[i:i + args.lists_per_step] for i in range(0, len(items), args.lists_per_step)]
    loss_fn = LOSSES["lambda"]

    def step(lists, packing: bool) -> int:
        batch = {k: v.to(device) for k, v in make_batch(lists, 0, packing).items()}
        with torch.no_grad():
            ref_logps = batch_logps(ref, batch)  # [B, K]
        scores = BETA * (batch_logps(engine, batch) - ref_logps)  # [B, K]
        loss = loss_fn(scores, batch["labels"], batch["list_mask"])
        engine.backward(loss)
        engine.step()
        return batch_token_count(batch)

    for i in range(args.warmup):
        step(batches[i % len(batches)], True)
        step(batches[i % len(batches)], False)
    times = {True: [], False: []}
    tokens = {True: 0, False: 0}
    peak_mem = {True: 0, False: 0}
    for i in range(args.steps):
        for packing in (True, False):  # alternate, so both see the same clocks and memory state
            sync(device)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            tokens[packing] += step(batches[i % len(batches)], packing)
            sync(device)
            times[packing].append(time.perf_counter() - t0)
            if cuda:
                peak_mem[packing] = max(peak_mem[packing], torch.cuda.max_memory_allocated())
    name = out["device"]
    spec = next((peak for key, peak in BF16_PEAK if key in name), None) if cuda else None
    measured = matmul_peak(device, torch.bfloat16 if cuda else torch.float32, 8192 if cuda else 512)
    out.update({"spec_bf16_peak_flops": spec, "measured_matmul_flops": measured})
    for packing, label in ((True, "packed"), (False, "unpacked")):
        total = sum(times[packing])
        tps = tokens[packing] / total
        res = {"step_s_median": sorted(times[packing])[len(times[packing]) // 2], "tokens_per_s": tps,
               "lists_per_s": args.lists_per_step * args.steps / total,
               "tokens_per_step": tokens[packing] / args.steps}
        if cuda:
            res["peak_memory_allocated_gib"] = peak_mem[packing] / 2**30
        # 6N per token for the policy's forward+backward; 8N adds the reference forward.
        for flops_per_token, key in ((6 * n_matmul, "6N"), (8 * n_matmul, "8N_incl_ref")):
            if spec:
                res[f"mfu_{key}_vs_spec"] = flops_per_token * tps / spec
            res[f"mfu_{key}_vs_measured_matmul"] = flops_per_token * tps / measured
        out[label] = res
    out["packed_speedup_lists_per_s"] = out["packed"]["lists_per_s"] / out["unpacked"]["lists_per_s"]
    if cuda:
        out["peak_memory_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny model on CPU (gloo, fp32): checks the code path")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--response-len", type=int, default=128)
    p.add_argument("--lists-per-step", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    if args.smoke:
        args.prompt_len, args.response_len, args.lists_per_step, args.warmup, args.steps = 32, 8, 2, 1, 2
    t0 = time.perf_counter()
    try:
        result, rc = run(args), 0
    except Exception as e:  # report, don't just die: the JSON is what comes back from the GPU machine
        result, rc = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}, 1
    result["wall_s"] = time.perf_counter() - t0
    text = json.dumps(result, indent=2)
    targets = [] if args.smoke else [ROOT / "benchmarks" / "results" / "gpu_check.json"]
    if os.environ.get("OUT"):
        targets.append(Path(os.environ["OUT"]) / "gpu_check.json")
    for path in targets:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text + "\n", encoding="utf-8")
        except OSError as e:
            print(f"could not write {path}: {e}", file=sys.stderr)
    print(json.dumps(result))
    return rc


if __name__ == "__main__":
    sys.exit(main())
