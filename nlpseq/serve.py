"""``nlpseq serve``: a trained run behind HTTP (uvicorn + starlette; ``pip install
'nlpseq[serve]'``).

Endpoints (JSON in and out; errors are ``{"error": message}`` with a 4xx status for bad
requests and 500 for a failure inside the model, after which the server keeps serving):

* ``POST /predict`` (sentiment, NER, char LM scoring): ``{"texts": [...]}`` ->
  ``{"predictions": [...]}``, each what ``nlpseq predict --json`` prints for that text;
* ``POST /translate``: ``{"texts": [...], "beam": 5}`` -> ``{"translations": [...]}``;
* ``POST /generate`` (char LM): ``{"prompt", "length", "temperature", "top_k", "top_p",
  "seed"}`` -> the generated text (prompt not repeated), streamed as plain text as it comes;
* ``GET /health`` and ``GET /info`` (task, labels, backend, model size, limits).

One worker thread owns the model. Concurrent requests are batched dynamically: the first
request waits at most ``wait_ms`` for others until ``max_batch`` texts are queued, and all
run through the model together. Generation streams advance a few characters at a time
between batches, so a long generation does not hold up predictions.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nlpseq.errors import NlpseqError

#: characters a generation stream produces per turn of the worker
STREAM_CHUNK = 8
#: JSON fields each endpoint accepts (anything else is refused, naming these)
FIELDS = {
    "predict": {"texts"},
    "translate": {"texts", "beam"},
    "generate": {"prompt", "length", "temperature", "top_k", "top_p", "seed"},
}


@dataclass(frozen=True)
class ServeConfig:
    """Limits and batching of a server."""

    backend: str = "torch"
    #: texts that run through the model together, across requests
    max_batch: int = 64
    #: how long the first queued request waits for others to join its batch
    wait_ms: float = 2.0
    #: longest text or prompt, in characters
    max_length: int = 10000
    #: most texts in one request
    max_texts: int = 256
    #: most characters one generation request may ask for
    max_generate: int = 10000
    #: largest beam a translation request may ask for
    max_beam: int = 16
    #: torch / ONNX Runtime threads (0 = their default)
    threads: int = 0


class RequestError(Exception):
    """A request the server refuses: its HTTP status and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Job:
    """Work for the model thread; ``done`` is called there with (result, error)."""

    kind: str
    items: list[Any]
    options: dict[str, Any]
    done: Callable[[Any, BaseException | None], None]

    @property
    def key(self) -> tuple:
        """Jobs with one key run as one batch."""
        return (self.kind, tuple(sorted(self.options.items())))


@dataclass
class Stream:
    pieces: Iterator[str]
    push: Callable[[str | None], None]
    cancelled: threading.Event = field(default_factory=threading.Event)


_STOP = object()


class Batcher:
    """The thread that owns the task's model, with the queue requests reach it through."""

    def __init__(self, task: Any, config: ServeConfig):
        self.task, self.config = task, config
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.streams: list[Stream] = []
        self.thread = threading.Thread(target=self._run, name="nlpseq-model", daemon=True)
        self.batches = 0  # batches run so far (for /info)
        self._input_options = ({"input_format": "text"}
                               if "input_format" in task.input_options else {})

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Finish the queued work, then end the thread."""
        self.jobs.put(_STOP)
        self.thread.join()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    async def submit(self, kind: str, items: list[Any], options: dict[str, Any]) -> Any:
        """Run a job on the model thread and wait for its result."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def done(result: Any, error: BaseException | None) -> None:
            loop.call_soon_threadsafe(_settle, future, result, error)

        self.jobs.put(Job(kind, items, options, done))
        return await future

    # --- the model thread ----------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                job = self.jobs.get_nowait() if self.streams else self.jobs.get()
            except queue.Empty:
                job = None
            if job is _STOP:
                for stream in self.streams:  # their clients get what was generated so far
                    stream.push(None)
                return
            if job is not None:
                jobs, stop = self._gather(job)
                for group in _groups(jobs):
                    self._run_group(group)
                if stop:
                    self.jobs.put(_STOP)
            self._advance_streams()

    def _gather(self, first: Job) -> tuple[list[Job], bool]:
        """``first`` and the jobs arriving within the wait window, up to ``max_batch``
        texts; also whether the stop signal came meanwhile."""
        jobs, texts = [first], len(first.items)
        deadline = time.monotonic() + self.config.wait_ms / 1000
        while texts < self.config.max_batch:
            remaining = deadline - time.monotonic()
            try:
                job = self.jobs.get(timeout=remaining) if remaining > 0 else \
                    self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                return jobs, True
            jobs.append(job)
            texts += len(job.items)
        return jobs, False

    def _run_group(self, jobs: list[Job]) -> None:
        """One batch through the model; if it fails, each job alone, so that one bad
        request fails by itself."""
        self.batches += 1
        try:
            results = self._compute(jobs[0].kind, [i for j in jobs for i in j.items],
                                    jobs[0].options)
        except Exception as error:  # noqa: BLE001  (reported to the requests, not raised)
            if len(jobs) == 1:
                jobs[0].done(None, error)
                return
            for job in jobs:
                self._run_group([job])
            return
        start = 0
        for job in jobs:
            job.done(results[start : start + len(job.items)], None)
            start += len(job.items)

    def _compute(self, kind: str, items: list[Any], options: dict[str, Any]) -> Any:
        task = self.task
        if kind == "predict":
            tokens = list(task.read_input(iter(items), **self._input_options))
            return task.predict_records(tokens)
        if kind == "translate":
            return task.predict(items, **options)
        if kind == "generate":  # one job: starts a stream (options are checked here)
            (push,) = items
            stream = Stream(iter(task.stream(warn=lambda _m: None, **options)), push)
            self.streams.append(stream)
            return [stream.cancelled]
        raise ValueError(f"unknown job {kind!r}")

    def _advance_streams(self) -> None:
        for stream in list(self.streams):
            try:
                piece = "" if stream.cancelled.is_set() else \
                    "".join(itertools.islice(stream.pieces, STREAM_CHUNK))
            except Exception:  # noqa: BLE001  (the stream ends; its client sees it cut)
                piece = ""
            if piece:
                stream.push(piece)
            if len(piece) < STREAM_CHUNK:
                stream.push(None)
                self.streams.remove(stream)


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # the client went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _groups(jobs: list[Job]) -> list[list[Job]]:
    """Jobs by key (same endpoint and options), generation jobs one by one, in order."""
    groups: dict[tuple, list[Job]] = {}
    out: list[list[Job]] = []
    for job in jobs:
        if job.kind == "generate":
            out.append([job])
        else:
            groups.setdefault(job.key, []).append(job)
    return list(groups.values()) + out


