"""`edgegemma serve` under load and abuse at once: CLIENTS threads send valid requests for SECONDS while another
process sends malformed ones; every answer's status is counted, every vector checked against the library's, and
the server's resident memory compared before and after.

    python -m bench.server_soak [--model FILE] [--clients 32] [--seconds 60]

Passes (exit 0) with no 5xx, no wrong or missing vector, and RSS growth of at most 50 MB.
"""
from __future__ import annotations

import argparse
import collections
import http.client
import json
import multiprocessing
import random
import socket
import subprocess
import sys
import threading
import time

import numpy as np

TEXTS = ["Which planet is known as the Red Planet?", "How do I bake sourdough bread at home?",
         "Le chat dort sur le canapé.", "Как приготовить борщ?", "東京の天気はどうですか", "def add(a, b): return a + b",
         "The mitochondria is the powerhouse of the cell. " * 20, "a", "¿Dónde está la biblioteca?", "GPU vs CPU " * 50]

# Bodies a careless or hostile client sends: broken JSON and UTF-8, wrong types, bad values, lone surrogates.
MALFORMED = [b"{", b"null", b"[]", b'{"input": 5}', b'{"input": []}', b'{"input": [""]}', b'{"input": "   "}',
             b'{"input": "\\ud800"}', b'{"input": "ok", "dimensions": 0}', b'{"input": "ok", "dimensions": 99999}',
             b'{"input": "ok", "prompt_name": "nope"}', b'{"input": "ok", "encoding_format": "hex"}',
             b'{"input": "\xff\xfe broken utf-8"}', b'{"input": ["a", 3, null]}', b'{"input": "ok", "title": 7}',
             b'{"input": {"nested": "dict"}}', b"\x00\x01\x02 not json at all", b'{"input": "x"' + b" " * 10000]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, body: bytes, timeout: float = 120) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v1/embeddings", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def hammer(port: int, seconds: float, counts) -> None:
    """The second process: malformed requests, and raw bytes that are not HTTP at all, as fast as it can."""
    rng = random.Random(1)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if rng.random() < 0.1:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(rng.choice([b"GARBAGE\r\n\r\n", b"POST /v1/embeddings HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                                      b"\x16\x03\x01 tls hello?"]))
                try:
                    s.recv(4096)
                except OSError:
                    pass
            counts["raw"] = counts.get("raw", 0) + 1
            continue
        status, _ = post(port, rng.choice(MALFORMED))
        counts[status] = counts.get(status, 0) + 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.server_soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="GGUF file (default: the pulled default model)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args(argv)

    import edgegemma
    from edgegemma import cache

    model_path = str(cache.resolve_model(args.model))
    expected = edgegemma.load(model_path).encode_query(TEXTS)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "edgegemma", "serve", "-m", model_path, "--port", str(port)],
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the server did not start: {server.stderr.read()[-2000:]}")
                time.sleep(0.5)
        rss_start = rss_mb(server.pid)

        statuses, wrong, lock = collections.Counter(), [], threading.Lock()
        stop_at = time.monotonic() + args.seconds

        def client(seed: int) -> None:
            rng = random.Random(seed)
            while time.monotonic() < stop_at:
                picks = rng.sample(range(len(TEXTS)), rng.randint(1, 4))
                status, body = post(port,
                                    json.dumps({"input": [TEXTS[i] for i in picks], "prompt_name": "query"}).encode())
                with lock:
                    statuses[status] += 1
                if status == 200:
                    got = np.array([d["embedding"] for d in json.loads(body)["data"]], np.float32)
                    cosines = np.sum(got * expected[picks], axis=1)
                    if len(got) != len(picks) or cosines.min() < 0.99999:
                        with lock:
                            wrong.append(float(cosines.min()) if len(got) else None)

        manager = multiprocessing.Manager()
        abuse_counts = manager.dict()
        abuser = multiprocessing.Process(target=hammer, args=(port, args.seconds, abuse_counts))
        abuser.start()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        abuser.join()
        rss_end = rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(60)

    abuse = dict(abuse_counts)
    server_errors = sum(n for s, n in list(statuses.items()) + list(abuse.items()) if isinstance(s, int) and s >= 500)
    report = {"clients": args.clients, "seconds": args.seconds, "valid_statuses": dict(statuses),
              "malformed_statuses": abuse, "wrong_vectors": len(wrong), "server_errors_5xx": server_errors,
              "rss_start_mb": round(rss_start, 1), "rss_end_mb": round(rss_end, 1),
              "rss_growth_mb": round(rss_end - rss_start, 1), "server_exit": server.returncode}
    print(json.dumps(report, indent=1))
    return 0 if server_errors == 0 and not wrong and rss_end - rss_start <= 50 else 1


if __name__ == "__main__":
    sys.exit(main())
