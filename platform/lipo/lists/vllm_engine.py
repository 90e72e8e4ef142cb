"""`generate.engine: vllm`: candidate sampling with vLLM through `ray.data.llm` (GPU clusters only).

The Hugging Face engine (`lipo.lists.stages.GenerateStage`) is the default and the tested one; this path needs the
`vllm` package and GPUs, neither of which CI has, so it is exercised only by `check_vllm` in the tests. It samples
the same K candidates per prompt with per-sample seeds `prompt_seed * 1000 + j`, the scheme of
`lipo.models.generate.sample` (vLLM's sampler differs, so the texts differ from the HF engine's), applies the model's
chat template (vLLM's chat-template stage), and keeps the last `input.max_prompt_tokens` prompt tokens.

    ds = vllm_generate(ds, cfg)   # WORK_SCHEMA rows in, WORK_SCHEMA rows with responses out
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
                                  engine_kwargs={"dtype": g.dtype}),
        postprocess=lambda row: {**{c: row.get(c) for c in WORK_SCHEMA.names}, "sample": row["sample"],
                                 "text": row.get("generated_text")},
    )

    def collect(group: pa.Table) -> pa.Table:
        rows = sorted(group.to_pylist(), key=lambda r: r["sample"])  # [K] samples of one prompt, in seed order
        row = {c: rows[0][c] for c in WORK_SCHEMA.names}
        add_candidates(row, [r["text"] or "" for r in rows], g.include_reference, g.dedup)
        return pa.Table.from_pylist([row], schema=WORK_SCHEMA)

    return processor(ds.flat_map(expand)).groupby("id").map_groups(collect, batch_format="pyarrow")
