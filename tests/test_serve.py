"""python -m transferlab.serve: one real server in a subprocess, real HTTP requests, predict's answers."""

import contextlib
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import torch

from conftest import COLOURS, PROXY_VARS, assert_usage_errors, compose_config, png_header
from transferlab.cli.predict import predict_files
from transferlab.cli.serve import ClassifierAPI, ImageDecoder, main
from transferlab.cli.train import train
from transferlab.data.images import PixelLimit
from transferlab.model.checkpoint import load_classifier, preprocessing
from transferlab.model.prediction import Prediction

REPO = Path(__file__).resolve().parents[1]
TOP_K = 2  # of the 3 classes: the answers must honour top_k, not list every class
STARTUP_S = 180  # the server process and its inference worker each import torch and Lightning: slow on a busy CI
PROC = Path("/proc")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, image_folder: Path) -> Path:
    run_dir = tmp_path_factory.mktemp("serve_run")
    results = train(compose_config(run_dir, f"data.root={image_folder}", "trainer.max_epochs=1"))
    return Path(results["best_checkpoint"])


@pytest.fixture(scope="module")
def expected(checkpoint: Path, image_folder: Path) -> dict[Path, Prediction]:
    """predict_files' answers for four validation images of each class."""
    files = [image_folder / "val" / name / f"{i:03d}.png" for name in COLOURS for i in range(4)]
    return dict(zip(files, predict_files(load_classifier(checkpoint), files, top_k=TOP_K), strict=True))


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    port: int
    cwd: Path
    log: Path
    http: requests.Session

    def post(self, **request) -> requests.Response:
        return self.http.post(f"{self.url}/predict", timeout=60, **request)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``python -m transferlab.serve`` started once for the module, from an empty working directory."""
    cwd, port = tmp_path_factory.mktemp("serve_cwd"), free_port()
    log = cwd.parent / "server.log"
    env = {key: value for key, value in os.environ.items() if key not in PROXY_VARS}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "transferlab.serve", f"ckpt={checkpoint}", f"port={port}", "device=cpu",
             f"top_k={TOP_K}", "max_batch_size=4", "batch_timeout=0.05"],
            cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True)  # its own process group: the finalizer can reach every process it left
    http = requests.Session()
    http.trust_env = False
    running = Server(process, f"http://127.0.0.1:{port}", port, cwd, log, http)
    try:
        deadline = time.monotonic() + STARTUP_S
        while not healthy(running):
            assert process.poll() is None, f"the server exited with {process.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"no /health in {STARTUP_S} s:\n{log.read_text()}"
            time.sleep(0.2)
        yield running
    finally:
        http.close()
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def healthy(server: Server) -> bool:
    try:
        return server.http.get(f"{server.url}/health", timeout=5).status_code == 200
    except requests.ConnectionError:
        return False


def assert_same_answer(answer: dict, prediction: Prediction) -> None:
    assert set(answer) == {"label", "score", "top_k"}
    assert answer["label"] == prediction.label and len(answer["top_k"]) == TOP_K
    assert [name for name, _ in answer["top_k"]] == [name for name, _ in prediction.top_k]
    assert [p for _, p in answer["top_k"]] == pytest.approx([p for _, p in prediction.top_k], abs=1e-5)
    assert answer["score"] == pytest.approx(prediction.score, abs=1e-5)


def test_an_image_as_multipart_or_raw_body_gets_predicts_answer(server, expected):
    for file in list(expected)[::4]:  # one image of each class
        data = file.read_bytes()
        multipart = server.post(files={"photo": (file.name, data, "image/png")})
        raw = server.post(data=data, headers={"Content-Type": "application/octet-stream"})
        for response in (multipart, raw):
            assert response.status_code == 200, response.text
            assert_same_answer(response.json(), expected[file])


def test_concurrent_requests_each_get_their_own_images_answer(server, expected):
    files = list(expected) * 2  # 24 requests at once, for batches of up to 4 mixing the classes
    with ThreadPoolExecutor(max_workers=12) as pool:
        responses = list(pool.map(lambda file: server.post(data=file.read_bytes()), files))
    for file, response in zip(files, responses, strict=True):
        assert response.status_code == 200, response.text
        assert_same_answer(response.json(), expected[file])


def test_requests_that_are_not_images_get_a_4xx_reason_and_the_server_goes_on(server, expected, tmp_path):
    good = next(iter(expected))
    huge = png_header(tmp_path / "huge.png", 10_000, 9_000).read_bytes()  # over PIL's limit: refused from its header
    cases = {
        "corrupt": ({"data": b"\x89PNG\r\n\x1a\n" + os.urandom(300)}, 415, "not an image file"),
        "empty": ({"data": b""}, 400, "holds no image"),
        "truncated": ({"data": good.read_bytes()[:300]}, 400, "could not be decoded (OSError: image file is truncated"),
        "too large": ({"data": huge}, 413, "too large: 90,000,000 pixels > PIL's decompression-bomb limit"),
        "two files": ({"files": {"a": good.read_bytes(), "b": good.read_bytes()}}, 400, "holds 2 files"),
    }
    for name, (request, status, reason) in cases.items():
        response = server.post(**request)
        assert response.status_code == status, (name, response.text)
        detail = response.json()["detail"]
        assert reason in detail and detail.endswith(".") and "\n" not in detail, (name, detail)
    assert healthy(server)
    response = server.post(files={"file": good.open("rb")})
    assert response.status_code == 200 and response.json()["label"] == expected[good].label


def test_the_inference_worker_answers_one_image_or_a_batch_alike(checkpoint, expected):
    """max_batch_size=1 hands predict one image, larger ones a stack: both give predict's answers."""
    model = load_classifier(checkpoint)
    decode = ImageDecoder(preprocessing(model).eval_transform(), PixelLimit())
    files = list(expected)[:3]
    inputs = [torch.from_numpy(decode(file.read_bytes())) for file in files]
    single, batched = ClassifierAPI(str(checkpoint), TOP_K, 1, 0.0), ClassifierAPI(str(checkpoint), TOP_K, 8, 0.0)
    for api in (single, batched):
        api.setup("cpu")
        api.device = "cpu"  # as LitServe's worker sets it after setup
    assert_same_answer(single.predict(inputs[0]), expected[files[0]])
    answers = batched.predict(torch.stack(inputs))
    assert len(answers) == len(files)
    for file, answer in zip(files, answers, strict=True):
        assert_same_answer(answer, expected[file])


