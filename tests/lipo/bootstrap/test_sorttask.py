"""The sort world: a gold reward graded by pairs in order, files that are deterministic, disjoint and readable by
lipo's readers, and `world.task=sort` wiring the sort gold reward into the pipeline as scorer and judge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lipo.bootstrap import gold_reward_spec
from lipo.bootstrap.sorttask import N_DIGITS, PREFIX, gold_reward, make_world
from lipo.config import load_config
from lipo.data.demos import read_demonstrations
from lipo.data.readers import read_lists
from lipo.evaluation.runner import read_prompts
from lipo.pipeline.config import PipelineConfig
from lipo.pipeline.resolve import resolve

SORT_YAML = Path(__file__).resolve().parents[3] / "configs" / "sort.yaml"


@pytest.mark.parametrize("response,expected", [
    ("12358", 1.0),
    ("85321", 0.0),  # reversed: no pair in order
    ("13258", 0.9),  # one adjacent swap breaks exactly one of C(5,2) = 10 pairs
    ("21358", 0.9),
    ("31258", 0.8),  # 3 moved two places ahead: pairs 1<3 and 2<3 broken
    ("1358", 0.6),  # 2 dropped: its 4 pairs are lost, the other C(4,2) = 6 are in order, over C(5,2) = 10
    ("123589", 10 / 15),  # an extra digit: all 10 input pairs in order, over C(6,2) = 15
    ("123558", 10 / 15),  # a repeated digit: the first occurrence counts, the length still costs
    ("1a2358", 10 / 15),  # any extra character costs the same way
    ("xyz", 0.0),
    ("", 0.0),
    ("  12358 \n", 1.0),  # surrounding whitespace is ignored
])
def test_gold_reward_by_hand(response, expected):
    assert gold_reward(PREFIX + "52813\n", response) == pytest.approx(expected)


def test_gold_reward_has_many_levels():
    levels = {gold_reward(PREFIX + "52813\n", r) for r in
              ("12358", "13258", "31258", "32158", "53218", "85321", "1358", "138", "18", "123589")}
    assert len(levels) == 10  # a list of answers can differ at every rank, not only best vs worst


def read(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_world_is_deterministic_disjoint_and_labelled_by_gold(tmp_path):
    kw = dict(n_demos=200, n_rm_lists=40, n_prompts=30, n_eval=20, noise=0.5, rm_list_size=6)
    a, b = make_world(tmp_path / "a", **kw), make_world(tmp_path / "b", **kw)
    for key in a:
        assert a[key].read_bytes() == b[key].read_bytes(), key
    assert make_world(tmp_path / "c", **kw, seed=1)["prompts"].read_bytes() != a["prompts"].read_bytes()
    files = {key: read(path) for key, path in a.items()}
    assert [len(files[k]) for k in ("demos", "rm_lists", "rm_prompts", "prompts", "eval_prompts")] == [200, 40, 40,
                                                                                                       30, 20]
    prompts = {k: {r["prompt"] for r in rows} for k, rows in files.items() if k != "rm_prompts"}
    names = list(prompts)
    for i, x in enumerate(names):  # no prompt is shared between demos, reward-model data, lists and evaluation
        for y in names[i + 1:]:
            assert not prompts[x] & prompts[y], (x, y)
    assert [r["prompt"] for r in files["rm_prompts"]] == [r["prompt"] for r in files["rm_lists"]]
    for r in files["prompts"] + files["eval_prompts"] + files["rm_prompts"]:
        digits = r["prompt"][len(PREFIX):-1]
        assert len(set(digits)) == N_DIGITS == len(digits) and r["reference"] == "".join(sorted(digits))
        assert gold_reward(r["prompt"], r["reference"]) == 1.0
    for r in files["rm_lists"]:
        assert len(r["responses"]) == 6 == len(set(r["responses"]))
        assert r["labels"] == [round(gold_reward(r["prompt"], x), 6) for x in r["responses"]]
    assert sum(len(set(r["labels"])) for r in files["rm_lists"]) / 40 >= 3  # graded, not best-vs-rest
    gold = [gold_reward(r["prompt"], r["response"]) for r in files["demos"]]
    assert 70 <= sum(g == 1.0 for g in gold) <= 130  # noise 0.5 of 200 demos: about half corrupted (sd ~7)
    assert len({round(g, 6) for g in gold if g < 1}) >= 4  # the noisy demos are imperfect in a graded way
    # the readers of lipo's stages take every file (a bad row would raise a LipoError naming file and row)
    assert read_lists(a["rm_lists"])[0].num_rows == 40
    assert read_demonstrations(a["demos"])[0].num_rows == 200
    assert [len(read_prompts([str(a[k])])) for k in ("prompts", "eval_prompts", "rm_prompts")] == [30, 20, 40]


def test_noise_free_world_has_clean_demonstrations(tmp_path):
    demos = read(make_world(tmp_path, n_demos=50, n_rm_lists=8, n_prompts=4, n_eval=4, noise=0.0)["demos"])
    assert all(gold_reward(r["prompt"], r["response"]) == 1.0 for r in demos)


def test_sort_config_wires_the_sort_gold_reward_as_scorer_and_judge(tmp_path):
    s = resolve(load_config(PipelineConfig, SORT_YAML, [f"output_dir={tmp_path}"]), "sqlite:///unused.db")
    spec = gold_reward_spec("sort")
    assert spec == "lipo.bootstrap.sorttask:gold_reward"
    assert (s.preferences.score.name, s.preferences.score.function) == ("function", spec)
    assert s.evaluate.judge.function == spec
    assert s.preferences.input.prompts == [str(tmp_path / "world" / "rm_prompts.jsonl")]
    assert s.build_lists.input.prompts == [str(tmp_path / "world" / "prompts.jsonl")]
