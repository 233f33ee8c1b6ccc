"""Where a node's own time goes, stage by stage (``node_seconds`` of the pruner and sampler, the VAE nodes' log)."""

from __future__ import annotations

import time


class StageClock:
    """``mark(name)`` ends a stage begun at the previous mark (or at creation); ``seconds`` maps
    stage names to wall seconds (a name marked twice adds up). GPU work is counted in the stage
    that waits for it.

        >>> clock = StageClock(); load(); clock.mark("load"); run(); clock.mark("run")
        >>> clock.seconds                                     # {"load": 0.012, "run": 0.95}
    """

    def __init__(self):
        self._last = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - self._last, 4)
        self._last = now
