"""Typed records that cross pipeline stages.

Every stage takes and returns these frozen dataclasses, so a stage can be read, tested and replaced on its own.
Data flows one way: VideoJob -> Frame -> AlignedFace -> Window -> FlowSample -> probabilities -> Segment -> VideoResult.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np

WindowKind = Literal["micro", "macro", "blink"]
VideoStatus = Literal["done", "failed", "no_face", "skipped"]


@dataclass(frozen=True)
class VideoJob:
    """One input video: where it is, and where its outputs go (mirroring its path under the input root)."""

    path: Path
    rel: PurePosixPath  # path relative to the input root, used as the `video` column and for output mirroring
    out_dir: Path  # folder that receives <stem>.segments.csv, <stem>.eaf, ...
    ranges: tuple[tuple[float, float], ...] = ()  # (start, end) seconds to analyse, sorted, apart; () = the whole video
    range_error: str = ""  # why this video's ranges cannot be used (au_annotate.ranges): the video fails with it

    @property
    def stem(self) -> str:
        """Output file stem (from the mirrored relative path, so renamed duplicates stay distinct)."""
        return self.rel.stem


@dataclass(frozen=True)
class VideoInfo:
    """What the decoder learned about a video before streaming it."""

    path: Path
    backend: str
    width: int
    height: int
    fps: float  # nominal/average frame rate; per-frame times are in Frame.pts_s
    n_frames: int  # container's frame count (an estimate for some containers)
    duration_s: float
    pixels: str = "color"  # "color" | "gray" (luma-only decoding)


@dataclass(frozen=True, eq=False)
class Frame:
    """One decoded frame: 0-based index, presentation time in seconds, uint8 image in `order`: (H, W, 3) "rgb" or
    "bgr", or (H, W) "gray".

    Stages convert only what they use: OpenCV decodes to BGR, and converting every frame to RGB would cost ~0.4 ms at
    720p for nothing, since the face stage needs gray for most of each frame and RGB only for the small detection copy.
    The pipeline asks for gray (luma-only decoding), which skips the YUV -> BGR conversion altogether."""

    index: int
    pts_s: float
    image: np.ndarray
    order: str = "rgb"  # "rgb" | "bgr" | "gray"
    levels: np.ndarray | None = None  # gray frames: a 256-entry uint8 LUT still to apply (limited-range luma), or None

    def rgb(self) -> np.ndarray:
        """The image in RGB order (a converted copy for BGR and gray frames)."""
        if self.order == "rgb":
            return self.image
        import cv2

        if self.order == "gray":
            return cv2.cvtColor(self.gray(), cv2.COLOR_GRAY2RGB)
        return cv2.cvtColor(self.image, cv2.COLOR_BGR2RGB)

    def gray(self) -> np.ndarray:
        """The image in grayscale, 0..255 (the frame itself for gray frames without pending `levels`).

        Limited-range luma arrives with `levels` instead of mapped: stages that read only part of the frame (the face
        tracker) map only that part, like they convert only part of a colour frame."""
        import cv2

        if self.order == "gray":
            return self.image if self.levels is None else cv2.LUT(self.image, self.levels)
        return cv2.cvtColor(self.image, cv2.COLOR_BGR2GRAY if self.order == "bgr" else cv2.COLOR_RGB2GRAY)


@dataclass(frozen=True, eq=False)
class FaceBox:
    """A face found by the detector, in frame pixel coordinates.

    landmarks: (5, 2) float array, order left_eye, right_eye, nose, mouth_left, mouth_right (image left/right).
    """

    x: float
    y: float
    w: float
    h: float
    confidence: float
    landmarks: np.ndarray


@dataclass(frozen=True, eq=False)
class AlignedFace:
    """The tracked face of one frame, cropped and resized to a fixed square.

    crop: grayscale uint8 (S, S), S = settings.crop_size (224 by default, the seed's).
    landmarks: (5, 2) float32 in crop coordinates (same order as FaceBox.landmarks).
    box: (x, y, w, h) of the crop in frame coordinates; match: template-matching score (1.0 on a detection frame).
    """

    index: int
    pts_s: float
    face_id: str
    crop: np.ndarray
    landmarks: np.ndarray
    box: tuple[float, float, float, float]
    match: float
    epoch: int = 0  # increments when the crop is re-anchored by a new detection: crops of different epochs
    #                 are not pixel-aligned, so flow across an epoch change measures the jump, not the face


@dataclass(frozen=True, eq=False)
class WindowStrip:
    """Pictures of one window for the HTML report (au_annotate/strips.py), JPEG-encoded so a report stays small.

    strip: STRIP_TILES tiles side by side (onset, between, apex, between, offset) of the aligned face, the regions that
    fired outlined; preview: a sprite of `preview_n` tiles from before the onset to after the offset, shown as a looping
    animation `slow` times slower than real time (`preview_s` seconds of video)."""

    strip_jpeg: bytes
    strip_frames: tuple[int, ...]  # frame index of each strip tile
    tile: int  # strip tile side in pixels
    preview_jpeg: bytes
    preview_n: int
    preview_tile: int
    preview_s: float  # real time the preview covers
    slow: float  # slow-down factor of the preview


@dataclass(frozen=True)
class Window:
    """A spotted candidate expression: frame indices (0-based, inclusive) and a spotting score.

    score: the spotting signal at the apex as a multiple of the threshold the window was held to (1.0 = just reported:
    the micro or macro detector's p x the region's noise level, over the sensitivity)."""

    onset: int
    apex: int
    offset: int
    score: float
    kind: WindowKind
    quality: str = "ok"  # ok | occlusion | head_motion | tracking_lost | lighting (au_annotate.quality.QUALITIES)
    context: str = ""  # what the face was doing meanwhile, "+"-joined: blink, speech, head_motion, occlusion, no_landmarks
    regions: tuple[str, ...] = ()  # the regions of interest that fired (spot.regions.ROI_NAMES), for the report
    reason: str = ""  # why the outputs leave it out ("" = reported): blink, a quality, below_threshold, below_min_score
    face_id: str = ""  # the face track it belongs to (set by the pipeline: a spotter follows one face)
    strip: WindowStrip | None = field(default=None, compare=False)  # report pictures (only when a report is written)

    def __post_init__(self) -> None:
        if not (self.onset <= self.apex <= self.offset):
            raise ValueError(f"window must satisfy onset <= apex <= offset, got {self.onset}, {self.apex}, {self.offset}")


@dataclass(frozen=True)
class DetectionFloor:
    """How small a movement one face's micro detector could see: its threshold (p x each region's noise level) over the
    stream, in % of the inter-ocular distance (1 % is about 0.6 mm on an adult face). A region whose go-and-return
    motion stays below its floor is never reported, so a video with a high floor says little by finding nothing."""

    pct_iod: float  # median over the regions of each region's median threshold
    regions: tuple[tuple[str, float], ...]  # (region name, its median threshold in % of the IOD), spot.ROIS order
    steps: int  # scored micro steps behind the medians
    mesh_samples: int = 0  # face frames the landmark model was run on at a fixed rate (0: landmarks off or unknown)
    mesh_found: int = 0  # ... of which it found the face (blinks, talking, head pose are known only there)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form used by the manifest and the JSON writer."""
        out: dict[str, Any] = {"pct_iod": self.pct_iod, "steps": self.steps, "regions": dict(self.regions)}
        if self.mesh_samples:
            out["landmarks"] = {"sampled_frames": self.mesh_samples, "face_found": self.mesh_found}
        return out


