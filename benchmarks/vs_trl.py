"""lipo's training step against TRL's DPOTrainer on the same small Llama, data and optimizer (1 process, CPU).

Run: /work/venv/bin/python benchmarks/vs_trl.py        (about 4 CPU-minutes; needs `pip install trl`)
Writes benchmarks/results/vs_trl.json and vs_trl.md.

What is timed on each side (Ray is NOT started for lipo; this measures the in-process core step the Ray workers run):
- lipo: `make_batch` (packed) -> `batch_logps` of the policy and, under no_grad, of the frozen reference ->
  objective -> backward -> grad-norm clip 1.0 -> torch AdamW step.
- TRL (a): its `DataCollatorForPreference` -> `DPOTrainer.compute_loss` (TRL's policy and reference forwards and
  sigmoid loss) -> `accelerator.backward` -> the same clip and torch AdamW step. This is the body of one `train()`
  step, called directly so that it can alternate step by step with lipo.
- TRL (b): `DPOTrainer.train()` for one epoch as users run it (its AdamW, constant LR, clip 1.0); the ratio uses the
  sum of its optimizer-step times (from a TrainerCallback), which leaves out train()'s setup, so it favours TRL.

Times are CPU seconds of one torch thread (see `_common`); wall-clock times are in the JSON.

(a) K=2: lipo pair_logistic vs TRL sigmoid, on the same pairs. Before timing, both losses are computed on one batch
    with the same (perturbed, so policy != reference) weights and must agree within 1e-4. Throughput counts the same
    tokens for both: (prompt + chosen) + (prompt + rejected) per pair.
(b) K=8 lists, 256-token prompts, 32-token responses: one epoch with all-pairs supervision, lipo LiPO-lambda on the
    lists (packed) vs TRL on the 28 pairs of every list.
"""

from __future__ import annotations

import copy
import os
import random
import shutil
import sys
import tempfile
import time

import torch

from _common import Timer, md_table, median, small_llama, write_results
from lipo.losses import LOSSES
from lipo.models.packed_logps import batch_logps, make_batch
from lipo.models.tiny import byte_tokenizer

BETA, LR, BATCH_PAIRS, BATCH_LISTS = 0.1, 1e-5, 8, 2
PROMPT_LEN, RESPONSE_CHARS, K = 256, 31, 8  # a response is 31 bytes + EOS = 32 tokens
N_PAIRS_A, N_LISTS_B, REPS_A, REPS_B = 8 * BATCH_PAIRS, 4, 4, 2


def text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(n))


def lists_texts(n: int, k: int, seed: int, prompt_len: int = PROMPT_LEN,
                response_chars: int = RESPONSE_CHARS) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt": text(rng, prompt_len), "responses": [text(rng, response_chars) for _ in range(k)],
             "labels": [float(k - 1 - j) for j in range(k)]} for _ in range(n)]


def all_pairs(lists: list[dict]) -> dict[str, list[str]]:
    """Every (better, worse) pair of every list, as TRL's prompt/chosen/rejected columns."""
    cols = {"prompt": [], "chosen": [], "rejected": []}
    for lst in lists:
        r, y = lst["responses"], lst["labels"]
        for i in range(len(r)):
            for j in range(len(r)):
                if y[i] > y[j]:
                    cols["prompt"].append(lst["prompt"])
                    cols["chosen"].append(r[i])
                    cols["rejected"].append(r[j])
    return cols


def lipo_items(lists: list[dict], tok) -> list[dict]:
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    return [{"prompt_ids": enc(lst["prompt"]), "response_ids": [enc(r) + [tok.eos_token_id] for r in lst["responses"]],
             "labels": lst["labels"], "ref_logps": None} for lst in lists]


def lipo_loss(model, ref, items, objective: str, packing: bool = True):
    batch = make_batch(items, 0, packing)
    with torch.no_grad():
        ref_logps = batch_logps(ref, batch)  # [B, K]
    scores = BETA * (batch_logps(model, batch) - ref_logps)  # [B, K]
    return LOSSES[objective](scores, batch["labels"], batch["list_mask"])


