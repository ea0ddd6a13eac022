"""early_stopping=val_loss: Lightning's EarlyStopping on val/loss ends a run that stalls, and results.json says so.

A run with early stopping that runs all its epochs is in tests/test_find_lr.py (stopped_early false).
"""

import json

import torch

from interruptions import ZeroLearningRateFrom
from transferlab.cli.train import train

PATIENCE = 2
PLATEAU_FROM = 2  # epochs 0 and 1 learn; from epoch 2 on nothing changes


def test_a_plateau_stops_the_run_after_patience_epochs_and_best_ckpt_is_the_best_epoch(make_config, tmp_path):
    # feature_extract: the backbone is frozen in eval mode and the head has no BatchNorm, so at learning rate 0
    # val/loss repeats exactly
    cfg = make_config("mode=feature_extract", "optimizer.lr=0.01", "trainer.max_epochs=8", "early_stopping=val_loss",
                      f"callbacks.early_stopping.patience={PATIENCE}", "callbacks.early_stopping.min_delta=0.0")
    results = train(cfg, callbacks=[ZeroLearningRateFrom(PLATEAU_FROM)])

    losses = [epoch["val_loss"] for epoch in results["history"]]
    assert losses[1] < losses[0], "the plateau should start after an improving epoch"
    assert losses[PLATEAU_FROM:] == [losses[1]] * (len(losses) - PLATEAU_FROM)
    stopped_at = 1 + PATIENCE  # the best val/loss is epoch 1's; PATIENCE epochs later without improvement
    assert results["stopped_early"] is True and results["stopped_epoch"] == stopped_at
    assert results["epochs_run"] == stopped_at + 1 < cfg.trainer.max_epochs
    assert json.loads((tmp_path / "run" / "results.json").read_text()) == results

    best = torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert best["epoch"] == results["best_epoch"]
    (state,) = [value for key, value in best["callbacks"].items() if key.startswith("ModelCheckpoint")
                and value["monitor"] == "val/acc"]
    assert float(state["current_score"]) == results["best_val_acc"]  # the val/acc of the epoch it holds

