"""Stop requests from the scheduler or the user, turned into a flag the training loop reads once per step."""

from __future__ import annotations

import contextlib
import signal


class StopSignal:
    """SIGTERM/SIGUSR1/SIGUSR2 set a flag; the loop checkpoints and exits at the next step boundary.

    SIGUSR2 is SLURM's (submitit's) warning before a time limit, SIGTERM what SLURM sends on preemption
    (and on scancel): the launcher requeues the job after the checkpoint (ssl_zoo.launch.job; SIGTERM per
    the profile's requeue_on_sigterm, and not after a scancel). SIGUSR1 only stops: NCCL may use it.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> "StopSignal":
        with contextlib.suppress(ValueError):  # not the main thread: no handlers
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
