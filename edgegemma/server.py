"""`edgegemma serve`: the OpenAI embeddings API over HTTP, standard library only.

    POST /v1/embeddings   {"input": str | [str], "model": ..., "dimensions": 1..768, "encoding_format": "float" | "base64",
                           "prompt_name": "query" | "document" | "STS" | ..., "title": str}   (the last two are ours)
    GET  /v1/models, /v1/models/{id}, /health

One worker thread owns the model. Request threads validate and tokenize, then queue their texts; the
worker takes everything waiting (waiting a few milliseconds for more, up to a cap on inputs) and embeds
it in one `encode` call, so requests arriving together share the forward pass. Every error is JSON in
OpenAI's shape {"error": {"message", "type", "param", "code"}} with a 4xx/5xx status; an oversize body is
read to the end before the 413 goes out, so the client sees the answer instead of a reset connection.
"""
from __future__ import annotations

import argparse
import base64
import copy
import json
import os
import queue
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from . import cache

PROG = "edgegemma serve"
MiB = 1 << 20
SHUTDOWN_GRACE = 30.0  # seconds a Ctrl-C waits for requests in flight


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 8 * MiB
    max_inputs: int = 2048  # per request, as OpenAI
    max_tokens: int | None = None  # per input, prompt and <bos>/<eos> included; None: the model's context (2,048)
    batch_inputs: int = 64  # the worker stops gathering requests at this many inputs
    batch_wait: float = 0.002  # seconds the worker waits for more requests to join a batch
    batch_size: int = 32  # texts per forward pass inside one encode call


class ServeError(Exception):
    """The server cannot start; str() is the one line shown."""


