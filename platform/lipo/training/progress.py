"""Driver-side progress: a tiny actor that rank 0 pushes metrics to, drained by the driver into tqdm and MLflow.

Rank 0 produces the metrics; the driver writes them to MLflow. That way the default local sqlite store works even
when workers run on other nodes, and the progress bar lives where the user is looking.

The driver drains every 0.1 s and acknowledges each step once MLflow holds it (`ack`). Before writing a checkpoint,
rank 0 waits for the acknowledgement of the last step it pushed (`wait_logged`), so every step up to a checkpoint is
in MLflow before the checkpoint exists: a driver killed later (SIGKILL) loses only points after the checkpoint, which
the resumed run recomputes and logs. Without the wait, points pushed but not yet drained died with the driver while
their checkpoint survived: a gap in the resumed history. The actor is a plain (not async) one on purpose: Ray runs a
caller's calls to it in order, so steps reach MLflow in order (an async actor may start them in any order, and a
resumed run skips a step below one already logged).

    sink = ProgressSink.remote()
    follow(trainer.fit, sink, lambda step, metrics: run.log_metrics(metrics, step, resume=True), desc="train x")
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import ray
from tqdm import tqdm


@ray.remote(num_cpus=0)
class ProgressSink:
    def __init__(self) -> None:
        self.items: list[tuple[int, int, dict]] = []
        self.acked = 0  # the last step the driver logged

    def push(self, step: int, total: int, metrics: dict) -> None:
        self.items.append((step, total, metrics))

    def drain(self) -> list[tuple[int, int, dict]]:
        items, self.items = self.items, []
        return items

    def ack(self, step: int) -> None:
        self.acked = max(self.acked, step)

    def logged(self) -> int:
        return self.acked


def wait_logged(sink, step: int, timeout_s: float, poll_s: float = 0.05) -> bool:
    """True once the driver has logged `step` (and every step pushed before it); False after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while ray.get(sink.logged.remote()) < step:
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_s)
    return True


def follow(fit: Callable[[], object], sink, on_metrics: Callable[[int, dict], None], desc: str):
    """Run `fit()` in a thread; meanwhile show a progress bar and hand every metrics push to `on_metrics`, then
    acknowledge it to the sink."""
    box: dict = {}

    def target() -> None:
        try:
            box["result"] = fit()
        except BaseException as exc:  # re-raised on the driver thread below
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    bar = tqdm(desc=desc, unit="step", dynamic_ncols=True)

    def pump() -> None:
        items = ray.get(sink.drain.remote())
        for step, total, metrics in items:
            bar.total = total
            bar.n = step
            bar.set_postfix(loss=f"{metrics.get('train/loss', float('nan')):.4f}", refresh=False)
            bar.refresh()
            on_metrics(step, metrics)
        if items:
            ray.get(sink.ack.remote(max(step for step, _, _ in items)))

    while thread.is_alive():
        thread.join(timeout=0.1)  # often: a checkpoint waits for the acknowledgement of its step
        pump()
    pump()
    bar.close()
    if "error" in box:
        raise box["error"]
    return box["result"]
