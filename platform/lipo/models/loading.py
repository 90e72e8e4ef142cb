"""Load tokenizers and causal LMs from a model spec: a local Hugging Face directory, a hub id, or `builtin:NAME`.

`builtin:tiny-llama` (and `builtin:tiny-llama-chat`, which adds a chat template) is the 2-layer, width-64,
byte-vocabulary model from `lipo.models.tiny`, with a fixed seed, so that the policy and its reference start from
identical weights without any download. `check_model_spec` runs on the driver before Ray starts, so a missing path is
a one-line error rather than a worker crash.

Training loads weights in its own dtype (bf16 on GPU, fp32 on CPU) and, given a DeepSpeed ZeRO-3 config (`zero3=`),
builds the model partitioned: every parameter is split across the ranks as it is created, so no rank holds a full
copy (Hugging Face models load through transformers' DeepSpeed integration; a builtin gets its seeded weights from
rank 0, module by module). `count_params` sizes a model from its config alone, for `deepspeed.stage: auto`.

    model = load_causal_lm("Qwen/Qwen2.5-0.5B", "bfloat16", zero3=ds_config)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from lipo.errors import LipoError
from lipo.models.attention import resolve_attn_implementation
from lipo.models.tiny import byte_tokenizer, tiny_llama, tiny_reward_model

BUILTINS = ("builtin:tiny-llama", "builtin:tiny-llama-chat")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str, cuda: bool | None = None) -> torch.dtype:
    """The dtype a config's `dtype` names. `auto` (the inference default) is bf16 where the model runs on a GPU, as
    its fast kernels compute in bf16 at half the memory, and fp32 on CPU, where bf16 matmuls are slower and tests
    compare in fp32. `cuda=None` asks torch whether this process sees a GPU (Ray hides GPUs from CPU actors)."""
    if name == "auto":
        return torch.bfloat16 if (torch.cuda.is_available() if cuda is None else cuda) else torch.float32
    return DTYPES[name]


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


def load_causal_lm(spec: str, dtype: str = "float32", attn_implementation: str = "sdpa", cuda: bool | None = None,
                   zero3: dict | None = None):
    """A causal LM in `dtype`, in eval mode, partitioned when given a ZeRO-3 config; builtin models are built in
    memory from a fixed seed. `cuda`: whether it will run on a GPU (None: whether this process sees one); it
    resolves `dtype="auto"` and `attn_implementation="auto"` (flex_attention on a GPU where the architecture has a
    flex path in transformers, else sdpa)."""
    if cuda is None:
        cuda = torch.cuda.is_available()
    if attn_implementation == "auto":
        want = resolve_attn_implementation("auto", cuda)
        try:
            return load_causal_lm(spec, dtype, want, cuda, zero3)
        except ValueError:  # transformers: this architecture does not support flex_attention
            if want == "sdpa":
                raise
            return load_causal_lm(spec, dtype, "sdpa", cuda, zero3)
    if spec.startswith("builtin:"):
        def build():
            return tiny_llama(seed=0, attn_implementation=attn_implementation).to(torch_dtype(dtype, cuda))

        return (partitioned_builtin(build, zero3) if zero3 else build()).eval()
    path = str(Path(spec).expanduser()) if _looks_local(spec) else spec
    with zero3_construction(zero3):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype, cuda),
                                                     attn_implementation=attn_implementation)
    return model.eval()


@contextlib.contextmanager
def zero3_construction(zero3: dict | None) -> Iterator[None]:
    """While open, transformers builds models under `deepspeed.zero.Init(zero3)`, and `from_pretrained` reads the
    checkpoint on rank 0 only and scatters it; a no-op for `zero3=None`."""
    if zero3 is None:
        yield
        return
    import deepspeed  # only on workers that train with ZeRO-3
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    deepspeed.init_distributed()  # wraps the existing process group; the config below reads its world size
    hold = HfDeepSpeedConfig(zero3)  # transformers keeps only a weak reference: it must stay alive until loaded
    try:
        yield
    finally:
        # Dropped after loading: left set, transformers would treat every later model (a stage-2 reference in the
        # same process, say) as ZeRO-3 too.
        unset_hf_deepspeed_config()
        del hold


def partitioned_builtin(build: Callable[[], torch.nn.Module], zero3: dict) -> torch.nn.Module:
    """The model `build()` returns, built partitioned under ZeRO-3 with exactly the weights `build()` gives.

    The partitioned model's own random init differs from `build()`'s (transformers initialises partitioned weights
    in another order), so rank 0 builds the seeded model, a builtin being a few hundred KB, and writes it in module
    by module; the policy and the reference so start from the same weights under every stage.
    """
    import deepspeed
    import torch.distributed as dist

    with torch.device("meta"):
        skeleton = build()  # class, config and dtype only
    with torch.random.fork_rng(devices=[]), zero3_construction(zero3):  # its init draws would move the global RNG
        model = type(skeleton)._from_config(skeleton.config, dtype=next(skeleton.parameters()).dtype)
    source = dict(build().named_modules()) if dist.get_rank() == 0 else None
    for name, module in model.named_modules():
        params = dict(module.named_parameters(recurse=False))
        if not params:
            continue
        with deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=0):  # re-partitioned on exit
            if source is not None:
                for key, p in params.items():
                    p.data.copy_(getattr(source[name], key).data)
    return model


def count_params(spec: str, lora_r: int | None = None, lora_targets: list[str] = ()) -> tuple[int, int]:
    """(parameters, trainable parameters) of `spec`'s causal LM, from its config alone (built on the meta device,
    no weights read). With LoRA (`lora_r`), the trainable ones are r * (in + out) per targeted Linear."""
    with torch.device("meta"):
        if spec.startswith("builtin:"):
            model = tiny_llama(seed=0)
        else:
            path = str(Path(spec).expanduser()) if _looks_local(spec) else spec
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    n = sum(p.numel() for p in model.parameters())
    if lora_r is None:
        return n, n
    adapters = sum(lora_r * (m.in_features + m.out_features) for name, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in set(lora_targets))
    return n + adapters, adapters


def enable_checkpointing(model: torch.nn.Module) -> None:
    """Gradient (activation) checkpointing of every decoder layer, non-reentrant.

    transformers checkpoints a layer only while that layer is in training mode; lipo trains in eval mode (no
    dropout, like the reference), so only the checkpointed layers themselves are switched to training mode.
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    for m in model.modules():
        if isinstance(m, GradientCheckpointingLayer):
            m.training = True


def load_sequence_classifier(spec: str, dtype: str = "float32", zero3: dict | None = None):
    """A one-output sequence classifier (a reward model), from a reward model or a causal LM checkpoint.

    From a causal LM the backbone is reused and the scalar head starts random, as in usual reward-model training.
    `builtin:*` gives the tiny classifier of `lipo.models.tiny`. `zero3`: as for `load_causal_lm`.
    """
    if spec.startswith("builtin:"):
        def build():
            return tiny_reward_model(seed=0).to(torch_dtype(dtype))

        return (partitioned_builtin(build, zero3) if zero3 else build()).eval()
    path = str(Path(spec).expanduser()) if _looks_local(spec) else spec
    with zero3_construction(zero3):
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch_dtype(dtype))
    if model.config.pad_token_id is None:  # the head reads the last non-pad token, so it needs the pad id
        model.config.pad_token_id = load_tokenizer(spec).pad_token_id
    return model.eval()
