"""Which checkpoint a training run resumes from and which it keeps, decided from what is on disk, validated.

Ray Train's record of a run's checkpoints (`checkpoint_manager_snapshot.json`) can lag behind the disk: a checkpoint
every worker has uploaded is registered only when the controller next collects the workers' reports, so a SIGINT or
a dead worker can leave newer complete checkpoints on disk than the record names (issue 16: 20/40/60 on disk, the
run resumed from 20), and folders Ray never registered are never pruned. So lipo decides:

- Each rank writes `lipo_rank<r>.json` last into its part of a checkpoint (`write_marker`, from
  `engine.save_checkpoint`): the step, the world size, and the size of every file that rank wrote. A folder is
  complete when the markers of ranks 0..world-1 are all there, agree on step and world, and every file they list is
  there with its size (`inspect`); anything else (killed half-way through an upload, or written by a lipo without
  markers) is incomplete and never resumed from. Sizes, not just names: Ray uploads a rank's files in no set order.
- A run resumes from the complete folder with the highest step (`newest`), never from Ray's record
  (`ray.train.get_checkpoint()`): that record names folders of this same run directory, which the scan reads, so the
  newest complete folder is never older than it. Rank 0 decides, the others follow (`lipo.training.loop`).
- lipo, not Ray, keeps `checkpoint.keep` folders (`prune`): the newest `keep` complete ones stay, older complete ones
  go, and incomplete ones go too, unless an upload may still be writing them (`running`: newer than the newest
  complete folder). The trainer runs with `num_to_keep=None`, and `launch` drops Ray's record before a fit
  (`drop_ray_record`): it may name folders lipo pruned, and Ray refuses to start from such a record.

Paths are a local path or an object-store URI (`lipo.storage`), read with `pyarrow.fs`.

    found = newest("runs/my-run")        # Found(name='checkpoint_2026-...', step=60) or None
    note = prune("runs/my-run", keep=2)  # Pruned(kept=[...], removed=[...], incomplete=[...])

Tests: `python -m pytest -q tests/lipo/training/test_checkpoints.py`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from lipo import storage

PREFIX = "checkpoint_"  # Ray Train's folder names: checkpoint_<date>_<time>.<microseconds>, in time order
MARKER = "lipo_rank{rank}.json"
RAY_RECORD = "checkpoint_manager_snapshot.json"  # Ray Train's record of the run's checkpoints


@dataclass(frozen=True)
class Found:
    name: str  # the folder's name inside the run directory
    step: int  # optimizer steps done when it was written


@dataclass
class Pruned:
    kept: list[Found] = field(default_factory=list)  # newest first
    removed: list[str] = field(default_factory=list)  # complete, beyond `keep`
    incomplete: list[str] = field(default_factory=list)  # removed: "name (why)"

    def note(self, keep: int) -> str:
        parts = [f"removed {len(self.removed)} beyond checkpoint.keep={keep}"] if self.removed else []
        if self.incomplete:
            parts.append(f"removed {len(self.incomplete)} incomplete: {'; '.join(self.incomplete)}")
        return ", ".join(parts)


def write_marker(directory: Path, step: int, rank: int, world: int) -> None:
    """Write rank `rank`'s marker into its local checkpoint `directory`, after all of its files."""
    files = {p.relative_to(directory).as_posix(): p.stat().st_size for p in sorted(directory.rglob("*"))
             if p.is_file() and not p.name.startswith("lipo_rank")}
    marker = {"step": step, "world": world, "rank": rank, "files": files}
    tmp = directory / f".{MARKER.format(rank=rank)}.tmp"
    tmp.write_text(json.dumps(marker))
    tmp.rename(directory / MARKER.format(rank=rank))  # whole or absent, even on a local crash


def _fs(spec: str):
    """(pyarrow filesystem, path on it) of a local path or URI."""
    import pyarrow.fs as pafs

    local = storage.local(spec)
    return (pafs.LocalFileSystem(), str(local)) if local is not None else pafs.FileSystem.from_uri(spec)


def _listing(fs, path: str) -> dict[str, int]:
    """relative path -> size of every file under `path`."""
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return {i.path[len(path.rstrip("/")) + 1:]: i.size for i in infos if i.type == pafs.FileType.File}


def inspect(fs, path: str) -> tuple[int | None, str]:
    """(step, "") of a complete checkpoint folder at `path` on `fs`, else (None, why it is incomplete)."""
    files = _listing(fs, path)
    markers = {}
    for name in [n for n in files if n.startswith("lipo_rank") and n.endswith(".json")]:
        try:
            with fs.open_input_stream(f"{path.rstrip('/')}/{name}") as f:
                markers[name] = json.loads(f.read())
        except (OSError, ValueError):
            return None, f"unreadable {name}"
    first = markers.get(MARKER.format(rank=0))
    if first is None:
        return None, "no rank-0 marker"
    step, world = first.get("step"), first.get("world")
    if not isinstance(step, int) or not isinstance(world, int) or world < 1:
        return None, "a rank-0 marker without step or world"
    for rank in range(world):
        m = markers.get(MARKER.format(rank=rank))
        if m is None:
            return None, f"no marker of rank {rank} of {world}"
        if (m.get("step"), m.get("world")) != (step, world):
            return None, f"rank {rank} wrote step {m.get('step')}, rank 0 step {step}"
        for rel, size in m.get("files", {}).items():
            if files.get(rel) != size:
                return None, f"{rel} of rank {rank} is {'missing' if rel not in files else 'cut short'}"
    return step, ""


def scan(run_dir: str) -> tuple[list[Found], dict[str, str]]:
    """(complete folders, oldest first by (step, name); incomplete folder -> why) of the run at `run_dir`."""
    import pyarrow.fs as pafs

    fs, root = _fs(run_dir)
    complete, incomplete = [], {}
    for info in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
        if info.type != pafs.FileType.Directory or not info.base_name.startswith(PREFIX):
            continue
        step, why = inspect(fs, info.path)
        if step is None:
            incomplete[info.base_name] = why
        else:
            complete.append(Found(info.base_name, step))
    return sorted(complete, key=lambda f: (f.step, f.name)), incomplete


def newest(run_dir: str) -> Found | None:
    """The complete checkpoint folder of the run at `run_dir` with the highest step, or None."""
    complete, _ = scan(run_dir)
    return complete[-1] if complete else None


def prune(run_dir: str, keep: int, running: bool = False) -> Pruned:
    """Keep the newest `keep` complete checkpoint folders of the run at `run_dir`; remove older complete ones and
    incomplete ones. While a fit is `running`, an incomplete folder newer (by name: Ray names them by time) than the
    newest complete one may be an upload under way, and stays."""
    fs, root = _fs(run_dir)
    complete, incomplete = scan(run_dir)
    out = Pruned(kept=complete[::-1][:keep])
    newest_name = max((f.name for f in complete), default="")
    for found in complete[::-1][keep:]:
        fs.delete_dir(f"{root}/{found.name}")
        out.removed.append(found.name)
    for name, why in sorted(incomplete.items()):
        if running and name > newest_name:
            continue
        fs.delete_dir(f"{root}/{name}")
        out.incomplete.append(f"{name} ({why})")
    return out


def drop_ray_record(run_dir: str) -> bool:
    """Remove Ray Train's record of the run's checkpoints, if any (see the module docstring); True if there was one."""
    import pyarrow.fs as pafs

    fs, root = _fs(run_dir)
    path = f"{root}/{RAY_RECORD}"
    if fs.get_file_info(path).type != pafs.FileType.File:
        return False
    fs.delete_file(path)
    return True