def optimizer_step(model, opt) -> None:
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def lipo_step(model, ref, opt, items, objective: str, packing: bool = True) -> None:
    lipo_loss(model, ref, items, objective, packing).backward()
    optimizer_step(model, opt)


def trl_trainer(model, ref, tok, pairs: dict, out_dir: str, callbacks=None, **overrides):
    """TRL's DPOTrainer as this benchmark configures it; `overrides` replace DPOConfig fields (the GPU suite,
    benchmarks/gpu_trl.py, sets use_cpu=False, bf16=True and its batch size)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    kwargs = dict(output_dir=out_dir, per_device_train_batch_size=BATCH_PAIRS, beta=BETA, loss_type=["sigmoid"],
                  learning_rate=LR, lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=1.0,
                  optim="adamw_torch", num_train_epochs=1, max_length=None, use_cpu=True, bf16=False, fp16=False,
                  report_to="none", save_strategy="no", logging_steps=10**6, disable_tqdm=True,
                  dataloader_num_workers=0, seed=0,
                  gradient_checkpointing=False)  # TRL defaults to True; lipo does not recompute activations
    args = DPOConfig(**{**kwargs, **overrides})
    # TRL patches the forward of the models it is given (fused LM head), so it gets private copies.
    return DPOTrainer(model=model, ref_model=copy.deepcopy(ref), args=args, train_dataset=Dataset.from_dict(pairs),
                      processing_class=tok, callbacks=callbacks)


def trl_step(trainer, opt, rows) -> None:
    batch = trainer.data_collator(rows)
    trainer.accelerator.backward(trainer.compute_loss(trainer.model, batch))
    optimizer_step(trainer.model, opt)


def pair_items(rows) -> list[dict]:
    """TRL's own tokenisation of each pair as a lipo K=2 list, so both sides score identical tokens."""
    return [{"prompt_ids": r["prompt_ids"], "response_ids": [r["chosen_ids"], r["rejected_ids"]],
             "labels": [1.0, 0.0], "ref_logps": None} for r in rows]


def part_a(base, ref, tok, out_dir: str) -> dict:
    lists = lists_texts(N_PAIRS_A, 2, seed=1)
    # Perturb the policy away from the reference so the loss check below is not trivially log 2.
    start = copy.deepcopy(base).train()
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for p in start.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    trl_model, lipo_model, lipo_unp_model = (copy.deepcopy(start) for _ in range(3))
    trainer = trl_trainer(trl_model, ref, tok, all_pairs(lists), out_dir)
    rows = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    batches = [rows[i:i + BATCH_PAIRS] for i in range(0, len(rows), BATCH_PAIRS)]
    tokens = [sum(2 * len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in b)
              for b in batches]

    # Same loss on the same batch and weights.
    with torch.no_grad():
        trl_val = trainer.compute_loss(trl_model, trainer.data_collator(batches[0])).item()
        lipo_val = lipo_loss(trl_model, ref, pair_items(batches[0]), "pair_logistic").item()
        lipo_unpacked = lipo_loss(trl_model, ref, pair_items(batches[0]), "pair_logistic", packing=False).item()
    assert abs(trl_val - lipo_val) < 1e-4, (trl_val, lipo_val)
    assert abs(trl_val - lipo_unpacked) < 1e-4, (trl_val, lipo_unpacked)
    print(f"(a) same-batch loss: TRL sigmoid {trl_val:.6f}, lipo pair_logistic {lipo_val:.6f} (packed), "
          f"{lipo_unpacked:.6f} (unpacked)", flush=True)

    opts = {name: torch.optim.AdamW(m.parameters(), lr=LR, weight_decay=0.0)
            for name, m in (("trl", trl_model), ("lipo", lipo_model), ("lipo_unpacked", lipo_unp_model))}
    runs = {"lipo": lambda b: lipo_step(lipo_model, ref, opts["lipo"], pair_items(b), "pair_logistic"),
            "lipo_unpacked": lambda b: lipo_step(lipo_unp_model, ref, opts["lipo_unpacked"], pair_items(b),
                                                 "pair_logistic", packing=False),
            "trl": lambda b: trl_step(trainer, opts["trl"], b)}
    for fn in runs.values():
        fn(batches[0])  # warm-up
    times = {name: [] for name in runs}
    walls = {name: [] for name in runs}
    for rep in range(REPS_A):
        b = batches[rep % len(batches)]
        for name, fn in runs.items():  # alternate step by step on the same batch
            with Timer() as t:
                fn(b)
            times[name].append(t.cpu)
            walls[name].append(t.wall)
    tok_per_batch = median(tokens)
    out = {"same_batch_loss": {"trl_sigmoid": trl_val, "lipo_pair_logistic_packed": lipo_val,
                               "lipo_pair_logistic_unpacked": lipo_unpacked},
           "pairs_per_step": BATCH_PAIRS, "pair_tokens_per_step": tok_per_batch}
    for name, ts in times.items():
        out[name] = {"cpu_seconds_median": median(ts), "cpu_seconds_all": ts, "wall_seconds_all": walls[name],
                     "tokens_per_s": tok_per_batch / median(ts)}
    out["ratio_lipo_vs_trl"] = out["lipo"]["tokens_per_s"] / out["trl"]["tokens_per_s"]
    out["ratio_lipo_unpacked_vs_trl"] = out["lipo_unpacked"]["tokens_per_s"] / out["trl"]["tokens_per_s"]
    return out