# --- HTTP ---------------------------------------------------------------------------------------
def _endpoint_of(task: Any) -> dict[str, str]:
    """URL path -> the task command it runs, for the commands this task's runs answer."""
    paths = {"predict": "predict", "translate": "translate", "generate": "generate"}
    return {f"/{p}": c for p, c in paths.items() if c in task.commands}


async def _read_json(request: Any, kind: str, config: ServeConfig) -> dict[str, Any]:
    limit = config.max_texts * (config.max_length * 4 + 16) + 4096
    body = await request.body()
    if len(body) > limit:
        raise RequestError(413, f"request body over {limit} bytes")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RequestError(400, f"the body is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise RequestError(400, "the body must be a JSON object")
    unknown = sorted(set(data) - FIELDS[kind])
    if unknown:
        raise RequestError(400, f"unknown field(s) {', '.join(unknown)}; /{kind} takes "
                           f"{', '.join(sorted(FIELDS[kind]))}")
    return data


def _texts(data: dict[str, Any], config: ServeConfig) -> list[str]:
    texts = data.get("texts")
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise RequestError(400, '"texts" must be a list of strings')
    if not texts:
        raise RequestError(400, '"texts" is empty')
    if len(texts) > config.max_texts:
        raise RequestError(413, f"{len(texts)} texts in one request; at most "
                           f"{config.max_texts}")
    for index, text in enumerate(texts):
        if len(text) > config.max_length:
            raise RequestError(413, f"texts[{index}] has {len(text)} characters; at most "
                               f"{config.max_length}")
    return texts


def _integer(data: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise RequestError(400, f'"{name}" must be an integer from {low} to {high}')
    return value


def _generate_options(data: dict[str, Any], config: ServeConfig) -> dict[str, Any]:
    prompt = data.get("prompt", "")
    if not isinstance(prompt, str):
        raise RequestError(400, '"prompt" must be a string')
    if len(prompt) > config.max_length:
        raise RequestError(413, f"the prompt has {len(prompt)} characters; at most "
                           f"{config.max_length}")
    options: dict[str, Any] = {"prompt": prompt}
    length = _integer(data, "length", 1, config.max_generate)
    options["length"] = 500 if length is None else length
    for name in ("temperature", "top_p"):
        value = data.get(name)
        if value is not None and (isinstance(value, bool) or
                                  not isinstance(value, (int, float))):
            raise RequestError(400, f'"{name}" must be a number')
        if value is not None:
            options[name] = float(value)
    for name in ("top_k", "seed"):
        value = _integer(data, name, 0 if name == "seed" else 1, 2**63 - 1)
        if value is not None:
            options[name] = value
    return options


class Service:
    """The HTTP side: validates requests, hands work to the :class:`Batcher`, answers."""

    def __init__(self, task: Any, config: ServeConfig, info: dict[str, Any]):
        self.task, self.config, self.info = task, config, info
        self.batcher = Batcher(task, config)
        self.endpoints = _endpoint_of(task)

    @staticmethod
    def error(status: int, message: str) -> Any:
        from starlette.responses import JSONResponse

        return JSONResponse({"error": message}, status_code=status)

    async def run_job(self, request: Any) -> Any:
        """POST /predict, /translate, /generate."""
        from starlette.responses import JSONResponse

        kind = self.endpoints.get(request.url.path)
        if kind is None:
            offered = ", ".join(sorted(self.endpoints)) or "none"
            return self.error(404, f"a {self.task.name} run does not answer "
                              f"{request.url.path}; it answers {offered}")
        try:
            data = await _read_json(request, kind, self.config)
            if kind == "generate":
                return await self.generate(data)
            texts = _texts(data, self.config)
            options = {}
            if kind == "translate":
                options["beam"] = _integer(data, "beam", 1, self.config.max_beam)
            results = await self.batcher.submit(kind, texts, options)
        except RequestError as err:
            return self.error(err.status, str(err))
        except NlpseqError as err:
            return self.error(400, str(err))
        except Exception as err:  # noqa: BLE001  (one failed request; the server goes on)
            return self.error(500, f"internal error: {type(err).__name__}: {err}")
        name = "translations" if kind == "translate" else "predictions"
        return JSONResponse({name: results})

    async def generate(self, data: dict[str, Any]) -> Any:
        """Start a generation stream; its text is sent as the model thread makes it."""
        from starlette.responses import StreamingResponse

        options = _generate_options(data, self.config)
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str | None] = asyncio.Queue()

        def push(piece: str | None) -> None:
            loop.call_soon_threadsafe(pieces.put_nowait, piece)

        (cancelled,) = await self.batcher.submit("generate", [push], options)

        async def body() -> AsyncIterator[str]:
            try:
                while (piece := await pieces.get()) is not None:
                    yield piece
            finally:  # also when the client disconnects: stop generating for it
                cancelled.set()

        return StreamingResponse(body(), media_type="text/plain; charset=utf-8")

    async def health(self, _request: Any) -> Any:
        from starlette.responses import JSONResponse

        if not self.batcher.alive:
            return self.error(503, "the model thread is not running")
        return JSONResponse({"status": "ok"})

    async def describe(self, _request: Any) -> Any:
        from starlette.responses import JSONResponse

        return JSONResponse({**self.info, "endpoints": sorted(self.endpoints),
                             "batches_run": self.batcher.batches})

    async def http_error(self, _request: Any, exc: Any) -> Any:
        return self.error(exc.status_code, exc.detail)

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Any) -> AsyncIterator[None]:
        self.batcher.start()
        yield
        await asyncio.to_thread(self.batcher.stop)  # after uvicorn answered what was in flight


