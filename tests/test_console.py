"""What a run prints: the progress bar's redraws and the Lightning messages left out."""

import time
import warnings

import pytest

from transferlab.run import console
from transferlab.run.console import TimedProgressBar, quiet_lightning


def test_the_progress_bar_redraws_on_time_and_always_at_the_last_batch(monkeypatch):
    clock = iter([0.0, 0.1, 0.2, 0.6, 0.7, 1.2, 1.3])
    monkeypatch.setattr(time, "monotonic", lambda: next(clock))
    bar = TimedProgressBar(refresh_seconds=0.5)
    redrawn = [batch for batch in range(1, 8) if bar._should_update(batch, total=7)]
    assert redrawn == [1, 4, 6, 7]  # the first, then once 0.5 s have passed, and the last whatever the time


def test_a_disabled_bar_never_redraws():
    bar = TimedProgressBar()
    bar.disable()
    assert not bar._should_update(3, total=3)


@pytest.mark.parametrize("message", [
    "The number of training batches (2) is smaller than the logging interval Trainer(log_every_n_steps=10).",
    "Found 68 module(s) in eval mode at the start of training. This may lead to unexpected behavior.",
])
def test_lightnings_noise_is_filtered_and_other_warnings_are_not(message):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_lightning()
        warnings.warn(message, UserWarning, stacklevel=1)
        warnings.warn("The dataloader does something worth reading.", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["The dataloader does something worth reading."]


def test_adverts_are_dropped_at_lightnings_logger(caplog):
    quiet_lightning()
    with caplog.at_level("INFO", logger=console.rank_zero.log.name):
        console.rank_zero.log.info("💡 Tip: For seamless cloud uploads and versioning, try installing litmodels")
        console.rank_zero.log.info("GPU available: False, used: False")
    assert [record.getMessage() for record in caplog.records] == ["GPU available: False, used: False"]
