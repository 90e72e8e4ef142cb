"""`lipo sft` and `lipo train-rm` on local Ray with the tiny in-memory models (same machinery as `lipo train`)."""

from __future__ import annotations

import json
import random

import pytest
import torch

from lipo import tracking
from lipo.config import load_config
from lipo.training.config import RewardTrainConfig, SFTConfig
from lipo.training.launch import launch
from lipo.training.reward import RewardTask
from lipo.training.tasks import SFTTask

pytestmark = pytest.mark.slow

COMMON = ["model.path=builtin:tiny-llama", "scaling.num_workers=2", "optim.schedule=constant",
          "checkpoint.every=1000", "data.max_prompt_tokens=64", "data.max_response_tokens=24"]


def test_sft_loss_falls_on_memorisable_set(ray_local, tmp_path):
    demos = tmp_path / "demos.jsonl"
    with open(demos, "w") as f:
        for i in range(4):
            f.write(json.dumps({"prompt": f"Q{i}:", "reference": f"answer number {i}"}) + "\n")
    cfg = load_config(SFTConfig, None, COMMON + [f"output_dir={tmp_path}/runs", f"data.train=[{demos}]",
                                                 "run_name=sft", "optim.lr=1e-2", "optim.micro_batch_size=2",
                                                 "optim.max_steps=40", "optim.epochs=100"])
    result = launch(SFTTask(cfg))
    c = tracking.client(result.tracking_uri)
    losses = [m.value for m in sorted(c.get_metric_history(result.run_id, "train/loss"), key=lambda m: m.step)]
    assert len(losses) == 40
    # Byte-level uniform guessing costs ln(259) = 5.56 nats/token; memorising 4 short answers gets far below.
    assert losses[0] > 4.5 and sum(losses[-5:]) / 5 < 1.0, losses


def separable_lists(path, n=40, seed=0):
    """Lists of 3 responses whose quality shows in the first word: yes (1.0) > maybe (0.5) > no (0.0)."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            tails = ["".join(rng.choice("klmnop") for _ in range(4)) for _ in range(3)]
            resp = [f"yes {tails[0]}", f"maybe {tails[1]}", f"no {tails[2]}"]
            order = rng.sample(range(3), 3)
            f.write(json.dumps({"id": f"s{i}", "prompt": f"Is {i} good?", "responses": [resp[o] for o in order],
                                "labels": [[1.0, 0.5, 0.0][o] for o in order]}) + "\n")
    return path


@pytest.mark.parametrize("kind", ["pointwise", "pairwise"])
def test_reward_model_learns_separable_set(ray_local, tmp_path, kind):
    from lipo.models.loading import load_sequence_classifier, load_tokenizer
    from lipo.models.reward import pairwise_matrix

    data = separable_lists(tmp_path / "lists.jsonl")
    cfg = load_config(RewardTrainConfig, None, COMMON + [
        f"output_dir={tmp_path}/runs", f"data.train=[{data}]", f"run_name=rm-{kind}", f"reward.kind={kind}",
        "reward.eval_fraction=0.25", "optim.lr=3e-3", "optim.micro_batch_size=2", "optim.max_steps=40",
        "optim.epochs=100"])
    result = launch(RewardTask(cfg))
    assert result.metrics["eval/pairs"] >= 15
    assert result.metrics["eval/pair_accuracy"] >= 0.9, result.metrics
    c = tracking.client(result.tracking_uri)
    assert c.get_run(result.run_id).data.metrics["eval/pair_accuracy"] == result.metrics["eval/pair_accuracy"]
    if kind == "pairwise":  # after position-flip averaging the two orders of a pair are complementary
        model, tok = load_sequence_classifier(str(result.model_dir)), load_tokenizer(str(result.model_dir))
        P = pairwise_matrix(model, tok, "Is 3 good?", ["yes klmn", "no mnop", "maybe pokl"])
        assert torch.allclose(P + P.T, torch.ones(3, 3), atol=1e-6)
        assert P[0, 1] > 0.5 and P[2, 1] > 0.5 and P[0, 2] > 0.5
