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
from .gguf_file import ModelFileError
from .prompts import resolve_name
from .text import decode, is_blank

PROG = "edgegemma serve"
MiB = 1 << 20
SHUTDOWN_GRACE = 30.0  # seconds a Ctrl-C/SIGTERM waits for requests in flight; later, they get a 503
RETRY_AFTER = 5  # seconds, in a 503's Retry-After
DRAIN_WRITE = 5.0  # seconds a stopping server gives its last answers (the 503s) to go out


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


@dataclass(eq=False)  # hashed by identity: the batcher keeps a set of the unanswered ones
class _Job:
    texts: list[str]  # prompt already prepended
    done: threading.Event = field(default_factory=threading.Event)
    result: np.ndarray | None = None
    error: BaseException | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def finish(self, result: np.ndarray | None = None, error: BaseException | None = None) -> None:
        """The first answer wins: the worker's vectors, or the 503 of a shutdown that ran out of grace."""
        with self._lock:
            if not self.done.is_set():
                self.result, self.error = result, error
                self.done.set()


def _shutting_down() -> ApiError:
    return ApiError(503, "the server is shutting down; retry with another instance or later", kind="server_error",
                    code="shutting_down")


class Batcher:
    """The one thread that runs the model: gathers queued jobs into one `encode` call."""

    def __init__(self, model, limits: Limits):
        self.model, self.limits = model, limits
        self.queue: queue.Queue[_Job | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="edgegemma-batcher", daemon=True)
        self.stopping = False
        self.cancelled = False  # the shutdown's grace ran out: unfinished jobs get a 503
        self.batches = self.inputs = 0
        self._open: set[_Job] = set()  # submitted, not answered
        self._open_lock = threading.Lock()

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Finish every job already queued, then end the thread; later submissions get a 503. Whatever is still
        unanswered after `timeout` seconds (or slipped in behind the end marker) gets a 503; False when the thread
        is then still computing."""
        self.stopping = True
        self.queue.put(None)
        self.thread.join(timeout)
        self.cancel()
        return not self.thread.is_alive()

    def cancel(self) -> int:
        """Answer every unfinished job with a 503 now (the worker's later results are dropped); how many."""
        self.stopping = self.cancelled = True
        with self._open_lock:
            left = list(self._open)
        for job in left:
            job.finish(error=_shutting_down())
        return len(left)

    def embed(self, texts: list[str]) -> np.ndarray:
        if self.stopping:
            raise _shutting_down()
        job = _Job(texts)
        with self._open_lock:
            self._open.add(job)
        try:
            self.queue.put(job)
            job.done.wait()
        finally:
            with self._open_lock:
                self._open.discard(job)
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
            jobs = [job for job in jobs if not job.done.is_set()]  # cancelled while queued
            texts = [t for job in jobs for t in job.texts]
            if not texts:
                if last:
                    return
                continue
            try:
                vectors = self._encode(texts)
            except BaseException as err:  # never let one bad batch kill the worker
                for job in jobs:
                    job.finish(error=err)
            else:
                start = 0
                for job in jobs:
                    job.finish(result=vectors[start:start + len(job.texts)])
                    start += len(job.texts)
            self.batches += 1
            self.inputs += len(texts)
            if last:
                return

    def _encode(self, texts: list[str]) -> np.ndarray:
        """One batch's vectors, `batch_size` texts per encode call, so that a cancelled shutdown stops it between
        calls (the forward pass packs sequences without padding: splitting costs nothing)."""
        step = self.limits.batch_size
        parts = []
        for start in range(0, len(texts), step):
            if self.cancelled:
                raise _shutting_down()
            parts.append(self.model.encode(texts[start:start + step], prompt="", batch_size=step))
        return np.concatenate(parts) if len(parts) != 1 else parts[0]


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

    @property
    def active(self) -> int:
        return self._active

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
            if is_blank(text):  # as the CLI: an empty or whitespace-only input is a mistake, not a text
                raise ApiError(400, f"'input[{i}]' is empty or only whitespace", param="input")
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
            if name is not None and name.casefold() != "document":
                raise ApiError(400, f"'title' goes with prompt_name 'document', not {name!r}", param="title")
            return DOCUMENT_TEMPLATE.format(title=title or "none")
        if name is None:
            return ""
        try:  # case-insensitive, as everywhere: "sts" finds "STS"
            return self.model.prompts[resolve_name(self.model.prompts, name)]
        except ValueError as err:
            raise ApiError(400, str(err), param="prompt_name") from None

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
        if app.stopping:  # /health too: a load balancer takes the instance out
            self.close_connection = True
            self._send(503, {**_shutting_down().body(), "status": "stopping"})
        elif path == "/health":
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
                    raise _shutting_down()
                body = self._read_json()  # read first, whatever the route, so the connection stays in step
                if path not in ("/v1/embeddings", "/embeddings"):
                    raise ApiError(404, f"no route POST {path or '/'}; try POST /v1/embeddings", code="not_found")
                self._send(200, app.embeddings(body))
            except ApiError as err:
                if err.status == 503:
                    self.close_connection = True
                self._error(err)
            except ModelFileError as err:  # NaN or Inf from the model: a corrupt file, never a vector
                self._error(ApiError(500, str(err), kind="server_error", code="model_error"))
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
        try:  # UTF-8, as JSON must be; invalid bytes become U+FFFD like everywhere else (edgegemma.text)
            return json.loads(decode(raw.removeprefix(b"\xef\xbb\xbf")))
        except json.JSONDecodeError as err:
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
        if status == 503:
            self.send_header("Retry-After", str(RETRY_AFTER))
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
          model_id: str | None = None, verbose: bool = False, grace: float = SHUTDOWN_GRACE) -> int:
    from .api import load

    model = load(model_path)
    app = App(model, model_id or Path(model_path).stem, limits)
    try:  # a taken port is reported before the warm-up, not after
        server = Server((host, port), app, verbose)
    except OSError as err:
        raise ServeError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    model.warm_up()  # the compiled kernels now, not during the first requests
    model.encode("warm up")
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
    drain(server, app, grace)
    h = app.health()
    print(f"{PROG}: stopped after {h['requests']} requests, {h['inputs']} inputs in {h['batches']} batches",
          file=sys.stderr, flush=True)
    if app.batcher.thread.is_alive():  # still inside a cancelled forward pass: leave without waiting for it
        os._exit(0)
    return 0


