"""``nlpseq serve`` over real HTTP on 127.0.0.1: every endpoint, the errors, batching and a
shutdown that answers the requests in flight."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import invoke, write_pipeline

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

import nlpseq  # noqa: E402
from nlpseq.config import load_config  # noqa: E402
from nlpseq.serve import Batcher, Job, ServeConfig, create_app, task_info  # noqa: E402
from nlpseq.trainer import train  # noqa: E402

VERSE = "row to the light,\nkeep left of the bell;\nthe steps are wet.\n" * 6
PAIRS = [("The man is running.", "Der Mann läuft."), ("The dog is sleeping.", "Der Hund schläft."),
         ("The cat is eating.", "Die Katze isst."), ("The child is singing.", "Das Kind singt.")]


@contextlib.contextmanager
def serving(task, run_dir: Path, config: ServeConfig | None = None
            ) -> Iterator[tuple[httpx.Client, object]]:
    """Serve ``task`` (loaded from ``run_dir``) from a thread on a free 127.0.0.1 port;
    yields a client and the uvicorn server (set ``should_exit`` to stop it early)."""
    config = config or ServeConfig()
    app = create_app(task, config, task_info(task, run_dir, config))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            yield client, server
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture(scope="module")
def chargen_run(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("serve-chargen")
    (base / "text.txt").write_text(VERSE, encoding="utf-8")
    config = load_config(write_pipeline(base, "chargen", {"train": base / "text.txt"},
                                        {"train.epochs": 3}))
    train(config, base / "run", log=lambda _m: None, progress=False)
    return base / "run"


@pytest.fixture(scope="module")
def translate_run(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("serve-translate")
    for name, side in (("src.en", 0), ("tgt.de", 1)):
        (base / name).write_text("".join(p[side] + "\n" for p in PAIRS), encoding="utf-8")
    data = {"train": base / "src.en", "train_target": base / "tgt.de",
            "dev": base / "src.en", "dev_target": base / "tgt.de"}
    config = load_config(write_pipeline(base, "translate", data, {"train.epochs": 4}))
    train(config, base / "run", log=lambda _m: None, progress=False)
    return base / "run"


TEXTS = ["the film is very good", "the cast is awful", "zzz unseen", ""]


def test_predict_answers_what_predict_json_prints(trained_run, tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    printed = invoke("predict", trained_run.run_dir, "--input", path, "--json", check=True)
    expected = [json.loads(line) for line in printed.stdout.splitlines()]
    with serving(nlpseq.load(trained_run.run_dir), trained_run.run_dir) as (client, _):
        response = client.post("/predict", json={"texts": TEXTS})
        assert response.status_code == 200
        assert response.json() == {"predictions": expected}
        assert client.get("/health").json() == {"status": "ok"}
        info = client.get("/info").json()
    assert info["task"] == "sentiment" and info["endpoints"] == ["/predict"]
    assert info["labels"] == nlpseq.load(trained_run.run_dir).names
    assert info["model"]["backend"] == "torch" and info["model"]["parameters"] > 0


def test_predict_with_the_onnx_backend(trained_run, tmp_path):
    run = tmp_path / "run"  # the shared run stays as trained: the graphs go into a copy
    shutil.copytree(trained_run.run_dir, run)
    expected = nlpseq.load(run).predict(TEXTS)
    task = nlpseq.load(run, backend="onnx")
    with serving(task, run, ServeConfig(backend="onnx")) as (client, _):
        got = client.post("/predict", json={"texts": TEXTS}).json()["predictions"]
        info = client.get("/info").json()
    assert [g["label"] for g in got] == [e["label"] for e in expected]
    assert info["model"]["backend"] == "onnx"


def test_translate_answers_in_order_with_the_beam_asked(translate_run):
    task = nlpseq.load(translate_run)
    sources = [s for s, _ in PAIRS] + ["", "The cat is running."]
    with serving(task, translate_run) as (client, _):
        for beam in (1, 3):
            response = client.post("/translate", json={"texts": sources, "beam": beam})
            assert response.json() == {"translations": task.translate(sources, beam)}
        assert client.post("/translate", json={"texts": ["x"], "beam": 0}).status_code == 400
        assert client.post("/predict", json={"texts": ["x"]}).status_code == 404


def test_generate_streams_the_text_generate_gives(chargen_run):
    task = nlpseq.load(chargen_run)
    with serving(task, chargen_run) as (client, _):
        for options in ({"prompt": "keep ", "length": 40, "temperature": 0},
                        {"prompt": "", "length": 30, "temperature": 0.8, "top_k": 5, "seed": 3}):
            with client.stream("POST", "/generate", json=options) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/plain")
                text = "".join(response.iter_text())
            assert options["prompt"] + text == task.generate(**options)
        bad = client.post("/generate", json={"temperature": -1})
        assert bad.status_code == 400 and "temperature" in bad.json()["error"]
        assert client.post("/generate", json={"length": 10**9}).status_code == 400
        scores = client.post("/predict", json={"texts": ["the bell"]}).json()["predictions"]
    assert scores == task.predict(["the bell"])


@pytest.mark.parametrize("body, status, fragment", [
    (b"{not json", 400, "not JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (b'{"text": ["a"]}', 400, "unknown field(s) text"),
    (b'{"texts": "a film"}', 400, "list of strings"),
    (b'{"texts": [1]}', 400, "list of strings"),
    (b'{"texts": []}', 400, "empty"),
    (b'{"texts": ["a", "b", "c", "d"]}', 413, "at most 3"),
    (b'{"texts": ["' + b"a" * 21 + b'"]}', 413, "at most 20"),
])
def test_bad_requests_get_a_json_error(trained_run, body, status, fragment):
    config = ServeConfig(max_texts=3, max_length=20)
    with serving(nlpseq.load(trained_run.run_dir), trained_run.run_dir, config) as (client, _):
        response = client.post("/predict", content=body)
        assert response.status_code == status
        assert fragment in response.json()["error"]
        assert client.post("/predict", json={"texts": ["fine"]}).status_code == 200


def test_unknown_paths_and_methods_get_json_errors(trained_run):
    with serving(nlpseq.load(trained_run.run_dir), trained_run.run_dir) as (client, _):
        assert client.get("/nothing").json() == {"error": "Not Found"}
        response = client.get("/predict")
        assert response.status_code == 405 and "error" in response.json()
        response = client.post("/translate", json={"texts": ["a"]})
        assert response.status_code == 404 and "answers /predict" in response.json()["error"]


def test_an_internal_error_is_a_500_and_the_server_keeps_serving(trained_run):
    task = nlpseq.load(trained_run.run_dir)
    predict_records = task.predict_records

    def failing(items):
        if ["boom"] in items or "boom" in items:
            raise RuntimeError("model exploded")
        return predict_records(items)

    task.predict_records = failing
    config = ServeConfig(wait_ms=300, max_batch=2)

    async def both(url: str):
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return await asyncio.gather(client.post("/predict", json={"texts": ["boom"]}),
                                        client.post("/predict", json={"texts": ["good"]}))

    with serving(task, trained_run.run_dir, config) as (client, _):
        bad, good = asyncio.run(both(str(client.base_url)))
        assert bad.status_code == 500 and "model exploded" in bad.json()["error"]
        assert good.status_code == 200  # batched with the failing one, answered alone
        assert client.post("/predict", json={"texts": ["again"]}).status_code == 200
        assert client.get("/health").status_code == 200


def test_shutdown_answers_the_requests_in_flight(trained_run):
    task = nlpseq.load(trained_run.run_dir)
    predict_records = task.predict_records
    busy = threading.Event()

    def slow(items):
        busy.set()
        time.sleep(0.5)  # the server is told to stop meanwhile
        return predict_records(items)

    task.predict_records = slow
    answers = []
    with serving(task, trained_run.run_dir) as (client, server):
        requester = threading.Thread(target=lambda: answers.append(
            client.post("/predict", json={"texts": TEXTS})))
        requester.start()
        assert busy.wait(30)
        server.should_exit = True
        requester.join(30)
    assert answers and answers[0].status_code == 200
    assert len(answers[0].json()["predictions"]) == len(TEXTS)


class RecordingTask:
    """A stand-in task that records the batches it is given."""

    input_options = ()
    commands = frozenset({"predict"})

    def __init__(self):
        self.calls: list[list[str]] = []

    def read_input(self, lines):
        return lines

    def predict_records(self, items):
        self.calls.append(list(items))
        return [item.upper() for item in items]


def test_queued_requests_run_as_one_batch_and_each_gets_its_own_results():
    task = RecordingTask()
    batcher = Batcher(task, ServeConfig(max_batch=100, wait_ms=0))
    results: dict[int, list[str]] = {}
    requests = [["a", "b"], ["c"], ["d", "e", "f"]]
    for number, items in enumerate(requests):  # queued before the model thread starts
        batcher.jobs.put(Job("predict", items, {},
                             lambda result, error, n=number: results.__setitem__(n, result)))
    batcher.start()
    batcher.stop()
    assert task.calls == [["a", "b", "c", "d", "e", "f"]]
    assert results == {0: ["A", "B"], 1: ["C"], 2: ["D", "E", "F"]}


def test_batches_stop_growing_at_max_batch():
    task = RecordingTask()
    batcher = Batcher(task, ServeConfig(max_batch=3, wait_ms=0))
    for items in (["a", "b"], ["c", "d"], ["e"], ["f"]):
        batcher.jobs.put(Job("predict", items, {}, lambda result, error: None))
    batcher.start()
    batcher.stop()
    assert task.calls == [["a", "b", "c", "d"], ["e", "f"]]