def part_b(base, ref, tok, out_dir: str) -> dict:
    from transformers import TrainerCallback

    lists = lists_texts(N_LISTS_B, K, seed=2)
    items = lipo_items(lists, tok)
    step_times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.process_time()

        def on_step_end(self, args, state, control, **kw):
            step_times.append(time.process_time() - self.t0)

    trl_model, lipo_model = copy.deepcopy(base).train(), copy.deepcopy(base).train()
    trainer = trl_trainer(trl_model, ref, tok, all_pairs(lists), out_dir, callbacks=[StepTimer()])
    first = trainer.train_dataset[0]
    assert first["prompt_ids"] == items[0]["prompt_ids"] and first["chosen_ids"] == items[0]["response_ids"][0]
    n_pairs = len(trainer.train_dataset)
    opt = torch.optim.AdamW(lipo_model.parameters(), lr=LR, weight_decay=0.0)

    def lipo_epoch() -> None:
        for i in range(0, len(items), BATCH_LISTS):
            lipo_step(lipo_model, ref, opt, items[i:i + BATCH_LISTS], "lambda")

    lipo_step(lipo_model, ref, opt, items[:BATCH_LISTS], "lambda")  # warm-up
    res = {"lipo_epoch_s": [], "trl_train_s": [], "trl_steps_s": [], "lipo_epoch_wall_s": [],
           "trl_train_wall_s": []}
    for _ in range(REPS_B):
        with Timer() as t:
            lipo_epoch()
        res["lipo_epoch_s"].append(t.cpu)
        res["lipo_epoch_wall_s"].append(t.wall)
        step_times.clear()
        with Timer() as t:
            trainer.train()
        res["trl_train_s"].append(t.cpu)
        res["trl_train_wall_s"].append(t.wall)
        res["trl_steps_s"].append(sum(step_times))
    out = {"lists": N_LISTS_B, "K": K, "pairs": n_pairs, "lipo_steps_per_epoch": -(-N_LISTS_B // BATCH_LISTS),
           "trl_steps_per_epoch": -(-n_pairs // BATCH_PAIRS), **res,
           **{f"{k}_median": median(v) for k, v in res.items()}}
    out["ratio_epoch_time"] = out["trl_steps_s_median"] / out["lipo_epoch_s_median"]
    out["ratio_epoch_time_incl_trl_setup"] = out["trl_train_s_median"] / out["lipo_epoch_s_median"]
    return out


def main() -> None:
    try:
        import trl
    except ImportError as e:
        md = f"TRL is not installed here ({e}); run `pip install trl` (benchmark-only dependency) and rerun."
        write_results("vs_trl", {"error": str(e)}, md)
        return
    torch.manual_seed(0)
    tok, base = byte_tokenizer(), small_llama()
    ref = copy.deepcopy(base).eval().requires_grad_(False)
    out_dir = tempfile.mkdtemp(prefix="vs_trl_")
    try:
        a = part_a(base, ref, tok, out_dir)
        print(f"(a) lipo {a['ratio_lipo_vs_trl']:.2f}x TRL tokens/s", flush=True)
        b = part_b(base, ref, tok, out_dir)
        print(f"(b) lipo {b['ratio_epoch_time']:.2f}x faster per epoch", flush=True)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    rows_a = [[name, f"{a[name]['cpu_seconds_median']:.3f}", f"{a[name]['tokens_per_s']:,.0f}",
               f"{a[name]['tokens_per_s'] / a['trl']['tokens_per_s']:.2f}x"]
              for name in ("trl", "lipo_unpacked", "lipo")]
    rows_b = [[f"TRL DPO, {K * (K - 1) // 2} pairs/list (sum of step times)", b["trl_steps_per_epoch"],
               f"{b['trl_steps_s_median']:.1f}"],
              ["TRL DPO, whole `train()` incl. setup", b["trl_steps_per_epoch"], f"{b['trl_train_s_median']:.1f}"],
              ["lipo LiPO-lambda, lists, packed", b["lipo_steps_per_epoch"], f"{b['lipo_epoch_s_median']:.1f}"]]
    sl = a["same_batch_loss"]
    md = (f"TRL {trl.__version__}; small Llama (width 256, 4 layers, fp32), beta {BETA}, AdamW lr {LR}, clip 1.0, "
          f"reference model forward on both sides. lipo timed in-process (no Ray). Medians of alternating runs; CPU "
          f"seconds of one torch thread.\n\n"
          f"Same-batch loss check (K=2, policy != reference): TRL sigmoid {sl['trl_sigmoid']:.6f}, lipo "
          f"pair_logistic {sl['lipo_pair_logistic_packed']:.6f} (packed) / {sl['lipo_pair_logistic_unpacked']:.6f} "
          f"(unpacked); asserted within 1e-4.\n\n"
          f"## (a) K=2, {BATCH_PAIRS} pairs per step, prompt {PROMPT_LEN}, responses {RESPONSE_CHARS + 1} tokens\n\n"
          + md_table(["trainer", "step CPU s", "pair tokens/s", "vs TRL"], rows_a)
          + f"\n\n## (b) one epoch, {N_LISTS_B} lists of K={K} ({b['pairs']} pairs), prompt {PROMPT_LEN}, responses "
            f"{RESPONSE_CHARS + 1} tokens; lipo {BATCH_LISTS} lists/step, TRL {BATCH_PAIRS} pairs/step\n\n"
          + md_table(["trainer", "steps", "epoch CPU s"], rows_b)
          + f"\n\nlipo is {b['ratio_epoch_time']:.1f}x faster per epoch (target >= 5x; "
            f"{b['ratio_epoch_time_incl_trl_setup']:.1f}x against TRL's whole train() call).\n")
    write_results("vs_trl", {"trl_version": trl.__version__, "lipo_timing": "in-process core step, no Ray",
                             "part_a": a, "part_b": b,
                             "headline": {"a_tokens_per_s_ratio": a["ratio_lipo_vs_trl"], "a_target": 1.0,
                                          "b_epoch_speedup": b["ratio_epoch_time"], "b_target": 5.0}}, md)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
