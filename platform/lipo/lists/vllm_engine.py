"""`generate.engine: vllm`: candidate sampling with vLLM through `ray.data.llm` (GPU clusters only).

The Hugging Face engine (`lipo.lists.stages.GenerateStage`) is the default and the tested one; this path needs the
`vllm` package and GPUs, neither of which CI has, so it is exercised only by `check_vllm` in the tests. It samples
the same K candidates per prompt with per-sample seeds `prompt_seed * 1000 + j`, the scheme of
`lipo.models.generate.sample` (vLLM's sampler differs, so the texts differ from the HF engine's), applies the model's
chat template (vLLM's chat-template stage), and keeps the last `input.max_prompt_tokens` prompt tokens.

    ds = vllm_generate(ds, cfg)   # WORK_SCHEMA rows in, WORK_SCHEMA rows with responses out

The K samples of each prompt are put back together by `regroup`, block by block, with no all-to-all shuffle. This
assumes `ray.data.llm`'s processor keeps a shard's rows in one block (its stages are `map_batches` calls, which keep
row order but may cut a block into `batch_size` batches); `regroup` and the shard writer both refuse a block that
breaks it, so a violation fails loudly instead of writing split lists. Untested on GPUs here (no vLLM in CI).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import pyarrow as pa

from lipo.data.tokenize import prompt_messages
from lipo.errors import LipoError
from lipo.lists.config import BuildListsConfig
from lipo.lists.stages import WORK_SCHEMA, add_candidates


def check_vllm() -> None:
    """On the driver, before Ray starts: a clear error when vLLM is not installed."""
    if importlib.util.find_spec("vllm") is None:
        raise LipoError("generate.engine: vllm needs the `vllm` package and a GPU (pip install vllm); "
                        "use generate.engine: hf otherwise")


def vllm_generate(ds, cfg: BuildListsConfig):
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig  # the optional vLLM path: imported on use

    g, res = cfg.generate, cfg.resources.generate
    k = g.num_candidates

    def expand(row: dict[str, Any]) -> list[dict[str, Any]]:  # one prompt -> K requests (every row is live here)
        prompt = row["prompt_messages"] if row["prompt_messages"] is not None else row["prompt"]
        params = {"temperature": g.temperature, "top_p": g.top_p, "top_k": g.top_k or -1,
                  "max_tokens": g.max_new_tokens, "stop": list(g.stop) or None,
                  "truncate_prompt_tokens": cfg.input.max_prompt_tokens}
        return [{**row, "sample": j, "messages": prompt_messages(prompt),
                 "sampling_params": {**params, "seed": int(row["seed"]) * 1000 + j}} for j in range(k)]

    processor = build_processor(
        vLLMEngineProcessorConfig(model_source=g.model, batch_size=res.batch_size, concurrency=res.concurrency,
                                  engine_kwargs={"dtype": "bfloat16" if g.dtype == "auto" else g.dtype}),
        postprocess=lambda row: {**{c: row.get(c) for c in WORK_SCHEMA.names}, "sample": row["sample"],
                                 "text": row.get("generated_text")},
    )

    # No groupby("id") (an all-to-all barrier over the whole data set): the K samples of a prompt are regrouped
    # inside the shard's block, which the writer then checks is exactly one complete shard.
    return processor(ds.flat_map(expand)).map_batches(
        regroup, fn_kwargs={"k": k, "include_reference": g.include_reference, "dedup": g.dedup},
        batch_size=None, batch_format="pyarrow")


def regroup(block: pa.Table, k: int, include_reference: bool, dedup: bool) -> pa.Table:
    """One block of vLLM output rows (one per prompt and sample) -> one WORK_SCHEMA row per prompt, in the order
    the prompts first appear, with its K texts in sample (seed) order. A prompt with samples missing from the block
    is a bug (RuntimeError): a block must carry whole shards."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in block.to_pylist():
        groups.setdefault(r["id"], []).append(r)
    rows = []
    for rid, samples in groups.items():
        if sorted(r["sample"] for r in samples) != list(range(k)):
            raise RuntimeError(f"vLLM block holds samples {sorted(r['sample'] for r in samples)} of prompt {rid!r}; "
                               f"expected all {k}")
        samples.sort(key=lambda r: r["sample"])
        row = {c: samples[0][c] for c in WORK_SCHEMA.names}
        add_candidates(row, [r["text"] or "" for r in samples], include_reference, dedup)
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=WORK_SCHEMA)
