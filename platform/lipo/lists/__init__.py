"""build-lists: prompts -> K sampled candidates -> scores -> labels in [0, 1] + reference log-probs, on Ray Data.

    lipo build-lists configs/build_lists_example.yaml [key.sub=value ...]

- `config`: `BuildListsConfig`, validated before Ray starts.
- `prompts`: reading and validating the prompt rows, sharding, per-prompt seeds.
- `stages`: the actor stages (generate, reference log-probs, score + label) and the row layout between them.
- `scorers`, `labels`: the four scorers and five labelers, each looked up by name.
- `manifest`: the output directory (part files, resume state, `_manifest.json`).
- `pipeline`: the driver that wires them together; `workflows/build_lists.py` is the entry point.
- `vllm_engine`: the optional vLLM sampler (`generate.engine: vllm`).

This init imports nothing, so `import lipo.lists.labels` stays cheap.
"""
