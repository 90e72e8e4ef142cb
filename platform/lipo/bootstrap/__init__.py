"""The embedded worlds of `lipo run` / `lipo compare`: small tasks with an exact gold reward, made on the fly.

    world = WORLDS["sort"]                    # a module with make_world(...) and gold_reward(prompt, response)
    gold_reward_spec("sort")                  # "lipo.bootstrap.sorttask:gold_reward", the scorer and judge spec

- `copy` (`copytask`): copy a 5-letter word; partial credit per matching position. The quickstart's world.
- `sort` (`sorttask`): sort a short list of digits; graded by the fraction of pairs in order, so a list of
  answers has many quality levels and its ranking carries more than its best and worst answer.

`world.task` in the pipeline config selects one; both take the same `make_world` arguments and write the same files.
"""

from __future__ import annotations

from types import ModuleType
from typing import Literal

from lipo.bootstrap import copytask, sorttask

WorldTask = Literal["copy", "sort"]
WORLDS: dict[str, ModuleType] = {"copy": copytask, "sort": sorttask}


def gold_reward_spec(task: str) -> str:
    """`package.module:function` of the task's gold reward: the preference data's raters and the eval's judge."""
    return f"{WORLDS[task].__name__}:gold_reward"
