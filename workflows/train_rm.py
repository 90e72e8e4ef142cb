"""`lipo train-rm CONFIG.yaml [key=value ...]`: train a reward model on labelled lists.

`reward.kind: pointwise` trains a Bradley-Terry scalar reward model; `pairwise` trains the paper's pairwise ranking
model, P(first response beats second). After training, the held-out lists (`reward.eval_fraction`) are scored
through the same inference functions that build-lists and Serve use, and the pairwise accuracy is logged as
`eval/pair_accuracy`. Ray job entrypoint: `python -m workflows.train_rm CONFIG.yaml`.
"""

from __future__ import annotations

import sys

from lipo.training.config import RewardTrainConfig


def heldout_accuracy(cfg: RewardTrainConfig, model_dir) -> tuple[float, int]:
    """(pairwise accuracy, pairs) of the exported reward model on the held-out lists; tied scores count half."""
    import torch

    from lipo.data.records import prompt_of
    from lipo.models.loading import load_sequence_classifier, load_tokenizer
    from lipo.models.reward import pairwise_matrix, pointwise_rewards
    from lipo.training.rows import split_lists

    _, test, _ = split_lists(cfg)
    model, tok = load_sequence_classifier(str(model_dir)), load_tokenizer(str(model_dir))
    hits, pairs = 0.0, 0
    for row in test:
        prompt, resp, lab = prompt_of(row), row["responses"], torch.tensor(row["labels"])
        if cfg.reward.kind == "pointwise":
            r = pointwise_rewards(model, tok, prompt, resp, cfg.reward.max_tokens)
            P = 0.5 * (1 + torch.sign(r[:, None] - r[None, :]))  # 1 if i scores above j, 0.5 on ties
        else:
            P = pairwise_matrix(model, tok, prompt, resp, cfg.reward.pair_template, cfg.reward.max_tokens)
            P = 0.5 * (1 + torch.sign(P - 0.5))
        better = lab[:, None] > lab[None, :]  # [K, K] pairs where i should win
        hits += float(P[better].sum())
        pairs += int(better.sum())
    return (hits / pairs if pairs else float("nan")), pairs


def run(cfg: RewardTrainConfig, fault: dict | None = None, parent_run_id: str | None = None):
    from lipo import tracking
    from workflows.train import launch

    result = launch(cfg, f"reward_{cfg.reward.kind}", fault, parent_run_id)
    acc, pairs = heldout_accuracy(cfg, result.model_dir)
    if pairs:
        tracking.log_metrics(result.tracking_uri, result.run_id, {"eval/pair_accuracy": acc,
                                                                   "eval/pairs": float(pairs)}, 0)
        print(f"[lipo] reward model held-out pairwise accuracy: {acc:.3f} over {pairs} pairs", flush=True)
    result.metrics.update({"eval/pair_accuracy": acc, "eval/pairs": float(pairs)})
    return result


if __name__ == "__main__":
    from lipo.config import load_config

    run(load_config(RewardTrainConfig, sys.argv[1], sys.argv[2:]))
