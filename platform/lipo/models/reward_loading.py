"""Load reward models (sequence classifiers with one output) from a model spec, like `lipo.models.loading` does for LMs.

A spec is a local Hugging Face directory, a hub id, or a builtin:
- `builtin:tiny-reward`: the 2-layer, width-64 Llama sequence classifier from `lipo.models.tiny` (seed 0) with the
  byte tokenizer; random weights, so its scores mean nothing, but it exercises every code path with no download.
  It serves as a pointwise reward model and as the paper's pairwise ranking model alike.
- `builtin:tiny-reward-chat`: the same with the tiny chat template.

    check_reward_spec("builtin:tiny-reward", "score.model")   # on the driver, before Ray starts
    model, tok = load_reward_model("builtin:tiny-reward")     # in the scorer actor

`dtype: auto` loads the body in bf16 on a GPU but keeps the scalar head (`score`) in fp32 and feeds it fp32: a bf16
reward has 8 significant bits, so the K rewards of a list would tie far more often, and ties change rank labels and
LiPO-lambda's weights. The head is one [hidden, 1] matmul, so this costs nothing measurable.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from lipo.errors import LipoError
from lipo.models.loading import check_model_spec, torch_dtype
from lipo.models.tiny import byte_tokenizer, tiny_reward_model

REWARD_BUILTINS = ("builtin:tiny-reward", "builtin:tiny-reward-chat")


def check_reward_spec(spec: str, key: str = "score.model") -> None:
    """Fail fast, naming the config key, if `spec` cannot be a loadable reward model."""
    if spec.startswith("builtin:"):
        if spec not in REWARD_BUILTINS:
            raise LipoError(f"{key}: unknown builtin reward model '{spec}' (choose from {', '.join(REWARD_BUILTINS)})")
        return
    check_model_spec(spec, key)


def load_reward_model(spec: str, dtype: str = "auto"):
    """(model, tokenizer): a one-output sequence classifier in eval mode, and its tokenizer with a pad token.

    The model's `pad_token_id` is set to the tokenizer's: sequence classifiers find the last real token of a
    right-padded row by looking for the first pad, so the two must agree.
    """
    if spec.startswith("builtin:"):
        check_reward_spec(spec)
        tok = byte_tokenizer(chat_template=spec.endswith("-chat"))
        return fp32_head(tiny_reward_model(seed=0).to(torch_dtype(dtype))), tok
    path = str(Path(spec).expanduser()) if spec.startswith("~") else spec  # a local directory or a hub id
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch_dtype(dtype))
    if model.config.num_labels != 1:
        raise LipoError(f"reward model {spec} has {model.config.num_labels} outputs; a reward model needs exactly 1")
    model.config.pad_token_id = tok.pad_token_id
    return fp32_head(model).eval(), tok


def fp32_head(model):
    """The model with its one-output head (`score`, the name transformers' decoder classifiers use) in fp32, its
    input cast to fp32; a no-op for an fp32 model or one without such a head."""
    head = getattr(model, "score", None)
    if isinstance(head, torch.nn.Linear) and head.weight.dtype != torch.float32:
        head.float()
        head.register_forward_pre_hook(lambda module, args: tuple(a.float() for a in args))
    return model