class ApiError(Exception):
    """A request we refuse: HTTP status plus OpenAI's error fields."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


# --- the batching worker ------------------------------------------------------------------------


@dataclass
class _Job:
    texts: list[str]  # prompt already prepended
    done: threading.Event = field(default_factory=threading.Event)
    result: np.ndarray | None = None
    error: BaseException | None = None


class Batcher:
    """The one thread that runs the model: gathers queued jobs into one `encode` call."""

    def __init__(self, model, limits: Limits):
        self.model, self.limits = model, limits
        self.queue: queue.Queue[_Job | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="edgegemma-batcher", daemon=True)
        self.stopping = False
        self.batches = self.inputs = 0

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Finish every job already queued, then end the thread; later submissions get a 503."""
        self.stopping = True
        self.queue.put(None)
        self.thread.join()
        while True:  # a job that slipped in behind the end marker gets its 503 rather than waiting forever
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                job.error = ApiError(503, "the server is shutting down", kind="server_error", code="shutting_down")
                job.done.set()

    def embed(self, texts: list[str]) -> np.ndarray:
        if self.stopping:
            raise ApiError(503, "the server is shutting down", kind="server_error", code="shutting_down")
        job = _Job(texts)
        self.queue.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        jobs, n = [first], len(first.texts)
        deadline = time.monotonic() + self.limits.batch_wait
        while n < self.limits.batch_inputs:
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    job = self.queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if job is None:
                return jobs, True
            jobs.append(job)
            n += len(job.texts)
        return jobs, False

    def _run(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            jobs, last = self._gather(first)
            texts = [t for job in jobs for t in job.texts]
            try:
                vectors = self.model.encode(texts, prompt="", batch_size=self.limits.batch_size)
            except BaseException as err:  # never let one bad batch kill the worker
                for job in jobs:
                    job.error = err
            else:
                start = 0
                for job in jobs:
                    job.result = vectors[start:start + len(job.texts)]
                    start += len(job.texts)
            self.batches += 1
            self.inputs += len(texts)
            for job in jobs:
                job.done.set()
            if last:
                return


# --- requests -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddingRequest:
    texts: list[str]
    prompt: str
    dimensions: int | None
    encoding_format: str


class App:
    """Everything the handlers share: the model, its name, the limits, the batcher."""

    def __init__(self, model, model_id: str, limits: Limits):
        self.model, self.model_id, self.limits = model, model_id, limits
        self.max_tokens = limits.max_tokens or model.config.max_position_embeddings
        # Counts tokens without the model's truncation, so that an input over the limit is refused, not cut.
        self.counter = copy.copy(model.tokenizer)
        self.counter.max_length = 1 << 62
        self.batcher = Batcher(model, limits)
        self.started = time.time()
        self.requests = 0  # POST requests received
        self.stopping = False  # set on Ctrl-C/SIGTERM: new requests get a 503, those in flight finish
        self._active = 0
        self._idle = threading.Condition()

    @contextmanager
    def in_flight(self):
        """Counts a request from its first byte to its last, so a shutdown can wait for it."""
        with self._idle:
            self._active += 1
            self.requests += 1
        try:
            yield
        finally:
            with self._idle:
                self._active -= 1
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._active == 0, timeout)

    def parse(self, body) -> EmbeddingRequest:
        if not isinstance(body, dict):
            raise ApiError(400, f"the request body must be a JSON object, got {_json_type(body)}")
        if "input" not in body:
            raise ApiError(400, "'input' is required: a string or a list of strings", param="input")
        texts = body["input"]
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list):
            raise ApiError(400, f"'input' must be a string or a list of strings, got {_json_type(texts)}", param="input")
        if not texts:
            raise ApiError(400, "'input' is an empty list; send at least one string", param="input")
        if len(texts) > self.limits.max_inputs:
            raise ApiError(400, f"'input' has {len(texts)} items; at most {self.limits.max_inputs} per request",
                           param="input", code="too_many_inputs")
        for i, text in enumerate(texts):
            if isinstance(text, (int, list)) and not isinstance(text, bool):
                raise ApiError(400, "'input' holds token ids; this server takes text only (send strings)", param="input")
            if not isinstance(text, str):
                raise ApiError(400, f"'input[{i}]' must be a string, got {_json_type(text)}", param="input")
            if not text:
                raise ApiError(400, f"'input[{i}]' is an empty string", param="input")
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise ApiError(400, f"'model' must be a string, got {_json_type(model)}", param="model")
        dimensions = body.get("dimensions")
        dim = self.model.dimension
        if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int) or not 1 <= dimensions <= dim):
            raise ApiError(400, f"'dimensions' must be an integer from 1 to {dim} (Matryoshka sizes 768, 512, 256, 128), "
                                f"got {json.dumps(dimensions)}", param="dimensions")
        fmt = body.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise ApiError(400, f"'encoding_format' must be 'float' or 'base64', got {json.dumps(fmt)}", param="encoding_format")
        return EmbeddingRequest(texts, self._prompt(body.get("prompt_name"), body.get("title")), dimensions, fmt)

    def _prompt(self, name, title) -> str:
        from .api import DOCUMENT_TEMPLATE

        if name is not None and not isinstance(name, str):
            raise ApiError(400, f"'prompt_name' must be a string, got {_json_type(name)}", param="prompt_name")
        if title is not None:
            if not isinstance(title, str):
                raise ApiError(400, f"'title' must be a string, got {_json_type(title)}", param="title")
            if name not in (None, "document"):
                raise ApiError(400, f"'title' goes with prompt_name 'document', not {name!r}", param="title")
            return DOCUMENT_TEMPLATE.format(title=title or "none")
        if name is None:
            return ""
        prompts = self.model.prompts
        if name not in prompts:  # be forgiving about case: "sts" finds "STS"
            folded = [p for p in prompts if p.lower() == name.lower()]
            if len(folded) != 1:
                raise ApiError(400, f"unknown prompt_name {name!r}; this model has: {', '.join(prompts)}", param="prompt_name")
            name = folded[0]
        return prompts[name]

    def embeddings(self, body) -> dict:
        req = self.parse(body)
        texts = [req.prompt + t for t in req.texts]
        counts = [len(self.counter.encode(t)) for t in texts]
        for i, n in enumerate(counts):
            if n > self.max_tokens:
                raise ApiError(400, f"'input[{i}]' is {n:,} tokens with its prompt; the limit is {self.max_tokens:,} per input",
                               param="input", code="context_length_exceeded")
        vectors = self.batcher.embed(texts)
        if req.dimensions is not None and req.dimensions < vectors.shape[1]:
            vectors = vectors[:, :req.dimensions]
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), np.float32(1e-12))
        if req.encoding_format == "base64":  # little-endian float32 bytes, as OpenAI sends them
            encoded = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vectors]
        else:
            encoded = vectors.tolist()
        total = sum(counts)
        return {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(encoded)],
            "model": self.model_id,
            "usage": {"prompt_tokens": total, "total_tokens": total},
        }

    def model_card(self) -> dict:
        return {"id": self.model_id, "object": "model", "created": int(self.started), "owned_by": "edgegemma"}

    def health(self) -> dict:
        b = self.batcher
        return {
            "status": "stopping" if self.stopping else "ok", "model": self.model_id, "dimension": self.model.dimension,
            "recipe": self.model.recipe, "uptime_s": round(time.time() - self.started, 1), "requests": self.requests,
            "batches": b.batches, "inputs": b.inputs, "queued": b.queue.qsize(),
        }


