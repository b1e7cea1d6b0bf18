"""The one framing of every hybridexec pipe: an 8-byte big-endian length, then the bytes.

The length's top bit is a flag the writer may set (the reader sees it as ``flagged``): the
process lane marks a call its caller waits for at once (see ``_worker._serve``).

Lane workers and actors speak it alike, over raw pipe descriptors. ``multiprocessing``'s
``Connection.recv_bytes`` costs two reads and a ``BytesIO`` per message; ``FrameReader`` costs
one read per batch of small frames, and ``write_frames`` one write for several small frames,
which is what a round trip (and a worker fed several tasks at once) pays for.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence

_HEADER = struct.Struct("!Q")
_CHUNK = 1 << 16
_FLAG = 1 << 63
_LENGTH = _FLAG - 1
HEADER_SIZE = _HEADER.size


def write_frame(fd: int, data: bytes, flag: bool = False) -> None:
    """Write one length-prefixed frame (``flag``: set the flag); one ``write`` if small."""
    header = _HEADER.pack(len(data) | _FLAG if flag else len(data))
    if len(data) <= _CHUNK:
        view = memoryview(header + data)
    else:
        _write_all(fd, memoryview(header))
        view = memoryview(data)
    _write_all(fd, view)


class FramesWriteError(Exception):
    """``write_frames`` failed: ``error`` stopped it after ``written`` bytes had gone.

    The frames wholly within those bytes went (a reader may have them); the others did not go
    whole, so no reader ever had them: a reader acts on a frame only once it has all of it.
    """

    def __init__(self, error: OSError, written: int) -> None:
        super().__init__(error, written)
        self.error = error
        self.written = written

    def whole(self, frames: Sequence[bytes]) -> int:
        """How many of ``frames`` (as passed to ``write_frames``) went whole."""
        end = 0
        for count, data in enumerate(frames):
            end += HEADER_SIZE + len(data)
            if end > self.written:
                return count
        return len(frames)


def write_frames(fd: int, frames: Sequence[bytes]) -> None:
    """Write several frames, the small ones together in one ``write`` call.

    Raises:
        FramesWriteError: a write failed (the ``OSError`` is its ``error``); it tells how
            many bytes, and so which frames, went whole before.
    """
    pack = _HEADER.pack
    if len(frames) == 1 and len(frames[0]) > _CHUNK:
        chunks = [pack(len(frames[0])), frames[0]]  # a large frame is not copied
    else:
        parts: list[bytes] = []
        for data in frames:
            parts.append(pack(len(data)))
            parts.append(data)
        chunks = [b"".join(parts)]
    written = 0
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                n = os.write(fd, view)
                written += n
                view = view[n:]
    except OSError as exc:
        raise FramesWriteError(exc, written) from exc


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view) :]


class FrameReader:
    """Reads length-prefixed frames from a pipe, several per ``read`` call when they queue up.

    The buffer is consumed through an offset, so taking many small frames out of one read
    copies each frame once.
    """

    __slots__ = ("buf", "fd", "flagged", "pos")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""
        self.pos = 0
        self.flagged = False  # the flag of the last frame returned

    def has_frame(self) -> bool:
        """True when a whole frame is buffered (``read`` will not block)."""
        buf, pos = self.buf, self.pos
        if len(buf) - pos < 8:
            return False
        length: int = _HEADER.unpack_from(buf, pos)[0] & _LENGTH
        return len(buf) >= pos + 8 + length

    def fill(self) -> None:
        """Read what the pipe holds (blocking if empty). Raises EOFError at the end."""
        chunk = os.read(self.fd, _CHUNK)
        if not chunk:
            raise EOFError
        if self.pos < len(self.buf):
            self.buf = self.buf[self.pos :] + chunk
        else:
            self.buf = chunk
        self.pos = 0

    def next_frame(self) -> bytes | None:
        """Return a buffered frame without reading; None when no whole frame is buffered.

        A large frame whose start is buffered is read to its end (blocking): it is on its way,
        and gathering it chunk by chunk through ``fill`` would copy it over and over.
        Raises EOFError when the pipe ends inside that frame.
        """
        buf, pos = self.buf, self.pos
        if len(buf) - pos < 8:
            return None
        header = _HEADER.unpack_from(buf, pos)[0]
        end = pos + 8 + (header & _LENGTH)
        self.flagged = header >= _FLAG
        if len(buf) >= end:
            self.pos = end
            return buf[pos + 8 : end]
        if end - pos > _CHUNK:
            return self._read_large(end - pos)
        return None

    def read(self) -> bytes:
        """Return the next frame, blocking until it is whole. Raises EOFError at the end."""
        while True:
            frame = self.next_frame()
            if frame is not None:
                return frame
            self.fill()

    def _read_large(self, size: int) -> bytes:
        frame = bytearray(size - 8)
        have = len(self.buf) - self.pos - 8
        frame[:have] = self.buf[self.pos + 8 :]
        self.buf = b""
        self.pos = 0
        view = memoryview(frame)
        while have < len(frame):
            n = os.readv(self.fd, [view[have:]])
            if not n:
                raise EOFError
            have += n
        return bytes(frame)


def pipe_budget(fd: int) -> int:
    """Bytes that may wait in the pipe ``fd`` writes to without a write ever blocking.

    Half the pipe's capacity (page rounding never makes a write of that much wait): calls
    sent ahead to a busy worker must fit in its pipe, or the writer would block while the
    worker blocks writing a reply (a deadlock). Elsewhere than Linux, half of ``PIPE_BUF``.
    """
    try:
        import fcntl

        return int(fcntl.fcntl(fd, getattr(fcntl, "F_GETPIPE_SZ", 1032))) // 2
    except (ImportError, OSError):
        return 2048
