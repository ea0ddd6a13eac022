"""Inference from a checkpoint alone: predict, evaluate, export; and the checks that keep them honest."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure
from omegaconf import OmegaConf

from conftest import assert_usage_errors, compose_config, make_image_folder, png_header
from transferlab.cli.evaluate import evaluate, evaluation_set, save_confusion_png
from transferlab.cli.evaluate import main as evaluate_main
from transferlab.cli.export import export_model, load_exported
from transferlab.cli.export import main as export_main
from transferlab.cli.predict import list_images, predict, predict_files, write_csv
from transferlab.cli.predict import main as predict_main
from transferlab.cli.train import train
from transferlab.errors import ConfigError
from transferlab.model.checkpoint import load_classifier, preprocessing

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, image_folder):
    """One short finetune run (a slow learning rate, so the best val accuracy is rarely a trivial 1.0)."""
    run_dir = tmp_path_factory.mktemp("inference_run")
    results = train(compose_config(run_dir, f"data.root={image_folder}", "trainer.max_epochs=2",
                                   "optimizer=adam", "optimizer.lr=0.0001"))
    return run_dir, results, Path(results["best_checkpoint"])


@pytest.fixture(scope="module")
def model(trained):
    return load_classifier(trained[2])


def args(**options):
    """A command-line configuration, as the entry points receive it."""
    return OmegaConf.create(options)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def test_checkpoint_loads_for_inference_with_its_training_preprocessing(trained, model):
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert model.hparams.class_names == ["blue", "green", "red"]
    saved = torch.load(trained[2], map_location="cpu", weights_only=True)
    assert model.hparams.weights == saved["hyper_parameters"]["weights"]  # not the None it was built with
    assert torch.equal(model.state_dict()["backbone.conv1.weight"], saved["state_dict"]["backbone.conv1.weight"])
    inputs = preprocessing(model)
    assert inputs.crop_size == 32 and inputs.resize_size == 37  # image_size 32, ResNet's 256/224 ratio


def test_evaluate_accuracy_on_val_is_the_runs_best_val_acc(trained, image_folder, tmp_path):
    run_dir, results, best = trained
    report = evaluate(args(ckpt=str(best), data={"root": str(image_folder)}, split="auto", output=None,
                           batch_size=7, num_workers=0, device="cpu"))
    assert report["split"] == "val" and report["num_images"] == 36
    assert report["accuracy"] == pytest.approx(results["best_val_acc"], abs=1e-6)
    confusion = torch.tensor(report["confusion_matrix"])
    assert confusion.sum() == 36 and confusion.sum(dim=1).tolist() == [12, 12, 12]
    assert confusion.diag().sum().item() / 36 == pytest.approx(report["accuracy"], abs=1e-6)
    assert len(report["misclassified"]) == 36 - confusion.diag().sum().item()
    for i, name in enumerate(report["classes"]):
        row = report["per_class"][name]
        predicted = confusion[:, i].sum().item()
        assert row["recall"] == pytest.approx(confusion[i, i].item() / 12, abs=1e-6)
        assert row["precision"] == pytest.approx(confusion[i, i].item() / predicted if predicted else 0.0, abs=1e-6)
    saved = Path(report["json"])
    assert saved == run_dir / "evaluation" / "best_val.json"
    assert json.loads(saved.read_text())["accuracy"] == report["accuracy"]
    assert Path(report["png"]).read_bytes().startswith(b"\x89PNG")


def test_a_failed_confusion_png_leaves_no_partial_file_and_no_temporary(tmp_path, monkeypatch):
    report = {"classes": ["blue", "green", "red"], "confusion_matrix": [[2, 0, 0], [0, 1, 1], [0, 0, 2]],
              "accuracy": 5 / 6, "num_images": 6}
    path = save_confusion_png(report, tmp_path / "best_val_confusion.png")
    before = path.read_bytes()
    assert before.startswith(b"\x89PNG") and os.listdir(tmp_path) == [path.name]

    def crash_halfway(figure, target, **options):
        Path(target).write_bytes(before[:100])
        raise OSError("No space left on device")

    monkeypatch.setattr(Figure, "savefig", crash_halfway)
    for target in (path, tmp_path / "new_confusion.png"):  # over an earlier PNG, and a first one
        with pytest.raises(OSError, match="No space left"):
            save_confusion_png(report, target)
    assert path.read_bytes() == before and os.listdir(tmp_path) == [path.name]


def test_predict_over_val_agrees_with_best_val_acc(trained, model, image_folder, tmp_path):
    _, results, _ = trained
    files = list_images(image_folder / "val")
    assert len(files) == 36
    output = write_csv(predict_files(model, files, top_k=2, batch_size=10), tmp_path / "out" / "preds.csv")
    rows = read_csv(output)
    assert list(rows[0]) == ["path", "label", "score", "top_k", "error"] and len(rows) == 36
    agree = sum(row["label"] == Path(row["path"]).parent.name for row in rows) / len(rows)
    assert agree == pytest.approx(results["best_val_acc"], abs=1e-6)
    for row in rows:
        top = [(name, float(p)) for name, p in (entry.split(":") for entry in row["top_k"].split(";"))]
        assert len(top) == 2 and top[0][0] == row["label"] and top[0][1] >= top[1][1]
        assert top[0][1] == pytest.approx(float(row["score"]), abs=1e-4) and not row["error"]


def test_unreadable_files_are_error_rows_not_crashes(model, image_folder, tmp_path):
    folder = tmp_path / "mixed"
    (folder / "nested").mkdir(parents=True)
    shutil.copy(image_folder / "val" / "red" / "000.png", folder / "good.png")
    shutil.copy(image_folder / "val" / "blue" / "001.png", folder / "nested" / "deep.png")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(200))
    (folder / "notes.png").write_text("not an image at all\n")
    (folder / "readme.txt").write_text("ignored: not an image extension\n")
    files = list_images(folder)
    assert [f.relative_to(folder).as_posix() for f in files] == ["corrupt.jpg", "good.png", "notes.png",
                                                                 "nested/deep.png"]
    rows = {Path(p.path).name: p for p in predict_files(model, files, top_k=10, batch_size=3)}
    for bad in ("corrupt.jpg", "notes.png"):
        assert rows[bad].error and not rows[bad].label and rows[bad].score is None, rows[bad]
    for good in ("good.png", "deep.png"):
        assert not rows[good].error and rows[good].label in model.hparams.class_names
        assert len(rows[good].top_k) == 3  # top_k=10 is capped at the number of classes
        assert sum(p for _, p in rows[good].top_k) == pytest.approx(1.0, abs=1e-5)
    single = predict_files(model, list_images(folder / "good.png"), top_k=1)
    assert len(single) == 1 and single[0].label == rows["good.png"].label and len(single[0].top_k) == 1


def test_predict_writes_into_the_checkpoints_run_folder_unless_output_names_a_file(trained, image_folder, tmp_path,
                                                                                  monkeypatch):
    run_dir, _, best = trained
    working = tmp_path / "working"
    working.mkdir()
    monkeypatch.chdir(working)
    options = {"input": str(image_folder / "val" / "red"), "top_k": 1, "batch_size": 12, "num_workers": 0,
               "device": "cpu"}
    loose = tmp_path / "models" / "colours.ckpt"  # a checkpoint kept outside any run folder
    loose.parent.mkdir()
    os.symlink(best, loose)
    for ckpt, output, written in ((best, None, run_dir / "predictions.csv"),
                                  (loose, None, loose.parent / "predictions.csv"),
                                  (best, str(tmp_path / "elsewhere" / "red.csv"), tmp_path / "elsewhere" / "red.csv")):
        assert predict(args(ckpt=str(ckpt), output=output, **options)) == written
        assert len(read_csv(written)) == 12
    assert list(working.iterdir()) == []


def test_predict_and_evaluate_refuse_images_over_the_pixel_limit_and_name_it(trained, model, image_folder, tmp_path):
    folder = tmp_path / "big"
    shutil.copytree(image_folder / "val", folder / "val")
    huge = png_header(folder / "val" / "red" / "huge.png", 10_000, 9_000)  # over PIL's limit, under twice it
    rows = {Path(p.path).name: p for p in predict_files(model, list_images(folder / "val" / "red"))}
    pil_limit = "PIL's decompression-bomb limit of 89,478,485 pixels (raise it with max_image_pixels=...)"
    assert rows["huge.png"].error == f"DecompressionBombError: {huge}: too large: 90,000,000 pixels > {pil_limit}"
    assert not rows["000.png"].error
    rows = predict_files(model, [folder / "val" / "red" / "000.png"], max_image_pixels=1000)  # 40 x 40 = 1,600
    assert rows[0].error.endswith("000.png: too large: 1,600 pixels > max_image_pixels=1000") and not rows[0].label
    options = {"ckpt": str(trained[2]), "data": {"root": str(folder)}, "split": "val", "output": str(tmp_path / "ev"),
               "batch_size": 8, "num_workers": 0, "device": "cpu"}
    with pytest.raises(ConfigError) as error:
        evaluate(args(**{**options, "num_workers": 1}))
    assert str(error.value).startswith(f"Cannot evaluate on {folder / 'val'}: 1 bad image file(s) (1 too large).")
    assert f"{huge}: too large: 90,000,000 pixels > {pil_limit}" in str(error.value)
    huge.unlink()
    with pytest.raises(ConfigError, match=r"000.png: too large: 1,600 pixels > max_image_pixels=1000\n"):
        evaluate(args(**options, max_image_pixels=1000))


def test_evaluate_names_a_truncated_image_instead_of_a_traceback(trained, image_folder, tmp_path):
    folder = tmp_path / "cut"
    shutil.copytree(image_folder / "val", folder / "val")
    image = folder / "val" / "green" / "000.png"
    image.write_bytes(image.read_bytes()[:300])
    with pytest.raises(ConfigError, match=r"1 bad image file\(s\) \(1 truncated\)[\s\S]*000.png: truncated"):
        evaluate(args(ckpt=str(trained[2]), data={"root": str(folder)}, split="val", output=str(tmp_path / "ev"),
                      batch_size=8, num_workers=0, device="cpu"))


@pytest.mark.parametrize("format", ["torchscript", "onnx"])
def test_exported_model_gives_the_checkpoints_logits(format, trained, model, image_folder, tmp_path):
    if format == "onnx":
        for package in ("onnx", "onnxscript", "onnxruntime"):
            pytest.importorskip(package, reason="ONNX export needs pip install 'transferlab[export]'")
    path, sidecar = export_model(model, format, tmp_path / f"model.{format}", checkpoint=trained[2])
    metadata = json.loads(sidecar.read_text())
    transform = preprocessing(model)
    assert metadata["class_names"] == ["blue", "green", "red"] and metadata["backbone"] == "resnet18"
    assert metadata["input_size"] == [3, 32, 32] and metadata["resize_size"] == [37]
    assert metadata["mean"] == pytest.approx(transform.mean) and metadata["std"] == pytest.approx(transform.std)
    assert metadata["max_abs_diff"] < 1e-4
    run = load_exported(format, path)
    dataset, _, _ = evaluation_set(image_folder, "val", model.hparams.class_names, transform.eval_transform())
    for indices in ([0, 13, 25, 30, 35], [7]):  # the batch axis is dynamic
        images = torch.stack([dataset[i][0] for i in indices])
        with torch.inference_mode():
            expected = model(images)
        assert run(images).shape == expected.shape
        torch.testing.assert_close(run(images), expected, atol=1e-4, rtol=0)


def test_checkpoint_with_pickled_code_is_refused_without_running_it(tmp_path, trained):
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    content = torch.load(trained[2], map_location="cpu", weights_only=True)
    content["hyper_parameters"]["backbone"] = Payload()
    evil = tmp_path / "evil.ckpt"
    torch.save(content, evil)
    with pytest.raises(ConfigError, match="refused") as error:
        load_classifier(evil)
    assert str(evil) in str(error.value)
    assert not marker.exists()


@pytest.mark.parametrize("content", [None, b"", b"PK\x03\x04 truncated", b"plain text, not a checkpoint\n"])
def test_missing_or_corrupt_checkpoint_names_the_file(tmp_path, content):
    path = tmp_path / "broken.ckpt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as error:
        load_classifier(path)
    assert str(path) in str(error.value)


def test_plain_state_dict_is_not_taken_for_a_checkpoint(tmp_path, resnet18_weights):
    with pytest.raises(ConfigError, match="not a transferlab checkpoint"):
        load_classifier(resnet18_weights)


def test_evaluate_on_a_folder_with_other_classes_fails_clearly(trained, tmp_path):
    root = make_image_folder(tmp_path / "other", per_class=2, size=16, splits=("val",), classes=("blue", "green"))
    with pytest.raises(ConfigError, match=r"only in the checkpoint: \['red'\]"):
        evaluate(args(ckpt=str(trained[2]), data={"root": str(root)}, split="auto", output=str(tmp_path / "ev"),
                      batch_size=8, num_workers=0, device="cpu"))


def test_evaluate_ignores_hidden_folders_as_training_does(trained, model, image_folder, tmp_path):
    """Jupyter leaves ``val/.ipynb_checkpoints/``, macOS ``._name.png``: no class, no image, in training or here."""
    _, results, best = trained
    root = tmp_path / "data"
    shutil.copytree(image_folder / "val", root / "val")
    for hidden in (root / "val" / ".ipynb_checkpoints", root / "val" / "red" / ".ipynb_checkpoints"):
        hidden.mkdir()
        shutil.copy(image_folder / "val" / "red" / "000.png", hidden / "000-checkpoint.png")
    (root / "val" / "blue" / "._000.png").write_bytes(b"\x00\x05\x16\x07Mac OS X")  # AppleDouble metadata
    dataset, split, _ = evaluation_set(root, "auto", model.hparams.class_names, transform=None)
    assert split == "val" and dataset.classes == ["blue", "green", "red"] and len(dataset) == 36
    report = evaluate(args(ckpt=str(best), data={"root": str(root)}, split="auto", output=str(tmp_path / "ev"),
                           batch_size=36, num_workers=0, device="cpu"))
    assert report["classes"] == model.hparams.class_names and report["num_images"] == 36
    assert report["accuracy"] == pytest.approx(results["best_val_acc"], abs=1e-6)


def test_evaluate_prefers_test_and_falls_back_to_the_runs_held_out_split(trained, model, image_folder, tmp_path):
    run_dir, results, best = trained
    transform = preprocessing(model).eval_transform()
    root = tmp_path / "data"
    shutil.copytree(image_folder / "val", root / "test")
    shutil.copytree(image_folder / "val", root / "val")
    assert evaluation_set(root, "auto", model.hparams.class_names, transform)[1] == "test"
    # A run without val/ records what it held out of train/ in split.json: evaluate finds it there.
    copied_run = tmp_path / "run"
    (copied_run / "checkpoints").mkdir(parents=True)
    os.symlink(best, copied_run / "checkpoints" / "best.ckpt")
    held_out = tmp_path / "held_out"
    shutil.copytree(image_folder / "val", held_out / "train")
    relative = sorted(str(p.relative_to(held_out / "train")) for p in (held_out / "train").rglob("*.png"))
    (copied_run / "split.json").write_text(json.dumps({"val_split": 0.2, "seed": 42, "train": [], "val": relative}))
    report = evaluate(args(ckpt=str(copied_run / "checkpoints" / "best.ckpt"), data={"root": str(held_out)},
                           split="auto", output=None, batch_size=36, num_workers=0, device="cpu"))
    assert report["split"] == "heldout" and report["num_images"] == 36
    assert report["accuracy"] == pytest.approx(results["best_val_acc"], abs=1e-6)
    assert (copied_run / "evaluation" / "best_heldout.json").is_file()


def test_bad_command_lines_exit_2_with_one_paragraph(trained, capsys):
    cases = {
        ("input=.",): "Missing required option(s): ckpt (give each as key=value)",
        (f"ckpt={trained[2]}", "input=.", "topk=2"): "Unknown option topk. Valid options: ckpt, input, top_k",
        (f"ckpt={trained[2]}", "input=.", "top_k=many"): "top_k",
        (f"ckpt={trained[2]}", "input=/no/such/folder"): "input=/no/such/folder does not exist",
        (f"ckpt={trained[2]}", "input=.", "device=tpu"): "device='tpu'",
    }
    assert_usage_errors(predict_main, cases, capsys)
    with pytest.raises(SystemExit):
        evaluate_main([f"ckpt={trained[2]}", "data.rot=x"])
    assert "Valid options: ckpt, data.root, split" in capsys.readouterr().err


@pytest.mark.slow
def test_command_lines_run_end_to_end(trained, image_folder, tmp_path):
    _, results, best = trained
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}

    def run(module, *argv):
        done = subprocess.run([sys.executable, "-m", module, *argv], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout

    # predict's command line: tests/test_api.py (the transferlab command, against the Python API)
    out = run("transferlab.cli.evaluate", f"ckpt={best}", f"data.root={image_folder}", f"output={tmp_path / 'ev'}",
              "num_workers=0", "device=cpu")
    assert f"accuracy {results['best_val_acc']:.4f}" in out and "confusion matrix" in out
    assert (tmp_path / "ev" / "best_val.json").is_file() and (tmp_path / "ev" / "best_val_confusion.png").is_file()
    export_main([f"ckpt={best}", "format=torchscript"])  # its main, in this process: one start-up less
    assert (best.parent / "best.torchscript.pt").is_file() and (best.parent / "best.torchscript.pt.json").is_file()
