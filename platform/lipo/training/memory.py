"""Device memory that DeepSpeed ZeRO needs per GPU, and the stage that `deepspeed.stage: auto` picks from it.

Pure arithmetic, no torch: each worker calls it (through `lipo.training.engine.resolve_stage`) with the model's
parameter count, the world size and its device memory.

    stage, why = choose_stage(480e6, world=1, device_bytes=139 * GiB, with_reference=True)
    # 2, "auto: 0.48B params on 1 GPU of 139 GiB; stage 2 needs ~8.0 GiB of the 83 GiB budget"

The rule. Mixed-precision AdamW keeps, per trainable parameter, 16 bytes: a bf16 weight (2), a bf16 gradient (2)
and fp32 master weight, Adam m and Adam v (12). With N parameters, T of them trainable (T = N without LoRA), on w
GPUs, one GPU holds:

    stage 0: 2N + 2T + 12T    = 16N          nothing partitioned
    stage 1: 2N + 2T + 12T/w  = 4N + 12N/w   optimizer states partitioned
    stage 2: 2N + 14T/w       = 2N + 14N/w   ... and gradients
    stage 3: (2N + 14T)/w     = 16N/w        ... and weights

plus a frozen reference model's bf16 weights when one is loaded: 2N, or 2N/w under ZeRO-3 (partitioned too).
auto picks stage 2 (measured 1.1x the time of plain torch on one H200) when its estimate fits in FRACTION = 0.6 of
the device memory, the rest being left for activations; otherwise stage 3 (measured 3x slower than stage 2 on one GPU
for a 0.48B model, but the only stage whose weights shrink with w). If even stage 3 does not fit, it still picks 3
and says that `deepspeed.offload_optimizer: true` may be needed. Examples, with a reference model:

    0.48B on 1 x 139 GiB: stage 2 = 16N + 2N = 8.64e9 B = 8.0 GiB <= 0.6 * 139 = 83.4 GiB  -> 2
    8B on 4 x 80 GiB:     stage 2 = 2N + 14N/4 + 2N = 60e9 B = 55.9 GiB > 48 GiB;
                          stage 3 = 16N/4 + 2N/4 = 36e9 B = 33.5 GiB <= 48 GiB               -> 3

CPU runs (fp32, gloo) keep stage 2: host memory is not what this rule models.
"""

from __future__ import annotations

GiB = 2**30
FRACTION = 0.6  # of device memory for weights, gradients and optimizer states; the rest is for activations
WEIGHT, GRAD, OPTIM = 2, 2, 12  # bytes per parameter: bf16 weight, bf16 gradient, fp32 master + Adam m + v
AUTO_STAGES = (2, 3)  # stages 0 and 1 save nothing over 2 worth its ~10% cost


def zero_bytes(stage: int, n_params: float, world: int, trainable: float | None = None,
               with_reference: bool = False) -> float:
    """Bytes one GPU holds for weights, gradients and optimizer states under ZeRO `stage` (module docstring)."""
    n, t, w = n_params, n_params if trainable is None else trainable, world
    per_stage = {
        0: WEIGHT * n + (GRAD + OPTIM) * t,
        1: WEIGHT * n + GRAD * t + OPTIM * t / w,
        2: WEIGHT * n + (GRAD + OPTIM) * t / w,
        3: (WEIGHT * n + (GRAD + OPTIM) * t) / w,
    }
    ref = (WEIGHT * n / w if stage == 3 else WEIGHT * n) if with_reference else 0.0
    return per_stage[stage] + ref


def choose_stage(n_params: float, world: int, device_bytes: float, trainable: float | None = None,
                 with_reference: bool = False, fraction: float = FRACTION) -> tuple[int, str]:
    """The lowest of stages 2 and 3 whose estimate fits `fraction` of `device_bytes`, and why (one line)."""
    budget = fraction * device_bytes
    where = (f"auto: {n_params / 1e9:.2f}B params on {world} GPU{'s' if world > 1 else ''} "
             f"of {device_bytes / GiB:.0f} GiB")
    for stage in AUTO_STAGES:
        need = zero_bytes(stage, n_params, world, trainable, with_reference)
        if need <= budget:
            return stage, f"{where}; stage {stage} needs ~{need / GiB:.1f} GiB of the {budget / GiB:.0f} GiB budget"
    need = zero_bytes(3, n_params, world, trainable, with_reference)
    return 3, (f"{where}; even stage 3 needs ~{need / GiB:.1f} GiB, over the {budget / GiB:.0f} GiB budget: "
               "more GPUs or deepspeed.offload_optimizer=true may be needed")
