"""Hostile model files: seeded mutations of a small real GGUF file (the tiny checkpoint, written by the real
converter), each loaded in-process and, where it loads, asked to embed one text.

Every mutated file must either load and embed to a finite vector, or be refused with ModelFileError whose
message names the file. Any other exception, a crash, a non-finite vector or a case that runs past
CASE_TIMEOUT fails the test. The cases run in one child process (so that a crash is reported with its
case, not as a dead test run); each case is one seed, so a failure is replayed with
`python tests/test_fuzz.py FILE --seed S --cases 1`.

Mutations (one per case, the kind and place drawn from the seed):
    flip      1-8 bytes XORed, in the header and metadata, the tensor infos or the tensor data
    ff8       8 bytes set to 0xFF in one of those regions
    truncate  the file cut at a random length
    field     one of the file's integer fields (a count, a length, a type, a dimension, an offset)
              set to an edge value: 0, 1, 2^31, 2^32-1, 2^63, 2^64-1, its value +-1 or x2, or random
    scale     a block scale of a Q8_0/Q4_0 tensor set to NaN, Inf or 65504

EDGEGEMMA_FUZZ_CASES sets the number of cases (default 2,000; CI's run takes ~1.5 min on the 2-core machine).
"""
from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

CASES = int(os.environ.get("EDGEGEMMA_FUZZ_CASES", "2000"))
FIRST_SEED = 23_000
CASE_TIMEOUT = 20.0  # seconds one case may take (a tiny file loads and embeds in ~50 ms)
TEXT = "the river of the city"
KINDS = ("flip", "ff8", "truncate", "field", "scale")
EDGE_VALUES = (0, 1, 2**31, 2**32 - 1, 2**63, 2**64 - 1)

# GGUF value types (gguf.GGUFValueType): scalar sizes; 8 is STRING, 9 is ARRAY.
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


