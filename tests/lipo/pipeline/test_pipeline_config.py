"""`resolve` wires the stages of `lipo run`: which data and which starting weights each stage gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from lipo.config import load_config
from lipo.errors import ConfigError
from lipo.bootstrap import gold_reward_spec
from lipo.pipeline.config import PipelineConfig
from lipo.pipeline.resolve import resolve

REPO = Path(__file__).resolve().parents[3]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
URI = "sqlite:///unused.db"


def stages_of(tmp_path, *overrides):
    return resolve(load_config(PipelineConfig, QUICKSTART, [f"output_dir={tmp_path}", *overrides]), URI)


def test_preference_data_are_sft_samples_labelled_by_gold(tmp_path):
    s = stages_of(tmp_path)
    assert all(stage is not None for stage in vars(s).values())
    pref, bl, sft_dir = s.preferences, s.build_lists, str(s.sft.model_dir())
    assert pref.input.prompts == [str(tmp_path / "world" / "rm_prompts.jsonl")]
    assert pref.generate.model == sft_dir and pref.generate.num_candidates == 8  # world.rm_list_size
    # sampled like the LiPO lists, so the reward model learns on the kind of answers it will rank
    assert (pref.generate.temperature, pref.generate.max_new_tokens) == (bl.generate.temperature,
                                                                           bl.generate.max_new_tokens)
    assert not pref.generate.include_reference
    assert (pref.score.name, pref.score.function, pref.label.method) == (
        "function", gold_reward_spec("copy"), "identity")
    assert pref.reference is None and pref.output.dir != bl.output.dir
    assert s.reward_model.data.train == [pref.output.dir]
    assert s.reward_model.model.path == sft_dir  # the reward model starts from the SFT policy
    assert bl.score.model == str(s.reward_model.model_dir()) and s.train.model.path == sft_dir


def test_user_keys_win_and_changes_move_the_output(tmp_path):
    base = stages_of(tmp_path)
    s = stages_of(tmp_path, "reward_model.model.path=builtin:tiny-llama", "world.rm_list_size=4")
    assert s.reward_model.model.path == "builtin:tiny-llama"
    assert s.preferences.generate.num_candidates == 4
    assert s.preferences.output.dir != base.preferences.output.dir  # a changed stage is a new dataset
    assert s.reward_model.run_name != base.reward_model.run_name


def test_corruptions_need_no_preference_stage(tmp_path):
    s = stages_of(tmp_path, "world.rm_data=corruptions")
    assert s.preferences is None
    assert s.reward_model.data.train == [str(tmp_path / "world" / "rm_lists.jsonl")]


def test_samples_without_sft_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="world.rm_data"):
        stages_of(tmp_path, "sft=null", "build_lists.generate.model=builtin:tiny-llama")
