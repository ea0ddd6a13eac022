"""Training in several processes (``trainer=ddp``; gloo on the CPU): the same model as one process with the
same global batch, each process trains on its own part of every epoch, and only rank zero writes files."""

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from hydra.types import RunMode
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from lightning.fabric.utilities.rank_zero import rank_zero_only

import transferlab
from conftest import FAST, compose_config, make_image_folder
from transferlab import ranks
from transferlab.data.sampling import EpochShuffle
from transferlab.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
PROCESSES = 2
TRAIN_IMAGES = 36  # make_image_folder: 3 classes x 12 images in train/ and in val/

# One optimizer step per epoch over the whole training set, no augmentation: the gradient of the
# mean loss over the global batch is what DDP's average of the processes' gradients is, whatever
# the order of the images. No backbone feature cache, so the DDP processes run the backbone.
SAME_STEP = [
    "data.augment=[]",
    "data.num_workers=0",
    "++data.cache_features=false",
    "optimizer.lr=0.05",  # steps large enough that a wrong gradient (a sum, one process's half) shows
    "scheduler=none",
    "trainer.max_epochs=2",
]
VARIANTS = {
    # backbone in eval mode: BatchNorm uses its running statistics, the same for half a batch
    "feature_extract": ["mode=feature_extract"],
    # epoch 0 as feature_extract, then VGG-11's top stage trains (its own optimizer group, at layer_decay's rate):
    # it becomes trainable after Lightning wrapped the model in DistributedDataParallel (Lightning issue 20340),
    # so only transferlab's gradient averaging keeps the processes' copies equal (gradual's all-at-once unfreeze
    # goes through the same per-stage code). VGG-11 has no BatchNorm, whose batch statistics would differ on half
    # batches (torch's SyncBatchNorm, which would fix that, refuses CPU tensors).
    "stagewise": ["mode=gradual", "mode.unfreeze=stagewise", "mode.unfreeze_at_epoch=1", "mode.backbone_lr_ratio=1.0",
                  "optimizer.layer_decay=0.5", "backbone=vgg16", "backbone.name=vgg11", "backbone.stages=null",
                  "data.image_size=32"],
}
# In which of the two epochs each variant's backbone trains.
BACKBONE_TRAINS = {"feature_extract": (False, False), "stagewise": (False, True)}


def start_cli(run_dir: Path, *overrides: str) -> subprocess.Popen:
    """``python -m transferlab.train`` in the background, its output in ``run_dir``.out (outside the run folder)."""
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                 "SLURM_PROCID", "SLURM_NTASKS", "PL_GLOBAL_SEED"):
        env.pop(name, None)  # a fresh launch, wherever the tests run
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(run_dir.with_suffix(".out"), "w") as output:
        return subprocess.Popen([sys.executable, "-m", "transferlab.train", f"hydra.run.dir={run_dir}", *overrides],
                                cwd=run_dir.parent, env=env, stdout=output, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen, run_dir: Path) -> str:
    """Wait for a ``start_cli`` run; its exit code must be 0. Returns its output."""
    returncode = process.wait(timeout=600)
    output = run_dir.with_suffix(".out").read_text()
    assert returncode == 0, output[-4000:]
    return output


def files_in(run_dir: Path) -> list[str]:
    """Relative paths of every file in the run folder; TensorBoard's event file (named by host and pid) as one name."""
    names = [path.relative_to(run_dir).as_posix() for path in run_dir.rglob("*") if path.is_file()]
    return sorted("tensorboard/events" if "tfevents" in name else name for name in names)


def checkpoint(run_dir: Path, name: str = "last.ckpt") -> dict:
    return torch.load(run_dir / "checkpoints" / name, map_location="cpu", weights_only=True)


def sampler_order(folder: Path, rank: int, epoch: int) -> dict:
    return json.loads((folder / f"rank{rank}_epoch{epoch}.json").read_text())


