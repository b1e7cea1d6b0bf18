"""The one framing of every hybridexec pipe: an 8-byte big-endian length, then the bytes.

Lane workers and actors speak it alike. ``multiprocessing.Connection.recv_bytes`` costs two
reads and a ``BytesIO`` per message; ``FrameReader`` costs one read per batch of small frames,
which is what a round trip pays for.
"""

from __future__ import annotations

import os
import struct

_HEADER = struct.Struct("!Q")
_CHUNK = 1 << 16


def write_frame(fd: int, data: bytes) -> None:
    """Write one length-prefixed frame; one ``write`` call for small frames."""
    if len(data) <= _CHUNK:
        view = memoryview(_HEADER.pack(len(data)) + data)
    else:
        _write_all(fd, memoryview(_HEADER.pack(len(data))))
        view = memoryview(data)
    _write_all(fd, view)


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view) :]


class FrameReader:
    """Reads length-prefixed frames from a pipe, several per ``read`` call when they queue up.

    ``multiprocessing.Connection.recv_bytes`` costs two reads and a ``BytesIO`` per message;
    this costs one read per batch of small frames, which is what a round trip pays for.
    """

    __slots__ = ("buf", "fd")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""

    def has_frame(self) -> bool:
        """True when a whole frame is buffered (``read`` will not block)."""
        buf = self.buf
        return len(buf) >= 8 and len(buf) >= 8 + _HEADER.unpack_from(buf)[0]

    def fill(self) -> None:
        """Read what the pipe holds (blocking if empty). Raises EOFError at the end."""
        chunk = os.read(self.fd, _CHUNK)
        if not chunk:
            raise EOFError
        self.buf = self.buf + chunk if self.buf else chunk

    def read(self) -> bytes:
        """Return the next frame, blocking until it is whole. Raises EOFError at the end."""
        while True:
            buf = self.buf
            if len(buf) >= 8:
                end = 8 + _HEADER.unpack_from(buf)[0]
                if len(buf) >= end:
                    self.buf = buf[end:]
                    return buf[8:end]
                if end > _CHUNK:
                    return self._read_large(end)
            self.fill()

    def _read_large(self, end: int) -> bytes:
        frame = bytearray(end - 8)
        have = len(self.buf) - 8
        frame[:have] = self.buf[8:]
        self.buf = b""
        view = memoryview(frame)
        while have < len(frame):
            n = os.readv(self.fd, [view[have:]])
            if not n:
                raise EOFError
            have += n
        return bytes(frame)
