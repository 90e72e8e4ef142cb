"""The five files every embedded world writes (`lipo.pipeline.config.Paths` reads them by these names).

    paths = write_world(out_dir, demos=[...], rm_lists=[...], rm_prompts=[...], prompts=[...], eval_prompts=[...])
"""

from __future__ import annotations

import json
from pathlib import Path


def write_world(out_dir: str | Path, **files: list[dict]) -> dict[str, Path]:
    """Each keyword's rows as `<out_dir>/<keyword>.jsonl`; returns {keyword: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, rows in files.items():
        paths[name] = out / f"{name}.jsonl"
        with open(paths[name], "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    return paths
