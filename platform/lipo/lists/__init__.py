"""build-lists: prompts -> K sampled candidates -> scores -> labels in [0, 1] + reference log-probs, on Ray Data.

    lipo build-lists configs/build_lists_example.yaml [key.sub=value ...]

- `config`: `BuildListsConfig`, validated before Ray starts.
- `prompts`: the prompt validator, per-prompt seeds, the shard descriptor.
- `staging`: the distributed validation pass that stages the prompts and plans the shards.
- `shards`: the pipeline's two ends: loading a shard's prompts, writing its lists and record (in the workers).
- `stats`: statistics that merge across shard records (the manifest's label/reward/ref_logps numbers).
- `stages`: the actor stages (generate, reference log-probs, score + label) and the row layout between them.
- `scorers`: the four scorers, looked up by name (the five labelers are `lipo.labels`).
- `manifest`: the output directory on any pyarrow filesystem (part files, resume state, `_manifest.json`).
- `pipeline`: prepare / execute / finalize, the driver that wires them together on Ray Data.
- `build`: `build_lists(cfg)`, the whole stage with its MLflow run; what `lipo build-lists` runs.
- `vllm_engine`: the optional vLLM sampler (`generate.engine: vllm`).

This init imports nothing, so `import lipo.lists.config` stays cheap (the CLI validates configs with it before
importing torch or Ray).
"""
