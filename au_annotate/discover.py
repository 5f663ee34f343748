"""Find the videos to process: files and folders in, sorted VideoJobs out, with output folders mirroring the input layout.

Two `interview.mp4` in different folders never collide, non-video files are counted, symlink loops are not followed
twice, broken links are reported rather than dropped, and no output path can escape the output folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from au_annotate.records import VideoJob

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".mpe", ".m2v", ".ts", ".mts", ".m2ts",
     ".wmv", ".flv", ".3gp", ".3g2", ".ogv", ".dv", ".mxf", ".vob", ".f4v", ".asf", ".y4m"}
)


class DiscoverError(ValueError):
    """An input path is unusable (missing, or nothing to do); the message names the path."""


@dataclass(frozen=True)
class Discovery:
    """The videos found (sorted, unique) and the non-video files that were skipped."""

    jobs: tuple[VideoJob, ...]
    skipped: tuple[Path, ...]


def is_video(path: Path) -> bool:
    """True when the file name has a known video extension (case-insensitive)."""
    return path.suffix.lower() in VIDEO_EXTENSIONS


def _walk(folder: Path, recursive: bool) -> Iterable[Path]:
    """Files under `folder`, following symlinked folders once each (loops are cut by real-path bookkeeping)."""
    seen: set[str] = set()
    stack = [folder]
    while stack:
        current = stack.pop()
        real = os.path.realpath(current)
        if real in seen:
            continue
        seen.add(real)
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            p = Path(entry.path)
            try:
                if entry.is_dir(follow_symlinks=True):
                    if recursive:
                        stack.append(p)
                elif entry.is_file(follow_symlinks=True):
                    yield p
                elif entry.is_symlink() and not os.path.exists(entry.path):
                    yield p  # a broken link is reported (as a failed video or a skipped file), never silently lost
            except OSError:
                continue


def _safe_rel(rel: PurePosixPath) -> PurePosixPath:
    """Drop parts that would escape the output folder ('..', anchors)."""
    parts = [p for p in rel.parts if p not in ("..", ".", "/", "")]
    return PurePosixPath(*parts) if parts else PurePosixPath(rel.name or "video")


def discover(inputs: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str], *, recursive: bool = True) -> Discovery:
    """Expand files and folders into VideoJobs.

    A folder input maps its videos to `out_dir/<path inside folder>`; with several folder inputs each gets its own
    subfolder named after it so outputs never collide. A file input maps to `out_dir/<file stem>`'s folder, i.e.
    `out_dir/`. Raises DiscoverError for a missing path.
    """
    out_root = Path(out_dir)
    inputs = [Path(p) for p in inputs]
    for p in inputs:
        if not p.exists():
            raise DiscoverError(f"{p}: no such file or folder")
    folders = [p for p in inputs if p.is_dir()]
    prefix_folders = len(folders) > 1
    jobs: dict[str, VideoJob] = {}
    skipped: list[Path] = []
    out_real = os.path.realpath(out_root)
    for p in inputs:
        if p.is_dir():
            base = PurePosixPath(p.resolve().name) if prefix_folders else PurePosixPath()
            for f in _walk(p, recursive):
                if os.path.realpath(f).startswith(out_real + os.sep):
                    continue  # never read our own outputs when -o lies inside an input folder
                if not is_video(f):
                    skipped.append(f)
                    continue
                rel = _safe_rel(base / PurePosixPath(f.relative_to(p).as_posix()))
                _add(jobs, f, rel, out_root)
        elif is_video(p):
            _add(jobs, p, _safe_rel(PurePosixPath(p.name)), out_root)
        else:
            skipped.append(p)
    ordered = tuple(sorted(jobs.values(), key=lambda j: j.rel.as_posix()))
    return Discovery(jobs=ordered, skipped=tuple(sorted(skipped)))


def _add(jobs: dict[str, VideoJob], path: Path, rel: PurePosixPath, out_root: Path) -> None:
    """Register one video; a second file mapping to the same relative path gets a numbered suffix."""
    key = rel.as_posix()
    if key in jobs:
        if os.path.realpath(jobs[key].path) == os.path.realpath(path):
            return
        n = 2
        while f"{key}~{n}" in jobs:
            n += 1
        rel = rel.with_name(f"{rel.stem}~{n}{rel.suffix}")
        key = rel.as_posix()
    jobs[key] = VideoJob(path=path, rel=rel, out_dir=out_root.joinpath(*rel.parent.parts))
