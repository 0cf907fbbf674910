"""`edgegemma serve`: a real server process on 127.0.0.1, talked to with the official openai client
(and raw http.client for malformed requests). Vectors must equal direct encode() output; every
bad request gets a 4xx JSON error in OpenAI's shape; the server survives all of it and a load test."""
from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import edgegemma

openai = pytest.importorskip("openai")

TEXTS = [
    "the river runs to the city",
    "a tiny model",
    "search query about music and mountains and the cpu",
    "x",
    "code test data value error check word " * 3,
]
MAX_INPUTS, MAX_TOKENS, MAX_BODY_MB = 64, 128, 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m edgegemma serve` in a subprocess, its stderr in a file."""

    def __init__(self, model: Path, log: Path, *extra: str):
        self.port, self.log = free_port(), log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgegemma", "serve", "-m", str(model), "--port", str(self.port), *extra],
            stdout=subprocess.DEVNULL, stderr=open(log, "w"),
        )
        deadline = time.monotonic() + 300  # the first start may compile the Numba kernels
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {log.read_text()}")
            try:
                if self.get("/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        self.proc.kill()
        raise RuntimeError(f"server did not come up: {log.read_text()}")

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                conn: http.client.HTTPConnection | None = None) -> tuple[int, dict]:
        c = conn or self.connection()
        c.request(method, path, body=body, headers=headers or {})
        resp = c.getresponse()
        data = resp.read()
        if conn is None:
            c.close()
        return resp.status, json.loads(data)

    def get(self, path: str) -> tuple[int, dict]:
        return self.request("GET", path)

    def post(self, payload, **kw) -> tuple[int, dict]:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return self.request("POST", "/v1/embeddings", body, {"Content-Type": "application/json"}, **kw)

    def peak_rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status")  # Linux only; elsewhere the figure is just not reported
        for line in (status.read_text().splitlines() if status.exists() else []):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self, sig=signal.SIGTERM, timeout: float = 60) -> tuple[int, str]:
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        return code, self.log.read_text()


@pytest.fixture(scope="module")
def server(model_file, tmp_path_factory):
    srv = ServerProcess(model_file, tmp_path_factory.mktemp("server") / "stderr.txt", "--max-inputs", str(MAX_INPUTS),
                        "--max-tokens", str(MAX_TOKENS), "--max-body-mb", str(MAX_BODY_MB))
    yield srv
    code, log = srv.stop(signal.SIGTERM)
    assert code == 0, log
    assert "stopped after" in log and "Traceback" not in log


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="x", max_retries=0, timeout=120)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def as_array(response) -> np.ndarray:
    assert [d.index for d in response.data] == list(range(len(response.data)))
    # The client decodes base64 itself only when it chose the format; asked for explicitly, it hands over the string.
    return np.array([np.frombuffer(base64.b64decode(d.embedding), "<f4") if isinstance(d.embedding, str) else d.embedding
                     for d in response.data], np.float32)


# --- what comes back ------------------------------------------------------------------------------


def test_models_and_health(server, client, model_file):
    assert [m.id for m in client.models.list().data] == [model_file.stem]
    status, health = server.get("/health")
    assert status == 200 and health["status"] == "ok" and health["dimension"] == edgegemma.load(model_file).dimension
    status, card = server.get(f"/v1/models/{model_file.stem}")
    assert status == 200 and card["id"] == model_file.stem
    status, err = server.get("/v1/models/other")
    assert status == 404 and err["error"]["code"] == "model_not_found"


@pytest.mark.parametrize("encoding_format", ["float", "base64", None])  # None: the client asks for base64 itself
def test_embeddings_equal_encode(client, model, encoding_format):
    kwargs = {"encoding_format": encoding_format} if encoding_format else {}
    response = client.embeddings.create(model="anything", input=TEXTS, **kwargs)
    got = as_array(response)
    assert got.shape == (len(TEXTS), model.dimension)
    assert np.all(cosines(got, model.encode(TEXTS)) >= 0.99999)
    tokens = sum(len(ids) for ids in model.tokenize(TEXTS))
    assert response.usage.prompt_tokens == response.usage.total_tokens == tokens


def test_a_single_string(client, model):
    got = as_array(client.embeddings.create(model="m", input="a tiny model"))
    assert got.shape == (1, model.dimension)
    assert cosines(got, model.encode("a tiny model"))[0] >= 0.99999


def test_base64_is_little_endian_float32(server, model):
    status, body = server.post({"input": TEXTS[:2], "encoding_format": "base64"})
    assert status == 200
    got = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in body["data"]])
    assert np.all(cosines(got, model.encode(TEXTS[:2])) >= 0.99999)


def test_dimensions_truncate_and_renormalise(client, model):
    half = model.dimension // 2
    for fmt in ("float", "base64"):
        got = as_array(client.embeddings.create(model="m", input=TEXTS, dimensions=half, encoding_format=fmt))
        assert got.shape == (len(TEXTS), half)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
        assert np.all(cosines(got, model.encode(TEXTS, truncate_dim=half)) >= 0.99999)


def test_prompt_name_and_title(client, model):
    def create(**extra):
        return as_array(client.embeddings.create(model="m", input=TEXTS, extra_body=extra))

    assert np.all(cosines(create(prompt_name="query"), model.encode_query(TEXTS)) >= 0.99999)
    assert np.all(cosines(create(prompt_name="sts"), model.encode(TEXTS, prompt_name="STS")) >= 0.99999)  # any case
    assert np.all(cosines(create(prompt_name="Document", title="Music"), model.encode_document(TEXTS, titles="Music")) >= 0.99999)
    assert np.all(cosines(create(prompt_name="document"), model.encode_document(TEXTS)) >= 0.99999)
    assert np.all(cosines(create(title="Music"), model.encode_document(TEXTS, titles="Music")) >= 0.99999)


# --- what is refused ------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, param, fragment", [
    ({"input": []}, "input", "empty list"),
    ({"input": ""}, "input", "empty or only whitespace"),  # as the CLI refuses an empty argument
    ({"input": ["ok", ""]}, "input", "input[1]"),
    ({"input": ["ok", " \n\t"]}, "input", "'input[1]' is empty or only whitespace"),
    ({"input": ["x"] * (MAX_INPUTS + 1)}, "input", f"at most {MAX_INPUTS}"),
    ({"input": "word " * 400}, "input", f"the limit is {MAX_TOKENS}"),
    ({"input": "x", "dimensions": 0}, "dimensions", "from 1 to"),
    ({"input": "x", "dimensions": 100_000}, "dimensions", "from 1 to"),
    ({"input": "x", "extra_body": {"prompt_name": "nope"}}, "prompt_name", "unknown prompt_name 'nope'"),
    ({"input": "x", "extra_body": {"title": "t", "prompt_name": "query"}}, "title", "goes with prompt_name 'document'"),
    ({"input": [[1, 2, 3]]}, "input", "token ids"),
    ({"input": [1, 2, 3]}, "input", "token ids"),
])
def test_bad_requests_through_the_client(client, kwargs, param, fragment):
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="m", **kwargs)
    error = caught.value.body
    assert caught.value.status_code == 400
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert fragment in error["message"]


@pytest.mark.parametrize("body, status, fragment", [
    (b"not json", 400, "not valid JSON"),
    (b"\xff\xfe garbage", 400, "not valid JSON"),
    (b"", 400, "empty request body"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (b'{"model": "m"}', 400, "'input' is required"),
    (b'{"input": 5}', 400, "must be a string or a list of strings"),
    (b'{"input": {"text": "x"}}', 400, "must be a string or a list of strings"),
    (b'{"input": ["a", null]}', 400, "'input[1]' must be a string, got null"),
    (b'{"input": "a", "model": 7}', 400, "'model' must be a string"),
    (b'{"input": "a", "dimensions": "8"}', 400, "'dimensions' must be an integer"),
    (b'{"input": "a", "dimensions": true}', 400, "'dimensions' must be an integer"),
    (b'{"input": "a", "encoding_format": "int8"}', 400, "'encoding_format' must be"),
    (b'{"input": "a", "prompt_name": 3}', 400, "'prompt_name' must be a string"),
])
def test_malformed_bodies(server, body, status, fragment):
    code, reply = server.post(body)
    assert code == status
    assert set(reply["error"]) == {"message", "type", "param", "code"}
    assert fragment in reply["error"]["message"]


def test_invalid_utf8_and_lone_surrogates_are_embedded_with_u_fffd(server, model):
    """One rule in every face (edgegemma.text): invalid UTF-8 bytes and lone surrogates become U+FFFD."""
    body = b'{"input": ["caf\xe9 \xff bar", "lone \\ud800 surrogate", "pair \\ud83d\\ude00 ok"]}'
    code, reply = server.post(body)
    assert code == 200, reply
    got = np.array([d["embedding"] for d in reply["data"]], np.float32)
    expected = model.encode(["caf\ufffd \ufffd bar", "lone \ufffd surrogate", "pair \U0001f600 ok"])
    assert np.all(cosines(got, expected) >= 0.99999)
    assert np.all(cosines(model.encode(["lone \ud800 surrogate"]), expected[1:2]) >= 0.99999)  # the library's rule too


def test_oversize_body_gets_413_not_a_dropped_connection(server):
    payload = json.dumps({"input": ["y" * 1000] * (MAX_BODY_MB * 1100)}).encode()
    conn = server.connection()
    code, reply = server.post(payload, conn=conn)
    assert code == 413 and reply["error"]["code"] == "body_too_large"
    assert f"{MAX_BODY_MB * 2**20:,}" in reply["error"]["message"]
    code, _ = server.post({"input": "still here"}, conn=conn)  # the same connection keeps working
    assert code == 200
    conn.close()


def test_other_routes_and_methods(server):
    assert server.request("GET", "/v1/nothing")[0] == 404
    assert server.request("POST", "/v1/completions", b'{"prompt": "x"}')[0] == 404
    code, reply = server.request("DELETE", "/v1/embeddings")
    assert code == 405 and "not allowed" in reply["error"]["message"]
    code, reply = server.request("POST", "/v1/embeddings", b'{"input": "x"}', {"Transfer-Encoding": "chunked"})
    assert code == 411


def test_the_server_is_still_healthy_after_all_that(server, client, model):
    assert server.get("/health")[1]["status"] == "ok"
    got = as_array(client.embeddings.create(model="m", input=TEXTS))
    assert np.all(cosines(got, model.encode(TEXTS)) >= 0.99999)


# --- load -----------------------------------------------------------------------------------------


def load_test(server: ServerProcess, model, clients: int = 32, total: int = 2000, texts=None, seed: int = 0) -> dict:
    """`total` requests of 1..4 texts from `clients` threads, each with its own openai client; every vector checked."""
    texts = texts or [f"{w} {i} " * (1 + i % 7) for i, w in enumerate(
        "river mountain city music code test data value error check word model text token".split() * 4)]
    expected = model.encode(texts)
    rng = np.random.default_rng(seed)
    picks = [rng.choice(len(texts), size=int(rng.integers(1, 5)), replace=False) for _ in range(total)]
    latencies, errors, worst = [], [], [1.0]
    local = threading.local()

    def one(pick) -> None:
        if not hasattr(local, "client"):
            local.client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="x", max_retries=0, timeout=120)
        started = time.perf_counter()
        try:
            response = local.client.embeddings.create(model="m", input=[texts[i] for i in pick])
            got = as_array(response)
        except Exception as err:
            errors.append(f"{err!r} caused by {err.__cause__!r}")
            return
        latencies.append(time.perf_counter() - started)
        worst.append(float(cosines(got, expected[pick]).min()))

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, picks))
    seconds = time.perf_counter() - started
    lat = np.array(latencies) * 1000
    return {
        "requests": total, "errors": errors, "seconds": seconds, "requests_per_s": total / seconds,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None, "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
        "min_cosine": min(worst), "peak_rss_mb": server.peak_rss_mb(), "health": server.get("/health")[1],
    }


def test_load_32_clients_2000_requests(server, model):
    result = load_test(server, model)
    h = result["health"]
    print(f"\nload test (tiny model): {result['requests_per_s']:.0f} requests/s, p50 {result['p50_ms']:.1f} ms, "
          f"p99 {result['p99_ms']:.1f} ms, {h['inputs'] / max(h['batches'], 1):.1f} inputs per batch, "
          f"server peak RSS {result['peak_rss_mb']:.0f} MB")
    assert result["errors"] == []
    assert result["seconds"] < 120
    assert result["min_cosine"] >= 0.99999
    assert h["batches"] < h["inputs"]  # requests arriving together did share batches


# --- stopping -------------------------------------------------------------------------------------


def test_ctrl_c_stops_it_cleanly_even_with_a_request_in_flight(model_file, tmp_path):
    srv = ServerProcess(model_file, tmp_path / "stderr.txt")
    results = []
    worker = threading.Thread(target=lambda: results.append(srv.post({"input": ["a long one " * 20] * 32})))
    worker.start()
    while srv.get("/health")[1]["requests"] < 1:  # the request has reached the server
        time.sleep(0.01)
    code, log = srv.stop(signal.SIGINT)
    worker.join(60)
    assert code == 0, log
    assert "stopping" in log and "stopped after 1 requests" in log and "Traceback" not in log
    assert results and results[0][0] == 200  # the request in flight got its answer before the exit


def test_a_corrupt_weight_is_a_500_naming_the_file_never_nan(model_file, model, tmp_path):
    """Issue 23: with a damaged weight the server answered 200 with NaN. Now: a 500 naming the file for the texts
    that reach the damaged row, and 200 for the rest."""
    from test_cli import _nan_token_row

    bad = tmp_path / "bad.gguf"
    _nan_token_row(model_file, bad, model, "river runs")
    srv = ServerProcess(bad, tmp_path / "stderr.txt")
    try:
        code, reply = srv.post({"input": ["a tiny model", "river runs"]})
        assert code == 500 and reply["error"]["code"] == "model_error", reply
        assert str(bad) in reply["error"]["message"] and "NaN or Inf" in reply["error"]["message"]
        code, reply = srv.post({"input": ["a tiny model"]})
        assert code == 200 and np.all(cosines(np.array([reply["data"][0]["embedding"]]), model.encode(["a tiny model"])) >= 0.99999)
    finally:
        assert srv.stop()[0] == 0


def test_sigterm_with_10_long_requests_in_flight_drains_without_a_reset(model_file, tmp_path):
    """Issue 23: every request accepted before SIGTERM gets a whole 200 or a 503, never a reset or a cut body; a request
    after SIGTERM gets a 503 with Retry-After; the server exits 0. The grace is short, so that some requests outlast it."""
    srv = ServerProcess(model_file, tmp_path / "stderr.txt", "--grace", "2", "--max-inputs", "256")
    texts = [f"the river of the city and the mountain music {i} " * 12 for i in range(256)]  # ~150 tokens each
    results: list = [None] * 10

    def send(i: int) -> None:
        try:
            results[i] = srv.post({"input": texts})
        except Exception as err:  # noqa: BLE001  (a reset or a cut body: what the test is about)
            results[i] = ("failed", repr(err))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    while srv.get("/health")[1]["requests"] < 10:  # all ten have reached the server
        time.sleep(0.05)
    srv.proc.send_signal(signal.SIGTERM)
    while "stopping:" not in srv.log.read_text():
        time.sleep(0.05)
    conn = srv.connection()
    conn.request("POST", "/v1/embeddings", body=b'{"input": "late"}', headers={"Content-Type": "application/json"})
    late = conn.getresponse()
    late_body = json.loads(late.read())
    for t in threads:
        t.join(120)
    code = srv.proc.wait(60)
    log = srv.log.read_text()
    assert late.status == 503 and late.getheader("Retry-After") and late_body["error"]["code"] == "shutting_down"
    for status, reply in results:
        assert status in (200, 503), reply
        if status == 200:
            assert len(reply["data"]) == len(texts) and all(len(d["embedding"]) == 64 for d in reply["data"])
        else:
            assert reply["error"]["code"] == "shutting_down"
    assert code == 0 and "Traceback" not in log, log
    print(f"\nSIGTERM drain: {sum(r[0] == 200 for r in results)} of 10 got 200, {sum(r[0] == 503 for r in results)} got 503")


def test_a_missing_model_or_busy_port_is_one_line(tmp_path, model_file):
    env = {**os.environ, "EDGEGEMMA_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, "-m", "edgegemma", "serve"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1 and "no model" in proc.stderr and "Traceback" not in proc.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "edgegemma", "serve", "-m", str(model_file), "--port", str(port)],
                              capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1 and "cannot listen" in proc.stderr and "Traceback" not in proc.stderr


# --- the batching worker, in-process with a stand-in model ------------------------------------------


class FakeModel:
    """Just what App needs; encode records each call's size and takes a while, like a forward pass."""

    dimension, prompts, recipe = 4, {"query": "q: "}, "fake"

    def __init__(self):
        self.config = SimpleNamespace(max_position_embeddings=16)
        self.tokenizer = SimpleNamespace(max_length=16, encode=lambda text: [0] * (len(text.split()) + 2))
        self.calls = []

    def encode(self, texts, prompt, batch_size):
        assert prompt == ""  # prompts are prepended by the server, so one call serves requests with different prompts
        self.calls.append(list(texts))
        time.sleep(0.05)
        return np.array([[len(t), 1, 0, 0] for t in texts], np.float32)


def test_requests_arriving_together_share_one_encode_call():
    from edgegemma.server import App, Limits

    model = FakeModel()
    app = App(model, "fake", Limits(batch_wait=0.02))
    app.batcher.start()
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda i: app.embeddings({"input": ["ab " * i, "c"], "prompt_name": "query"}), range(1, 9)))
    app.batcher.stop()
    assert sum(len(c) for c in model.calls) == 16 and len(model.calls) < 8
    for i, reply in enumerate(replies, 1):  # each request gets its own rows back, in order
        got = [d["embedding"][0] for d in reply["data"]]
        assert got == [len("q: " + "ab " * i), len("q: c")]
    with pytest.raises(Exception, match="shutting down"):
        app.batcher.embed(["late"])