def create_app(task: Any, config: ServeConfig, info: dict[str, Any]) -> Any:
    """The starlette application serving ``task`` (already loaded with its backend)."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.routing import Route

    service = Service(task, config, info)
    routes = [Route("/health", service.health), Route("/info", service.describe),
              *(Route(path, service.run_job, methods=["POST"])
                for path in ("/predict", "/translate", "/generate"))]
    app = Starlette(routes=routes, lifespan=service.lifespan,
                    exception_handlers={HTTPException: service.http_error})
    app.state.batcher = service.batcher
    return app


def task_info(task: Any, run_dir: Path, config: ServeConfig) -> dict[str, Any]:
    """What ``/info`` reports: task, labels, backend, model size and the server's limits."""
    from nlpseq.backends import describe

    info: dict[str, Any] = {"task": task.name, "run": str(run_dir)}
    names = getattr(task, "names", None)  # sentiment labels as printed
    for name, vocab in (("labels", getattr(task, "labels", None)),
                        ("tags", getattr(task, "tags", None))):
        if vocab is not None and hasattr(vocab, "labels"):
            info[name] = list(names if name == "labels" and names else vocab.labels)
    info["model"] = describe(task.model, config.backend, run_dir)
    info["limits"] = {"max_batch": config.max_batch, "wait_ms": config.wait_ms,
                      "max_length": config.max_length, "max_texts": config.max_texts,
                      "max_generate": config.max_generate, "max_beam": config.max_beam}
    return info


def build_app(run_dir: str | Path, config: ServeConfig) -> Any:
    """Load ``run_dir`` with ``config.backend`` and return its application."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise NlpseqError("serving needs uvicorn and starlette: pip install "
                          "'nlpseq[serve]'") from None
    import torch

    import nlpseq

    if config.threads:
        torch.set_num_threads(config.threads)
    task = nlpseq.load(run_dir, backend=config.backend)
    return create_app(task, config, task_info(task, Path(run_dir), config))


def serve(run_dir: str | Path, config: ServeConfig, host: str = "127.0.0.1",
          port: int = 8000) -> None:
    """Serve ``run_dir`` until interrupted; requests in flight are answered first."""
    import uvicorn

    app = build_app(run_dir, config)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=30)
