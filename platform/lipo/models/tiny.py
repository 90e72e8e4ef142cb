"""Tiny Llama-style models and a byte-level tokenizer, built in memory with no downloads.

Tests, the example configs and the embedded quickstart use them; a model spec of `builtin:tiny-llama` in any config
resolves here (see `lipo.models.loading`). Both save with `save_pretrained` and reload with the `Auto*` classes, so
everything downstream treats them like any Hugging Face checkpoint.

    tok = byte_tokenizer()
    model = tiny_llama(len(tok), seed=0)
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, PreTrainedTokenizerFast

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
# A minimal role-tagged template: lets tests exercise the chat-template path without any hub download.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def byte_tokenizer(chat_template: bool = False) -> PreTrainedTokenizerFast:
    """A 259-token tokenizer: 3 specials + the 256 byte symbols, so any UTF-8 text round-trips exactly."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())  # 256 printable stand-ins for the bytes
    vocab = {PAD: 0, BOS: 1, EOS: 2}
    vocab.update({ch: i + 3 for i, ch in enumerate(alphabet)})
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD)
    if chat_template:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_llama_config(vocab_size: int = 259, width: int = 64, layers: int = 2, max_len: int = 2048) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_len,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )


def tiny_llama(vocab_size: int = 259, seed: int = 0, width: int = 64, layers: int = 2,
               attn_implementation: str = "sdpa") -> LlamaForCausalLM:
    """A randomly initialised 2-layer, width-64 Llama; the same seed gives the same weights."""
    config = tiny_llama_config(vocab_size, width, layers)
    config._attn_implementation = attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.float().eval()


def tiny_reward_model(vocab_size: int = 259, seed: int = 0, width: int = 64, layers: int = 2):
    """A tiny Llama sequence classifier with one output: a pointwise reward model, or a pairwise one whose logit
    is log-odds that the first response beats the second."""
    config = tiny_llama_config(vocab_size, width, layers)
    config.num_labels = 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForSequenceClassification(config)
    return model.float().eval()
