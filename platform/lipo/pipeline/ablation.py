"""List-size ablation: the same lists cut down to K responses (a seeded subset per list, labels and reference
log-probs kept aligned), so every K trains on the same prompts and the same candidates.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from lipo.data.readers import read_lists, write_lists


def subsample_lists(source: str | Path, k: int, out_file: Path, seed: int = 0) -> Path:
    """Write `out_file` with at most `k` responses per list; lists with fewer keep all of theirs."""
    table, _ = read_lists([str(source)])
    rows = []
    for row in table.to_pylist():
        n = len(row["responses"])
        if n > k:
            rng = random.Random(int(hashlib.sha1(f"{seed}:{row['id']}".encode()).hexdigest()[:8], 16))
            keep = sorted(rng.sample(range(n), k))
            for key in ("responses", "labels", "rewards", "ref_logps"):
                if row.get(key) is not None:
                    row[key] = [row[key][i] for i in keep]
        rows.append(row)
    return write_lists(rows, out_file)
