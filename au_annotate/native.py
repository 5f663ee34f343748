"""Capturing what native libraries write to file descriptor 2 (FFmpeg's messages while a video opens, LiteRT's
"INFO: Created TensorFlow Lite XNNPACK delegate" when the landmark model loads), with one lock for the whole process:
fd 2 is process-wide, so every capture goes through this class."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading


class NativeStderr:
    """Captures what native code (FFmpeg, dmlc logging, LiteRT) writes to file descriptor 2 meanwhile, so the terminal
    stays clean and the useful line ("moov atom not found") can become our one-line reason.

    One capture at a time per process (fd 2 is process-wide: overlapping captures from two threads could end out of
    order and leave fd 2 on a deleted file); an open that starts while another thread captures simply goes uncaptured.
    An open abandoned after the stall timeout gets fd 2 back from it at once, and its thread never captures again."""

    _lock = threading.Lock()
    _owner: int | None = None  # thread id of the capture in progress
    _saved = -1  # that capture's copy of the real fd 2
    _abandoned: set[int] = set()  # threads of abandoned opens

    def __init__(self) -> None:
        self.text = ""

    @contextlib.contextmanager
    def capture(self):  # noqa: ANN201 - context manager
        me = threading.get_ident()
        cls = NativeStderr
        with tempfile.TemporaryFile() as tmp:
            saved = -1
            with cls._lock:
                if cls._owner is None and me not in cls._abandoned:
                    try:
                        sys.stderr.flush()
                        saved = os.dup(2)
                        os.dup2(tmp.fileno(), 2)
                    except (OSError, ValueError):  # no real fd 2 (embedded interpreters): nothing to capture
                        if saved >= 0:
                            os.close(saved)
                        saved = -1
                    else:
                        cls._owner, cls._saved = me, saved
            try:
                yield self
            finally:
                if saved >= 0:
                    with cls._lock:
                        if cls._owner == me:  # not already given back by abandon()
                            os.dup2(saved, 2)
                            cls._owner, cls._saved = None, -1
                    os.close(saved)
                    tmp.seek(0)
                    self.text = tmp.read().decode("utf-8", "replace")

    @classmethod
    def abandon(cls, thread_id: int) -> None:
        """The open in `thread_id` was given up on: give fd 2 back if it holds it, and never capture there again."""
        with cls._lock:
            cls._abandoned.add(thread_id)
            if cls._owner == thread_id:
                os.dup2(cls._saved, 2)
                cls._owner, cls._saved = None, -1

    @classmethod
    def forget(cls, thread_id: int) -> None:
        """The abandoned thread has finished: its id may be reused by a new thread, which may capture."""
        with cls._lock:
            cls._abandoned.discard(thread_id)
