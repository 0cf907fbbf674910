"""Embedding on a Dask cluster: one model per worker process, opened once from its memory-mapped file.

    import dask.dataframe as dd
    import edgegemma.dask

    frame = dd.read_parquet("corpus/")
    frame["embedding"] = edgegemma.dask.embed(frame["text"], "model.gguf", prompt_name="document")
    frame[["id", "embedding"]].to_parquet("vectors/")

Tasks carry the model file's path and the encode options, never the model: each worker process loads the file
the first time a task needs it (its weights memory-mapped, so the processes of one machine share the file's
pages) and keeps it for the next tasks. A task is a pure function of its texts, so when a worker dies Dask
reruns its tasks elsewhere and every row is still embedded once in the result. The file must be at the same
path on every worker. `edgegemma embed --dask ADDRESS` uses ClusterEmbedder: the corpus run's parts embedded
on the cluster, written (and resumable) where the command runs.
"""
from __future__ import annotations

import os
import threading
from collections import deque
from pathlib import Path

import numpy as np

from .corpus.encoding import EncodeOptions
from .corpus.readers import CorpusError

_models: dict[str, object] = {}
_lock = threading.Lock()  # one load, and one encode at a time, per process: the kernels already use every core


def worker_model(path: str | os.PathLike):
    """This process's model for `path`, loaded at the first call."""
    key = os.path.realpath(path)
    model = _models.get(key)
    if model is None:
        from .api import load

        with _lock:
            model = _models.get(key)
            if model is None:
                model = _models[key] = load(key)
    return model


def encode_texts(path: str, options: EncodeOptions, texts) -> np.ndarray:
    """A task: float32 (len(texts), dim) vectors of `texts`, by this worker's model."""
    texts = list(texts)
    if not texts:
        return np.empty((0, options.truncate_dim or 0), np.float32)
    model = worker_model(path)
    with _lock:
        return options.encode(model, texts)


def _dimension(path: str, options: EncodeOptions) -> int:
    """The output size, from the file's metadata (nothing is loaded)."""
    if options.truncate_dim:
        return options.truncate_dim
    from .config import Config
    from .gguf_file import GGUFFile

    return Config.from_metadata(GGUFFile(path).metadata).hidden_size


def _vector_dtype(dim: int):
    import pandas as pd
    import pyarrow as pa

    return pd.ArrowDtype(pa.list_(pa.float32(), dim))


def _embed_series(texts, path: str, options: EncodeOptions, dim: int):
    import pandas as pd
    import pyarrow as pa

    vectors = encode_texts(path, options, texts.tolist()) if len(texts) else np.empty((0, dim), np.float32)
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim)
    return pd.Series(pd.arrays.ArrowExtensionArray(column), index=texts.index, name="embedding")


def _embed_list(texts, path: str, options: EncodeOptions) -> list[np.ndarray]:
    return list(encode_texts(path, options, texts))


def embed(texts, model: str | os.PathLike, *, prompt_name: str | None = None, title: str | None = None,
          batch_size: int = 32, truncate_dim: int | None = None):
    """Embeddings of a Dask Series of texts (a Series of fixed-size float32 lists, same index and partitions) or of
    a Dask Bag of texts (a Bag of float32 arrays). `model` is the GGUF file's path; the options are encode's."""
    path = str(Path(model).resolve())
    options = EncodeOptions(prompt_name=prompt_name, title=title, batch_size=batch_size, truncate_dim=truncate_dim)
    import dask.bag

    if isinstance(texts, dask.bag.Bag):
        return texts.map_partitions(_embed_list, path, options)
    import dask.dataframe as dd
    import pandas as pd

    if not isinstance(texts, dd.Series):
        raise TypeError(f"expected a dask.dataframe Series or a dask.bag Bag of texts, got {type(texts).__name__}")
    dim = _dimension(path, options)
    meta = pd.Series([], dtype=_vector_dtype(dim), name="embedding")
    return texts.map_partitions(_embed_series, path, options, dim, meta=meta)


class ClusterEmbedder:
    """A corpus run's embedder (see edgegemma.corpus.pipeline) that sends each part to the cluster, a few in
    flight per worker, and hands the vectors back in part order."""

    def __init__(self, client, path: str | os.PathLike, options: EncodeOptions, in_flight_per_worker: int = 2):
        self.client, self.path, self.options = client, str(Path(path).resolve()), options
        self.in_flight_per_worker = in_flight_per_worker

    @classmethod
    def connect(cls, address: str, path: str | os.PathLike, options: EncodeOptions) -> "ClusterEmbedder":
        try:
            from distributed import Client
        except ImportError:
            raise CorpusError("--dask needs Dask's distributed scheduler: pip install 'edgegemma[dask]'") from None
        try:
            client = Client(address, timeout="10s")
        except (OSError, TimeoutError, ValueError) as err:
            raise CorpusError(f"cannot reach the Dask scheduler at {address}: {err}") from None
        return cls(client, path, options)

    def embed(self, chunks):
        window = self.in_flight_per_worker * max(1, len(self.client.scheduler_info().get("workers", {})))
        pending: deque = deque()
        for k, ids, texts in chunks:
            future = self.client.submit(encode_texts, self.path, self.options, texts, pure=False)
            pending.append((k, ids, texts, future))
            if len(pending) >= window:
                yield self._result(pending.popleft())
        while pending:
            yield self._result(pending.popleft())

    @staticmethod
    def _result(item):
        k, ids, texts, future = item
        vectors = future.result()
        future.release()
        return k, ids, texts, vectors

    def close(self) -> None:
        self.client.close()
