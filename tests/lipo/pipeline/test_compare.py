"""`lipo compare`'s plan: which policies it trains, under which names, before any of them runs."""

from __future__ import annotations

from lipo.config import load_config
from pathlib import Path

from lipo.pipeline.compare import Variant, train_stage, variants
from lipo.pipeline.config import DEFAULT_CONFIG, PipelineConfig
from lipo.pipeline.resolve import resolve


def test_every_variant_once_per_seed_with_the_reference_lambda_shared():
    cfg = load_config(PipelineConfig, DEFAULT_CONFIG)
    got = variants(cfg, full_k=8, reference_weight="dcg", base_seed=0)
    c = cfg.compare
    per_seed = len(c.objectives) + len(c.ablation_objectives) * 2 + (len(c.lambda_weights) - 1)  # K=2, 4; dcg shared
    assert (c.seeds, c.ablation_seeds) == (3, 1) and len(got) == per_seed + 2 * len(c.objectives) == 30
    assert {v.seed for v in got if v.k < 8 or (v.weight or "dcg") != "dcg"} == {0}  # ablations: the first seed
    assert sorted(v.seed for v in got if v.k == 8 and (v.weight or "dcg") == "dcg") == [0] * 7 + [1] * 7 + [2] * 7
    assert len(set(got)) == len(got)
    main = got[:3 * len(c.objectives)]  # the main table's seeds come first, then the ablations
    assert [v.seed for v in main] == [0] * 7 + [1] * 7 + [2] * 7 and all(v.k == 8 for v in main)
    first = [v for v in got if v.seed == 0]
    assert Variant("lambda", 8, "dcg", 0) in first and Variant("pair_logistic", 8, None, 0) in first
    weights = {v.weight for v in first if v.objective == "lambda" and v.k == 8}
    assert weights == {"dcg", "dcg2", "label_diff", "constant"}
    assert {(v.objective, v.k) for v in first if v.k < 8} == {(o, k) for o in c.ablation_objectives for k in (2, 4)}
    assert all(v.weight is None for v in got if v.objective != "lambda")
    tags = {v.tag("dcg", 0) for v in got}
    assert len(tags) == len(got)  # one run name (and ledger marker) per variant
    # The base seed and the reference weight add nothing to a name, so one-seed comparisons keep their run names.
    assert Variant("lambda", 8, "dcg", 0).tag("dcg", 0) == "lambda-k8"
    assert Variant("lambda", 8, "dcg2", 2).tag("dcg", 0) == "lambda-k8-dcg2-s2"
    assert Variant("list_mle", 4, None, 1).tag("dcg", 0) == "list_mle-k4-s1"


def test_a_non_default_reference_weight_and_base_seed():
    cfg = load_config(PipelineConfig, DEFAULT_CONFIG, ["compare.seeds=1", "compare.objectives=[lambda]",
                                                       "compare.ablation_objectives=[]",
                                                       "compare.lambda_weights=[constant, dcg2]"])
    got = variants(cfg, full_k=8, reference_weight="dcg2", base_seed=7)
    assert got == [Variant("lambda", 8, "dcg2", 7), Variant("lambda", 8, "constant", 7)]
    assert [v.tag("dcg2", 7) for v in got] == ["lambda-k8", "lambda-k8-constant"]


def test_the_policy_lipo_run_trains_is_not_trained_again(tmp_path):
    cfg = load_config(PipelineConfig, DEFAULT_CONFIG, [f"output_dir={tmp_path}"])
    stages = resolve(cfg, "sqlite:///unused.db")
    lists = Path(stages.build_lists.output.dir)
    stage, tcfg = train_stage(cfg, stages, Variant("lambda", 8, "dcg", 0), "lambda-k8", lists)
    assert stage == "train" and tcfg is stages.train  # the pipeline's ledger stage: `lipo run` may have done it
    for v in (Variant("lambda", 8, "dcg", 1), Variant("lambda", 8, "constant", 0), Variant("list_mle", 8, None, 0)):
        stage, tcfg = train_stage(cfg, stages, v, v.tag("dcg", 0), lists)
        assert stage == f"train-{v.tag('dcg', 0)}" and tcfg.seed == v.seed and tcfg.objective.name == v.objective
        assert tcfg.run_name.startswith(f"quickstart-{v.tag('dcg', 0)}-")
    stage, _ = train_stage(cfg, stages, Variant("lambda", 2, "dcg", 0), "lambda-k2", lists.with_name("x") / "l.parquet")
    assert stage == "train-lambda-k2"  # other lists: another policy


def test_more_ablation_seeds_than_seeds():
    cfg = load_config(PipelineConfig, DEFAULT_CONFIG, ["compare.seeds=1", "compare.ablation_seeds=2",
                                                       "compare.objectives=[softmax]", "compare.list_sizes=[2]",
                                                       "compare.ablation_objectives=[lambda]",
                                                       "compare.lambda_weights=[dcg]"])
    assert variants(cfg, full_k=4, reference_weight="dcg", base_seed=0) == [
        Variant("softmax", 4, None, 0), Variant("lambda", 2, "dcg", 0), Variant("lambda", 4, "dcg", 0),
        Variant("lambda", 2, "dcg", 1), Variant("lambda", 4, "dcg", 1)]
    cfg = load_config(PipelineConfig, DEFAULT_CONFIG, ["compare.seeds=2", "compare.objectives=[lambda]",
                                                       "compare.ablation_objectives=[]"])
    assert [(v.weight, v.seed) for v in variants(cfg, full_k=8, reference_weight="dcg", base_seed=0)] == [
        ("dcg", 0), ("dcg", 1), ("dcg2", 0), ("label_diff", 0), ("constant", 0)]  # dcg is the main table's