def _json_type(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


# --- HTTP ---------------------------------------------------------------------------------------


class Server(ThreadingHTTPServer):
    daemon_threads = True  # idle keep-alive connections must not hold up a shutdown
    allow_reuse_address = True
    request_queue_size = 128  # listen backlog: socketserver's 5 is too few for a burst of clients connecting at once

    def __init__(self, address, app: App, verbose: bool = False):
        self.app, self.verbose = app, verbose
        super().__init__(address, Handler)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients such as openai's reuse connections
    server_version = "edgegemma"
    timeout = 300  # seconds a connection may stay idle
    server: Server

    # Reading more than this of an oversize body just to answer it is not worth it: answer and close.
    DRAIN_LIMIT = 64 * MiB

    def do_GET(self) -> None:
        app = self.server.app
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/health":
            self._send(200, app.health())
        elif path in ("/v1/models", "/models"):
            self._send(200, {"object": "list", "data": [app.model_card()]})
        elif path.startswith("/v1/models/"):
            if path.removeprefix("/v1/models/") != app.model_id:
                self._error(ApiError(404, f"model {path.removeprefix('/v1/models/')!r} not found; this server has {app.model_id!r}",
                                     param="model", code="model_not_found"))
            else:
                self._send(200, app.model_card())
        else:
            self._error(ApiError(404, f"no route GET {path or '/'}; try POST /v1/embeddings", code="not_found"))

    def do_POST(self) -> None:
        app = self.server.app
        path = self.path.split("?", 1)[0].rstrip("/")
        with app.in_flight():
            try:
                if app.stopping:
                    self.close_connection = True
                    raise ApiError(503, "the server is shutting down", kind="server_error", code="shutting_down")
                body = self._read_json()  # read first, whatever the route, so the connection stays in step
                if path not in ("/v1/embeddings", "/embeddings"):
                    raise ApiError(404, f"no route POST {path or '/'}; try POST /v1/embeddings", code="not_found")
                self._send(200, app.embeddings(body))
            except ApiError as err:
                self._error(err)
            except Exception as err:  # a bug: say so, keep serving
                self.log_error("internal error on %s: %r", path, err)
                self._error(ApiError(500, f"internal error: {type(err).__name__}: {err}", kind="server_error"))

    def _method_not_allowed(self) -> None:
        self._error(ApiError(405, f"method {self.command} is not allowed; use GET or POST", code="method_not_allowed"))

    do_PUT = do_DELETE = do_PATCH = _method_not_allowed

    def _read_json(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise ApiError(411, "chunked bodies are not supported; send Content-Length")
        try:
            length = int(self.headers.get("Content-Length", "0"))
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            raise ApiError(400, "invalid Content-Length header") from None
        limit = self.server.app.limits.max_body_bytes
        if length > limit:
            self._drain(length)
            raise ApiError(413, f"request body is {length:,} bytes; the limit is {limit:,}", code="body_too_large")
        raw = self.rfile.read(length)
        if len(raw) < length:
            self.close_connection = True
            raise ApiError(400, f"request body ended after {len(raw):,} of {length:,} bytes")
        if not raw.strip():
            raise ApiError(400, "empty request body; send a JSON object such as {\"input\": \"text\"}")
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ApiError(400, f"request body is not valid JSON: {err}") from None

    def _drain(self, length: int) -> None:
        """Read and drop an oversize body, so the client is done sending when our 413 arrives."""
        if length > self.DRAIN_LIMIT:
            self.close_connection = True
            return
        left = length
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 16))
            if not chunk:
                break
            left -= len(chunk)

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _error(self, err: ApiError) -> None:
        if err.status >= 500 or self.server.verbose:
            self.log_message("%s %s -> %d %s", self.command, self.path, err.status, err.message)
        self._send(err.status, err.body())

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (malformed request line, oversize headers...) in OpenAI's JSON shape too."""
        self.close_connection = True
        try:
            self._error(ApiError(code, message or explain or "bad request", kind="invalid_request_error" if code < 500 else "server_error"))
        except OSError:
            pass

    def log_request(self, code="-", size="-") -> None:
        if self.server.verbose:
            super().log_request(code, size)

    def log_message(self, format: str, *args) -> None:
        sys.stderr.write(f"{PROG}: {self.address_string()} {format % args}\n")


