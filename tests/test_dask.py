"""edgegemma.dask on a real distributed.LocalCluster (2 worker processes) with the tiny model: a Parquet dataset's
column embedded to the same vectors as in this process, each row once, also when a worker is killed mid-run;
a Bag; and `edgegemma embed --dask`."""
from __future__ import annotations

import logging
import os
import signal

import numpy as np
import pytest

import edgegemma

distributed = pytest.importorskip("distributed", reason="dask[distributed] (edgegemma[dask]) not installed")
dd = pytest.importorskip("dask.dataframe", reason="dask[dataframe] (edgegemma[dask]) not installed")
pa = pytest.importorskip("pyarrow", reason="pyarrow (edgegemma[parquet]) not installed")
import dask.bag  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

import edgegemma.dask  # noqa: E402
from conftest import tiny_corpus  # noqa: E402

FILES, ROWS_PER_FILE = 12, 120
TEXTS = tiny_corpus(FILES * ROWS_PER_FILE, seed=5, number_every=4)


@pytest.fixture(scope="module")
def client():
    # Worker processes inherit this environment (EDGEGEMMA_COMPILE=wait from conftest, the kernels' disk cache).
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=logging.CRITICAL) as cluster, distributed.Client(cluster) as client:
        yield client


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A Parquet dataset: FILES files of ROWS_PER_FILE rows (id, body), one Dask partition each."""
    folder = tmp_path_factory.mktemp("dataset")
    for f in range(FILES):
        rows = slice(f * ROWS_PER_FILE, (f + 1) * ROWS_PER_FILE)
        ids = np.arange(rows.start, rows.stop, dtype=np.int64)
        pq.write_table(pa.table({"id": ids, "body": pa.array(TEXTS[rows], pa.string())}), folder / f"part-{f:02d}.parquet")
    return folder


def stacked(series) -> np.ndarray:
    return np.stack(series.to_numpy()).astype(np.float32)


def assert_same_vectors(a: np.ndarray, b: np.ndarray) -> None:
    a, b = a.astype(np.float64), b.astype(np.float64)
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cosine.min() >= 0.999999, cosine.min()


def test_a_killed_worker_is_recovered_and_every_row_embedded_once(client, dataset, model_file, model):
    frame = dd.read_parquet(dataset)
    frame["embedding"] = edgegemma.dask.embed(frame["body"], model_file, prompt_name="document", truncate_dim=32)
    futures = client.compute(frame[["id", "embedding"]].to_delayed())
    distributed.wait(futures, return_when="FIRST_COMPLETED")
    busy = [address for address, keys in client.processing().items() if keys]
    assert busy and sum(f.done() for f in futures) < len(futures), "the run ended before a worker could be killed"
    pids = client.run(os.getpid)
    os.kill(pids[busy[0]], signal.SIGKILL)
    parts = client.gather(futures)  # Dask reruns the dead worker's tasks on a live one
    result = __import__("pandas").concat(parts)
    assert sorted(result["id"].tolist()) == list(range(len(TEXTS)))
    assert_same_vectors(stacked(result["embedding"]), model.encode_document(TEXTS, truncate_dim=32)[result["id"].to_numpy()])
    assert pids[busy[0]] not in client.run(os.getpid).values()


def test_a_bag_of_texts(client, model_file, model):
    bag = dask.bag.from_sequence(TEXTS[:50], npartitions=4)
    vectors = np.stack(edgegemma.dask.embed(bag, model_file, prompt_name="query").compute())
    assert_same_vectors(vectors, model.encode_query(TEXTS[:50]))
    with pytest.raises(TypeError, match="expected a dask.dataframe Series or a dask.bag Bag"):
        edgegemma.dask.embed(TEXTS, model_file)


def test_embed_cli_on_the_cluster_matches_a_local_run(client, dataset, model_file, tmp_path, capsys):
    from edgegemma.cli import main

    source = dataset / "part-00.parquet"
    argv = ["embed", "-m", str(model_file), "--input", str(source), "--column", "body", "--id-column", "id",
            "--part-size", "16", "-p", "query"]
    assert main(argv + ["--dask", client.scheduler.address, "--output", str(tmp_path / "dask.parquet")]) == 0, capsys.readouterr().err
    assert main(argv + ["--output", str(tmp_path / "local.parquet")]) == 0
    tables = [pq.read_table(tmp_path / name) for name in ("dask.parquet", "local.parquet")]
    assert tables[0].column("id").to_pylist() == list(range(ROWS_PER_FILE)) == tables[1].column("id").to_pylist()
    vectors = [np.stack(t.column("embedding").to_numpy(zero_copy_only=False)) for t in tables]
    assert_same_vectors(vectors[0], vectors[1])


def test_unreachable_scheduler_is_one_line(model_file, dataset, tmp_path, capsys):
    from edgegemma.cli import main

    code = main(["embed", "-m", str(model_file), "--input", str(dataset / "part-00.parquet"), "--column", "body",
                 "--dask", "tcp://127.0.0.1:9", "--output", str(tmp_path / "x.parquet")])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("edgegemma embed: error: cannot reach the Dask scheduler at tcp://127.0.0.1:9")
    assert err.count("\n") == 1