def test_bad_checkpoint_or_options_exit_2_before_a_server_starts(server, checkpoint, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_text("not a checkpoint\n")
    port = f"port={free_port()}"
    cases = {
        (f"ckpt={tmp_path / 'missing.ckpt'}", port): str(tmp_path / "missing.ckpt"),
        (f"ckpt={corrupt}", port): str(corrupt),
        (f"ckpt={checkpoint}", f"port={server.port}"): f"port={server.port} on 127.0.0.1 cannot be used",
        (f"ckpt={checkpoint}", "host=example.com", port): "host=example.com cannot be served",
        (f"ckpt={checkpoint}", "max_batch_size=0", port): "max_batch_size=0 must be at least 1",
    }
    assert_usage_errors(main, cases, capsys)
    assert multiprocessing.active_children() == []  # no LitServe process was started


def live_processes() -> dict[int, int]:
    """Each process not yet exited (zombies left out) and its parent, from /proc."""
    parents = {}
    for stat in PROC.glob("[0-9]*/stat"):
        try:
            state, parent = stat.read_text().rpartition(")")[2].split()[:2]  # after "pid (command)"
        except OSError:  # exited meanwhile
            continue
        if state != "Z":
            parents[int(stat.parent.name)] = int(parent)
    return parents


def descendants(pid: int) -> dict[int, str]:
    """Every live process under ``pid``, with its command line."""
    parents, found, frontier = live_processes(), {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child in [p for p, ppid in parents.items() if ppid == parent]:
            with contextlib.suppress(OSError):
                found[child] = (PROC / str(child) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                frontier.append(child)
    return found


@pytest.mark.skipif(not (PROC / "self" / "stat").exists(), reason="reads the process tree from /proc (Linux)")
def test_sigterm_stops_the_server_and_every_process_it_started(server):
    """The last test of the module: it stops the shared server."""
    children = descendants(server.process.pid)
    assert any("spawn_main" in command for command in children.values()), children  # LitServe's inference worker
    assert len(children) >= 3, children  # and its API server and the multiprocessing manager
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=60) == 0, server.log.read_text()
    stopped = time.monotonic() - started
    deadline = time.monotonic() + 10
    while (left := set(children) & set(live_processes())) and time.monotonic() < deadline:  # orphans would linger
        time.sleep(0.2)
    assert not left, {pid: children[pid] for pid in left}
    assert stopped < 30, f"{stopped:.1f} s to stop"
    assert "Traceback" not in server.log.read_text(), server.log.read_text()
    assert list(server.cwd.iterdir()) == []  # nothing written into the working directory (LitServe's client.py)
