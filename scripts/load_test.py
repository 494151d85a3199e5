"""Load test of ``nlpseq serve`` on 127.0.0.1: requests/s, p50/p99 latency and errors at
several numbers of concurrent clients.

Bounded: each level sends a fixed number of requests (``--requests``) and stops at a time
limit (``--time-limit``); only 127.0.0.1 / localhost servers are accepted. Each client keeps
one HTTP/1.1 connection open and sends its next request when the previous one is answered
(a plain asyncio client: an HTTP library's own overhead would be measured otherwise).

    python scripts/load_test.py --run RUN_DIR --backend onnx     # starts and stops a server
    python scripts/load_test.py --url http://127.0.0.1:8000      # a server already running
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

LOCAL = ("127.0.0.1", "localhost")


async def _client(host: str, port: int, requests: list[bytes], budget: itertools.count,
                  total: int, deadline: float, latencies: list[float],
                  errors: list[str]) -> None:
    """One client: a request at a time over one kept-alive connection."""
    reader = writer = None
    while next(budget) < total and time.perf_counter() < deadline:
        request = requests[len(latencies) % len(requests)]
        start = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            writer.write(request)
            status = await _response(reader)
        except (OSError, asyncio.IncompleteReadError, ValueError) as error:
            errors.append(type(error).__name__)
            writer = None
            continue
        latencies.append(time.perf_counter() - start)
        if status != 200:
            errors.append(f"HTTP {status}")
    if writer is not None:
        writer.close()


async def _response(reader: asyncio.StreamReader) -> int:
    """Read one response (Content-Length framed); returns its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next((int(line.split(":", 1)[1]) for line in lines
                   if line.lower().startswith("content-length:")), None)
    if length is None:
        raise ValueError("response without Content-Length")
    await reader.readexactly(length)
    return status


def _requests(host: str, port: int, path: str, texts: list[str], per_request: int) -> list[bytes]:
    out = []
    for start in range(0, len(texts), per_request):
        body = json.dumps({"texts": texts[start : start + per_request]}).encode()
        out.append(f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: "
                   f"application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    return out


async def run_level(host: str, port: int, requests: list[bytes], clients: int, total: int,
                    time_limit: float) -> dict[str, float | int]:
    """``total`` requests from ``clients`` concurrent clients (or until ``time_limit``)."""
    latencies: list[float] = []
    errors: list[str] = []
    budget = itertools.count()
    start = time.perf_counter()
    deadline = start + time_limit
    await asyncio.gather(*(_client(host, port, requests, budget, total, deadline, latencies,
                                   errors) for _ in range(clients)))
    elapsed = time.perf_counter() - start
    latencies.sort()

    def percentile(q: float) -> float:
        return 1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))] \
            if latencies else float("nan")

    return {"clients": clients, "requests": len(latencies), "errors": len(errors),
            "seconds": round(elapsed, 3), "requests_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": round(percentile(0.50), 2), "p99_ms": round(percentile(0.99), 2),
            "mean_ms": round(1000 * statistics.fmean(latencies), 2) if latencies else None}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    command = [sys.executable, "-m", "nlpseq", "serve", args.run, "--port", str(port),
               "--backend", args.backend, "--max-batch", str(args.max_batch),
               "--wait-ms", str(args.wait_ms), "--threads", str(args.threads)]
    server = subprocess.Popen(command)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=1):
                return server, url
        except OSError:
            if server.poll() is not None:
                raise SystemExit("the server exited before answering /health") from None
            time.sleep(0.2)
    server.terminate()
    raise SystemExit("the server did not answer /health within 120 s")


def _texts(path: str) -> list[str]:
    if not path:
        return ["a gripping , funny and thoroughly enjoyable film"]
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    if lines and "\t" in lines[0]:  # a labelled TSV: the text column is the last
        lines = [line.rsplit("\t", 1)[-1] for line in lines[1:]]
    return [line for line in lines if line.strip()][:10000]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="", help="a running server (127.0.0.1 only)")
    parser.add_argument("--run", default="", help="start `nlpseq serve RUN` for the test")
    parser.add_argument("--backend", default="torch", help="with --run: torch, onnx or int8")
    parser.add_argument("--max-batch", type=int, default=64, help="with --run")
    parser.add_argument("--wait-ms", type=float, default=2.0, help="with --run")
    parser.add_argument("--threads", type=int, default=1, help="with --run: model threads")
    parser.add_argument("--path", default="/predict", help="endpoint taking {texts: [...]}")
    parser.add_argument("--input", default="", help="texts to send, one a line (or a TSV)")
    parser.add_argument("--texts-per-request", type=int, default=1)
    parser.add_argument("--clients", default="1,8,64", help="concurrency levels")
    parser.add_argument("--requests", type=int, default=5000, help="requests per level")
    parser.add_argument("--time-limit", type=float, default=30.0, help="seconds per level")
    parser.add_argument("--json", action="store_true", help="one JSON object per level")
    args = parser.parse_args()
    if bool(args.url) == bool(args.run):
        parser.error("give exactly one of --url and --run")
    server = None
    if args.run:
        server, url = _start_server(args)
    else:
        url = args.url
    parts = urllib.parse.urlsplit(url)
    if parts.hostname not in LOCAL:
        parser.error("the load test only talks to 127.0.0.1 / localhost")
    host, port = parts.hostname, parts.port or 80
    requests = _requests(host, port, args.path, _texts(args.input), args.texts_per_request)
    try:
        asyncio.run(run_level(host, port, requests, 8, 200, 10))  # warm-up
        for clients in (int(c) for c in args.clients.split(",")):
            result = asyncio.run(run_level(host, port, requests, clients, args.requests,
                                           args.time_limit))
            result["other_processes_cores"] = _others()
            print(json.dumps(result) if args.json else "  ".join(
                f"{key} {value}" for key, value in result.items()), flush=True)
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)


def _others() -> float | None:
    """CPU load of the machine (1-minute load average), to judge the figures by."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


if __name__ == "__main__":
    main()
