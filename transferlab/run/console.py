"""What a run prints: a progress bar that moves within short epochs, and none of Lightning's adverts and noise."""

import logging
import math
import time
import warnings

import lightning_utilities.core.rank_zero as rank_zero
from lightning.pytorch.callbacks import TQDMProgressBar
from typing_extensions import override

ADVERT = "💡 Tip:"  # Lightning's litlogger / litmodels promotion, printed by its logger and checkpoint connectors
NOISE = (  # Lightning warnings with nothing for a transferlab user to fix (a regex for the start of each message)
    # an epoch of fewer batches than trainer.log_every_n_steps: its train/ metrics are still logged at epoch end
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    # Lightning's own use of a torch API that torch deprecated (lightning/pytorch/utilities/_pytree.py)
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # frozen stages run in eval mode on purpose (feature_extract, partial, gradual): trainability.md lists them
    r"Found \d+ module\(s\) in eval mode at the start of training",
)


class _DropAdverts(logging.Filter):
    @override
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(ADVERT)


_DROP_ADVERTS = _DropAdverts()  # one instance: addFilter ignores a filter it already has


def quiet_lightning() -> None:
    """Silence Lightning's adverts (at the logger its ``rank_zero_info`` writes to) and the warnings of ``NOISE``;
    its other messages (devices, seed, why fit stopped) stay. Safe to call again."""
    rank_zero.log.addFilter(_DROP_ADVERTS)
    for message in NOISE:
        warnings.filterwarnings("ignore", message=message)


class TimedProgressBar(TQDMProgressBar):
    """Lightning's TQDM progress bar, redrawn when ``refresh_seconds`` have passed rather than every N batches.

    A bar redrawn every 10 batches stays still through an epoch of fewer (a small data set, large images); one
    redrawn every batch slows a big epoch of fast steps. Time does both: every step of a slow epoch shows, and
    fast steps redraw a few times a second. The last batch of each loop always shows.

    Example::

        trainer = Trainer(callbacks=[TimedProgressBar(refresh_seconds=0.5)])
    """

    def __init__(self, refresh_seconds: float = 0.5, process_position: int = 0, leave: bool = False) -> None:
        super().__init__(refresh_rate=1, process_position=process_position, leave=leave)  # 1: enabled
        self.refresh_seconds = refresh_seconds
        self._last_redraw = -math.inf

    @override
    def _should_update(self, current: int, total: int) -> bool:
        """Lightning asks this after every batch, for the bar of whichever loop runs."""
        if not self.is_enabled:
            return False
        now = time.monotonic()
        if current == total or now - self._last_redraw >= self.refresh_seconds:
            self._last_redraw = now
            return True
        return False