# --- the command --------------------------------------------------------------------------------


def serve(model_path: Path, host: str = "127.0.0.1", port: int = 8080, limits: Limits = Limits(),
          model_id: str | None = None, verbose: bool = False) -> int:
    from .api import load

    model = load(model_path)
    app = App(model, model_id or Path(model_path).stem, limits)
    try:  # a taken port is reported before the warm-up, not after
        server = Server((host, port), app, verbose)
    except OSError as err:
        raise ServeError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    model.encode("warm up")  # compile the kernels now, not on the first request
    app.batcher.start()

    stop = threading.Event()

    def on_signal(signum, frame):
        if stop.is_set():  # a second Ctrl-C: the user does not want to wait
            os._exit(130)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    loop = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="edgegemma-http", daemon=True)
    loop.start()
    bound_host, bound_port = server.server_address[:2]
    print(f"{PROG}: {app.model_id} ({model.recipe}, {model.dimension}-d) on http://{bound_host}:{bound_port}/v1 "
          f"- POST /v1/embeddings; Ctrl-C stops", file=sys.stderr, flush=True)
    while not stop.wait(0.5):
        pass
    print(f"{PROG}: stopping", file=sys.stderr, flush=True)
    app.stopping = True  # requests from now on get a 503
    server.shutdown()  # no new connections
    if not app.wait_idle(SHUTDOWN_GRACE):  # requests in flight get their answers
        print(f"{PROG}: gave up waiting for requests still in flight after {SHUTDOWN_GRACE:.0f} s", file=sys.stderr)
    app.batcher.stop()
    server.server_close()
    h = app.health()
    print(f"{PROG}: stopped after {h['requests']} requests, {h['inputs']} inputs in {h['batches']} batches",
          file=sys.stderr, flush=True)
    return 0


def run(args: argparse.Namespace) -> int:
    from .gguf_file import ModelFileError

    limits = Limits(max_body_bytes=args.max_body_mb * MiB, max_inputs=args.max_inputs, max_tokens=args.max_tokens,
                    batch_inputs=args.batch_inputs, batch_wait=args.batch_wait_ms / 1000)
    try:
        return serve(cache.resolve_model(args.model), args.host, args.port, limits, args.model_name, args.verbose)
    except (cache.NoModelError, ModelFileError, ServeError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
    except OSError as err:
        print(f"{PROG}: error: {err.filename or ''}{': ' if err.filename else ''}{err.strerror or err}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return 130
    return 1


def register(sub: argparse._SubParsersAction) -> None:
    d = Limits()
    p = sub.add_parser(
        "serve", help="OpenAI-compatible embeddings server",
        description="Serve POST /v1/embeddings (OpenAI's schema, plus prompt_name and title), GET /v1/models and GET /health. "
                    "Requests arriving together are embedded in one batch. Ctrl-C or SIGTERM stops it.",
    )
    p.add_argument("-m", "--model", metavar="FILE", help="GGUF model file (default: the one `edgegemma pull` set)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    p.add_argument("--model-name", metavar="ID", help="the model id /v1/models reports (default: the file's name)")
    p.add_argument("--max-body-mb", type=int, default=d.max_body_bytes // MiB, metavar="MB", help="largest request body (default %(default)s)")
    p.add_argument("--max-inputs", type=int, default=d.max_inputs, metavar="N", help="inputs per request (default %(default)s)")
    p.add_argument("--max-tokens", type=int, default=None, metavar="N", help="tokens per input, prompt included; longer inputs get a 400 (default: the model's context, 2048; "
                        "above it, inputs are cut to the context as sentence-transformers does)")
    p.add_argument("--batch-inputs", type=int, default=d.batch_inputs, metavar="N", help="inputs gathered into one batch (default %(default)s)")
    p.add_argument("--batch-wait-ms", type=float, default=d.batch_wait * 1000, metavar="MS", help="how long a batch waits for more requests (default %(default)s)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every request on stderr")
    p.set_defaults(handler=run)
