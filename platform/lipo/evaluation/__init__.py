"""Evaluation by win rate against the baseline, judged by the reward model, through the Serve deployments.

    lipo eval configs/eval_example.yaml

`stage` (run_eval: the driver), `config` (EvalConfig), `winrate` (outcomes, bootstrap CI: pure numpy), `runner`
(prompts in, HTTP calls, metrics out) and `report` (files, histogram, MLflow). Nothing is imported here.
"""
