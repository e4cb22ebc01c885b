"""SIGTERM as a request to checkpoint at the current step and stop: what a preempted TPU VM, a cancelled SLURM
job or a Kubernetes eviction sends before killing the process."""

import contextlib
import logging
import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)


class Preemption:
    """Remembers whether SIGTERM arrived; `requested()` is the same on every process (any one's signal counts)."""

    def __init__(self):
        self.received = False

    def handle(self, signum, frame):
        if not self.received:
            log.warning("SIGTERM: saving a checkpoint at the end of this step, then stopping")
        self.received = True

    def requested(self):
        """True once any process received SIGTERM; a collective when there are several processes, so every
        process must call it at the same steps."""
        if jax.process_count() == 1:
            return self.received
        return bool(np.max(multihost_utils.process_allgather(np.int32(self.received))))


@contextlib.contextmanager
def on_sigterm():
    """Within the block, SIGTERM sets the yielded `Preemption` instead of ending the process; the previous handler
    comes back afterwards. Outside the main thread (where Python cannot install handlers) nothing is caught."""
    preemption = Preemption()
    if threading.current_thread() is not threading.main_thread():
        yield preemption
        return
    previous = signal.signal(signal.SIGTERM, preemption.handle)
    try:
        yield preemption
    finally:
        signal.signal(signal.SIGTERM, previous)
