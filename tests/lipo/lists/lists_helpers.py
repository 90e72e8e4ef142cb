"""Helpers for the build-lists tests: small prompt files, configs, and scoring functions run inside Ray actors.

The scoring functions are imported by path inside the scorer actors, as `tests.lipo.lists.lists_helpers:...`: Ray
workers get the driver's working directory (the repository root, where pytest runs) on their sys.path, not the test
directories pytest adds.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from lipo.config import load_config
from lipo.lists.config import BuildListsConfig

WORDS = ["cab", "fed", "bead", "dace", "gab", "ace", "bad", "cafe", "deaf", "face"]


def write_prompts(path: Path, n: int = 6) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i, w in enumerate(WORDS[:n]):
            f.write(json.dumps({"id": f"p{i}", "prompt": f"Reverse the word: {w}\nAnswer:", "reference": w[::-1]})
                    + "\n")
    return path


def build_config(tmp_path: Path, prompts: Path, out: str, *overrides: str) -> BuildListsConfig:
    """A small, fast build: K = 3 candidates of <= 6 new tokens, shards of 2 prompts, tiny models."""
    base = [f"input.prompts=[{prompts}]", "input.max_prompt_tokens=64", f"output.dir={tmp_path / out}",
            "output.shard_size=2", "generate.model=builtin:tiny-llama", "generate.num_candidates=3",
            "generate.max_new_tokens=6", "reference.max_response_tokens=16", "score.name=function",
            "score.function=tests.lipo.lists.lists_helpers:overlap_reward", "tracking.enabled=false",
            "resources.generate.num_cpus=0.25", "resources.reference.num_cpus=0.25", "resources.score.num_cpus=0.25"]
    return load_config(BuildListsConfig, None, base + list(overrides))


def overlap_reward(prompt, response: str, delay: float = 0.0, kill_marker: str | None = None) -> float:
    """Letters of the word to reverse that the response contains, as a fraction: a cheap verifiable reward.

    Test hooks: `delay` seconds of sleep per call (keeps a run alive long enough to kill its driver); and
    `kill_marker`: the first call that finds no such file creates it and kills its own process, which is a scorer
    actor, mid-stage.
    """
    if kill_marker and not os.path.exists(kill_marker):
        Path(kill_marker).write_text(str(os.getpid()))
        os._exit(1)
    if delay:
        time.sleep(delay)
    word = prompt.split(": ", 1)[1].split("\n", 1)[0]
    return sum(c in response for c in set(word)) / len(set(word))


def failing_reward(prompt, response: str) -> float:
    raise ValueError("boom")


def text_reward(prompt, response: str):
    return response  # not a number: the scorer must refuse it
