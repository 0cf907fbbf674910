"""Write the GGUF file: declare every tensor, write the header, then stream the weights in.

Nothing is held twice: each tensor's bytes are produced a chunk of rows at a time as they are
written (converter.quantizers.QuantizedTensor). The file is written to a hidden temporary name
beside the target and renamed at the end, so a failed or interrupted run leaves no .gguf behind; just before
the rename, the file's checksum is written over a placeholder in its metadata (edgegemma.integrity).
"""
from __future__ import annotations

import contextlib
import os
import struct
from pathlib import Path
from typing import BinaryIO, Callable, Protocol, Sequence

import gguf
import numpy as np
from gguf import GGUFValueType

from edgegemma import formats as F
from edgegemma.formats import ARCH, QuantType
from edgegemma.integrity import CHECKSUM_PLACEHOLDER, seal

from .errors import ConversionError


class TensorBytes(Protocol):
    """What the writer needs of a tensor: its name, type, shape as rows of bytes, and a way to stream them."""

    name: str
    qt: QuantType
    byte_shape: tuple[int, ...]
    nbytes: int

    def tofile(self, fout: BinaryIO) -> None: ...


class Writer(gguf.GGUFWriter):
    """gguf.GGUFWriter, with long metadata arrays packed in one go.

    The stock writer packs arrays item by item: the 262,144-token vocabulary and the 4.7 MB
    tokenizer.model took 10 s of every conversion. For byte strings, lists of bytes/str, of
    floats and of ints this writes the same bytes (GGUF: ARRAY, item type, count, items) at once.
    """

    _FAST_ITEMS = {bytes: GGUFValueType.STRING, str: GGUFValueType.STRING, float: GGUFValueType.FLOAT32, int: GGUFValueType.INT32}

    def _pack_val(self, val, vtype, add_vtype, sub_type=None):
        if vtype != GGUFValueType.ARRAY or sub_type is not None or not val or self.endianess != gguf.GGUFEndian.LITTLE:
            return super()._pack_val(val, vtype, add_vtype, sub_type=sub_type)
        if isinstance(val, (bytes, bytearray)):
            item_type, items = GGUFValueType.UINT8, bytes(val)
        else:
            kind = type(val[0])
            item_type = self._FAST_ITEMS.get(kind)
            if item_type is None or not all(type(v) is kind for v in val):
                return super()._pack_val(val, vtype, add_vtype, sub_type=sub_type)
            if item_type == GGUFValueType.STRING:
                encoded = [v.encode("utf-8") if kind is str else v for v in val]
                items = b"".join(struct.pack("<Q", len(v)) + v for v in encoded)
            else:
                items = np.asarray(val, dtype="<f4" if kind is float else "<i4").tobytes()
        head = struct.pack("<I", vtype) if add_vtype else b""
        return head + struct.pack("<IQ", item_type, len(val)) + items


def check_output(out: Path, force: bool) -> None:
    """Refuse an output path before any work is done on it."""
    if out.is_dir():
        raise ConversionError(f"{out}: is a folder; give the path of the .gguf file to write")
    if out.exists() and not force:
        raise ConversionError(f"{out} already exists; pass --force to replace it")
    if not out.parent.is_dir():
        raise ConversionError(f"{out.parent}: no such folder for the output")


def write_gguf(out: Path, add_metadata: Callable[[gguf.GGUFWriter], None], tensors: Sequence[TensorBytes],
               written: Callable[[int, TensorBytes], None] = lambda i, t: None) -> None:
    """Write `out` atomically: metadata (add_metadata(writer)), the tensor infos, then each tensor's
    bytes in order; written(i, tensor) after each. On any failure (KeyboardInterrupt included) the
    temporary file is removed and `out` is untouched; OSError becomes a one-line ConversionError."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    writer = Writer(tmp, ARCH)
    try:
        add_metadata(writer)
        writer.add_string(F.KEY_CHECKSUM, CHECKSUM_PLACEHOLDER)  # filled in once every byte is written
        for t in tensors:
            writer.add_tensor_info(t.name, t.byte_shape, np.dtype(np.uint8), t.nbytes, raw_dtype=t.qt.ggml_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for i, t in enumerate(tensors):
            writer.write_tensor_data(t)  # type: ignore[arg-type]  # see QuantizedTensor
            written(i, t)
        writer.close()
        seal(tmp)
        os.replace(tmp, out)
    except BaseException as e:
        with contextlib.suppress(OSError):
            writer.close()
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):  # disk full, no permission: the user's problem to fix, not a bug
            raise ConversionError(f"writing {out}: {e.strerror or e}") from None
        raise
