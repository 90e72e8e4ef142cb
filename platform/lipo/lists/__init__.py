"""build-lists: prompts -> K sampled candidates -> scores -> labels in [0, 1] + reference log-probs, on Ray Data.

    lipo build-lists configs/build_lists_example.yaml [key.sub=value ...]

- `config`: `BuildListsConfig`, validated before Ray starts.
- `prompts`: reading and validating the prompt rows, sharding, per-prompt seeds.
- `stages`: the actor stages (generate, reference log-probs, score + label) and the row layout between them.
- `scorers`: the four scorers, looked up by name (the five labelers are `lipo.labels`).
- `manifest`: the output directory (part files, resume state, `_manifest.json`).
- `pipeline`: prepare / execute / finalize, the driver that wires them together on Ray Data.
- `build`: `build_lists(cfg)`, the whole stage with its MLflow run; what `lipo build-lists` runs.
- `vllm_engine`: the optional vLLM sampler (`generate.engine: vllm`).

This init imports nothing, so `import lipo.lists.config` stays cheap (the CLI validates configs with it before
importing torch or Ray).
"""
