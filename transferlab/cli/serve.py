"""Prediction server: ``python -m transferlab.serve ckpt=PATH [host=127.0.0.1] [port=8000] [workers=1] ...``.

A LitServe server. ``POST /predict`` takes one image, as the raw request body or as the one file of a
multipart form (any field name), and answers ``{"label": "bees", "score": 0.91, "top_k": [["bees", 0.91],
["ants", 0.09]]}``: the classes and probabilities ``python -m transferlab.predict`` gives for the same file.
``GET /health`` answers ``ok`` once every inference worker has loaded the model. Requests that arrive
within ``batch_timeout`` seconds of each other go through the model as one batch (``max_batch_size``).
A request that is not a usable image (empty, not an image, truncated, more pixels than
``max_image_pixels``) is answered 4xx with ``{"detail": "<one sentence>"}``, and the server goes on.
"""

import importlib.util
import io
import multiprocessing
import os
import signal
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import litserve as ls
import numpy as np
import torch
from fastapi import Depends, HTTPException, Request
from omegaconf import MISSING, DictConfig
from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile

from transferlab.cli.args import resolve_device, run_cli
from transferlab.data.images import PixelLimit, no_pixel_limit
from transferlab.errors import ConfigError
from transferlab.model.checkpoint import load_classifier, preprocessing
from transferlab.model.prediction import failure, rank

USAGE = ("python -m transferlab.serve ckpt=PATH [host=127.0.0.1] [port=8000] [workers=1] [max_batch_size=8] "
         "[batch_timeout=0.01] [top_k=3] [device=auto|cpu|cuda|cuda:N|mps] [max_image_pixels=null]")
HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # the addresses LitServer.run listens on


@dataclass
class ServeArgs:
    ckpt: str = MISSING  # a transferlab checkpoint (checkpoints/best.ckpt of a run)
    host: str = "127.0.0.1"  # this machine only; 0.0.0.0 (or ::) takes requests from other machines
    port: int = 8000
    workers: int = 1  # inference processes per device, each holding a copy of the model
    max_batch_size: int = 8  # requests that go through the model together
    # Seconds the first request of a batch waits for others: 10 ms is little next to a request's own round trip
    # and decoding, and enough for requests sent at once to share a forward pass.
    batch_timeout: float = 0.01
    top_k: int = 3  # classes listed per answer (at most the number of classes)
    device: str = "auto"  # auto, cpu, mps, cuda (every visible GPU, workers on each) or cuda:N
    max_image_pixels: int | None = None  # larger images are refused (413); null: PIL's limit (89,478,485)


@dataclass(frozen=True)
class ImageDecoder:
    """A request's bytes -> the model's input (C x H x W float32), or a 4xx HTTPException saying why not."""

    transform: Callable[[Image.Image], torch.Tensor]
    limit: PixelLimit

    def __call__(self, data: bytes) -> np.ndarray:
        if not data:
            raise HTTPException(400, "The request holds no image: send the image file as the request body or as "
                                     "the one file of a multipart form.")
        try:
            return self.transform(self.limit.load_rgb(io.BytesIO(data))).numpy()
        except Image.DecompressionBombError as error:
            raise HTTPException(413, f"The image is {error}.") from None
        except UnidentifiedImageError:
            raise HTTPException(415, f"The {len(data):,} bytes sent are not an image file PIL can read "
                                     "(PNG, JPEG, WebP, ...).") from None
        except Exception as error:  # truncated or broken inside: OSError, SyntaxError, ValueError...
            raise HTTPException(400, f"The image could not be decoded ({failure(error)}).") from None


async def sent_bytes(request: Request) -> bytes:
    """The image a request carries: the one file of a multipart form (any field name), else the whole body."""
    if request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        form = await request.form()
        files = [value for value in form.values() if isinstance(value, UploadFile)]
        if len(files) != 1:
            raise HTTPException(400, f"The multipart form holds {len(files)} files; send exactly one image file.")
        return await files[0].read()
    return await request.body()


def model_input(request: Request, data: Annotated[bytes, Depends(sent_bytes)]) -> np.ndarray:
    """The request's image, decoded and preprocessed in the API server, in FastAPI's thread pool (a sync dependency).

    Decoding here, not in ``decode_request``, keeps a bad image out of the batches: LitServe's batched
    loop answers every request of a batch with the error any one of them raised.
    """
    return request.app.state.decode(data)


