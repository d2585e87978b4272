"""Read an export the same way whether it is a zip, an unpacked folder or a single file.

Every export is seen as a set of *members* named by POSIX paths relative to its root
("messages/inbox/jane_12/message_1.json"). Importers list members by pattern and read one at
a time, so memory stays bounded by the largest member, not the export.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from phischer.importers.base import ImportErrorMessage
from phischer.importers.progress import FileProgress

# What reading a damaged zip raises: a bad header or CRC (BadZipFile), a bad deflate stream
# (zlib.error), a member cut short (EOFError), a method or version zipfile lacks
# (NotImplementedError), or the file itself (OSError).
ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, OSError)

# UTF-16's byte-order marks, little- and big-endian.
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")

# Finder and macOS's "Compress" add these; they are never part of an export.
_JUNK_PARTS = ("__MACOSX", ".DS_Store")


def _is_junk(name: str) -> bool:
    parts = name.split("/")
    return any(p in _JUNK_PARTS or p.startswith("._") for p in parts)


def _matches(name: str, pattern: str) -> bool:
    # Like .gitignore: a pattern without "/" matches the file name at any depth,
    # a pattern with "/" matches the whole relative path ("*" also crosses "/").
    if "/" not in pattern:
        return fnmatch.fnmatchcase(name.rsplit("/", 1)[-1], pattern)
    return fnmatch.fnmatchcase(name, pattern)


class Export:
    """A zip, folder or single file as members with relative POSIX names."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._zip: zipfile.ZipFile | None = None
        if not self.path.exists():
            raise ImportErrorMessage(f"No such file or folder: {self.path}")
        if self.path.is_dir():
            self.kind = "folder"
        elif _looks_like_zip(self.path):
            try:
                self._zip = zipfile.ZipFile(self.path)
            except ZIP_ERRORS as exc:
                raise ImportErrorMessage(
                    f"{self.path} is not a zip file or is damaged ({exc}): "
                    "re-download the export, or unzip it and pass the folder"
                ) from None
            self.kind = "zip"
        else:
            self.kind = "file"
        self._names: list[str] | None = None

    def __enter__(self) -> Export:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the zip file, if any."""
        if self._zip is not None:
            self._zip.close()
            self._zip = None

    def names(self) -> list[str]:
        """All member names, sorted (directories and macOS junk left out)."""
        if self._names is None:
            if self.kind == "zip":
                assert self._zip is not None
                names = [n for n in self._zip.namelist() if not n.endswith("/")]
            elif self.kind == "folder":
                names = []
                for root, dirs, files in os.walk(self.path):
                    dirs.sort()
                    rel = Path(root).relative_to(self.path).as_posix()
                    prefix = "" if rel == "." else rel + "/"
                    names.extend(prefix + f for f in files)
            else:
                names = [self.path.name]
            self._names = sorted(n for n in names if not _is_junk(n))
        return self._names

    def members(self, pattern: str = "*") -> list[str]:
        """Member names matching a glob (no "/": file name at any depth; else the full path)."""
        return [n for n in self.names() if _matches(n, pattern)]

    def where(self, name: str) -> str:
        """How to name a member in an error message: its path, and the zip it is in."""
        if self.kind == "zip":
            return f"{name} (in {self.path})"
        if self.kind == "folder":
            return str(self.path / name)
        return str(self.path)

    def read_bytes(self, name: str) -> bytes:
        """The raw bytes of one member."""
        try:
            if self.kind == "zip":
                assert self._zip is not None
                return self._zip.read(name)
            if self.kind == "folder":
                return (self.path / PurePosixPath(name)).read_bytes()
            return self.path.read_bytes()
        except KeyError:
            raise ImportErrorMessage(f"No {name} in {self.path}") from None
        except ZIP_ERRORS as exc:
            raise ImportErrorMessage(f"Cannot read {self.where(name)}: {exc}") from None

    def size(self, name: str) -> int:
        """The size of one member in bytes (uncompressed)."""
        try:
            if self.kind == "zip":
                assert self._zip is not None
                return self._zip.getinfo(name).file_size
            target = self.path / PurePosixPath(name) if self.kind == "folder" else self.path
            return target.stat().st_size
        except KeyError:
            raise ImportErrorMessage(f"No {name} in {self.path}") from None
        except OSError as exc:
            raise ImportErrorMessage(f"Cannot read {self.where(name)}: {exc}") from None

    def progress(self, name: str) -> FileProgress:
        """A bar of one member's bytes for its importer to move (drawn only for a big one)."""
        return FileProgress(PurePosixPath(name).name, self.size(name))

    @contextmanager
    def open(self, name: str) -> Iterator[BinaryIO]:
        """One member as a binary file, to read as a stream; a damaged zip is one clear line."""
        try:
            if self.kind == "zip":
                with zipfile.ZipFile(self.path) as zf, zf.open(name) as fh:
                    yield fh
            else:
                target = self.path / PurePosixPath(name) if self.kind == "folder" else self.path
                with target.open("rb") as fh:
                    yield fh
        except ZIP_ERRORS as exc:  # also what reading it raises: a bad CRC, a cut member
            raise ImportErrorMessage(f"Cannot read {self.where(name)}: {exc}") from None

    def read_head(self, name: str, size: int = 4096) -> bytes:
        """The first `size` bytes of one member (to sniff its format without reading it all)."""
        try:
            if self.kind == "zip":
                assert self._zip is not None
                with self._zip.open(name) as fh:
                    return fh.read(size)
            target = self.path / PurePosixPath(name) if self.kind == "folder" else self.path
            with target.open("rb") as fh:
                return fh.read(size)
        except KeyError:
            raise ImportErrorMessage(f"No {name} in {self.path}") from None
        except ZIP_ERRORS as exc:
            raise ImportErrorMessage(f"Cannot read {self.where(name)}: {exc}") from None

    def read_text(self, name: str) -> str:
        """One member decoded as UTF-8, or UTF-16 after its byte-order mark (BOMs dropped)."""
        data = self.read_bytes(name)
        # Windows Notepad's "Unicode" save writes UTF-16 after a byte-order mark; UTF-8 text
        # never starts with FF FE or FE FF (neither byte occurs in UTF-8).
        codec, what = ("utf-16", "UTF-16") if data[:2] in _UTF16_BOMS else ("utf-8-sig", "UTF-8")
        try:
            return data.decode(codec)
        except UnicodeDecodeError as exc:
            raise ImportErrorMessage(
                f"{self.where(name)} is not {what} text (byte {exc.start})"
            ) from None

    def load_json(self, name: str, text: str | bytes | None = None) -> Any:
        """Parse one member (or `text` read from it) as JSON; a broken file is one clear line."""
        if text is None:
            text = self.read_bytes(name)
        return parse_json(text, self.where(name))


