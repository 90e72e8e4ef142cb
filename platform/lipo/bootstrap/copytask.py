"""The quickstart task: copy a short random word, graded with partial credit by an exact *gold* reward.

    prompt:   "Copy: kfbdh\n"           target: "kfbdh"
    gold(prompt, response) = (# positions where response matches the target) / max(len(target), len(response))

The platform bootstraps a small world from it, with no downloads:
- `demos.jsonl`: noisy demonstrations (a fraction carry 1-2 substituted letters) -> `lipo sft` gives an SFT policy
  whose K samples differ in quality;
- `rm_prompts.jsonl`: prompts for preference data. `lipo run` samples K answers to each from the SFT policy and
  labels them with the gold reward (a build-lists run with the `function` scorer), as human raters rank an SFT
  policy's samples; `lipo train-rm` on those lists gives a *proxy* reward model, imperfect like a real one;
- `rm_lists.jsonl`: the same prompts with synthetic corrupted copies labelled by the gold reward, for a reward model
  that needs no SFT policy (`world.rm_data: corruptions`);
- `prompts.jsonl` / `eval_prompts.jsonl`: disjoint prompts (with the clean `reference`) for build-lists and eval.

`gold_reward` is also the `function` judge of the evaluation (`lipo.bootstrap.copytask:gold_reward`).
"""

from __future__ import annotations

import random
from pathlib import Path

from lipo.bootstrap.files import write_world

ALPHABET = "abcdefgh"
PREFIX = "Copy: "
# A fixed length puts each target letter at a fixed distance back in the prompt, which tiny models learn fast.
WORD_LEN = 5


def target_of(prompt: str) -> str:
    return prompt[len(PREFIX):].strip() if prompt.startswith(PREFIX) else prompt.strip()


def gold_reward(prompt: str, response: str) -> float:
    """Partial credit in [0, 1]: matching positions over the longer of target and response."""
    target, resp = target_of(prompt), response.strip()
    if not target and not resp:
        return 1.0
    hits = sum(a == b for a, b in zip(target, resp))
    return hits / max(len(target), len(resp))


def corrupt(word: str, n_errors: int, rng: random.Random) -> str:
    """`word` with `n_errors` letter substitutions, or for some errors a dropped / extra letter."""
    chars = list(word)
    for _ in range(n_errors):
        op = rng.random()
        if op < 0.7 or len(chars) < 2:
            i = rng.randrange(len(chars))
            chars[i] = rng.choice([c for c in ALPHABET if c != chars[i]])
        elif op < 0.85:
            del chars[rng.randrange(len(chars))]
        else:
            chars.insert(rng.randrange(len(chars) + 1), rng.choice(ALPHABET))
    return "".join(chars)


def _words(n: int, rng: random.Random, used: set[str]) -> list[str]:
    out = []
    while len(out) < n:
        w = "".join(rng.choice(ALPHABET) for _ in range(WORD_LEN))
        if w not in used:
            used.add(w)
            out.append(w)
    return out


def make_world(out_dir: str | Path, n_demos: int = 400, n_rm_lists: int = 300, n_prompts: int = 128,
               n_eval: int = 64, noise: float = 0.5, rm_list_size: int = 4, seed: int = 0) -> dict[str, Path]:
    """Write the four files of the world into `out_dir` (deterministic in `seed`); returns their paths."""
    rng, used = random.Random(seed), set()
    demos = []
    for i, w in enumerate(_words(n_demos, rng, used)):
        noisy = rng.random() < noise
        demos.append({"id": f"demo-{i}", "prompt": PREFIX + w + "\n",
                      "response": corrupt(w, rng.randint(1, 2), rng) if noisy else w})
    rm_lists = []
    for i, w in enumerate(_words(n_rm_lists, rng, used)):
        cands, prompt = {w}, PREFIX + w + "\n"
        while len(cands) < rm_list_size:
            cands.add(corrupt(w, rng.randint(1, 3), rng))
        cands = sorted(cands)
        rm_lists.append({"id": f"rm-{i}", "prompt": prompt, "responses": cands,
                         "labels": [round(gold_reward(prompt, c), 6) for c in cands]})
    prompts = [{"id": f"p-{i}", "prompt": PREFIX + w + "\n", "reference": w}
               for i, w in enumerate(_words(n_prompts, rng, used))]
    evals = [{"id": f"e-{i}", "prompt": PREFIX + w + "\n", "reference": w}
             for i, w in enumerate(_words(n_eval, rng, used))]
    rm_prompts = [{"id": r["id"], "prompt": r["prompt"], "reference": target_of(r["prompt"])} for r in rm_lists]
    return write_world(out_dir, demos=demos, rm_lists=rm_lists, rm_prompts=rm_prompts, prompts=prompts,
                       eval_prompts=evals)
