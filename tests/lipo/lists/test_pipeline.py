"""The driver's error handling (`lipo.lists.pipeline.execute`), without Ray: a user's LipoError raised in an actor
comes back as one line; any other exception (a bug) propagates unchanged, traceback and all."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lipo.errors import LipoError
from lipo.lists import pipeline


class FailingDataset:
    def __init__(self, exc: BaseException):
        self.exc = exc

    def iter_batches(self, **kwargs):
        raise self.exc


def run_with(monkeypatch, exc: BaseException) -> None:
    monkeypatch.setattr(pipeline, "build_dataset", lambda plan: FailingDataset(exc))
    pipeline.execute(SimpleNamespace(pending=[], shards=[], out=None))


def test_a_users_error_from_an_actor_is_one_line(monkeypatch):
    # Ray Data re-raises a wrapper that carries only the remote traceback's text
    remote = RuntimeError("Traceback (most recent call last):\n  File \"scorers.py\", line 9, in _one\n"
                          "lipo.errors.LipoError: score.function m:f raised ValueError on id 'p0': boom\n")
    with pytest.raises(LipoError) as err:
        run_with(monkeypatch, remote)
    assert str(err.value) == "score.function m:f raised ValueError on id 'p0': boom"
    wrapped = RuntimeError("task failed")
    wrapped.__cause__ = LipoError("score.function m:f returned str on id 'p1'; it must return a number")
    with pytest.raises(LipoError, match=r"^score.function m:f returned str on id 'p1'; it must return a number$"):
        run_with(monkeypatch, wrapped)


def test_a_bug_propagates_unchanged(monkeypatch):
    bug = KeyError("shard")
    with pytest.raises(KeyError) as err:
        run_with(monkeypatch, bug)
    assert err.value is bug and err.traceback[-1].name == "iter_batches"
