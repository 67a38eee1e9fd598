"""Safe reading of image collections: folders, .zip, .tar and compressed tars (.tar.gz/.tgz, .bz2, .xz).

Nothing is ever extracted: members are listed, checked, then read into memory one at a time. The checks:

- names: absolute paths, drive letters and ``..`` components are refused (the member is skipped);
- types: symbolic/hard links, devices and fifos are skipped; archives inside archives are skipped;
- decompression bombs, from the headers first and again while reading, so a header that lies is caught:
  the total uncompressed size (``max_total_bytes``), each member's size (``max_file_bytes``) and its
  compression ratio (``max_ratio``; for a compressed tar, the ratio of the whole stream);
- the number of entries (``max_members``) and, in the importer, each image's pixel count.

A problem with one member skips it (``MemberError``, listed in the import report); a problem with the
archive as a whole (too many members, too large in total, a bomb stream) refuses it (``ArchiveLimitError``).
"""
from __future__ import annotations

import bz2
import io
import lzma
import os
import re
import stat
import tarfile
import zipfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from cedm.errors import CedmError

_CHUNK = 1 << 20
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".gz", ".bz2", ".tbz", ".tbz2", ".xz", ".txz", ".7z", ".rar",
                    ".zst", ".lz", ".lzma", ".z", ".npz")
_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class ImportLimits:
    """Bounds that keep a hostile or broken source from exhausting memory, disk or time."""

    max_total_bytes: int = 4 << 30      # uncompressed bytes read from one source
    max_file_bytes: int = 256 << 20     # one member or file (CIFAR-100's train batch is 154 MB)
    max_ratio: float = 200.0            # uncompressed / compressed size of a member (or a compressed tar)
    ratio_min_bytes: int = 1 << 20      # ratios are only enforced above this size: small files are harmless
    max_members: int = 1_000_000        # entries in an archive or files in a folder
    max_image_pixels: int = 64_000_000  # width * height of one image, read from its header before decoding
    max_decoded_bytes: int = 64 << 30   # the workspace's decoded images (N * R * R * 3), checked before writing

    def __post_init__(self):
        for k, v in asdict(self).items():
            if not v > 0:
                raise CedmError(f"import limit {k} must be positive, got {v}")

    def as_dict(self) -> dict:
        return asdict(self)


class ArchiveLimitError(CedmError):
    """The whole archive is refused (too many members, too large, a decompression bomb, unreadable)."""


class MemberError(Exception):
    """One member is skipped; the message is the reason shown in the import report."""


@dataclass
class Member:
    path: str        # normalised relative path ('/' separated), the row's path in the workspace
    size: int        # declared uncompressed size in bytes
    index: int       # position in archive order (a compressed tar can only be read in this order)
    ref: object = None


