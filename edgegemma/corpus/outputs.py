"""The finished parts of a corpus run joined into its output file, written under a temporary name and renamed.

    .parquet   columns id (int64, or string when any id is one) and embedding (fixed_size_list<float32>[dim]),
               one row group per part; the file's metadata holds edgegemma.model, .recipe, .dimension, .prompt
    .npy       the vectors (rows, dim) float32, in row order
    .jsonl     {"index", "id" (when the input has its own ids), "text", "embedding"} per line

Each writer streams one part at a time, so joining takes as little memory as embedding.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .parts import Part, write_atomically
from .readers import CorpusError, check_pyarrow, require_pyarrow

METADATA_PREFIX = "edgegemma."


def _float_list(vector: np.ndarray) -> str:
    """A float32 vector as a JSON array; 9 significant digits bring every float32 back exactly."""
    return "[" + ",".join(f"{v:.9g}" for v in vector.tolist()) + "]"


def write_parquet(output: Path, parts: list[Path], dim: int, metadata: dict, has_ids: bool) -> None:
    pa = require_pyarrow()
    import pyarrow.parquet as pq

    integer_ids = all(Part.ids_are_integers(p) for p in parts)
    schema = pa.schema([("id", pa.int64() if integer_ids else pa.string()),
                        ("embedding", pa.list_(pa.float32(), dim))],
                       metadata={METADATA_PREFIX + k: str(v) for k, v in metadata.items()})

    def write(stream) -> None:
        with pq.ParquetWriter(stream, schema) as writer:
            for path in parts:
                part = Part(path)
                ids = part.ids if integer_ids else [str(i) for i in part.ids]
                flat = pa.array(part.vectors.reshape(-1), pa.float32())
                embedding = pa.FixedSizeListArray.from_arrays(flat, dim)
                writer.write_table(pa.table([pa.array(ids, schema.field("id").type), embedding], schema=schema))

    write_atomically(output, write)


def write_npy(output: Path, parts: list[Path], dim: int, metadata: dict, has_ids: bool) -> None:
    rows = sum(part_rows(p) for p in parts)

    def write(stream) -> None:
        np.lib.format.write_array_header_1_0(stream, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                                                      "fortran_order": False, "shape": (rows, dim)})
        for path in parts:
            stream.write(np.ascontiguousarray(Part(path).vectors, np.float32).tobytes())

    write_atomically(output, write)


def write_jsonl(output: Path, parts: list[Path], dim: int, metadata: dict, has_ids: bool) -> None:
    def write(stream) -> None:
        index = 0
        for path in parts:
            part = Part(path)
            lines = []
            for key, text, vector in zip(part.ids, part.texts, part.vectors):
                name = f'"id": {json.dumps(key, ensure_ascii=False)}, ' if has_ids else ""
                lines.append(f'{{"index": {index}, {name}"text": {json.dumps(text, ensure_ascii=False)}, '
                             f'"embedding": {_float_list(vector)}}}\n')
                index += 1
            stream.write("".join(lines).encode("utf-8"))

    write_atomically(output, write)


def part_rows(path: Path) -> int:
    with np.load(path) as f:
        return f["vectors"].shape[0]


WRITERS = {".parquet": write_parquet, ".npy": write_npy, ".jsonl": write_jsonl, ".json": write_jsonl}
KEEPS_TEXT = {".jsonl", ".json"}  # formats whose parts must carry the texts


def output_format(path: Path) -> str:
    """The output's suffix, checked: one of WRITERS."""
    suffix = path.suffix.lower()
    if suffix not in WRITERS:
        raise CorpusError(f"{path}: unknown output format; use .parquet, .npy or .jsonl")
    if suffix == ".parquet":
        check_pyarrow()  # imported for the join only: while the model embeds, its memory is not needed
    return suffix

