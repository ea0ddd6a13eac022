"""``python -m transferlab.advise``: LogME as the paper computes it, the linear probe, and the advice ranked and
recommended from a real pretrained source (a ResNet-18 trained on the images) against a random init."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from conftest import CONFIG_DIR, REPO, compose_config, make_image_folder
from transferlab.cli.advise import advise
from transferlab.cli.train import train
from transferlab.errors import ConfigError
from transferlab.model.transferability import linear_probe_accuracy, logme
from transferlab.run.advice import recommend


def slow_logme(features: np.ndarray, labels: np.ndarray) -> float:
    """Algorithm 1 of You et al. (ICML 2021) as written: per class, A = alpha I + beta F'F solved directly."""
    n, d = features.shape
    gram = features.T @ features
    sigma = np.linalg.eigvalsh(gram)
    evidences = []
    for k in np.unique(labels):
        y = (labels == k).astype(np.float64)
        alpha, beta = 1.0, 1.0
        for _ in range(1000):
            gamma = sum(beta * s / (alpha + beta * s) for s in sigma)
            m = beta * np.linalg.solve(alpha * np.eye(d) + beta * gram, features.T @ y)
            new_alpha, new_beta = gamma / (m @ m), (n - gamma) / np.sum((features @ m - y) ** 2)
            converged = abs(new_alpha - alpha) < 1e-10 * alpha and abs(new_beta - beta) < 1e-10 * beta
            alpha, beta = new_alpha, new_beta
            if converged:
                break
        else:  # no finite fixed point (a class fitted exactly): the algorithm as written gives no evidence to compare
            raise AssertionError(f"alpha/beta did not converge for class {k}")
        a = alpha * np.eye(d) + beta * gram
        m = beta * np.linalg.solve(a, features.T @ y)
        evidence = (n / 2 * math.log(beta) + d / 2 * math.log(alpha) - n / 2 * math.log(2 * math.pi)
                    - beta / 2 * np.sum((features @ m - y) ** 2) - alpha / 2 * (m @ m) - np.linalg.slogdet(a)[1] / 2)
        evidences.append(evidence / n)
    return float(np.mean(evidences))


def features_of(n: int, d: int, separation: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three classes; each class mean is ``separation`` x a random direction, plus unit noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    return rng.normal(size=(n, d)) + separation * rng.normal(size=(3, d))[labels], labels


# more images than dimensions (SVD of F), and fewer (eigenvectors of F F'). With fewer, some draws fit a class
# exactly: beta then grows without bound and only the evidence converges, which the algorithm as written never
# reaches; seed 5 is a draw whose every class has a finite fixed point.
@pytest.mark.parametrize(("n", "d", "seed"), [(60, 8, 0), (30, 50, 5)])
def test_logme_equals_the_papers_fixed_point_iteration(n, d, seed):
    features, labels = features_of(n, d, separation=0.7, seed=seed)
    assert logme(features, labels) == pytest.approx(slow_logme(features, labels), abs=1e-6)


@pytest.mark.parametrize(("n", "d"), [(120, 16), (60, 200)])  # CNN features often have more dimensions than images
def test_separable_features_score_above_random_ones(n, d):
    separable, labels = features_of(n, d, separation=2.0)
    noise, _ = features_of(n, d, separation=0.0)
    assert logme(separable, labels) > logme(noise, labels) + 0.2
    half = n // 2
    probe = lambda f: linear_probe_accuracy(f[:half], labels[:half], f[half:], labels[half:])
    assert probe(separable) >= 0.9 > 0.6 >= probe(noise)
    assert probe(separable) == probe(separable)  # deterministic


def test_rule_follows_the_table():
    assert recommend(0.95, 0.5, 120, 2).mode == "feature_extract"
    assert (recommend(0.6, -0.7, 120, 2).mode, recommend(0.6, -0.7, 120, 2).trainable_stages) == ("partial", 2)
    assert recommend(0.6, -0.7, 120, 2, stages=5).trainable_stages == 2  # top half of 5, rounded down
    assert recommend(0.6, -0.7, 120, 2, stages=4).overrides == "mode=partial mode.trainable_stages=2"
    assert recommend(0.95, 0.5, 2000, 2).mode == recommend(0.6, -0.7, 2000, 2).mode == "finetune"


def compose_advise(output_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="advise", overrides=[f"paths.output_dir={output_dir}", "data.image_size=32",
                                                        "data.num_workers=0", "data.batch_size=12", "device=cpu",
                                                        *overrides])


def test_advise_ranks_a_trained_backbone_above_a_random_one(tmp_path, capsys):
    folder = make_image_folder(tmp_path / "colours", size=32)
    # The "pretrained" source: a ResNet-18 trained briefly on these images; its checkpoint becomes backbone.weights.
    train(compose_config(tmp_path / "source", f"data.root={folder}", "optimizer=adam", "~callbacks.tensorboard_images"))
    checkpoint = tmp_path / "source" / "checkpoints" / "best.ckpt"
    cfg = compose_advise(tmp_path / "advice", f"data.root={folder}", "sample_per_class=10",
                         f"backbones=[{{name:resnet18,weights:'{checkpoint}'}},{{name:resnet18,weights:null}}]")
    capsys.readouterr()
    advice = advise(cfg, [f"data.root={folder}", "data.image_size=32", "backbones=[...]", "device=cpu"])
    printed = capsys.readouterr().out

    trained, random_init = advice["backbones"]
    assert (trained["label"], random_init["label"]) == ("resnet18 (best.ckpt)", "resnet18 (random init)")
    assert trained["logme"] > random_init["logme"]
    assert trained["mode"] == "feature_extract" and trained["probe_accuracy"] >= 0.9  # small set, probe high
    assert trained["images_measured"] == 2 * 3 * 10
    assert advice["command"] == (f"python -m transferlab.train data.root={folder} data.image_size=32 backbone=resnet18 "
                                 f"backbone.weights={checkpoint} mode=feature_extract")
    assert json.loads((tmp_path / "advice" / "advice.json").read_text()) == advice
    report = (tmp_path / "advice" / "advice.md").read_text()
    assert report in printed
    rows = [line for line in report.splitlines() if line.startswith("| 1 ") or line.startswith("| 2 ")]
    for row, entry in zip(rows, advice["backbones"], strict=True):
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[:5] == [str(entry["rank"]), entry["label"], f"{entry['probe_accuracy']:.3f}",
                             f"{entry['logme']:.3f}", f"`mode={entry['mode']}`"]
    assert "< 1000 train images per class" in report and "Ranked by LogME" in report


@pytest.mark.parametrize(("overrides", "message"), [
    (["data=image_folder"], "data.root is not set"),
    (["data.root=/no/such/folder"], "data.root=/no/such/folder does not exist"),
    (["data.root=/tmp", "backbones=[resnet18,resnet1800]"], "backbone.name='resnet1800' is not a torchvision"),
    (["data.root=/tmp", "sample_per_class=1"], "sample_per_class=1 must be"),
])
def test_bad_input_is_one_paragraph(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message) as error:
        advise(compose_advise(tmp_path, *overrides))
    assert "\n" not in str(error.value)


def test_command_line_reports_bad_input_with_exit_code_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "transferlab.advise", "data=image_folder",
                             f"hydra.run.dir={tmp_path / 'run'}"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2
    assert "data.root is not set" in result.stdout + result.stderr and "Traceback" not in result.stderr