def gguf_layout(data: bytes) -> tuple[list[tuple[int, int]], int, int, list[tuple[int, int]]]:
    """The integer fields of a well-formed GGUF file as (offset, size), where the tensor infos start, where the
    tensor data starts, and each Q8_0/Q4_0 tensor's (data offset, bytes). Written from the GGUF spec, apart
    from the reader under test."""
    fields, pos = [(4, 4), (8, 8), (16, 8)], 24  # version, tensor count, metadata count
    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)
    alignment = 32

    def string(pos):
        fields.append((pos, 8))
        return pos + 8 + struct.unpack_from("<Q", data, pos)[0]

    def value(pos, vtype):
        if vtype == _STRING:
            return string(pos)
        if vtype == _ARRAY:
            fields.extend([(pos, 4), (pos + 4, 8)])
            item, count = struct.unpack_from("<IQ", data, pos)
            pos += 12
            if item in _SCALAR_SIZES:
                return pos + count * _SCALAR_SIZES[item]
            for _ in range(count):
                pos = value(pos, item)
            return pos
        return pos + _SCALAR_SIZES[vtype]

    for _ in range(n_kv):
        key_at = pos
        pos = string(pos)
        key = data[key_at + 8:pos].decode()
        fields.append((pos, 4))
        vtype = struct.unpack_from("<I", data, pos)[0]
        if key == "general.alignment":
            alignment = struct.unpack_from("<I", data, pos + 4)[0]
            fields.append((pos + 4, 4))
        pos = value(pos + 4, vtype)
    infos_at = pos
    tensors = []
    for _ in range(n_tensors):
        pos = string(pos)
        n_dims = struct.unpack_from("<I", data, pos)[0]
        fields.append((pos, 4))
        dims = struct.unpack_from(f"<{n_dims}Q", data, pos + 4)
        fields.extend((pos + 4 + 8 * i, 8) for i in range(n_dims))
        pos += 4 + 8 * n_dims
        ggml_type, offset = struct.unpack_from("<IQ", data, pos)
        fields.extend([(pos, 4), (pos + 4, 8)])
        pos += 12
        tensors.append((ggml_type, dims, offset))
    data_start = -(-pos // alignment) * alignment
    blocks = {8: 34, 2: 18}  # Q8_0, Q4_0: bytes per block of 32 values
    quantized = []
    for ggml_type, dims, offset in tensors:
        if ggml_type in blocks:
            n = 1
            for d in dims:
                n *= d
            quantized.append((data_start + offset, n // 32 * blocks[ggml_type], blocks[ggml_type]))
    return fields, infos_at, data_start, quantized


def mutate(data: bytes, seed: int) -> tuple[bytes, str]:
    """One seeded mutation of `data` and what it was."""
    rng = random.Random(seed)
    fields, infos_at, data_start, quantized = gguf_layout(data)
    regions = {"metadata": (0, infos_at), "tensor infos": (infos_at, data_start), "tensor data": (data_start, len(data))}
    out = bytearray(data)
    kind = KINDS[seed % len(KINDS)]
    if kind in ("flip", "ff8"):
        region = rng.choice(list(regions))
        lo, hi = regions[region]
        if kind == "flip":
            spots = [rng.randrange(lo, hi) for _ in range(rng.randint(1, 8))]
            for at in spots:
                out[at] ^= rng.randint(1, 255)
            return bytes(out), f"flip {len(spots)} bytes in the {region} at {spots}"
        at = rng.randrange(lo, max(lo + 1, hi - 8))
        out[at:at + 8] = b"\xff" * 8
        return bytes(out), f"ff8 in the {region} at {at}"
    if kind == "truncate":
        at = rng.randrange(0, len(data))
        return bytes(out[:at]), f"truncate to {at} bytes"
    if kind == "field":
        at, size = rng.choice(fields)
        bits = 8 * size
        old = int.from_bytes(data[at:at + size], "little")
        new = rng.choice(EDGE_VALUES + (old + 1, old - 1, old * 2, rng.getrandbits(bits))) % (1 << bits)
        out[at:at + size] = new.to_bytes(size, "little")
        return bytes(out), f"field at {at} ({size} bytes): {old} -> {new}"
    start, nbytes, block = rng.choice(quantized)
    at = start + block * rng.randrange(nbytes // block)
    value = rng.choice((b"\x00\x7e", b"\x00\x7c", b"\x00\xfc", b"\xff\x7b"))  # NaN, +Inf, -Inf, 65504 (f16)
    out[at:at + 2] = value
    return bytes(out), f"scale at {at} set to {value.hex()}"


def check_file(path: Path) -> str:
    """Load `path` and embed TEXT; also describe it as `edgegemma info` does. Returns "loaded" or "refused";
    raises AssertionError for anything the contract forbids."""
    import numpy as np

    import edgegemma
    from edgegemma.gguf_file import ModelFileError
    from edgegemma.info import describe, format_text

    outcome = "loaded"
    for step in ("info", "load"):
        try:
            if step == "info":  # what `edgegemma info` and `info --json` print
                description = describe(path)
                format_text(description)
                json.dumps(description)
                continue
            model = edgegemma.load(path)
            vector = model.encode(TEXT)
        except ModelFileError as err:
            assert str(path) in str(err), f"{step}: ModelFileError that does not name the file: {err}"
            assert "\n" not in str(err), f"{step}: ModelFileError of more than one line: {err!r}"
            outcome = "refused"
            continue
        except Exception as err:  # noqa: BLE001  (the point: nothing else may escape)
            raise AssertionError(f"{step}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
        assert vector.shape == (model.dimension,), f"embedding of shape {vector.shape}"
        assert np.isfinite(vector).all(), "a non-finite embedding was returned"
    return outcome


def run_cases(src: Path, first_seed: int, cases: int, scratch: Path, progress: Path | None = None) -> dict:
    """Run `cases` seeds from `first_seed`; a summary with every failure (seed, mutation, error type, message)."""
    import faulthandler

    data = src.read_bytes()
    summary = {"cases": 0, "loaded": 0, "refused": 0, "failures": [], "kinds": {k: 0 for k in KINDS}}
    assert check_file(src) == "loaded"  # the file itself, first: the kernels compile now, outside the cases' time limit
    started = time.perf_counter()
    for seed in range(first_seed, first_seed + cases):
        mutated, what = mutate(data, seed)
        path = scratch / f"fuzz-{seed}.gguf"
        path.write_bytes(mutated)
        if progress is not None:
            progress.write_text(json.dumps({"seed": seed, "mutation": what}))
        faulthandler.dump_traceback_later(CASE_TIMEOUT, exit=True)  # a hang ends the process, naming the seed above
        try:
            summary[check_file(path)] += 1
        except AssertionError as err:
            summary["failures"].append({"seed": seed, "mutation": what, "error": str(err)})
        finally:
            faulthandler.cancel_dump_traceback_later()
            path.unlink()
        summary["cases"] += 1
        summary["kinds"][KINDS[seed % len(KINDS)]] += 1
    summary["seconds"] = round(time.perf_counter() - started, 1)
    return summary


def test_mutated_files_load_or_are_refused_with_model_file_error(tiny_gguf, tmp_path):
    src = tiny_gguf("e4_q8")  # a Q4_0 token table and Q8_0 layers: both block types
    progress = tmp_path / "progress.json"
    scratch = tmp_path / "cases"
    scratch.mkdir()
    proc = subprocess.run([sys.executable, __file__, str(src), "--seed", str(FIRST_SEED), "--cases", str(CASES),
                           "--scratch", str(scratch), "--progress", str(progress)],
                          capture_output=True, text=True, timeout=CASES * CASE_TIMEOUT)
    if proc.returncode != 0:  # a crash or a hang: the case it was on
        case = progress.read_text() if progress.exists() else "before the first case"
        pytest.fail(f"the fuzz process ended with code {proc.returncode} on {case}\n{proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"fuzz: {summary['cases']} cases, {summary['loaded']} loaded, {summary['refused']} refused, {summary['seconds']} s")
    assert summary["cases"] == CASES
    assert summary["loaded"] > 0 and summary["refused"] > 0  # the mutations reach both outcomes
    failures = summary["failures"]
    assert not failures, f"{len(failures)} of {CASES} cases broke the contract, e.g.:\n" + "\n".join(
        f"  seed {f['seed']} ({f['mutation']}): {f['error']}" for f in failures[:10])


def _patched(data: bytes, at: int, value: int, size: int) -> bytes:
    return data[:at] + value.to_bytes(size, "little") + data[at + size:]


def test_header_damage_is_named_where_it_is(tiny_gguf, tmp_path):
    """Issue 23: a full-size file flipped in its header was reported as "truncated (inside a string array)". Each
    message names the field and the byte, and says "corrupt" (or "truncated or corrupt" when a length runs past
    the end, which a cut file and a damaged length both do)."""
    import edgegemma
    from edgegemma.gguf_file import ModelFileError

    src = tiny_gguf("e4_q8")
    data = src.read_bytes()
    key = b"general.architecture"
    key_at = data.index(struct.pack("<Q", len(key)) + key)
    name = b"blk.0.attn_q.weight"
    name_at = data.index(struct.pack("<Q", len(name)) + name)
    dim_at = name_at + 8 + len(name) + 4  # after the name and the number of dimensions
    cases = [
        (_patched(data, 8, 2**63, 8), "corrupt", "the tensor count at byte 8 is 9,223,372,036,854,775,808, more than"),
        (_patched(data, key_at, 2**64 - 1, 8), "metadata entry 0 of", "a key at byte 32 needs 18,446,744,073,709,551,615 bytes"),
        (_patched(data, key_at + 8 + len(key), 99, 4), "metadata key general.architecture: unknown value type 99"),
        (_patched(data, dim_at, 2**62, 8), "tensor blk.0.attn_q.weight: file is truncated or corrupt: shape"),
        (_patched(data, name_at + 8 + len(name), 7, 4), "tensor blk.0.attn_q.weight: 7 dimensions (1 to 4)"),
    ]
    for i, (mutated, *fragments) in enumerate(cases):
        path = tmp_path / f"case{i}.gguf"
        path.write_bytes(mutated)
        with pytest.raises(ModelFileError) as caught:
            edgegemma.load(path)
        message = str(caught.value)
        assert message.startswith(f"{path}: ") and all(f in message for f in fragments), message
        assert len(mutated) == len(data)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import tempfile

    p = argparse.ArgumentParser(description="Run the fuzz cases on a GGUF file; one JSON summary line on stdout.")
    p.add_argument("file", type=Path)
    p.add_argument("--seed", type=int, default=FIRST_SEED)
    p.add_argument("--cases", type=int, default=CASES)
    p.add_argument("--scratch", type=Path)
    p.add_argument("--progress", type=Path)
    args = p.parse_args(argv)
    os.environ.setdefault("EDGEGEMMA_COMPILE", "wait")
    with tempfile.TemporaryDirectory() as tmp:
        summary = run_cases(args.file, args.seed, args.cases, args.scratch or Path(tmp), args.progress)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
