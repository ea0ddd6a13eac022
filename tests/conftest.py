"""Shared fixtures: generated image folders and the real Hydra config, shrunk for speed."""

import functools
import io
import os
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from PIL import Image
from torchvision.models import ResNet18_Weights

from transferlab.data.datamodule import ImageFolderDataModule
from transferlab.data.transforms import Preprocessing

REPO = Path(__file__).resolve().parents[1]


def share_cores_between_workers() -> None:
    """Under pytest-xdist (``-n``), each worker gets its share of the cores for torch, and so do the processes the
    tests start (they inherit OMP_NUM_THREADS): two workers each spinning every core run several times slower."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


share_cores_between_workers()
RESNET18 = Preprocessing.from_preset(ResNet18_Weights.DEFAULT.transforms())  # resize 256, crop 224
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")
COLOURS = {"blue": (30, 40, 220), "green": (40, 200, 50), "red": (220, 40, 30)}


def write_images(folder: Path, colour: tuple[int, int, int], count: int, size: int, seed: int) -> None:
    """``count`` noisy images of one dominant colour: classes that a small network separates easily."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        noise = rng.normal(0, 40, size=(size, size, 3))
        pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:03d}.png")


def make_image_folder(root: Path, per_class: int = 12, size: int = 40, splits: tuple[str, ...] = ("train", "val"),
                      classes: tuple[str, ...] = tuple(COLOURS)) -> Path:
    """An ImageFolder tree ``root/<split>/<class>/NNN.png`` of colour-separable classes."""
    for split_index, split in enumerate(splits):
        for class_index, name in enumerate(classes):
            write_images(root / split / name, COLOURS[name], per_class, size, seed=10 * split_index + class_index)
    return root


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header says ``width`` x ``height`` pixels, with one pixel of data: it opens, but does not decode.

    Lets a test pass PIL's decompression-bomb limit (89,478,485 pixels) without writing such an image.
    """
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = buffer.getvalue()  # signature (8 bytes), IHDR chunk: length, type, width, height, 5 bytes, CRC; the rest
    ihdr = data[12:16] + struct.pack(">II", width, height) + data[24:29]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + data[33:])
    return path


def make_datamodule(root: Path, image_size: int = 32, **kwargs) -> ImageFolderDataModule:
    """A data module on ``root`` with ResNet-18's preprocessing at ``image_size`` (resize 37 for 32), no
    augmentation."""
    options = {"batch_size": 4, "num_workers": 0, **kwargs}
    return ImageFolderDataModule(str(root), RESNET18, image_size=image_size, **options)


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three colour classes, 12 train and 12 val images each, 40 px."""
    return make_image_folder(tmp_path_factory.mktemp("colours"))


FAST = [
    "backbone.weights=null",
    "data.image_size=32",
    "data.batch_size=12",
    "data.num_workers=0",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
    "speed_probe=false",  # no timing decides a test run's memory format: runs compared with each other compute alike
]


def compose_config(output_dir: Path, *overrides: str) -> DictConfig:
    """The real ``conf/train.yaml``, shrunk for tests, writing into ``output_dir``."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=[f"paths.output_dir={output_dir}", *FAST, *overrides])


@pytest.fixture
def make_config(tmp_path: Path, image_folder: Path) -> Callable[..., DictConfig]:
    """Compose the real config on the shared image folder, writing into ``tmp_path/run``."""

    def compose_with(*overrides: str, data_root: Path | None = None) -> DictConfig:
        return compose_config(tmp_path / "run", f"data.root={data_root or image_folder}",
                              f"paths.data_dir={tmp_path / 'data'}", *overrides)

    return compose_with


@pytest.fixture(scope="session")
def resnet18_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded, randomly initialised torchvision ResNet-18 state dict: 'pretrained' weights offline."""
    from torchvision.models import resnet18

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(resnet18().state_dict(), path)
    return path


PROXY_VARS = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


@dataclass
class Server:
    """A running local HTTP server and the paths it was asked for."""

    root: Path
    base_url: str
    requests: list[str] = field(default_factory=list)

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Serve tmp_path/srv over HTTP on 127.0.0.1 (free port), counting requests."""
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    root = tmp_path / "srv"
    root.mkdir()
    requests: list[str] = []

    class CountingHandler(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

        def do_HEAD(self) -> None:
            requests.append(self.path)
            super().do_HEAD()

        def log_message(self, format: str, *args: object) -> None:
            pass

    handler = functools.partial(CountingHandler, directory=str(root))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield Server(root, f"http://127.0.0.1:{httpd.server_address[1]}", requests)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def run_train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m transferlab.train ARGS`` in a new process run from ``cwd``, with tests/ importable (for
    ``+callbacks.X._target_=interruptions.Y``)."""
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "transferlab.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def train_cli(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    """One training run into ``run_dir`` (``hydra.run.dir``), from the command line."""
    return run_train(f"hydra.run.dir={run_dir}", *overrides, cwd=run_dir.parent)


def assert_usage_errors(main: Callable[[list[str]], None], cases: dict[tuple[str, ...], str],
                        capsys: pytest.CaptureFixture) -> None:
    """Each ``argv`` of ``cases`` makes the key=value command ``main`` exit 2 with one line on stderr holding its
    message, and no traceback."""
    for argv, message in cases.items():
        with pytest.raises(SystemExit) as exited:
            main(list(argv))
        assert exited.value.code == 2
        stderr = capsys.readouterr().err
        assert message in stderr and "Traceback" not in stderr and stderr.count("\n") == 1, stderr