class RecordWeights(pl.Callback):
    """Writes ``folder/rank<R>_epoch<E>.json`` at the end of each epoch: for each of this process's weights (only rank
    zero's are checkpointed), a digest and how far it moved in the epoch (its largest change). Loaded by the CLI via
    +callbacks.X; ``folder`` lies outside the run folder."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        self.before: dict[str, torch.Tensor] = {}

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.before = {name: value.clone() for name, value in pl_module.state_dict().items()}

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        record = {name: {"sha256": hashlib.sha256(value.cpu().contiguous().numpy().tobytes()).hexdigest(),
                         "moved": (value - self.before[name]).abs().max().item()}
                  for name, value in pl_module.state_dict().items()}
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"rank{trainer.global_rank}_epoch{trainer.current_epoch}.json").write_text(json.dumps(record))


def weights_record(folder: Path, rank: int, epoch: int) -> dict:
    return json.loads((folder / f"rank{rank}_epoch{epoch}.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_two_processes_train_the_model_one_process_trains_with_the_same_global_batch(tmp_path, image_folder,
                                                                                       variant):
    common = [f"data.root={image_folder}", *FAST, *SAME_STEP, *VARIANTS[variant]]
    probes = ["+callbacks.order._target_=ddp_probe.RecordSamplerOrder", f"+callbacks.order.folder={tmp_path / 'order'}",
              "+callbacks.weights._target_=test_ddp.RecordWeights", f"+callbacks.weights.folder={tmp_path / 'weights'}"]
    # Both at once: the DDP run spends most of its time starting its second process.
    ddp = start_cli(tmp_path / "ddp", *common, "trainer=ddp", f"trainer.devices={PROCESSES}", "trainer.accelerator=cpu",
                    f"data.batch_size={TRAIN_IMAGES // PROCESSES}", *probes)
    try:  # the one-process run here (transferlab.fit writes the folder a command-line run writes) meanwhile
        transferlab.fit(run_dir=tmp_path / "single", overrides=["data=image_folder", *common,
                                                                f"data.batch_size={TRAIN_IMAGES}"])
        output = finish(ddp, tmp_path / "ddp")  # Lightning stops every process when one fails
    finally:
        if ddp.poll() is None:
            ddp.kill()
    assert f"Starting with {PROCESSES} processes" in output and "distributed_backend=gloo" in output

    # Each process trained on its own half of every epoch, in an order that depends on (seed, epoch) only.
    orders = []
    for epoch in range(2):
        parts = [sampler_order(tmp_path / "order", rank, epoch) for rank in range(PROCESSES)]
        assert [part["world_size"] for part in parts] == [PROCESSES] * PROCESSES
        assert sorted(index for part in parts for index in part["indices"]) == list(range(TRAIN_IMAGES))
        assert [part["indices"] for part in parts] == lightnings_ddp_order(TRAIN_IMAGES, seed=42, epoch=epoch)
        orders.append(parts)
    assert orders[0] != orders[1]

    # Every process ends each epoch with the same weights, bit for bit: DDP steps them with the same averaged
    # gradients. The backbone moves in exactly the epochs it trains in (stagewise: after Lightning wrapped the model in
    # DistributedDataParallel), by over ten times the absolute tolerance below, so that comparing with one process can
    # tell a wrong backbone gradient (one process's half of the batch moves it about as far as the right one).
    for epoch, trains in enumerate(BACKBONE_TRAINS[variant]):
        records = [weights_record(tmp_path / "weights", rank, epoch) for rank in range(PROCESSES)]
        for name, weight in records[0].items():
            differ = [rank for rank, record in enumerate(records) if record[name]["sha256"] != weight["sha256"]]
            assert not differ, f"epoch {epoch}: {name} of rank {differ} differs from rank 0's"
        moved = max(weight["moved"] for name, weight in records[0].items() if name.startswith("backbone."))
        assert moved > 1e-4 if trains else moved == 0, f"epoch {epoch}: the backbone moved by {moved}"

    # The same weights, to float32 rounding: averaging the processes' gradients is the global batch's gradient.
    single_state, ddp_state = checkpoint(tmp_path / "single"), checkpoint(tmp_path / "ddp")
    assert single_state["global_step"] == ddp_state["global_step"] == 2  # one step per epoch
    weights = single_state["state_dict"]
    assert weights.keys() == ddp_state["state_dict"].keys()
    for name, value in weights.items():
        torch.testing.assert_close(ddp_state["state_dict"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    # ... and those steps moved the head far beyond that tolerance: the comparison can tell a wrong gradient
    single_results = json.loads((tmp_path / "single" / "results.json").read_text())
    ddp_results = json.loads((tmp_path / "ddp" / "results.json").read_text())
    losses = [epoch["val_loss"] for epoch in single_results["history"]]
    assert abs(losses[1] - losses[0]) > 1e-2

    # The same figures: val/acc and train/acc are torchmetrics, val/loss and train/loss are synced means.
    assert ddp_results["best_val_acc"] == single_results["best_val_acc"]
    assert ddp_results["best_epoch"] == single_results["best_epoch"]
    for ddp_epoch, single_epoch in zip(ddp_results["history"], single_results["history"], strict=True):
        assert ddp_epoch["val_acc"] == single_epoch["val_acc"]
        assert ddp_epoch["train_acc"] == single_epoch["train_acc"]
        assert ddp_epoch["val_loss"] == pytest.approx(single_epoch["val_loss"], rel=1e-4, abs=1e-6)
        assert ddp_epoch["train_loss"] == pytest.approx(single_epoch["train_loss"], rel=1e-4, abs=1e-6)
    # Throughput counts the images of every process.
    summary = lambda state: state["callbacks"]["RunSummary"]
    assert summary(ddp_state)["train_images"] == summary(single_state)["train_images"] == 2 * TRAIN_IMAGES

    # Rank zero alone wrote the run folder: the same files as a one-process run, nothing of rank 1.
    assert files_in(tmp_path / "ddp") == files_in(tmp_path / "single")
    assert {".hydra/config.yaml", ".hydra/overrides.yaml", "results.json", "train.log", "checkpoints/best.ckpt",
            "checkpoints/last.ckpt", "tensorboard/events", "scan.json"} <= set(files_in(tmp_path / "ddp"))
    assert len(list((tmp_path / "ddp" / "tensorboard").glob("*tfevents*"))) == 1
    assert "GLOBAL_RANK: 1" not in (tmp_path / "ddp" / "train.log").read_text()


def lightnings_ddp_order(size: int, seed: int, epoch: int) -> list[list[int]]:
    """The training indices of each rank, as Lightning's DDP makes them of ``EpochShuffle``: it wraps the sampler in
    a ``DistributedSamplerWrapper`` that shuffles the sampler's order once more (seeded by the global seed and the
    epoch, as a training loader is shuffled) and gives rank r the positions r, r + world size, ..."""
    parts = []
    for rank in range(PROCESSES):
        sampler = DistributedSamplerWrapper(EpochShuffle(size, seed), num_replicas=PROCESSES, rank=rank, shuffle=True,
                                            seed=seed)
        sampler.set_epoch(epoch)
        parts.append(list(sampler))
    return parts


def test_each_rank_gets_its_own_part_of_each_epoch_in_an_order_set_by_seed_and_epoch():
    epochs = [lightnings_ddp_order(11, seed=42, epoch=epoch) for epoch in range(3)]
    for parts in epochs:
        assert [len(part) for part in parts] == [6, 6]  # 11 images: one is repeated to give each rank as many
        assert set(parts[0]) | set(parts[1]) == set(range(11)) and len(set(parts[0]) & set(parts[1])) <= 1
    assert epochs[0] != epochs[1] != epochs[2]
    assert lightnings_ddp_order(11, seed=42, epoch=1) == epochs[1]  # a resumed run sees the same epoch 1


@pytest.mark.parametrize("rank, node, expected", [(0, None, True), (1, None, False), (0, "1", False), (0, "0", True)])
def test_only_global_rank_zero_counts_as_rank_zero(monkeypatch, rank, node, expected):
    monkeypatch.setattr(rank_zero_only, "rank", rank)
    monkeypatch.delenv("GROUP_RANK", raising=False)
    if node is None:
        monkeypatch.delenv("NODE_RANK", raising=False)
    else:
        monkeypatch.setenv("NODE_RANK", node)
    assert ranks.is_global_zero() is expected


@pytest.mark.parametrize("rank, written", [
    (0, ["failure.json", "scan.json", "skipped.txt", "split.json"]),
    (1, []),
])
def test_only_rank_zero_writes_the_data_files_and_failure_json(tmp_path, monkeypatch, rank, written):
    """split.json, scan.json, skipped.txt, failure.json (results.json and checkpoints: Lightning's rank zero)."""
    from transferlab.cli.build import build_datamodule
    from transferlab.cli.train import record_failure

    images = make_image_folder(tmp_path / "images", per_class=4, splits=("train",))  # no val/: split.json
    (images / "train" / "blue" / "broken.png").write_bytes(b"not an image")  # skipped.txt
    monkeypatch.setattr(rank_zero_only, "rank", rank)
    cfg = compose_config(tmp_path / "run", f"data.root={images}", "data.on_bad_image=skip")
    datamodule = build_datamodule(cfg, tmp_path / "run")
    datamodule.setup("fit")
    record_failure(tmp_path / "run", RuntimeError("stopped"))
    assert len(datamodule.train_set) == 9 and len(datamodule.val_set) == 3  # every rank has the data
    assert sorted(path.name for path in (tmp_path / "run").glob("*")) == written


def test_other_ranks_stop_writing_the_log_file_lightnings_launcher_opened(tmp_path):
    root = logging.getLogger()
    launched = logging.FileHandler(tmp_path / "train_ddp_process_1.log")
    shared = logging.FileHandler(tmp_path / "train.log")
    shared.stream.write("rank zero's line\n")
    root.addHandler(launched)
    root.addHandler(shared)
    try:
        ranks.log_to_console_only("train_ddp_process_1")
    finally:
        for handler in (launched, shared):
            root.removeHandler(handler)
            handler.close()
    assert launched not in root.handlers and shared not in root.handlers
    assert not (tmp_path / "train_ddp_process_1.log").exists()  # empty, and named for this process: removed
    assert (tmp_path / "train.log").read_text() == "rank zero's line\n"  # a shared log stays


class FakeHydraConfig:
    """``HydraConfig`` as a job of a multirun sees it."""

    @staticmethod
    def initialized() -> bool:
        return True

    @staticmethod
    def get():
        return SimpleNamespace(mode=RunMode.MULTIRUN)


@pytest.mark.parametrize("devices, multirun, refused", [(2, True, True), (1, True, False), (2, False, False)])
def test_lightnings_launcher_is_refused_inside_a_multirun(monkeypatch, devices, multirun, refused):
    """Lightning would start the other processes by running the whole sweep command again."""
    if multirun:
        monkeypatch.setattr(ranks, "HydraConfig", FakeHydraConfig)
    trainer = pl.Trainer(strategy="ddp", accelerator="cpu", devices=devices, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    if refused:
        with pytest.raises(ConfigError, match="cannot run inside a multirun"):
            ranks.check_launch(trainer)
    else:
        ranks.check_launch(trainer)