@dataclass(frozen=True, eq=False)
class FlowSample:
    """The encoded onset->apex flow picture of one window, ready for the model.

    image: uint8 RGB (28, 28, 3) in the seed encoding (see flow.py); the model input is image / 255.
    """

    face_id: str
    window: Window
    onset_s: float
    apex_s: float
    offset_s: float
    image: np.ndarray
    apex_thumb: np.ndarray | None = None  # small grayscale aligned face at the apex (for reports)


@dataclass(frozen=True, eq=False)
class Segment:
    """One annotated segment: a window with its times, AU probabilities, active code and emotion."""

    video: str  # path relative to the input root (posix)
    face_id: str
    segment_id: int
    kind: WindowKind
    onset_frame: int
    apex_frame: int
    offset_frame: int
    onset_s: float
    apex_s: float
    offset_s: float
    duration_s: float
    score: float
    au_names: tuple[str, ...]  # e.g. ("AU04", "AU07", ...) in the model's output order
    probs: np.ndarray  # float (n_aus,)
    present: np.ndarray  # bool (n_aus,)
    aus: str  # active FACS code, e.g. "4+7" ("" when none)
    emotion: str  # "" when no rule fired
    rule: str = ""  # name of the rule that fired
    emotion_model: str = ""  # the model's own 3-class emotion (negative|positive|surprise); "" without an emotion head
    emotion_model_p: float = float("nan")  # its softmax probability
    uncalibrated: tuple[str, ...] = ()  # reported AUs without a usable threshold: probability only, no _c, not in `aus`
    flow_image: np.ndarray | None = None  # the 28x28 RGB model input, kept for reports
    apex_crop: np.ndarray | None = None  # small grayscale aligned face at the apex, kept for reports
    quality: str = "ok"  # the window's quality gate (au_annotate.quality): only "ok" segments are counted
    context: str = ""  # the face state around the window (au_annotate.facestate): blink, speech, head_motion, ...
    strip: WindowStrip | None = None  # frame strip and preview for the report (records.WindowStrip), when made
    regions: tuple[str, ...] = ()  # the regions of interest that fired


