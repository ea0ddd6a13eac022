"""The setup probe: channels_last=auto takes the faster format, a slower mixed precision is reported, a resumed run
keeps the choice; torch.compile's report. Timings are simulated: nothing here depends on how fast the machine is."""

import json
import logging

import pytest
import torch

from transferlab.cli.train import train
from transferlab.run import speed_probe
from transferlab.run.speed import compile_summary
from transferlab.run.speed_probe import decide, variants_to_time
from transferlab.run.step_timing import StepShape

TRAIN_64 = StepShape(batch_size=64, image_size=64, train=True)


class SimulatedTimings:
    """Stands in for ``images_per_second``: a fixed figure per (precision, channels_last), and the calls made."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, figures: dict[tuple[str, bool], float],
                 max_share: float = float("inf")) -> None:
        self.figures, self.calls = figures, []
        monkeypatch.setattr(speed_probe, "images_per_second", self)
        monkeypatch.setattr(speed_probe, "MAX_SHARE", max_share)  # the test runs are short: no budget unless asked

    def __call__(self, model, shape, device, precision, channels_last, **kwargs) -> float:
        self.calls.append((shape, precision, channels_last))
        return self.figures[(precision, channels_last)]


@pytest.mark.parametrize(("precision", "channels_last", "device", "expected"), [
    ("32-true", "auto", "cpu", [("32-true", False), ("32-true", True)]),
    ("bf16-mixed", "auto", "cpu", [("bf16-mixed", False), ("bf16-mixed", True), ("32-true", False),
                                   ("32-true", True)]),
    ("bf16-mixed", True, "cpu", [("bf16-mixed", True), ("32-true", True)]),
    ("bf16-mixed", True, "cuda", []),  # mixed precision is not second-guessed on a GPU
    ("32-true", False, "cpu", []),  # nothing to decide
    ("16-mixed", "auto", "cuda", [("16-mixed", False), ("16-mixed", True)]),
])
def test_the_probe_times_only_what_it_decides(precision, channels_last, device, expected):
    assert variants_to_time(precision, channels_last, device) == expected


def test_auto_takes_the_faster_format_at_the_runs_precision():
    figures = {("32-true", False): 186.7, ("32-true", True): 159.3}  # fp32 at 64 px: NHWC slower on a CPU
    assert decide("32-true", "auto", TRAIN_64, figures).channels_last is False
    figures = {("32-true", False): 17.7, ("32-true", True): 21.8}  # at 224 px: NHWC faster
    result = decide("32-true", "auto", TRAIN_64, figures)
    assert result.channels_last is True and result.warnings == []


def test_bf16_slower_than_fp32_is_reported_with_both_figures_and_the_fix():
    figures = {("bf16-mixed", False): 2.4, ("bf16-mixed", True): 5.5, ("32-true", False): 46.0,
               ("32-true", True): 40.0}
    result = decide("bf16-mixed", "auto", TRAIN_64, figures)
    assert result.precision == "bf16-mixed" and result.channels_last is True  # the setting stays; the format is chosen
    [warning] = result.warnings
    assert "5.5 images/s against 46.0" in warning and "trainer.precision=32-true" in warning
    assert "batch 64 of 64-px images" in warning


def test_bf16_faster_than_fp32_warns_nothing():
    figures = {("bf16-mixed", True): 59.4, ("32-true", True): 21.8}
    assert decide("bf16-mixed", True, TRAIN_64, figures).warnings == []


def test_a_run_takes_the_probes_choice_logs_the_warning_and_records_the_figures(make_config, tmp_path, monkeypatch,
                                                                               caplog):
    timings = SimulatedTimings(monkeypatch, {("bf16-mixed", False): 30.0, ("bf16-mixed", True): 20.0,
                                             ("32-true", False): 50.0, ("32-true", True): 40.0})
    with caplog.at_level(logging.INFO, logger="transferlab"):
        results = train(make_config("speed_probe=true", "trainer.precision=bf16-mixed", "trainer.max_epochs=1"))
    assert {call[0] for call in timings.calls} == {StepShape(batch_size=12, image_size=32, train=True)}
    record = json.loads((tmp_path / "run" / "speed_probe.json").read_text())
    assert record["channels_last"] is False and record["images_per_s"]["32-true NCHW"] == 50.0
    assert "30.0 images/s against 50.0" in caplog.text and "channels_last=auto chose NCHW" in caplog.text
    saved = torch.load(results["best_checkpoint"], weights_only=True)
    assert saved["hyper_parameters"]["channels_last"] is False
    assert not saved["state_dict"]["backbone.conv1.weight"].is_contiguous(memory_format=torch.channels_last)


def test_a_frozen_backbone_is_timed_at_inference(make_config, monkeypatch):
    timings = SimulatedTimings(monkeypatch, {("32-true", False): 10.0, ("32-true", True): 20.0})
    train(make_config("speed_probe=true", "mode=feature_extract", "data.cache_features=false",
                      "trainer.max_epochs=1"))
    assert {call[0].train for call in timings.calls} == {False}


def test_the_probe_is_skipped_where_it_would_cost_more_than_its_share_of_the_run(make_config, tmp_path, monkeypatch,
                                                                                   caplog):
    timings = SimulatedTimings(monkeypatch, {("32-true", False): 10.0, ("32-true", True): 20.0}, max_share=0.05)
    with caplog.at_level(logging.INFO, logger="transferlab"):
        train(make_config("speed_probe=true", "trainer.max_epochs=1"))  # 72 images; two variants would time 72
    assert timings.calls == [] and "Speed probe skipped" in caplog.text
    train(make_config("speed_probe=true", "trainer.max_epochs=20", "+trainer.limit_train_batches=1",
                      "+trainer.limit_val_batches=1", f"paths.output_dir={tmp_path / 'long'}"))
    assert len(timings.calls) == 2  # 20 epochs of 72 images: the same probe is under 5% of them


def test_deterministic_runs_choose_no_format_by_timing(make_config, monkeypatch):
    timings = SimulatedTimings(monkeypatch, {})
    train(make_config("speed_probe=true", "trainer.deterministic=true", "trainer.max_epochs=1"))
    assert timings.calls == []


@pytest.mark.parametrize(("first", "later", "eager", "expected"), [
    (40.0, [0.2, 0.2, 0.3], 0.4, "2.00x faster; the compilation pays for itself after about 200 steps"),
    (40.0, [0.5, 0.5], 0.4, "not faster. HINT: set compile.enabled=false"),
    (40.0, [0.2], None, "speed_probe=false"),
    (40.0, [], 0.4, "no later step"),
])
def test_the_compile_report_says_what_compilation_cost_and_gave(first, later, eager, expected):
    summary = compile_summary(first, later, eager)
    assert summary.startswith("torch.compile: the first training step took 40.0 s") and expected in summary