def member_path(name: str) -> str:
    """The normalised relative path of an archive entry; raises MemberError for unsafe names."""
    n = name.replace("\\", "/")
    if n.startswith("/") or re.match(r"^[A-Za-z]:", n):
        raise MemberError("absolute path")
    parts = [p for p in n.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise MemberError("path traversal ('..')")
    if not parts:
        raise MemberError("empty name")
    if _BAD_CHARS.search(n):
        raise MemberError("control characters in the name")
    return "/".join(parts)


def has_archive_suffix(path: str) -> bool:
    return path.lower().endswith(ARCHIVE_SUFFIXES)


# leading magic bytes of each container format (tar's "ustar" sits at offset 257)
MAGIC = ((b"PK\x03\x04", "zip"), (b"PK\x05\x06", "zip"), (b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"),
         (b"\xfd7zXZ\x00", "xz"), (b"7z\xbc\xaf\x27\x1c", "7z"), (b"Rar!", "rar"), (b"\x28\xb5\x2f\xfd", "zstd"))


def sniff_archive(head: bytes) -> str | None:
    """The container format of some leading bytes (at least 262 for tar), or None."""
    found = next((kind for magic, kind in MAGIC if head.startswith(magic)), None)
    return found or ("tar" if head[257:262] == b"ustar" else None)


class _Budget:
    """Counts uncompressed bytes read from one source against ``max_total_bytes``."""

    def __init__(self, limits: ImportLimits):
        self.limits, self.used = limits, 0

    def take(self, n: int) -> None:
        self.used += n
        if self.used > self.limits.max_total_bytes:
            raise ArchiveLimitError(
                f"the source decompresses to more than {_mb(self.limits.max_total_bytes)} "
                "(raise --max-total-mb if this is expected)")


def _mb(n: float) -> str:
    return f"{n / (1 << 20):,.0f} MB" if n >= 1 << 20 else f"{n:,.0f} bytes"


def read_bounded(f, declared: int, limits: ImportLimits, budget: _Budget, compressed: int | None = None,
                 max_bytes: int | None = None) -> bytearray:
    """Read one member, enforcing while reading what its header promised (a lying header is caught)."""
    max_bytes = limits.max_file_bytes if max_bytes is None else max_bytes
    if declared > max_bytes:
        raise MemberError(f"{_mb(declared)} is over the {_mb(max_bytes)} per-file limit")
    buf = bytearray()
    while True:
        chunk = f.read(min(_CHUNK, declared + 1 - len(buf)) or 1)
        if not chunk:
            break
        buf += chunk
        budget.take(len(chunk))
        if len(buf) > declared:
            raise MemberError(f"decompresses to more than the {declared} bytes its header declares")
        if compressed is not None and len(buf) > limits.ratio_min_bytes and len(buf) > limits.max_ratio * max(compressed, 1):
            raise MemberError(f"compression ratio over {limits.max_ratio:g} (possible decompression bomb)")
    if len(buf) < declared:
        raise MemberError(f"truncated: {len(buf)} of {declared} bytes")
    return buf


def _check_member_header(path: str, size: int, compressed: int | None, limits: ImportLimits) -> None:
    if has_archive_suffix(path):
        raise MemberError("nested archive (not opened: extract it and import it separately)")
    if size > limits.max_file_bytes:
        raise MemberError(f"{_mb(size)} is over the {_mb(limits.max_file_bytes)} per-file limit")
    if compressed is not None and size > limits.ratio_min_bytes and size > limits.max_ratio * max(compressed, 1):
        raise MemberError(f"compression ratio {size / max(compressed, 1):,.0f} is over the limit of "
                          f"{limits.max_ratio:g} (possible decompression bomb)")


class Source:
    """A listable collection of files. ``scan`` lists candidates; ``read`` yields their contents."""

    random_access = True

    def __init__(self, path: Path, limits: ImportLimits):
        self.path, self.limits = Path(path), limits
        self.budget = _Budget(limits)
        self.n_entries = 0  # files seen (candidates and skipped ones; folders not counted)

    def scan(self) -> tuple[list[Member], list[dict]]:
        """(candidates sorted by path, skipped [{path, reason}])."""
        raise NotImplementedError

    def read(self, members: list[Member]) -> Iterator[tuple[Member, object]]:
        """Yield (member, bytes or Path) or (member, MemberError) in the given order when
        ``random_access``, else in archive order."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def _count(self) -> None:
        self.n_entries += 1
        if self.n_entries > self.limits.max_members:
            raise ArchiveLimitError(f"{self.path.name} has more than {self.limits.max_members:,} entries "
                                    "(raise --max-members if this is expected)")


def _finish_scan(found: list[Member], skipped: list[dict]) -> list[Member]:
    """Sort by path and skip duplicates (a later tar entry with the same name would otherwise win)."""
    seen, out = set(), []
    for m in sorted(found, key=lambda m: (m.path, m.index)):
        if m.path in seen:
            skipped.append({"path": m.path, "reason": "duplicate path in the archive"})
        else:
            seen.add(m.path)
            out.append(m)
    return out


class FolderSource(Source):
    """A folder searched recursively; folder symlinks are not followed, file symlinks only to regular files."""

    def scan(self):
        found, skipped = [], []
        for dirpath, dirnames, filenames in os.walk(self.path, followlinks=False):
            dirnames.sort()
            rel_dir = Path(dirpath).relative_to(self.path)
            for d in list(dirnames):
                if (Path(dirpath) / d).is_symlink():
                    skipped.append({"path": (rel_dir / d).as_posix(), "reason": "symbolic link to a folder (not followed)"})
            for fn in sorted(filenames):
                self._count()
                full = Path(dirpath) / fn
                rel = (rel_dir / fn).as_posix()
                try:
                    st = full.stat()
                    if not stat.S_ISREG(st.st_mode):
                        raise MemberError("not a regular file (device, fifo or socket)")
                    if has_archive_suffix(fn):
                        raise MemberError("archive inside the folder (import it separately)")
                    if st.st_size > self.limits.max_file_bytes:
                        raise MemberError(f"{_mb(st.st_size)} is over the {_mb(self.limits.max_file_bytes)} per-file limit")
                except MemberError as e:
                    skipped.append({"path": rel, "reason": str(e)})
                    continue
                except OSError as e:
                    skipped.append({"path": rel, "reason": f"unreadable ({e.strerror or e})"})
                    continue
                found.append(Member(rel, st.st_size, len(found), full))
        return _finish_scan(found, skipped), skipped

    def read(self, members):
        for m in members:  # images are opened lazily by path: only the header is read before the checks
            yield m, m.ref


class ZipSource(Source):
    def __init__(self, path, limits):
        super().__init__(path, limits)
        try:
            self.zf = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise CedmError(f"{self.path.name} is not a readable zip file ({e})") from None

    def scan(self):
        found, skipped, total = [], [], 0
        for info in self.zf.infolist():
            if info.is_dir():
                continue
            self._count()
            try:
                path = member_path(info.filename)
                mode = info.external_attr >> 16  # Unix mode, when the creator recorded one
                if stat.S_ISLNK(mode):
                    raise MemberError("symbolic link")
                if stat.S_IFMT(mode) and not stat.S_ISREG(mode):
                    raise MemberError("not a regular file (device, fifo or socket)")
                if info.flag_bits & 0x1:
                    raise MemberError("encrypted")
                _check_member_header(path, info.file_size, info.compress_size, self.limits)
            except MemberError as e:
                skipped.append({"path": info.filename, "reason": str(e)})
                continue
            total += info.file_size
            found.append(Member(path, info.file_size, len(found), info))
        if total > self.limits.max_total_bytes:  # from the headers, before anything is decompressed
            raise ArchiveLimitError(f"{self.path.name} declares {_mb(total)} of files, over the "
                                    f"{_mb(self.limits.max_total_bytes)} limit (raise --max-total-mb if expected)")
        return _finish_scan(found, skipped), skipped

    def read_member(self, m: Member) -> bytearray:
        info = m.ref
        try:
            with self.zf.open(info) as f:
                return read_bounded(f, info.file_size, self.limits, self.budget, info.compress_size)
        except zipfile.BadZipFile as e:  # zipfile stops at the declared size, so a lying header fails the CRC
            raise MemberError(f"corrupt (data does not match its header: {e})") from None
        except (zlib.error, EOFError, OSError, NotImplementedError, RuntimeError, ValueError) as e:
            raise MemberError(f"unreadable ({type(e).__name__}: {e})") from None

    def read(self, members):
        for m in members:
            try:
                yield m, self.read_member(m)
            except MemberError as e:
                yield m, e

    def close(self):
        self.zf.close()


class _Decompressed(io.RawIOBase):
    """A compressed file as a read-only stream whose output is bounded in size and ratio while reading."""

    def __init__(self, path: Path, fmt: str, limits: ImportLimits):
        self.raw = open(path, "rb")
        self.fmt, self.limits = fmt, limits
        self.n_in = self.n_out = 0
        self.feed = b""  # input for a freshly started stream (files may hold several concatenated ones)
        self.dec = self._new()

    def _new(self):
        if self.fmt == "gzip":
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        return bz2.BZ2Decompressor() if self.fmt == "bzip2" else lzma.LZMADecompressor()

    def _raw_read(self) -> bytes:
        data = self.raw.read(_CHUNK)
        self.n_in += len(data)
        return data

    def readable(self):
        return True

    def _step(self, want: int) -> bytes | None:
        """Up to ``want`` more bytes of output (maybe none yet), or None at the end of the data."""
        if self.dec.eof:
            rest = self.dec.unused_data or self._raw_read()
            if not rest:
                return None
            self.dec, self.feed = self._new(), rest
        if self.fmt == "gzip":  # zlib hands back what it did not consume; bz2/lzma keep it inside
            data = self.dec.unconsumed_tail or self.feed or self._raw_read()
        else:
            data = (self.feed or self._raw_read()) if self.dec.needs_input else b""
        self.feed = b""
        if not data and (self.fmt == "gzip" or self.dec.needs_input):
            raise EOFError("the compressed stream ends early")
        return self.dec.decompress(data, want)

    def readinto(self, b) -> int:
        while True:
            out = self._step(len(b))
            if out is None:
                return 0
            if out:
                self._account(len(out))
                b[:len(out)] = out
                return len(out)

    def _account(self, n: int) -> None:
        self.n_out += n
        lim = self.limits
        if self.n_out > 2 * lim.max_total_bytes + (64 << 20):  # member data is bounded separately; this is headers
            raise ArchiveLimitError(f"the archive decompresses to more than {_mb(2 * lim.max_total_bytes)}")
        if self.n_out > lim.ratio_min_bytes and self.n_out > lim.max_ratio * max(self.n_in, 1):
            raise ArchiveLimitError(f"the archive's compression ratio is over {lim.max_ratio:g} "
                                    "(possible decompression bomb; raise --max-ratio if this is expected)")

    def close(self):
        self.raw.close()
        super().close()


def compression_of(path: Path) -> str | None:
    with open(path, "rb") as f:
        fmt = sniff_archive(f.read(512))
    return fmt if fmt in ("gzip", "bzip2", "xz") else None


def open_decompressed(path: Path, limits: ImportLimits):
    """A bounded binary stream of a (possibly compressed) file."""
    fmt = compression_of(path)
    return io.BufferedReader(_Decompressed(path, fmt, limits), _CHUNK) if fmt else open(path, "rb")


class TarSource(Source):
    """A tar, plain (random access) or compressed (streamed: read in archive order, twice)."""

    def __init__(self, path, limits):
        super().__init__(path, limits)
        self.compression = compression_of(self.path)
        self.random_access = self.compression is None
        self.tf = None
        self.stream_error: str | None = None

    def _open(self) -> tarfile.TarFile:
        try:
            if self.random_access:
                return tarfile.open(self.path, "r:")
            return tarfile.open(fileobj=open_decompressed(self.path, self.limits), mode="r|")
        except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as e:
            raise CedmError(f"{self.path.name} is not a readable tar archive ({e})") from None

    def _entries(self, tf) -> Iterator[tarfile.TarInfo]:
        """Entries in archive order; a corrupt or truncated tail ends the walk and is reported once."""
        it = iter(tf)
        while True:
            try:
                ti = next(it)
            except StopIteration:
                return
            except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as e:
                self.stream_error = f"archive is corrupt or truncated here ({type(e).__name__}: {e}); later entries were not read"
                return
            yield ti

    def scan(self):
        found, skipped, total = [], [], 0
        self.tf = tf = self._open()
        try:
            for i, ti in enumerate(self._entries(tf)):
                if ti.isdir():
                    continue
                self._count()
                try:
                    path = member_path(ti.name)
                    if ti.issym() or ti.islnk():
                        raise MemberError(f"{'symbolic' if ti.issym() else 'hard'} link")
                    if ti.ischr() or ti.isblk() or ti.isfifo():
                        raise MemberError("device or fifo")
                    if not ti.isreg():
                        raise MemberError("not a regular file")
                    total += ti.size  # a compressed tar still decompresses skipped members to pass them
                    if total > self.limits.max_total_bytes:
                        raise ArchiveLimitError(
                            f"{self.path.name} holds more than {_mb(self.limits.max_total_bytes)} of files "
                            "(raise --max-total-mb if this is expected)")
                    _check_member_header(path, ti.size, None, self.limits)
                except MemberError as e:
                    skipped.append({"path": ti.name, "reason": str(e)})
                    continue
                found.append(Member(path, ti.size, i, ti))
        finally:
            if not self.random_access:
                tf.close()
                self.tf = None
        if self.stream_error:
            skipped.append({"path": self.path.name, "reason": self.stream_error})
        return _finish_scan(found, skipped), skipped

    def _read_ti(self, tf, m: Member) -> bytearray:
        try:
            f = tf.extractfile(m.ref)
            if f is None:
                raise MemberError("not a regular file")
            return read_bounded(f, m.size, self.limits, self.budget)
        except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as e:
            raise MemberError(f"unreadable ({type(e).__name__}: {e})") from None

    def read(self, members):
        if self.random_access:
            for m in members:
                try:
                    yield m, self._read_ti(self.tf, m)
                except MemberError as e:
                    yield m, e
            return
        wanted = {m.index: m for m in members}
        tf = self._open()
        try:
            for i, ti in enumerate(self._entries(tf)):
                m = wanted.pop(i, None)
                if m is None:
                    continue
                if ti.name != m.ref.name:  # the file changed between the two passes
                    raise CedmError(f"{self.path.name} changed while it was being imported")
                m.ref = ti
                try:
                    yield m, self._read_ti(tf, m)
                except MemberError as e:
                    yield m, e
                if not wanted:
                    return
        finally:
            tf.close()
        for m in wanted.values():  # only when the stream broke between passes
            yield m, MemberError(self.stream_error or "not found on the second pass")

    def close(self):
        if self.tf is not None:
            self.tf.close()
            self.tf = None
