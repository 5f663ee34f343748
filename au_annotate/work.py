"""The mutable state of a run, in one named place: what the CPU pipeline produced for a video before the model sees
it (VideoWork, with its per-stage times) or why it produced nothing (VideoFailure).

Engines carry these from the per-video pipeline (pipeline.py, possibly in a worker process) to the run (api.py, whose collect.py gathers them); both
are picklable. Everything after the model is frozen records (records.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from au_annotate.records import DetectionFloor, FlowSample, VideoInfo, VideoJob, Window


@dataclass
class StageTimes:
    """Seconds spent per stage, so the next bottleneck is visible. face runs in its own thread and decode is the time it
    waited for decoded frames; spot and flow run in the calling thread (which waits for faces in between)."""

    decode: float = 0.0
    face: float = 0.0
    spot: float = 0.0
    flow: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {"decode": self.decode, "face": self.face, "spot": self.spot, "flow": self.flow}


@dataclass
class VideoWork:
    """What the CPU part of the pipeline produced for one video, before the model sees it."""

    job: VideoJob
    info: VideoInfo
    samples: list[FlowSample]
    frames: int
    frames_with_face: int
    faces: int
    # (N, 4) float32: frame index, micro signal, macro signal, detection floor in % of the eye distance (NaN where
    # that column took no sample)
    signal: np.ndarray
    times: StageTimes = field(default_factory=StageTimes)
    elapsed_s: float = 0.0
    decoded_s: float = 0.0  # seconds of video actually decoded (last frame's time + one frame)
    unreported: tuple[Window, ...] = ()  # windows found but not reported (Window.reason says why)
    floors: dict[str, DetectionFloor] = field(default_factory=dict)  # per face id: its micro detector's floor
    face_frames: dict[str, int] = field(default_factory=dict)  # frames each face id was tracked in
    notes: tuple[str, ...] = ()  # ranges clipped or left out (one line each): they join the video's warnings


@dataclass
class VideoFailure:
    """A video the CPU pipeline could not turn into samples: status failed or no_face, with a one-line reason."""

    job: VideoJob
    status: str  # "failed" | "no_face"
    error: str
    elapsed_s: float = 0.0
    detail: str = ""  # traceback text, shown with --verbose
    frames: int = 0
    info: VideoInfo | None = None
