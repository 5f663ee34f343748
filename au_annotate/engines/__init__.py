"""Engines run the per-video CPU pipeline (decode -> face -> spot -> flow) over many videos.

An engine takes VideoJobs and yields `(job, VideoWork | VideoFailure)` in any order; the API puts them back in input
order, batches their flow samples through the one model runner, and writes. `local` (default) runs in this process or
in worker processes (`--jobs N`); `ray` runs on a Ray cluster (optional extra).
"""

from __future__ import annotations

from au_annotate.engines.base import Engine, EngineError, Outcome

__all__ = ["Engine", "EngineError", "Outcome", "get_engine"]


def get_engine(name: str, **options: object) -> Engine:
    """The engine called `name` ("local" or "ray")."""
    if name == "local":
        from au_annotate.engines.local import LocalEngine

        return LocalEngine(**options)  # type: ignore[arg-type]
    if name == "ray":
        try:
            from au_annotate.engines.ray_engine import RayEngine
        except ImportError as e:
            raise EngineError(f"--engine ray needs Ray: pip install 'au-annotate[ray]' ({e})") from None
        return RayEngine(**options)  # type: ignore[arg-type]
    raise EngineError(f"unknown engine {name!r} (choose local or ray)")
