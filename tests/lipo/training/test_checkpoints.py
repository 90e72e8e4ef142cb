"""Resume from the newest complete checkpoint on disk, prune to `checkpoint.keep` (`lipo.training.checkpoints`), and
the driver's metrics hand-off that keeps a resumed MLflow history free of gaps (`lipo.training.progress`).

The checkpoint folders here are fabricated the way a 2-rank run makes them: each rank writes its files and its
marker (`write_marker`) into its own directory, and the upload merges them into one `checkpoint_<time>` folder.
Issue 16: with 20/40/60 on disk and Ray Train's record at 20, training resumed from 20.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from lipo.training import checkpoints as ck


def _checkpoint(run: Path, name: str, step: int, world: int = 2, ranks: tuple[int, ...] | None = None) -> Path:
    """`run/name` as the ranks in `ranks` (default all) uploaded it: DeepSpeed-like shards, RNG state, markers."""
    folder = run / name
    for rank in range(world) if ranks is None else ranks:
        local = run.parent / f"local-{name}-{rank}"  # the rank's own temporary directory
        (local / "state").mkdir(parents=True)
        (local / "state" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"o" * (100 + step))
        if rank == 0:
            (local / "state" / "mp_rank_00_model_states.pt").write_bytes(b"m" * 50)
            (local / "latest").write_text("state")
        (local / f"rng_rank{rank}.pt").write_bytes(b"r" * 8)
        ck.write_marker(local, step, rank, world)
        shutil.copytree(local, folder, dirs_exist_ok=True)
    return folder


def _names(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name.startswith(ck.PREFIX))


def test_a_marker_lists_what_its_rank_wrote(tmp_path):
    folder = _checkpoint(tmp_path / "run", "checkpoint_a", 7)
    marker = json.loads((folder / "lipo_rank1.json").read_text())
    assert marker == {"step": 7, "world": 2, "rank": 1, "files": {
        "rng_rank1.pt": 8, "state/zero_pp_rank_1_mp_rank_00_optim_states.pt": 107}}
    assert set(json.loads((folder / "lipo_rank0.json").read_text())["files"]) == {
        "latest", "rng_rank0.pt", "state/mp_rank_00_model_states.pt", "state/zero_pp_rank_0_mp_rank_00_optim_states.pt"}


def test_the_newest_complete_checkpoint_on_disk_wins_over_rays_record(tmp_path):
    run = tmp_path / "run"
    for i, step in enumerate((20, 40, 60)):
        _checkpoint(run, f"checkpoint_2026-01-01_00-00-0{i}.000000", step)
    # Ray Train's record as a SIGINT left it: only the first checkpoint registered
    (run / ck.RAY_RECORD).write_text(json.dumps({"latest_checkpoint_result": {
        "checkpoint_dir_name": "checkpoint_2026-01-01_00-00-00.000000"}}))
    assert ck.newest(str(run)) == ck.Found("checkpoint_2026-01-01_00-00-02.000000", 60)
    assert ck.drop_ray_record(str(run)) and not (run / ck.RAY_RECORD).exists()
    assert not ck.drop_ray_record(str(run))  # nothing left to drop
    assert ck.newest(str(tmp_path / "never-ran")) is None


@pytest.mark.parametrize("damage, why", [
    (lambda f: (f / "lipo_rank1.json").unlink(), "no marker of rank 1 of 2"),
    (lambda f: (f / "lipo_rank0.json").unlink(), "no rank-0 marker"),
    (lambda f: (f / "state/zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink(),
     "state/zero_pp_rank_1_mp_rank_00_optim_states.pt of rank 1 is missing"),
    (lambda f: (f / "state/mp_rank_00_model_states.pt").write_bytes(b"m" * 10),
     "state/mp_rank_00_model_states.pt of rank 0 is cut short"),
    (lambda f: (f / "lipo_rank1.json").write_text('{"step": 8'), "unreadable lipo_rank1.json"),
    (lambda f: (f / "lipo_rank1.json").write_text(json.dumps({"step": 6, "world": 2, "files": {}})),
     "rank 1 wrote step 6, rank 0 step 8"),
    (lambda f: (f / "lipo_rank0.json").write_text(json.dumps({"files": {}})), "a rank-0 marker without step or world"),
], ids=["rank-1-marker", "rank-0-marker", "shard-missing", "shard-short", "unreadable", "steps-differ", "no-step"])
def test_an_incomplete_checkpoint_is_never_resumed_from(tmp_path, damage, why):
    run = tmp_path / "run"
    _checkpoint(run, "checkpoint_1", 4)
    damage(_checkpoint(run, "checkpoint_2", 8))
    assert ck.scan(str(run)) == ([ck.Found("checkpoint_1", 4)], {"checkpoint_2": why})
    assert ck.newest(str(run)) == ck.Found("checkpoint_1", 4)


def test_pruning_keeps_the_newest_complete_and_removes_the_rest(tmp_path):
    """A killed run leaves folders beyond `keep` (Ray never registered them) and half-uploaded ones."""
    run = tmp_path / "run"
    _checkpoint(run, "checkpoint_0-torn", 10, ranks=(0,))  # killed during rank 1's upload
    for i, step in enumerate((20, 40, 60, 80)):
        _checkpoint(run, f"checkpoint_{i + 1}", step)
    _checkpoint(run, "checkpoint_9-uploading", 100, ranks=(0,))  # newest: perhaps still being written
    (run / "model").mkdir()  # not a checkpoint: never touched
    pruned = ck.prune(str(run), keep=2, running=True)
    assert pruned.kept == [ck.Found("checkpoint_4", 80), ck.Found("checkpoint_3", 60)]
    assert pruned.removed == ["checkpoint_2", "checkpoint_1"]
    assert pruned.incomplete == ["checkpoint_0-torn (no marker of rank 1 of 2)"]
    assert _names(run) == ["checkpoint_3", "checkpoint_4", "checkpoint_9-uploading"]
    # Before a fit nothing is uploading: the incomplete one goes too, and the note counts what went.
    again = ck.prune(str(run), keep=2)
    assert _names(run) == ["checkpoint_3", "checkpoint_4"] and (run / "model").is_dir()
    assert again.note(2) == "removed 1 incomplete: checkpoint_9-uploading (no marker of rank 1 of 2)"
    assert pruned.note(2) == ("removed 2 beyond checkpoint.keep=2, removed 1 incomplete: checkpoint_0-torn "
                              "(no marker of rank 1 of 2)")
    assert ck.prune(str(run), keep=2).note(2) == ""  # nothing to do: nothing to say
    assert ck.prune(str(tmp_path / "never-ran"), keep=2) == ck.Pruned()


def test_checkpoints_on_object_storage(s3, tmp_path):
    """The same on an object store (a local moto S3): listing, reading markers and removing folders by URI."""
    import pyarrow.fs as pafs

    local = tmp_path / "run"
    _checkpoint(local, "checkpoint_1", 2)
    _checkpoint(local, "checkpoint_2", 4)
    _checkpoint(local, "checkpoint_3", 6, ranks=(0,))
    fs, root = pafs.FileSystem.from_uri(f"{s3}/ckpts/run")
    pafs.copy_files(str(local), root, destination_filesystem=fs)
    run = f"{s3}/ckpts/run"
    assert ck.newest(run) == ck.Found("checkpoint_2", 4)
    assert ck.prune(run, keep=1).removed == ["checkpoint_1"]
    assert ck.newest(run) == ck.Found("checkpoint_2", 4)
    left = {i.base_name for i in fs.get_file_info(pafs.FileSelector(root)) if i.type == pafs.FileType.Directory}
    assert left == {"checkpoint_2"}


def test_every_step_before_a_checkpoint_is_logged_before_it(ray_local):
    """Rank 0 waits for the driver's acknowledgement before a checkpoint (`loop.logged`): once the wait returns,
    MLflow (here `on_metrics`, slow on purpose) holds every step pushed, in order, so a driver killed afterwards
    cannot leave a gap below the checkpoint."""
    from lipo.training.progress import ProgressSink, follow, wait_logged

    sink, seen, at_wait = ProgressSink.remote(), [], {}

    def fit():  # what rank 0 does: push steps (fire and forget), then wait before its checkpoint
        for step in range(1, 7):
            sink.push.remote(step, 8, {"train/loss": 1.0 / step})
        t0 = time.perf_counter()
        assert wait_logged(sink, 6, 30.0)
        at_wait.update(seen=list(seen), wait=time.perf_counter() - t0)
        sink.push.remote(7, 8, {"train/loss": 0.25})
        assert not wait_logged(sink, 8, 0.2)  # never pushed: times out, False
        return "done"

    def on_metrics(step, metrics):
        time.sleep(0.1)  # a slow tracking server
        seen.append(step)

    assert follow(fit, sink, on_metrics, desc="test") == "done"
    assert at_wait["seen"] == [1, 2, 3, 4, 5, 6] and seen == [1, 2, 3, 4, 5, 6, 7]
    assert at_wait["wait"] < 10.0  # six slow logs (0.6 s) and 0.1 s polls, on a loaded machine
