"""Run manifest and resume: what each video's status is, and whether its outputs can be trusted on a rerun.

`<output>/manifest.json` records per video its status (done, failed, no_face, skipped), the reason, timings, frames,
segments, outputs, and a key: the hash of everything that determines its outputs (the video's size and mtime, the
settings that change results, the weights checksum, the tool version). A rerun skips a video whose key matches and
whose outputs all exist; changed settings or weights recompute it; `--overwrite` recomputes everything. The manifest is
rewritten atomically after every video, so a killed run loses at most the videos in flight.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from au_annotate._version import __version__
from au_annotate.fileio import TMP_PREFIX, atomic_open
from au_annotate.records import Segment, VideoJob, VideoResult
from au_annotate.settings import Settings

MANIFEST_NAME = "manifest.json"
FORMAT = "au-annotate-manifest"
FORMAT_VERSION = 1
# settings that never change what is written (how fast, how loud, where it runs)
_RUNTIME_ONLY = frozenset({"jobs", "engine", "ray_address", "quiet", "verbose", "overwrite", "device", "batch_size",
                           "report", "stall_timeout_s",
                           "ranges", "range_table", "range_tier"})  # the key has each video's own resolved ranges


def environment() -> dict[str, str]:
    """The packages and machine that produced a run's numbers (manifest run field `environment`): spotting decisions
    near a threshold can change sides between OpenCV / numpy builds and CPUs, so a run records what made it."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import cv2

    try:
        torch = version("torch")  # the installed version, without importing torch here (au_annotate.infer does that)
    except PackageNotFoundError:
        torch = "not installed"
    return {"python": platform.python_version(), "numpy": np.__version__, "opencv": cv2.__version__, "torch": torch,
            "machine": platform.machine(), "system": platform.system(), "processor": platform.processor() or "unknown"}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def output_key(job: VideoJob, settings: Settings, model_sha256: str) -> str:
    """Hash of what determines a video's outputs: the file (size + mtime), result-changing settings, weights, version."""
    st = os.stat(job.path)
    relevant = {k: v for k, v in settings.as_dict().items() if k not in _RUNTIME_ONLY}
    if settings.rules is not None:
        with contextlib.suppress(OSError):
            relevant["rules_sha256"] = hashlib.sha256(Path(settings.rules).read_bytes()).hexdigest()
    blob = json.dumps({"size": st.st_size, "mtime_ns": st.st_mtime_ns, "rel": job.rel.as_posix(),
                       "ranges": [list(r) for r in job.ranges], "range_error": job.range_error,
                       "settings": relevant, "model": model_sha256, "version": __version__}, sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class Manifest:
    """The manifest file's content; `record` updates one video and saves the whole file atomically."""

    path: Path
    videos: dict[str, dict[str, Any]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, out_dir: Path) -> Manifest:
        """The manifest in `out_dir`, or an empty one (also when the file is unreadable: then nothing is trusted)."""
        path = Path(out_dir) / MANIFEST_NAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("videos"), dict):
                raise ValueError("not an au-annotate manifest")
        except (OSError, ValueError, RecursionError):
            return cls(path=path)
        videos = {str(k): v for k, v in data["videos"].items() if isinstance(v, dict)}  # drop damaged entries
        return cls(path=path, videos=videos, meta={k: v for k, v in data.items() if k != "videos"})

    def reusable(self, job: VideoJob, key: str) -> dict[str, Any] | None:
        """The entry of a finished video whose key matches and whose outputs all exist, else None."""
        entry = self.videos.get(job.rel.as_posix())
        if not entry or entry.get("key") != key or entry.get("status") not in ("done", "no_face"):
            return None
        names = entry.get("outputs")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            return None
        root = self.path.parent.resolve()
        for name in names:
            p = (root / name).resolve()
            # only files inside the output folder count (a hand-edited entry cannot point elsewhere)
            if Path(name).is_absolute() or ".." in Path(name).parts or not p.is_relative_to(root) or not p.is_file():
                return None
        return entry

    def record(self, result: VideoResult, key: str | None) -> None:
        """Store one video's outcome and save."""
        root = self.path.parent
        outputs = []
        for p in result.outputs:
            try:
                outputs.append(Path(p).resolve().relative_to(root.resolve()).as_posix())
            except ValueError:
                outputs.append(str(p))
        expected = result.info.n_frames if result.info is not None else None
        warnings = list(result.warnings)
        self.videos[result.job.rel.as_posix()] = {
            "path": str(result.job.path),
            "status": result.status,
            "reason": result.error,
            "warning": "; ".join(warnings) or None,  # all of them on one line (older readers)
            "warnings": warnings,  # one line each (au_annotate.quality.video_warnings)
            "face_frames": dict(result.face_frames),
            "ranges": [list(r) for r in result.job.ranges],  # analysed time ranges (s); [] = the whole video
            "frames": result.frames,
            "frames_expected": expected,
            "frames_with_face": result.frames_with_face,
            "decoded_s": round(result.decoded_s, 3),
            "faces": result.faces,
            "segments": len(result.segments),
            "micro": sum(1 for s in result.segments if s.kind == "micro" and getattr(s, "quality", "ok") == "ok"),
            "macro": sum(1 for s in result.segments if s.kind == "macro" and getattr(s, "quality", "ok") == "ok"),
            # per face: how small a movement its micro detector could see, in % of the eye distance
            "detection_floor": {fid: f.as_dict() for fid, f in result.floors.items()},
            "elapsed_s": round(result.elapsed_s, 3),
            "key": key,
            "outputs": outputs,
            "finished": _now(),
        }
        self.save()

    def save(self, **meta: Any) -> None:
        """Write the manifest atomically (meta updates the run-level fields)."""
        self.meta.update(meta)
        data = {"format": FORMAT, "format_version": FORMAT_VERSION, "tool_version": __version__, **self.meta,
                "videos": dict(sorted(self.videos.items()))}
        for k in ("format", "format_version", "tool_version"):
            data[k] = {"format": FORMAT, "format_version": FORMAT_VERSION, "tool_version": __version__}[k]
        with atomic_open(self.path, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=False, default=str)
            fh.write("\n")


