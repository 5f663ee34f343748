"""What every engine is: a Protocol, the outcome it yields, and the error it raises. Engines import this, never the
package that collects them (engines/__init__.py)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from au_annotate.progress import ProgressHook
from au_annotate.records import VideoJob
from au_annotate.settings import Settings
from au_annotate.work import VideoFailure, VideoWork

Outcome = tuple[VideoJob, VideoWork | VideoFailure]


class Engine(Protocol):
    """Runs pipeline.run_video for each job and yields outcomes as they complete."""

    def run(self, jobs: Sequence[VideoJob], settings: Settings, hook: ProgressHook) -> Iterator[Outcome]: ...


class EngineError(RuntimeError):
    """An engine cannot start (unknown name, missing optional dependency, unreachable cluster)."""
