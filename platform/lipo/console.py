"""What a `lipo` command prints: lipo's own progress bars and `[lipo]` lines on the screen, everyone else's chatter
in a log file whose path is printed.

    lipo run                 # quiet: bars, [lipo] lines, the summary; Ray/DeepSpeed/MLflow logs -> the log file
    lipo --verbose run       # everything on the screen, as Ray prints it

`lipo.cli` calls `configure(verbose)` once per command, and `log_dir_for(output_dir)` picks where the file goes;
`lipo.runtime.ensure_ray` calls `attach_ray()` right after `ray.init`. Library code that is not run from the CLI
(tests, notebooks) never calls `configure`, so it prints exactly what Ray prints.

Quiet mode moves three streams into the file, and nothing else:
- **Ray's forwarded worker output.** Every line a Ray task or actor prints (the Train controller, DeepSpeed on each
  worker, Serve's controller and proxies) is written to the file; only lines containing `[lipo]` also reach the
  screen. The same goes for the cluster's error feed (e.g. "Task ServeController.graceful_shutdown failed ... will be
  retried", printed while Serve stops). This replaces the driver's printer of both: the handler of
  `ray._private.ray_logging.global_worker_stdstream_dispatcher` and `ray._private.worker.print_to_stdstream`,
  private names of the pinned Ray (==2.60). When they are missing, quiet mode falls back to `log_to_driver=False`,
  which keeps the worker lines in Ray's session directory instead (`/tmp/ray/session_latest/logs`).
- **Python logging of other packages on the driver** (ray, ray.data, ray.serve, mlflow, alembic, ...): their
  console handlers are swapped for the file. Packages set their handlers when imported or started, so the swap is
  repeated by `attach_ray()` and by `quiet_loggers()` after the other start-ups (Serve).
- **Python warnings** (`FutureWarning`, `UserWarning`): to the file, through `logging.captureWarnings`.
And Hugging Face's per-model-load bars are switched off (`HF_HUB_DISABLE_PROGRESS_BARS=1`), as is MLflow's own
console handler (`MLFLOW_CONFIGURE_LOGGING=false`), unless those are already set.

One kind of line stays on the screen: the driver's own C++ core worker writes its ERROR-level lines to the
terminal itself (e.g. `core_worker.cc: Actor with class name ... has constructor arguments in the object store`,
once per Ray Data actor pool), below Python, where only a file-descriptor redirect could catch them; lipo does not
redirect the terminal of a process whose tracebacks must reach it.

Real errors still reach the screen: a user's mistake is a `LipoError` that `lipo.cli` prints, a bug's traceback is
printed by `lipo.cli`, and an exception in a Ray worker is raised again on the driver, where the same two rules
apply. Decision: repeated Ray warnings that are not errors (e.g. Ray Train's placement-group cleaner, which cannot
reach the State API when the local Ray has no dashboard, and says so every second) are noise for a user; they are
kept, in the file, for whoever debugs Ray itself.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SCREEN_MARK = "[lipo]"  # worker lines carrying it are lipo's own, and stay on the screen
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass
class _State:
    verbose: bool = True  # no configure() call (library use): print what Ray prints
    log_dir: Path | None = None
    handler: logging.Handler | None = None
    announced: bool = False
    ray_print: Callable | None = None  # Ray's own printer of forwarded lines, kept for lipo's lines


_state = _State()


def default_log_dir() -> Path:
    return Path(os.environ.get("LIPO_LOG_DIR") or Path.home() / ".cache" / "lipo" / "logs")


def log_dir_for(output_dir: str | None) -> Path:
    """`<output_dir>/logs` for a local output directory (logs sit beside the run); else `$LIPO_LOG_DIR` or
    `~/.cache/lipo/logs` (an object-store URI is not a place for an appending log file)."""
    if os.environ.get("LIPO_LOG_DIR") or not output_dir or "://" in str(output_dir):
        return default_log_dir()
    return Path(output_dir).expanduser() / "logs"


def configure(verbose: bool, log_dir: Path | None = None) -> None:
    """Choose quiet (default for the CLI) or verbose output for this process; `LIPO_VERBOSE=1` forces verbose."""
    _state.verbose = verbose or os.environ.get("LIPO_VERBOSE", "").strip().lower() in ("1", "true", "yes")
    _state.log_dir = log_dir or default_log_dir()
    if not _state.verbose:
        # Hugging Face's download and "Loading weights" bars (transformers reads this when imported, and local Ray
        # workers inherit it): one model load is not a stage's progress.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        # MLflow installs its own stderr handler when imported, which happens later, lazily; without it, its
        # records reach the root logger, whose handler is the file.
        os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
        logging.captureWarnings(True)
        quiet_loggers()


def is_quiet() -> bool:
    return not _state.verbose


def log_path() -> Path | None:
    """The log file of this process (created on first use); None in verbose mode."""
    handler = _file_handler()
    return Path(handler.baseFilename) if handler is not None else None


def _file_handler() -> logging.FileHandler | None:
    if _state.verbose:
        return None
    if _state.handler is None:
        directory = _state.log_dir or default_log_dir()
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"lipo-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        handler = logging.FileHandler(path, encoding="utf-8", delay=False)
        handler.setFormatter(logging.Formatter(_FORMAT))
        handler.setLevel(logging.INFO)  # Ray Data's logger runs at DEBUG
        _state.handler = handler
        logging.getLogger().addHandler(handler)  # warnings and packages without handlers of their own
    return _state.handler


def _is_console(handler: logging.Handler) -> bool:
    stream = getattr(handler, "stream", None)
    return (isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
            and stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__))


def quiet_loggers() -> None:
    """Swap every console handler of every logger but lipo's for the log file, and turn Ray Data's own progress
    bars off (idempotent; a no-op in verbose mode)."""
    handler = _file_handler()
    if handler is None:
        return
    manager = logging.root.manager
    loggers = [logging.getLogger()] + [v for v in list(manager.loggerDict.values()) if isinstance(v, logging.Logger)]
    for logger in loggers:
        if logger.name.startswith("lipo"):
            continue
        console = [h for h in logger.handlers if _is_console(h)]
        for h in console:
            logger.removeHandler(h)
        # A logger that does not propagate would lose its records: give it the file directly.
        if console and not logger.propagate and handler not in logger.handlers:
            logger.addHandler(handler)
    if "ray.data" in sys.modules:  # Ray Data's per-operator bars: lipo's stages draw one bar of their own
        sys.modules["ray.data"].DataContext.get_current().enable_progress_bars = False


def _route_worker_lines(data: dict, ignore_prefix: bool = False) -> None:
    """Ray's printer of forwarded worker output and of the cluster's error feed, replaced: all of it to the file,
    `[lipo]` lines also to the screen (through Ray's own printer, so they keep their `(actor pid=...)` prefix)."""
    from ray._private.worker import filter_autoscaler_events

    handler = _file_handler()
    who = data.get("actor_name") or data.get("task_name") or ""
    lines = data.get("lines") or []
    if data.get("pid") == "autoscaler":  # its periodic status report: keep the events, as Ray's printer does
        lines = list(filter_autoscaler_events(lines))
    if handler is not None:
        stream = "err" if data.get("is_err") else "out"
        for line in lines:
            handler.stream.write(f"({who} pid={data.get('pid')} {stream}) {line}\n")
        handler.flush()
    mine = [line for line in lines if SCREEN_MARK in line]
    if mine and _state.ray_print is not None:
        _state.ray_print({**data, "lines": mine}, ignore_prefix=ignore_prefix)


def _ray_printing():
    """(the driver's worker-output dispatcher, the module whose `print_to_stdstream` prints Ray's error feed), or
    None when the installed Ray does not have them (they are private names of the pinned Ray 2.60)."""
    try:
        import ray._private.worker as worker
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return None
    return (dispatcher, worker) if hasattr(worker, "print_to_stdstream") else None


def ray_init_options() -> dict:
    """Extra `ray.init` keywords for this process's mode."""
    if _state.verbose or _ray_printing() is not None:
        return {}
    return {"log_to_driver": False}  # not the pinned Ray: keep worker output out of the terminal the public way


def attach_ray() -> None:
    """After `ray.init`: route forwarded worker output, the error feed and Ray's driver loggers to the file, and say
    where it is (once)."""
    if _state.verbose:
        return
    hooks = _ray_printing()
    if hooks is not None:
        dispatcher, worker = hooks
        if _state.ray_print is None:  # the error feed's thread looks the printer up on every message
            _state.ray_print = worker.print_to_stdstream
            worker.print_to_stdstream = _route_worker_lines
        dispatcher.remove_handler("ray_print_logs")  # ray.init's handler is bound to the original printer
        dispatcher.remove_handler("lipo_route_logs")
        dispatcher.add_handler("lipo_route_logs", _route_worker_lines)
    quiet_loggers()
    if not _state.announced:
        _state.announced = True
        print(f"[lipo] Ray, DeepSpeed and MLflow logs: {log_path()} (--verbose shows them here)", flush=True)
