"""The sort world: sort five distinct digits, graded by how many pairs end up in order (many gold levels).

    prompt:   "Sort: 52813\n"           target: "12358"

    gold(prompt, response) = in_order / C(max(n, m), 2)
      n        = number of digits in the prompt (5), m = len(response) after stripping whitespace;
      in_order = number of pairs of input digits a < b that both occur in the response with the first
                 occurrence of a before the first occurrence of b.
    Every character of the response counts in m, so a dropped digit, a repeated digit or any extra character
    costs through the denominator, and a digit absent from the response takes all its pairs with it.

    Worked example, input 52813 (n = 5, C(5, 2) = 10 pairs):
      "12358" -> 10/10 = 1.0      "85321" -> 0/10 = 0.0 (reversed)
      "13258" -> 9/10  = 0.9      (one adjacent swap breaks exactly the pair 2<3)
      "1358"  -> 6/10  = 0.6      (2 dropped: m = 4 < n, the 4 pairs with 2 are lost)
      "123558"-> 10/15 = 0.667    (a repeated 5: m = 6, C(6, 2) = 15)
      "xyz", "" -> 0.0

Why this task (the issue's candidate, kept): the copy task's gold is nearly binary once the policy has learned
it, so a ranked list of K answers carries little beyond its best and worst. Sorting has C(5, 2) + 1 = 11 levels for
full-length answers (more with wrong lengths), a tiny model learns it only partially in the quickstart budget, and
its errors are graded (adjacent swaps first), so an SFT policy's K samples spread over several levels and the
order among the middle answers is information that a listwise objective can use. Five distinct digits keep prompts
at 12 tokens and answers at 5 (byte tokenizer: one token per character), as fast as the copy world.

Decisions: 5 digits, not 6 (6 gives 16 levels but longer answers and a harder task for a 2-layer model; 5 already
spreads samples over ~4.7 levels per list of 8 with configs/sort.yaml); distinct digits, so the target and the
pairs are unambiguous; digits 0-9, so a leading 0 is a normal digit; first occurrences decide the order of a
repeated digit; characters other than input digits earn nothing and cost through the length.

The files are the copy world's (`lipo.bootstrap.copytask`), with the same row shapes: `demos.jsonl` (a fraction
`noise` carry 1-3 swaps, mostly adjacent, and a quarter of those also drop a digit), `rm_lists.jsonl` (the sorted
answer and corruptions labelled by gold), `rm_prompts.jsonl`, `prompts.jsonl` / `eval_prompts.jsonl` (`reference` = the
sorted answer). Prompts are disjoint between the files; everything is deterministic in `seed`.

    lipo run configs/sort.yaml                # or world.task=sort in any pipeline config
    gold_reward("Sort: 52813\n", "13258")     # 0.9; the `function` scorer and judge lipo.bootstrap.sorttask:gold_reward
"""

from __future__ import annotations

import random
from math import comb
from pathlib import Path

from lipo.bootstrap.files import write_world

DIGITS = "0123456789"
PREFIX = "Sort: "
N_DIGITS = 5  # C(10, 5) * 5! = 30240 distinct prompts: plenty for disjoint files of a few thousand


def digits_of(prompt: str) -> str:
    return prompt[len(PREFIX):].strip() if prompt.startswith(PREFIX) else prompt.strip()


def gold_reward(prompt: str, response: str) -> float:
    """Pairs of input digits in order in the response, over C(max(n, len(response)), 2); see the module docstring."""
    digits, resp = digits_of(prompt), response.strip()
    total = comb(max(len(digits), len(resp)), 2)
    if total == 0:  # at most one digit and at most one character: right iff the same
        return float(digits == resp)
    first = {}
    for i, ch in enumerate(resp):
        first.setdefault(ch, i)
    present = sorted(set(digits) & first.keys())  # values in increasing order
    in_order = sum(first[a] < first[b] for i, a in enumerate(present) for b in present[i + 1:])
    return in_order / total


def corrupt(answer: str, n_errors: int, rng: random.Random, drop: float = 0.15, extra: float = 0.1) -> str:
    """`answer` with `n_errors` edits: mostly adjacent swaps (graded, small losses), some far swaps, a dropped digit
    with probability `drop` and an extra (repeated or new) digit with probability `extra`."""
    chars = list(answer)
    for _ in range(n_errors):
        op = rng.random()
        if op < drop and len(chars) > 1:
            del chars[rng.randrange(len(chars))]
        elif op < drop + extra:
            chars.insert(rng.randrange(len(chars) + 1), rng.choice(DIGITS))
        elif len(chars) > 1:
            i = rng.randrange(len(chars) - 1)
            j = i + 1 if op < 0.8 else rng.randrange(len(chars))  # far swaps lose several pairs at once
            chars[i], chars[j] = chars[j], chars[i]
    return "".join(chars)


def _prompts(n: int, rng: random.Random, used: set[str]) -> list[str]:
    out = []
    while len(out) < n:
        d = "".join(rng.sample(DIGITS, N_DIGITS))
        if d not in used:
            used.add(d)
            out.append(d)
    return out


def _demo(d: str, noisy: bool, rng: random.Random) -> str:
    answer = "".join(sorted(d))
    if not noisy:
        return answer
    # 1-3 swaps, mostly adjacent (no drops or extras in the swap pass), then a dropped digit in a quarter of them:
    # the SFT policy then errs the way the gold reward grades, by a few pairs or a missing digit
    out = corrupt(answer, rng.randint(1, 3), rng, drop=0.0, extra=0.0)
    if rng.random() < 0.25:
        i = rng.randrange(len(out))
        out = out[:i] + out[i + 1:]
    return out


def make_world(out_dir: str | Path, n_demos: int = 400, n_rm_lists: int = 300, n_prompts: int = 128,
               n_eval: int = 64, noise: float = 0.5, rm_list_size: int = 4, seed: int = 0) -> dict[str, Path]:
    """Write the five files of the world into `out_dir` (deterministic in `seed`); returns their paths."""
    rng, used = random.Random(seed), set()
    demos = [{"id": f"demo-{i}", "prompt": PREFIX + d + "\n", "response": _demo(d, rng.random() < noise, rng)}
             for i, d in enumerate(_prompts(n_demos, rng, used))]
    rm_lists = []
    for i, d in enumerate(_prompts(n_rm_lists, rng, used)):
        answer, prompt = "".join(sorted(d)), PREFIX + d + "\n"
        cands = {answer}
        while len(cands) < rm_list_size:
            cands.add(corrupt(answer, rng.randint(1, 4), rng))
        cands = sorted(cands)
        rm_lists.append({"id": f"rm-{i}", "prompt": prompt, "responses": cands,
                         "labels": [round(gold_reward(prompt, c), 6) for c in cands]})
    prompts = [{"id": f"p-{i}", "prompt": PREFIX + d + "\n", "reference": "".join(sorted(d))}
               for i, d in enumerate(_prompts(n_prompts, rng, used))]
    evals = [{"id": f"e-{i}", "prompt": PREFIX + d + "\n", "reference": "".join(sorted(d))}
             for i, d in enumerate(_prompts(n_eval, rng, used))]
    rm_prompts = [{"id": r["id"], "prompt": r["prompt"], "reference": "".join(sorted(digits_of(r["prompt"])))}
                  for r in rm_lists]
    return write_world(out_dir, demos=demos, rm_lists=rm_lists, rm_prompts=rm_prompts, prompts=prompts,
                       eval_prompts=evals)