def drain(server: Server, app: App, grace: float) -> None:
    """Stop without dropping a connection: requests already accepted finish within `grace` seconds; everything
    else (new requests, those still running after the grace) gets a 503 with Retry-After, never a reset or a cut
    body. The listening socket stays open meanwhile, so that late clients get their 503 rather than a reset."""
    active = app.active
    print(f"{PROG}: stopping: {active} request{'s' * (active != 1)} in flight get up to {grace:g} s to finish; "
          f"new requests get 503", file=sys.stderr, flush=True)
    app.stopping = True  # requests from now on get a 503
    if not app.wait_idle(grace):
        cancelled = app.batcher.cancel()
        print(f"{PROG}: grace period over: {cancelled} unfinished request{'s' * (cancelled != 1)} get 503",
              file=sys.stderr, flush=True)
        app.wait_idle(DRAIN_WRITE)  # their 503s go out
    server.shutdown()  # the accept loop ends ...
    server.socket.setblocking(False)
    while True:  # ... and connections already in the listen backlog are answered (503) instead of reset
        try:
            request, address = server.get_request()
        except OSError:
            break
        request.setblocking(True)
        server.process_request(request, address)
    app.wait_idle(DRAIN_WRITE)
    app.batcher.stop(timeout=DRAIN_WRITE)
    server.server_close()


def run(args: argparse.Namespace) -> int:
    from .gguf_file import ModelFileError

    limits = Limits(max_body_bytes=args.max_body_mb * MiB, max_inputs=args.max_inputs, max_tokens=args.max_tokens,
                    batch_inputs=args.batch_inputs, batch_wait=args.batch_wait_ms / 1000)
    try:
        return serve(cache.resolve_model(args.model), args.host, args.port, limits, args.model_name, args.verbose, args.grace)
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
                    "Requests arriving together are embedded in one batch. Ctrl-C or SIGTERM stops it: requests in flight "
                    "finish within --grace seconds, new ones get 503.",
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
    p.add_argument("--grace", type=float, default=SHUTDOWN_GRACE, metavar="S",
                   help="on Ctrl-C/SIGTERM, seconds the requests in flight get to finish; new ones, and those still running "
                        "after it, get 503 with Retry-After (default %(default)g)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every request on stderr")
    p.set_defaults(handler=run)