@dataclass(frozen=True, eq=False)
class VideoResult:
    """Everything one video produced, or why it produced nothing."""

    job: VideoJob
    status: VideoStatus
    info: VideoInfo | None = None
    error: str | None = None  # one-line reason when status is failed / no_face
    segments: tuple[Segment, ...] = ()
    frames: int = 0
    frames_with_face: int = 0
    faces: int = 0
    elapsed_s: float = 0.0
    outputs: tuple[Path, ...] = ()
    # optional spotting signals, for reports: (N, 3) float32 of frame index, micro signal, macro signal (NaN where that
    # detector took no sample at that frame); older (N, 2) arrays (frame index, micro signal) are still accepted
    signal: np.ndarray | None = None
    # windows the spotter found but the outputs do not report (Window.reason says why), so a report can show them
    unreported: tuple[Window, ...] = ()
    decoded_s: float = 0.0  # seconds of video actually decoded (less than info.duration_s for a truncated file)
    stage_s: dict[str, float] | None = None  # CPU pipeline seconds per stage (decode wait, face, spot, flow)
    floors: dict[str, DetectionFloor] = field(default_factory=dict)  # per face id (DetectionFloor); {} if unknown
    face_frames: dict[str, int] = field(default_factory=dict)  # frames each face id was tracked in
    warnings: tuple[str, ...] = ()  # why this video's spotting is not to be trusted (au_annotate.quality), one line each


@dataclass(frozen=True)
class RunReport:
    """The outcome of one `annotate` run over many inputs."""

    results: tuple[VideoResult, ...]
    out_dir: Path
    skipped_files: tuple[Path, ...] = ()  # non-video files met while discovering
    elapsed_s: float = 0.0
    outputs: tuple[Path, ...] = field(default=())  # dataset-level outputs (segments.csv, report)
    model_s: float = 0.0  # seconds the batch runner spent on the model (all videos)
    errors: tuple[str, ...] = ()  # input problems of no single video (a range table row naming no input): exit 1

    @property
    def failed(self) -> tuple[VideoResult, ...]:
        return tuple(r for r in self.results if r.status == "failed")

    @property
    def segments(self) -> tuple[Segment, ...]:
        return tuple(s for r in self.results for s in r.segments)
