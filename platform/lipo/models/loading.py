"""Load tokenizers and causal LMs from a model spec: a local Hugging Face directory, a hub id, or `builtin:NAME`.

`builtin:tiny-llama` (and `builtin:tiny-llama-chat`, which adds a chat template) is the 2-layer, width-64,
byte-vocabulary model from `lipo.models.tiny`, with a fixed seed, so that the policy and its reference start from
identical weights without any download. `check_model_spec` runs on the driver before Ray starts, so a missing path is
a one-line error rather than a worker crash.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from lipo.errors import LipoError
from lipo.models.tiny import byte_tokenizer, tiny_llama, tiny_reward_model

BUILTINS = ("builtin:tiny-llama", "builtin:tiny-llama-chat")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _looks_local(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~")) or os.path.exists(spec) or spec.count("/") > 1


def check_model_spec(spec: str, key: str = "model.path") -> None:
    """Fail fast, naming the config key, if `spec` cannot be a loadable model."""
    if spec.startswith("builtin:"):
        if spec not in BUILTINS:
            raise LipoError(f"{key}: unknown builtin model '{spec}' (choose from {', '.join(BUILTINS)})")
        return
    if _looks_local(spec):
        path = Path(spec).expanduser()
        if not path.is_dir():
            raise LipoError(f"{key}: model directory not found: {spec}")
        if not (path / "config.json").is_file():
            raise LipoError(f"{key}: {spec} has no config.json; is it a Hugging Face model directory?")


def load_tokenizer(spec: str):
    """The tokenizer of `spec`; a pad token is set (to EOS) when the model has none, for batching."""
    if spec.startswith("builtin:"):
        return byte_tokenizer(chat_template=spec.endswith("-chat"))
    tok = AutoTokenizer.from_pretrained(str(Path(spec).expanduser()) if _looks_local(spec) else spec)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(spec: str, dtype: str = "float32", attn_implementation: str = "sdpa"):
    """A causal LM in `dtype`, in eval mode; builtin models are built in memory from a fixed seed."""
    if spec.startswith("builtin:"):
        return tiny_llama(seed=0, attn_implementation=attn_implementation).to(DTYPES[dtype])
    path = str(Path(spec).expanduser()) if _looks_local(spec) else spec
    model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], attn_implementation=attn_implementation)
    return model.eval()


def load_sequence_classifier(spec: str, dtype: str = "float32"):
    """A one-output sequence classifier (a reward model), from a reward model or a causal LM checkpoint.

    From a causal LM the backbone is reused and the scalar head starts random, as in usual reward-model training.
    `builtin:*` gives the tiny classifier of `lipo.models.tiny`.
    """
    if spec.startswith("builtin:"):
        return tiny_reward_model(seed=0).to(DTYPES[dtype])
    path = str(Path(spec).expanduser()) if _looks_local(spec) else spec
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=DTYPES[dtype])
    if model.config.pad_token_id is None:  # the head reads the last non-pad token, so it needs the pad id
        model.config.pad_token_id = load_tokenizer(spec).pad_token_id
    return model.eval()
