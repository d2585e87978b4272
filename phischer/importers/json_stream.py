"""Read a big JSON file one value at a time: Telegram's result.json, a Discord channel.

json.loads of a file takes ~6x its size in memory; walking the document and decoding one
chat or message at a time keeps memory bounded by the largest of them.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from typing import Any, BinaryIO, NoReturn

from phischer.importers.base import ImportErrorMessage
from phischer.importers.files import json_error, looks_like_json, not_json
from phischer.importers.progress import NO_PROGRESS, FileProgress

# Bytes read at a time (more when one value is bigger).
READ_CHUNK = 1 << 20
_WS = re.compile(r"[ \t\n\r]*")
_NUMBER_TAIL = re.compile(r"[-+.\deE]*")


class JsonStream:
    """A JSON document read from a binary file one value at a time, for files too big to load.

    Pulls text as needed and decodes each value with the stdlib's C scanner (`raw_decode`);
    only navigation between values (`members`, `items`) is done here. Errors are one line
    naming the file and the line and column, worded as files.parse_json words them.
    """

    def __init__(
        self,
        fh: BinaryIO,
        where: str,
        chunk: int | None = None,
        progress: FileProgress = NO_PROGRESS,
    ) -> None:
        self._fh = fh
        self._progress = progress
        self._read = 0  # bytes read from the file, for the progress bar
        self.where = where
        self._chunk = chunk or READ_CHUNK
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self._scanner = json.JSONDecoder()
        self._buf = ""
        self._pos = 0
        self._eof = False
        self._lines = 0  # newlines in text already dropped from the buffer
        self._column = 0  # characters after the last of them
        self._started = False  # past the document's first character

    def _fill(self, size: int) -> bool:
        if self._eof:
            return False
        if self._pos:
            dropped = self._buf[: self._pos]
            newlines = dropped.count("\n")
            self._lines += newlines
            last = dropped.rfind("\n")
            self._column = self._column + len(dropped) if last < 0 else len(dropped) - last - 1
            self._buf = self._buf[self._pos :]
            self._pos = 0
        data = self._fh.read(max(size, self._chunk))
        self._read += len(data)
        self._progress.to(self._read)
        try:
            self._buf += self._decoder.decode(data, final=not data)
        except UnicodeDecodeError as exc:
            if not self._started and not self._buf and not looks_like_json(data):
                raise not_json(self.where, data) from None  # an image or other binary file
            if not data and exc.reason == "unexpected end of data":
                self._eof = True
                self._fail("File ends inside a character", len(self._buf))
            raise ImportErrorMessage(f"{self.where} is not UTF-8 JSON ({exc.reason})") from None
        self._eof = not data
        return True

    def peek(self) -> str:
        """The next non-space character ("" at the end of the file)."""
        while True:
            end = _WS.match(self._buf, self._pos).end()  # type: ignore[union-attr]
            self._pos = end
            if end < len(self._buf):
                return self._buf[end]
            if not self._fill(0):
                return ""

    def advance(self) -> None:
        """Step over the character `peek` returned."""
        self._pos += 1
        self._started = True

    def value(self) -> Any:
        """Decode the next complete JSON value."""
        self.peek()
        while True:
            try:
                obj, end = self._scanner.raw_decode(self._buf, self._pos)
            except json.JSONDecodeError as exc:
                # Ran off the end of the buffer (a value cut in two): read on, at least as
                # much again as is buffered so a big chat is re-scanned only a few times.
                cut = exc.pos >= len(self._buf) - 16 or exc.msg.startswith("Unterminated")
                if cut and self._fill(len(self._buf) - self._pos):
                    continue
                self._fail(exc.msg, exc.pos)
            except RecursionError:
                self._fail("nested too deeply", self._pos)
            except ValueError:  # valid JSON Python refuses: an integer over 4,300 digits
                self._fail("a number with too many digits", self._pos)
            # A number at the very end of the buffer may go on in the next chunk: "52" of
            # "52.5", or "52" of a buffer ending "52." (the scanner leaves a bare "." or "e").
            if (
                not isinstance(obj, dict | list | str)
                and _NUMBER_TAIL.fullmatch(self._buf, end)
                and self._fill(0)
            ):
                continue
            self._pos = end
            self._started = True
            return obj

    def enter_object(self) -> bool:
        """Step into the document's top-level object; else read the value and say False."""
        if self.peek() == "{":
            self.advance()
            return True
        self.value()  # an empty or cut file fails here as truncated JSON
        return False

    def members(self) -> Iterator[str]:
        """After "{": yield each key; the caller reads its value before the next one."""
        if self.peek() == "}":
            self.advance()
            return
        while True:
            key = self.value() if self.peek() == '"' else None
            if not isinstance(key, str):
                self._fail("Expecting property name enclosed in double quotes", self._pos)
            self._expect(":")
            yield key
            self._close("}")
            if self._buf[self._pos - 1] == "}":
                return

    def items(self) -> Iterator[None]:
        """After "[": yield once per element; the caller reads it before the next one."""
        if self.peek() == "]":
            self.advance()
            return
        while True:
            yield
            self._close("]")
            if self._buf[self._pos - 1] == "]":
                return

    def end(self) -> None:
        """Check nothing but whitespace follows the document."""
        if self.peek():
            self._fail("Extra data", self._pos)

    def _close(self, bracket: str) -> None:
        c = self.peek()
        if c not in (",", bracket):
            self._fail(f"Expecting ',' delimiter or '{bracket}'", self._pos)
        self.advance()

    def _expect(self, char: str) -> None:
        if self.peek() != char:
            self._fail(f"Expecting '{char}' delimiter", self._pos)
        self.advance()

    def _fail(self, msg: str, pos: int) -> NoReturn:
        # Same wording as files.parse_json, with line and column counted from the file's start.
        line = self._lines + self._buf.count("\n", 0, pos) + 1
        newline = self._buf.rfind("\n", 0, pos)
        column = pos - newline if newline >= 0 else self._column + pos + 1
        first = not self._started and not self._buf[:pos].strip()
        raise json_error(self.where, msg, self._buf[pos:], line, column, first=first, eof=self._eof)
