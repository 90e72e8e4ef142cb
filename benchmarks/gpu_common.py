"""Shared pieces of the GPU suite (benchmarks/gpu_check.py): models, data, timing budgets, the result recorder.

Not run on its own; `bash benchmarks/gpu_check.sh` (or `python benchmarks/gpu_check.py --smoke` on a CPU) uses it.
Unlike benchmarks/_common.py this module does not pin torch to one thread: the GPU run needs its host cores.
"""

from __future__ import annotations

import gc
import json
import os
import random
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "platform"))  # lipo importable without installing it

# Dense bf16 tensor-core peaks from NVIDIA's spec sheets (FLOP/s, no sparsity), matched on the device name.
BF16_PEAK = [("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12),
             ("A10G", 70e12), ("L4", 121e12)]
BETA = 0.1
# Llama shapes of the suite: (hidden, layers, heads, kv heads, MLP, vocab). The smoke twins keep the code path and
# shrink every dimension so a CPU runs them in seconds.
MODELS = {"0.48B": (1024, 24, 16, 8, 4608, 32000), "1.26B": (2048, 24, 16, 8, 5632, 32000)}
SMOKE_MODELS = {"0.48B": (64, 2, 4, 2, 128, 259), "1.26B": (96, 2, 4, 2, 192, 259)}


class PartTimeout(Exception):
    """A part of the suite ran out of its own time budget (not an error: the settings it finished are kept)."""


@dataclass
class Ctx:
    """What every part needs: device, precision, shapes and the smoke switch."""

    smoke: bool
    device: torch.device
    prompt_len: int = 256
    response_len: int = 128
    lists_per_step: int = 8
    perturb: bool = False  # deliberately break one packed log-prob in the parity part (tests the failure path)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.cuda else torch.float32


@dataclass
class Deadline:
    """Cooperative budget of one part: settings ask `left()` before they start, so one slow part cannot eat the
    next one's time; `time_limit` below is the hard stop behind it."""

    seconds: float
    start: float = field(default_factory=time.perf_counter)

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)


@contextmanager
def time_limit(seconds: float):
    """Raise PartTimeout in the main thread after `seconds` (SIGALRM; POSIX only, which both machines are)."""

    def fire(signum, frame):
        raise PartTimeout(f"part budget of {seconds:.0f} s spent")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def llama_config(name: str, smoke: bool, attn: str):
    from transformers import LlamaConfig

    hidden, layers, heads, kv, mlp, vocab = (SMOKE_MODELS if smoke else MODELS)[name]
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=4096,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    config._attn_implementation = attn
    return config


def build_model(name: str, ctx: Ctx, attn: str = "sdpa", dtype: torch.dtype | None = None, seed: int = 0):
    """Random-init Llama on the device (initialised there: fast on a GPU); fp32 unless `dtype` is given."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    with torch.device(ctx.device):
        model = LlamaForCausalLM(llama_config(name, ctx.smoke, attn))
    return model.to(dtype) if dtype is not None else model


def matmul_params(model: torch.nn.Module) -> int:
    """N of 6N: every parameter but the input embedding table (a lookup, no FLOPs); the untied LM head counts."""
    emb = model.get_input_embeddings().weight
    return sum(p.numel() for p in model.parameters() if p is not emb)


def random_lists(n: int, k: int, prompt_len: int, response_len: int, vocab: int, seed: int) -> list[dict]:
    """Tokenised lists with distinct labels and carried reference log-probs, as `lipo build-lists` writes them
    (so a training step runs no reference forward, like `lipo train` on such data)."""
    rng = random.Random(seed)
    ids = lambda m: [rng.randrange(3, vocab) for _ in range(m)]  # noqa: E731
    return [{"prompt_ids": [1] + ids(prompt_len - 1), "response_ids": [ids(response_len - 1) + [2] for _ in range(k)],
             "labels": [float(k - 1 - j) for j in range(k)],
             "ref_logps": [-response_len * 10.4 + rng.gauss(0, 1) for _ in range(k)]} for _ in range(n)]


def pad_to(attn: str) -> int:
    """Row-length multiple of packed rows, as lipo's training collate uses it (FlexAttention's block size)."""
    from lipo.models.attention import FLEX_BLOCK

    return FLEX_BLOCK if attn == "flex_attention" else 1


def packed_batch(items: list[dict], attn: str, **kw) -> dict:
    from lipo.models.packed_logps import make_batch

    return make_batch(items, 0, True, pad_to=pad_to(attn), **kw)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(ctx: "Ctx", fn) -> float:
    """Wall seconds of fn() between device syncs."""
    sync(ctx.device)
    t0 = time.perf_counter()
    fn()
    sync(ctx.device)
    return time.perf_counter() - t0


def reset_peak(ctx: Ctx) -> dict:
    """Start a setting's memory reading; returns what is still allocated from earlier settings (a leak check)."""
    if not ctx.cuda:
        return {}
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    return {"allocated_at_start_gib": torch.cuda.memory_allocated() / 2**30}


def memory(ctx: Ctx) -> dict:
    """Peak allocated since the last `reset_peak` and what is allocated now (GiB); empty on a CPU."""
    if not ctx.cuda:
        return {}
    return {"peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
            "allocated_gib": torch.cuda.memory_allocated() / 2**30}


def release(*objs) -> None:
    """Drop engines/models between settings so each setting's memory reading starts from a clean card."""
    for o in objs:
        destroy = getattr(o, "destroy", None)
        if callable(destroy):
            try:
                destroy()
            except Exception:  # best effort: a failed teardown must not hide the setting's own result
                pass
    del objs
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


SMOKE_PEAK = 1e12  # a nominal "peak" so the smoke run exercises the MFU and target code (its values mean nothing)


def spec_peak(ctx: Ctx) -> float | None:
    if not ctx.cuda:
        return SMOKE_PEAK if ctx.smoke else None
    name = torch.cuda.get_device_name(0)
    return next((peak for key, peak in BF16_PEAK if key in name), None)


def median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if len(s) % 2 else 0.5 * (s[len(s) // 2 - 1] + s[len(s) // 2])


class Recorder:
    """The result dict, rewritten to every target file after each setting, so a run stopped by the outer timeout
    still leaves what it measured."""

    def __init__(self, paths: list[Path]):
        self.paths = paths
        self.data: dict = {"errors": []}

    def error(self, where: str, message: str) -> None:
        self.data["errors"].append(f"{where}: {message}")
        self.data["error"] = "; ".join(self.data["errors"])
        self.write()

    def write(self) -> None:
        text = json.dumps(self.data, indent=2, default=str) + "\n"
        for path in self.paths:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                tmp.write_text(text, encoding="utf-8")
                os.replace(tmp, path)  # a reader never sees half a file
            except OSError as e:
                print(f"could not write {path}: {e}", file=sys.stderr)