def sweep_temporaries(out_dir: str | os.PathLike[str]) -> int:
    """Delete the temporary files a killed run left in the output tree (never trusted, only litter); returns how many.

    Only names this tool makes (`.au-annotate-tmp-*`, `.au-annotate-probe-*`) are touched, symlinked folders are not
    followed, and one run per output folder at a time is assumed."""
    removed = 0
    for folder, _dirs, files in os.walk(out_dir, followlinks=False):
        for name in files:
            if name.startswith((TMP_PREFIX, ".au-annotate-probe-")):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))
                    removed += 1
    return removed


_AU_PROB = re.compile(r"AU\d+_p")


def segments_from_csv(path: Path, video: str) -> tuple[Segment, ...]:
    """Segments read back from a per-video segments CSV (to rebuild the combined CSV for resumed videos)."""
    from au_annotate.writers import read_segments_csv

    df = read_segments_csv(path)
    names = tuple(c[:-2] for c in df.columns if _AU_PROB.fullmatch(c))  # AU04_p, ... (not emotion_model_p)
    uncalibrated = tuple(n for n in names if f"{n}_c" not in df.columns)  # probability only (no threshold)
    out = []
    for row in df.itertuples(index=False):
        r = row._asdict()
        text = {k: str(r.get(k, "") or "") for k in ("aus", "emotion_facs", "rule", "emotion_model")}
        model_p = r.get("emotion_model_p")
        out.append(Segment(
            video=video, face_id=str(r["face_id"]), segment_id=int(r["segment_id"]), kind=str(r["kind"]),  # type: ignore[arg-type]
            onset_frame=int(r["onset_frame"]), apex_frame=int(r["apex_frame"]), offset_frame=int(r["offset_frame"]),
            onset_s=float(r["onset_s"]), apex_s=float(r["apex_s"]), offset_s=float(r["offset_s"]),
            duration_s=float(r["duration_s"]), score=float(r["score"]), au_names=names,
            probs=np.array([r[f"{n}_p"] for n in names], np.float32),
            present=np.array([n not in uncalibrated and bool(r[f"{n}_c"]) for n in names], bool),
            aus=text["aus"], emotion=text["emotion_facs"], rule=text["rule"], emotion_model=text["emotion_model"],
            emotion_model_p=float(model_p) if model_p is not None and model_p == model_p else float("nan"),
            uncalibrated=uncalibrated, quality=str(r.get("quality", "ok") or "ok"),
            context=str(r.get("context", "") or ""),
        ))
    return tuple(out)