class ClassifierAPI(ls.LitAPI):
    """The checkpoint's classifier in an inference worker: batches of preprocessed images -> JSON answers."""

    def __init__(self, checkpoint: str, top_k: int, max_batch_size: int, batch_timeout: float) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.checkpoint = checkpoint
        self.top_k = top_k

    def setup(self, device: str) -> None:
        self.model = load_classifier(self.checkpoint, map_location=device)
        self.class_names = list(self.model.hparams.class_names)

    def decode_request(self, request: Annotated[np.ndarray, Depends(model_input)]) -> torch.Tensor:
        # LitServe hands a plain Request to request.json() or request.form(); any other annotation of `request`
        # makes it FastAPI's parameter, whose value (here model_input's array) is queued to the worker as is.
        return torch.from_numpy(request)

    @torch.inference_mode()
    def predict(self, x: torch.Tensor) -> list[dict[str, Any]] | dict[str, Any]:
        batched = self.max_batch_size > 1  # LitServe stacks requests only then; else x is one image
        logits = self.model(x.to(self.device) if batched else x.unsqueeze(0).to(self.device))
        answers = [prediction.answer() for prediction in rank(logits, self.class_names, self.top_k)]
        return answers if batched else answers[0]

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output


def check_options(cfg: DictConfig) -> None:
    """Every option that LitServe would refuse with a traceback, refused first as a ConfigError."""
    if cfg.host not in HOSTS:
        raise ConfigError(f"host={cfg.host} cannot be served: use 127.0.0.1 (this machine only), 0.0.0.0 or ::.")
    if not 1024 <= cfg.port <= 65535:
        raise ConfigError(f"port={cfg.port} is out of range: use a port from 1024 to 65535.")
    for name in ("workers", "max_batch_size", "top_k"):
        if cfg[name] < 1:
            raise ConfigError(f"{name}={cfg[name]} must be at least 1.")
    if cfg.batch_timeout < 0:
        raise ConfigError(f"batch_timeout={cfg.batch_timeout} must be 0 or more seconds.")
    if importlib.util.find_spec("python_multipart") is None:
        raise ConfigError("Serving needs python-multipart to read uploaded files: pip install 'transferlab[serve]'.")
    family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
    with socket.socket(family) as probe:  # bound the way uvicorn binds it, then released for LitServe
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((cfg.host, cfg.port))
        except OSError as error:
            raise ConfigError(f"port={cfg.port} on {cfg.host} cannot be used ({error.strerror}): choose another "
                              "port= or stop the program listening there.") from None


def devices(device: torch.device) -> int | list[int]:
    """LitServer's ``devices`` for ``device``: the one GPU ``cuda:N`` names, else every one of its kind."""
    if device.type == "cuda":
        return [device.index] if device.index is not None else torch.cuda.device_count()
    return 1


@contextmanager
def stopped_by_sigterm() -> Iterator[None]:
    """SIGTERM stops the server as Ctrl-C does: LitServe shuts its processes down on KeyboardInterrupt only.

    Whatever ends the server, no process it started outlives it.
    """

    def interrupt(signum: int, frame: object) -> None:
        if os.getpid() != server:  # a forked API server: uvicorn re-raises the signal once it has shut down
            raise SystemExit(128 + signum)
        raise KeyboardInterrupt

    server = os.getpid()

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        for child in multiprocessing.active_children():
            child.terminate()
            child.join(timeout=5)


def serve(cfg: DictConfig) -> None:
    """Check the options and the checkpoint, then serve it until SIGINT (Ctrl-C) or SIGTERM."""
    check_options(cfg)
    device = resolve_device(cfg.device)
    checkpoint = str(Path(cfg.ckpt).expanduser().resolve())
    model = load_classifier(checkpoint)  # a bad checkpoint stops here, before any process starts
    decode = ImageDecoder(preprocessing(model).eval_transform(), PixelLimit(cfg.max_image_pixels, "max_image_pixels"))
    classes = len(model.hparams.class_names)
    del model  # the inference workers load their own copies
    api = ClassifierAPI(checkpoint, cfg.top_k, cfg.max_batch_size, cfg.batch_timeout)
    server = ls.LitServer(api, accelerator=device.type, devices=devices(device), workers_per_device=cfg.workers)
    server.app.state.decode = decode  # model_input's decoder, in every API server process (they are forked)
    print(f"Serving {checkpoint} ({classes} classes) on {device}: POST http://{cfg.host}:{cfg.port}/predict")
    # PixelLimit checks each image's size from its header itself; lifting PIL's process-wide limit for the
    # server's life (as the scan does) keeps concurrent decoding threads from racing to set and restore it.
    with no_pixel_limit(), stopped_by_sigterm():
        server.run(host=cfg.host, port=cfg.port, generate_client_file=False)


def main(argv: list[str] | None = None) -> None:
    run_cli("transferlab.serve", ServeArgs, serve, USAGE, argv)


if __name__ == "__main__":
    main()
