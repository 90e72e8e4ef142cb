"""The whole workflow as one config: (bootstrap) -> sft -> preferences -> train-rm -> build-lists -> train ->
evaluate -> register.

    lipo run [CONFIG.yaml]        # run.run_pipeline;  lipo compare [CONFIG.yaml]: compare.compare

`config` (PipelineConfig, Paths), `resolve` (one validated config per stage), `ledger` (each stage once),
`run` and `compare` (the drivers), `summary`, `report`, `ablation`. Nothing is imported here.
"""
