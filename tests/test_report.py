"""Sweep reports: written by Hydra after a real multirun, rebuilt by the command line for any folders."""

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from conftest import FAST, run_train
from transferlab.run import report, report_output, report_runs

MODES = ["scratch", "finetune", "feature_extract"]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def table_rows(markdown: str) -> list[str]:
    """The body rows of the Markdown table (header and separator left out)."""
    return [line for line in markdown.splitlines() if line.startswith("|")][2:]


def lines_per_axes(runs: list[report_runs.Run]) -> list[list[str]]:
    return [[line.get_label() for line in ax.get_lines()] for ax in report_output.plot_curves(runs).axes]


@pytest.mark.slow
def test_a_sweep_over_the_modes_leaves_a_report_that_matches_its_runs(tmp_path, image_folder):
    sweep_dir = tmp_path / "sweep"
    cli = run_train("-m", f"mode={','.join(MODES)}", f"data.root={image_folder}", *FAST, "trainer.max_epochs=2",
                  f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert "best val/acc" in cli.stdout + cli.stderr  # each run's closing line
    for run in (p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()):
        assert (run / "checkpoints" / "best.ckpt").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
        assert list((run / "tensorboard").glob("events.out.tfevents.*")) and (run / "results.json").is_file()

    rows = read_csv(sweep_dir / "summary.csv")
    assert sorted(row["mode"] for row in rows) == sorted(MODES)
    accuracies = [float(row["best_val_acc"]) for row in rows]
    assert accuracies == sorted(accuracies, reverse=True)
    for row in rows:
        results = json.loads((Path(row["run_dir"]) / "results.json").read_text())
        assert row["status"] == "ok" and row["error"] == ""
        assert row["label"] == f"mode={results['mode']}"
        assert float(row["best_val_acc"]) == results["best_val_acc"]
        assert float(row["best_val_loss"]) == results["best_val_loss"]
        assert int(row["best_epoch"]) == results["best_epoch"]
        assert float(row["train_time_s"]) == results["train_time_s"]
        assert float(row["train_images_per_s"]) == results["train_images_per_s"]
        assert int(row["params_trainable"]) == results["params_trainable"]
        assert int(row["params_total"]) == results["params_total"]
        assert Path(row["run_dir"]).parent == sweep_dir.resolve()
    frozen = next(row for row in rows if row["mode"] == "feature_extract")
    assert int(frozen["params_trainable"]) < int(frozen["params_total"])

    markdown = (sweep_dir / "summary.md").read_text()
    assert [row.split("|")[2].strip() for row in table_rows(markdown)] == [row["mode"] for row in rows]

    with Image.open(sweep_dir / "curves.png") as image:
        image.verify()
        assert image.format == "PNG"
    runs, _ = report_runs.read_runs(report_runs.find_runs([sweep_dir]))
    assert [sorted(labels) for labels in lines_per_axes(runs)] == [sorted(f"mode={m}" for m in MODES)] * 3

    # The command line rebuilds the very same files in place.
    before = {name: (sweep_dir / name).read_text() for name in ("summary.csv", "summary.md")}
    assert report.main([str(sweep_dir)]) == 0
    assert {name: (sweep_dir / name).read_text() for name in before} == before


def fake_run(folder: Path, overrides: list[str], acc: float | None = None, error: str | None = None,
             choices: dict[str, str] | None = None) -> Path:
    """A run folder as training leaves it: ``.hydra/`` and ``results.json``, or ``failure.json``."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (folder / ".hydra" / "hydra.yaml").write_text(json.dumps({"hydra": {"runtime": {"choices": choices or {}}}}))
    if error is not None:
        (folder / "failure.json").write_text(json.dumps({"error": error, "traceback": "Traceback ...\n"}))
        return folder
    history = [{"epoch": e, "val_acc": acc * (e + 1) / 3, "val_loss": 1.0 - acc * e / 3, "train_loss": 1.1 - e / 4,
                "train_acc": 0.5} for e in range(3)]
    (folder / "results.json").write_text(json.dumps({
        "backbone": "resnet18", "mode": "finetune", "epochs_run": 3, "best_epoch": 2, "best_val_acc": acc,
        "best_val_loss": min(h["val_loss"] for h in history), "final_val_acc": acc, "train_time_s": 12.5,
        "train_images_per_s": 80.25, "params_trainable": 1000, "params_total": 11000, "history": history,
    }))
    return folder


def test_report_mixes_sweeps_and_puts_failed_runs_last_with_their_error(tmp_path, capsys):
    monday = tmp_path / "multirun" / "2024-05-06" / "10-00-00"
    fake_run(monday / "0", ["mode=scratch", "data.root=/a"], acc=0.5, choices={"mode": "scratch", "optimizer": "sgd"})
    fake_run(monday / "1", ["mode=finetune", "data.root=/a"], error="ConfigError: data.root /a does not exist\nmore",
             choices={"mode": "finetune", "optimizer": "sgd"})
    tuesday = tmp_path / "multirun" / "2024-05-07" / "09-30-00"
    fake_run(tuesday / "0", ["optimizer=adam", "data.root=/b"], acc=0.9,
             choices={"mode": "finetune", "optimizer": "adam"})
    out = tmp_path / "report"

    # The same run given twice (as itself and inside its sweep) is reported once.
    assert report.main([str(monday), str(tuesday), str(tuesday / "0"), "--out", str(out)]) == 0

    rows = read_csv(out / "summary.csv")
    assert [(row["mode"], row["optimizer"], row["status"]) for row in rows] == [
        ("finetune", "adam", "ok"), ("scratch", "sgd", "ok"), ("finetune", "sgd", "failed")]
    assert [row["label"] for row in rows] == ["mode=finetune optimizer=adam", "mode=scratch optimizer=sgd",
                                              "mode=finetune optimizer=sgd"]
    failed = rows[-1]
    assert failed["error"] == "ConfigError: data.root /a does not exist"
    assert failed["best_val_acc"] == "" and "data.root=/a" in failed["overrides"]

    runs, keys = report_runs.read_runs(report_runs.find_runs([monday, tuesday]))
    printed = capsys.readouterr().out
    assert printed == report_output.to_markdown_table(runs, keys, relative_to=out)
    body = table_rows(printed)
    assert len(body) == 3 and "failed: ConfigError: data.root /a does not exist" in body[-1]
    assert table_rows((out / "summary.md").read_text()) == body

    assert lines_per_axes(runs) == [["mode=finetune optimizer=adam", "mode=scratch optimizer=sgd"]] * 3
    with Image.open(out / "curves.png") as image:
        image.verify()


def test_runs_with_the_same_settings_are_told_apart_by_their_folders(tmp_path):
    first = fake_run(tmp_path / "2024-05-06" / "0", ["mode=scratch"], acc=0.7)
    second = fake_run(tmp_path / "2024-05-07" / "0", ["mode=scratch"], acc=0.8)
    runs, keys = report_runs.read_runs(report_runs.find_runs([first, second]))
    assert keys == [] and [run.label for run in runs] == ["0 (2024-05-07/0)", "0 (2024-05-06/0)"]


def test_a_path_without_runs_exits_2_with_one_line(tmp_path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert report.main([str(tmp_path / "empty")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "holds no run folder" in error
    assert report.main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "empty" / "summary.csv").exists()


def test_a_failing_report_is_logged_not_raised(tmp_path, monkeypatch, caplog):
    from omegaconf import OmegaConf

    fake_run(tmp_path / "0", ["mode=scratch"], acc=0.5)
    monkeypatch.setattr(report_output, "plot_curves", lambda runs: 1 / 0)
    report.SweepReport().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    assert "Sweep report for" in caplog.text and "ZeroDivisionError" in caplog.text


def test_overrides_are_read_by_hydras_own_parser():
    assert report_runs.parse_overrides([
        "++optimizer.lr=0.01", "+trainer.max_epochs=3", "mode=finetune", "data.name='a b'", 'logger.name="lr=0.01"',
        "trainer.devices=[0, 1]", "seed=1,2", "~callbacks.lr_monitor", "~trainer.limit_val_batches=0.5",
    ]) == {"optimizer.lr": "0.01", "trainer.max_epochs": "3", "mode": "finetune", "data.name": "a b",
           "logger.name": "lr=0.01", "trainer.devices": "[0,1]", "seed": "1,2"}  # a sweep as written; no deletions


def test_added_quoted_and_deleted_overrides_make_the_right_columns(tmp_path):
    fake_run(tmp_path / "0", ["++optimizer.lr=0.01", 'logger.name="lr=0.01"', "~callbacks.lr_monitor"], acc=0.6)
    fake_run(tmp_path / "1", ["optimizer.lr=0.1", "logger.name='a b'"], acc=0.8)
    assert report.main([str(tmp_path)]) == 0

    rows = read_csv(tmp_path / "summary.csv")
    assert list(rows[0])[:4] == ["label", "optimizer.lr", "logger.name", "status"]  # no column for the deletion
    assert [row["label"] for row in rows] == ["optimizer.lr=0.1 logger.name=a b",
                                              "optimizer.lr=0.01 logger.name=lr=0.01"]
    assert rows[1]["overrides"] == '++optimizer.lr=0.01 logger.name="lr=0.01" ~callbacks.lr_monitor'


def test_override_values_compare_with_defaults_as_hydra_typed_them(tmp_path):
    # 1e-3 is the float 0.001 to Hydra but a string to YAML 1.1, which also reads "on" as true.
    fake_run(tmp_path / "0", ["optimizer.lr=1e-3", "logger.name=on"], acc=0.6)
    kept = fake_run(tmp_path / "1", [], acc=0.8)
    (kept / ".hydra" / "config.yaml").write_text("optimizer: {lr: 0.001}\nlogger: {name: 'off'}\n")
    runs, keys = report_runs.read_runs(report_runs.find_runs([tmp_path]))
    assert keys == ["logger.name"] and [run.label for run in runs] == ["logger.name=off", "logger.name=on"]


def test_an_override_hydra_cannot_parse_is_logged_and_kept_as_written(caplog):
    report_runs.parse_override.cache_clear()  # Hydra's reading is cached, and so logged once per override
    assert report_runs.parse_overrides(["model.name=a=b", "mode=scratch"]) == {"model.name": "a=b", "mode": "scratch"}
    assert "cannot parse the override 'model.name=a=b'" in caplog.text


def test_an_optuna_search_names_its_best_trial_and_rounds_float_labels(tmp_path):
    # What the Optuna sweeper leaves: trials with many-digit floats, and its best parameters beside them.
    trials = [("0.005611516415334507", "partial", 0.7), ("1.7073967431528114e-06", "finetune", 0.9),
              ("0.0010994335574766201", "partial", 0.8)]
    for job, (lr, mode, acc) in enumerate(trials):
        fake_run(tmp_path / "search" / str(job), [f"optimizer.lr={lr}", f"mode={mode}", "data.root=/a"], acc=acc)
    (tmp_path / "search" / "optimization_results.yaml").write_text(
        "name: optuna\nbest_params:\n  optimizer.lr: 1.7073967431528114e-06\n  mode: finetune\nbest_value: 0.9\n")
    fake_run(tmp_path / "other" / "0", ["optimizer.lr=0.1", "mode=partial"], acc=0.5)
    (tmp_path / "other" / "optimization_results.yaml").write_text(  # a best that no run here used
        "name: optuna\nbest_params:\n  optimizer.lr: 0.2\nbest_value: 0.6\n")
    out = tmp_path / "report"
    assert report.main([str(tmp_path / "search"), str(tmp_path / "other"), "--out", str(out)]) == 0

    rows = read_csv(out / "summary.csv")
    assert [row["label"] for row in rows] == ["optimizer.lr=1.71e-06 mode=finetune",
                                              "optimizer.lr=0.0011 mode=partial", "optimizer.lr=0.00561 mode=partial",
                                              "optimizer.lr=0.1 mode=partial"]
    assert rows[0]["optimizer.lr"] == "1.7073967431528114e-06"  # the table file keeps every digit
    markdown = (out / "summary.md").read_text()
    assert [row.split("|")[2].strip() for row in table_rows(markdown)] == ["1.71e-06", "0.0011", "0.00561", "0.1"]
    assert (f"- `{(tmp_path / 'search' / '1').resolve()}`, best val/acc 0.9000: "
            "`optimizer.lr=1.7073967431528114e-06 mode=finetune`") in markdown
    assert "objective 0.6, no run folder here used `optimizer.lr=0.2`" in markdown
    runs, _ = report_runs.read_runs(report_runs.find_runs([tmp_path / "search"]))
    assert lines_per_axes(runs)[0] == [run.label for run in runs]


def test_only_floats_with_more_digits_than_a_label_shows_are_rounded():
    assert [report_runs.readable(value) for value in ["0.0056115164153345", "-0.00012345", "0.1234", "0.001",
                                                      "1.0", "12345", "1e-05", "nan", "true", "a,b"]] == [
        "0.00561", "-0.000123", "0.123", "0.001", "1.0", "12345", "1e-05", "nan", "true", "a,b"]
