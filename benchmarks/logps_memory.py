"""Peak memory of the log-prob pass: the LM head at scored positions in chunks, against full-vocabulary logits.

Run: .venv/bin/python benchmarks/logps_memory.py        (about 2 CPU-minutes)
Writes benchmarks/results/logps_memory.json and logps_memory.md.

Baseline, measured in the same run: what lipo did before (and what `model(...).logits` users do): the model returns
logits at every position [rows, L, V], the scored ones are copied to fp32 and log-softmaxed [M, V]. lipo now runs the
head on one column inside the forward, keeps the final hidden states, and applies the head to the M scored
positions in chunks, checkpointed under autograd (`lipo.models.logps`).

Workload: B=2 lists of K=8 responses of 64 tokens after a 128-token prompt, packed (the training default) and
unpacked; a random-init Llama-style model (width 256, 4 layers, fp32, sdpa) with a vocabulary of 32k and of 152k
(Qwen2's). For each: peak tensor bytes (torch's CPU allocator, `_common.peak_tensor_bytes`) of the forward alone
(no grad: the reference pass) and of forward + backward (the policy pass), and CPU seconds of forward + backward.
Target (issue 13): at the 152k vocabulary, peak memory <= 0.5x the baseline's.
"""

from __future__ import annotations

import sys

import torch

from _common import Timer, alternate, md_table, median, peak_tensor_bytes, random_lists, write_results
from lipo.data.collate import collate_lists
from lipo.data.packing import pack_lists
from lipo.models.attention import packed_attention
from lipo.models.logps import sequence_logps
from lipo.models.packed_logps import packed_sequence_logps

VOCABS = (32_768, 151_936)
B, K, PROMPT, RESPONSE = 2, 8, 128, 64


def model_with_vocab(vocab: int, width: int = 256, layers: int = 4):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=False)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def full_logits_packed(model, p) -> torch.Tensor:
    """The baseline, packed: logits everywhere, then log-softmax of the scored rows (lipo before issue 13)."""
    logits = model(input_ids=p["input_ids"], attention_mask=packed_attention(model, p),
                   position_ids=p["position_ids"], use_cache=False).logits  # [R, L, V]
    picked = logits[p["target_row"], p["source_col"]].float()  # [M, V]
    targets = p["input_ids"][p["target_row"], p["target_col"]]
    lp = torch.log_softmax(picked, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return torch.zeros(p["list_mask"].numel()).index_add(0, p["target_slot"], lp)


def full_logits_unpacked(model, c) -> torch.Tensor:
    ids, attn, resp = (c[k].flatten(0, 1) for k in ("input_ids", "attention_mask", "response_mask"))
    logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits  # [N, T, V]
    mask = resp[:, 1:].bool()
    picked = logits[:, :-1][mask].float()  # [M, V]
    return torch.log_softmax(picked, -1).gather(-1, ids[:, 1:][mask].unsqueeze(-1)).sum()


def passes(model, items):
    packed, unpacked = pack_lists(items, 0), collate_lists(items, 0)
    return {("packed", "chunked"): lambda: packed_sequence_logps(model, packed),
            ("packed", "full logits"): lambda: full_logits_packed(model, packed),
            ("unpacked", "chunked"): lambda: sequence_logps(model, unpacked),
            ("unpacked", "full logits"): lambda: full_logits_unpacked(model, unpacked)}


def measure(vocab: int, grad: bool, layout: str = "packed", width: int = 256, lists: int = B, k: int = K,
            prompt: int = PROMPT, response: int = RESPONSE) -> tuple[int, int]:
    """(chunked, full-logits) peak tensor bytes of one pass; with `grad`, forward + backward."""
    model = model_with_vocab(vocab, width)
    fns = passes(model, random_lists(lists, k, prompt, response))

    def run(fn):
        def go():
            if grad:
                model.zero_grad(set_to_none=True)
                fn().sum().backward()
            else:
                with torch.no_grad():
                    fn()
        return go

    run(fns[(layout, "chunked")])()  # warm caches (sdpa, index kernels) outside the measurement
    return (peak_tensor_bytes(run(fns[(layout, "chunked")])), peak_tensor_bytes(run(fns[(layout, "full logits")])))


def main() -> int:
    settings, rows = [], []
    for vocab in VOCABS:
        for layout in ("packed", "unpacked"):
            model = model_with_vocab(vocab)
            fns = passes(model, random_lists(B, K, PROMPT, RESPONSE))

            def step(fn):
                model.zero_grad(set_to_none=True)
                fn().sum().backward()

            times = alternate({"chunked": lambda: step(fns[(layout, "chunked")]),
                               "full": lambda: step(fns[(layout, "full logits")])}, reps=3)
            fwd = measure(vocab, grad=False, layout=layout)
            bwd = measure(vocab, grad=True, layout=layout)
            s = {"vocab": vocab, "layout": layout,
                 "forward_mib": {"chunked": fwd[0] / 2**20, "full_logits": fwd[1] / 2**20},
                 "forward_backward_mib": {"chunked": bwd[0] / 2**20, "full_logits": bwd[1] / 2**20},
                 "cpu_seconds": {"chunked": median(times["chunked"]["cpu"]), "full_logits": median(times["full"]["cpu"])}}
            s["forward_ratio"] = fwd[0] / fwd[1]
            s["forward_backward_ratio"] = bwd[0] / bwd[1]
            s["speed_ratio"] = s["cpu_seconds"]["full_logits"] / s["cpu_seconds"]["chunked"]
            settings.append(s)
            rows.append([f"{vocab:,}", layout, f"{fwd[1] / 2**20:.0f}", f"{fwd[0] / 2**20:.0f}",
                         f"{s['forward_ratio']:.2f}x", f"{bwd[1] / 2**20:.0f}", f"{bwd[0] / 2**20:.0f}",
                         f"{s['forward_backward_ratio']:.2f}x", f"{s['speed_ratio']:.2f}x"])
            print(rows[-1], flush=True)
    big = [s for s in settings if s["vocab"] == max(VOCABS)]
    worst = max(max(s["forward_ratio"], s["forward_backward_ratio"]) for s in big)
    md = (f"Log-prob pass of B={B} lists, K={K} responses of {RESPONSE} tokens after a {PROMPT}-token prompt; "
          f"random-init Llama (width 256, 4 layers, fp32, sdpa). Peak tensor MiB (torch CPU allocator); speed: "
          f"CPU seconds of forward+backward, full logits / chunked (> 1: chunked is faster).\n\n"
          + md_table(["vocab", "layout", "fwd MiB full logits", "fwd MiB chunked", "fwd ratio",
                      "fwd+bwd MiB full logits", "fwd+bwd MiB chunked", "fwd+bwd ratio", "speed"], rows)
          + f"\n\nAt the {max(VOCABS):,} vocabulary the worst peak-memory ratio is {worst:.2f}x (target <= 0.5x).\n")
    write_results("logps_memory", {"settings": settings, "target": {"vocab": max(VOCABS), "max_ratio": 0.5,
                                                                    "worst_ratio": worst, "met": worst <= 0.5}}, md)
    return 0 if worst <= 0.5 else 1


if __name__ == "__main__":
    sys.exit(main())
