"""Driver-side progress: a tiny actor that rank 0 pushes metrics to, drained by the driver into tqdm and MLflow.

Rank 0 produces the metrics; the driver writes them to MLflow. That way the default local sqlite store works even
when workers run on other nodes, and the progress bar lives where the user is looking.
"""

from __future__ import annotations

import threading
from typing import Callable

import ray
from tqdm import tqdm


@ray.remote(num_cpus=0)
class ProgressSink:
    def __init__(self) -> None:
        self.items: list[tuple[int, int, dict]] = []

    def push(self, step: int, total: int, metrics: dict) -> None:
        self.items.append((step, total, metrics))

    def drain(self) -> list[tuple[int, int, dict]]:
        items, self.items = self.items, []
        return items


def follow(fit: Callable[[], object], sink, on_metrics: Callable[[int, dict], None], desc: str):
    """Run `fit()` in a thread; meanwhile show a progress bar and hand every metrics push to `on_metrics`."""
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
        for step, total, metrics in ray.get(sink.drain.remote()):
            bar.total = total
            bar.n = step
            bar.set_postfix(loss=f"{metrics.get('train/loss', float('nan')):.4f}", refresh=False)
            bar.refresh()
            on_metrics(step, metrics)

    while thread.is_alive():
        thread.join(timeout=1.0)
        pump()
    pump()
    bar.close()
    if "error" in box:
        raise box["error"]
    return box["result"]