def parse_json(text: str | bytes, where: str) -> Any:
    """json.loads with an error that names the file and says whether it looks cut short."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        doc = exc.doc
        raise json_error(
            where, exc.msg, doc[exc.pos :], exc.lineno, exc.colno, first=not doc[: exc.pos].strip()
        ) from None
    except UnicodeDecodeError as exc:
        if not looks_like_json(text):  # an image or other binary file named .json
            raise not_json(where, text) from None
        raise ImportErrorMessage(f"{where} is not UTF-8 JSON (byte {exc.start})") from None
    except ValueError:  # valid JSON Python refuses: an integer over 4,300 digits
        raise ImportErrorMessage(
            f"Invalid JSON in {where}: a number with too many digits"
        ) from None
    except RecursionError:
        raise ImportErrorMessage(f"Invalid JSON in {where}: nested too deeply") from None


# What is left after the error when a file was cut inside a key, number or literal ("tru").
_PARTIAL = re.compile(r"[-+.\w]+")
# How every JSON value begins (after spaces and a byte-order mark).
_JSON_START = re.compile(rb"[ \t\r\n]*(?:\xef\xbb\xbf)?[ \t\r\n]*(?:$|[-{\[\"0-9tfn])")


def json_error(
    where: str, msg: str, rest: str, line: int, column: int, *, first: bool, eof: bool = True
) -> ImportErrorMessage:
    """The one-line error for JSON that fails at `rest`: not JSON at all, cut short, or invalid."""
    rest = rest.strip()
    if first and rest and msg == "Expecting value":
        # The document does not even begin like JSON: another kind of file, not a damaged one.
        return not_json(where, rest, line)
    # An interrupted download or unzip cuts a file short: nothing after the error, or only
    # a string, number or literal cut in two.
    cut = not rest or msg.startswith("Unterminated") or _PARTIAL.fullmatch(rest)
    what = "Truncated JSON" if eof and cut else "Invalid JSON"
    return ImportErrorMessage(f"{what} in {where}: {msg} (line {line}, column {column})")


def looks_like_json(data: str | bytes) -> bool:
    """Whether `data` begins the way a JSON value does (or is empty): to tell other files."""
    head = data[:64] if isinstance(data, bytes) else data[:64].encode("utf-8", "replace")
    return _JSON_START.match(head) is not None


# Byte-order marks of the wide encodings, longest first (UTF-32's begin like UTF-16's).
_WIDE_BOMS = (
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
)


def not_json(where: str, text: str | bytes, line: int = 1) -> ImportErrorMessage:
    """The error for a file that is not JSON at all, quoting how it begins."""
    if isinstance(text, bytes):
        raw, text = text, text[:200].decode("utf-8", "replace")
        wide = next((name for bom, name in _WIDE_BOMS if raw.startswith(bom)), None)
        if wide:  # an editor saved it again, in another encoding than the exporter's
            return ImportErrorMessage(
                f"{where} is {wide} text, not UTF-8: save it as UTF-8 (or export it again)"
            )
        if "\ufffd" in text[:100]:  # binary: its first bytes say more than garbled text
            return ImportErrorMessage(
                f"{where} is not JSON: it begins with bytes {raw[:8].hex(' ')}"
            )
    head = text.strip().split("\n", 1)[0]
    shown = head[:40] + ("…" if len(head) > 40 else "")
    return ImportErrorMessage(f"{where} is not JSON: line {line} begins {shown!r}")


def _looks_like_zip(path: Path) -> bool:
    if path.suffix.lower() == ".zip":
        return True
    try:
        with path.open("rb") as fh:
            return fh.read(4) == b"PK\x03\x04"
    except OSError as exc:
        raise ImportErrorMessage(f"Cannot read {path}: {exc.strerror}") from None


def open_export(path: Path | str) -> Export:
    """Open a zip, folder or single file export (raises ImportErrorMessage if missing)."""
    return Export(path)


def iter_members(path: Path | str, pattern: str = "*") -> Iterator[tuple[Export, str]]:
    """Yield (export, member name) for every member matching `pattern`, closing at the end."""
    with open_export(path) as export:
        for name in export.members(pattern):
            yield export, name
