"""Bad-input corpus for the robustness tests, made on the fly in a temporary folder (no binaries are committed).

Every case is a small file (short clips, 320x240 where a face must still be found) built from the public-domain
astronaut photograph (`benchmarks/synth.py`) or from OpenCV/ffmpeg. Cases that need the `ffmpeg` program (H.264 with
rotation metadata, variable frame rate, grayscale, audio-only, faststart truncation) are left out when it is missing;
`Corpus.needs_ffmpeg` names them so tests can skip them cleanly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from synth import PlantedEvent, iter_frames, make_video

SIZE = (320, 240)
FPS = 30.0
# Planted movements (amplitude in frame pixels at 320x240); the leave-and-return clip plants its event after the face
# comes back, so finding it proves the tracker re-detected the face.
GOOD_EVENT = PlantedEvent("brow_raise", 0.9, 1.05, 1.25, 2.5)
RETURN_EVENT = PlantedEvent("lip_corner_pull", 2.45, 2.6, 2.8, 2.5)
FACE_GONE_S = (0.8, 1.5)  # the face is out of the frame in this interval of the leave-and-return clip
VFR_SLOW_FRAMES = 20  # the VFR clip's first frames are 1/15 s apart, the rest 1/30 s
FFMPEG_CASES = ("rotated.mp4", "vfr.mp4", "gray.mp4", "audio_only.mp4", "truncated_faststart.mp4")


def ffmpeg_exe() -> str | None:
    """Path of the ffmpeg program, or None."""
    return shutil.which("ffmpeg")


def _ffmpeg(args: list[str]) -> None:
    exe = ffmpeg_exe()
    assert exe is not None
    subprocess.run([exe, "-nostdin", "-loglevel", "error", "-y", *args], check=True, capture_output=True)


def encode_ffmpeg(path: Path, frames: Iterable[np.ndarray], fps: float, *, pix_fmt: str = "yuv420p",
                  extra_in: tuple[str, ...] = (), extra_out: tuple[str, ...] = ()) -> Path:
    """Encode RGB uint8 frames to H.264 with ffmpeg (rawvideo on stdin)."""
    frames = list(frames)
    h, w = frames[0].shape[:2]
    exe = ffmpeg_exe()
    assert exe is not None
    cmd = [exe, "-nostdin", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
           "-r", f"{fps}", *extra_in, "-i", "-", "-c:v", "libx264", "-preset", "veryfast", "-g", "10",
           "-pix_fmt", pix_fmt, *extra_out, str(path)]
    subprocess.run(cmd, input=b"".join(np.ascontiguousarray(f).tobytes() for f in frames), check=True,
                   capture_output=True)
    return path


def encode_cv2(path: Path, frames: Iterable[np.ndarray], fps: float) -> Path:
    """Encode RGB uint8 frames with OpenCV's mp4v writer (always available)."""
    writer = None
    for f in frames:
        if writer is None:
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (f.shape[1], f.shape[0]))
            assert writer.isOpened(), f"cannot write {path}"
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    assert writer is not None
    writer.release()
    return path


def face_frames(duration_s: float, *, size: tuple[int, int] = SIZE, events: tuple[PlantedEvent, ...] = (),
                seed: int = 0, face_scale: float = 1.0) -> list[np.ndarray]:
    """RGB frames of the synthetic talking head (slight head motion and noise, like a real recording)."""
    return [f.image for f in iter_frames(fps=FPS, duration_s=duration_s, size=size, events=events, seed=seed,
                                         head_motion_px=0.8, noise_sigma=1.0, face_scale=face_scale)]


def no_face_frames(n: int, size: tuple[int, int] = SIZE, seed: int = 0) -> list[np.ndarray]:
    """Frames of a textured, slowly moving background without any face."""
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.integers(0, 256, (size[1] * 2, size[0] * 2, 3), dtype=np.uint8), (0, 0), 6)
    base = cv2.normalize(base, None, 0, 255, cv2.NORM_MINMAX)
    return [np.ascontiguousarray(base[i % size[1] : i % size[1] + size[1], i : i + size[0]]) for i in range(n)]


@dataclass
class Corpus:
    """Where the corpus lives and what each case is."""

    root: Path  # the input folder handed to `annotate` (all video cases, non-videos and the symlink loop)
    good: Path  # a clean clip with GOOD_EVENT planted (also copied under a unicode name with spaces)
    files: dict[str, Path] = field(default_factory=dict)  # case name -> file
    non_videos: Path = Path()  # a folder holding only non-video files
    needs_ffmpeg: tuple[str, ...] = FFMPEG_CASES

    def rel(self, name: str) -> str:
        """The case's path relative to the input root (the manifest's key and the CSV's `video` column)."""
        return self.files[name].relative_to(self.root).as_posix()


def build_corpus(base: Path) -> Corpus:
    """Make every bad-input case under `base` (about 20 small files; a few seconds of CPU)."""
    root = base / "inputs"
    root.mkdir(parents=True)
    files: dict[str, Path] = {}

    def add(name: str, path: Path) -> None:
        files[name] = path

    good = make_video(root / "good.mp4", fps=FPS, duration_s=2.0, size=SIZE, events=[GOOD_EVENT], seed=1,
                      head_motion_px=0.8, noise_sigma=1.0).path
    add("good.mp4", good)
    data = good.read_bytes()

    (root / "zero.mp4").write_bytes(b"")
    add("zero.mp4", root / "zero.mp4")
    (root / "text.mp4").write_text("this is a text file, not a video\n" * 20, encoding="utf-8")
    add("text.mp4", root / "text.mp4")
    (root / "truncated.mp4").write_bytes(data[: int(len(data) * 0.3)])  # mp4v: index at the end -> nothing readable
    add("truncated.mp4", root / "truncated.mp4")
    middle = bytearray(data)
    lo, hi = len(data) * 2 // 5, len(data) * 3 // 5
    middle[lo:hi] = np.random.default_rng(7).integers(0, 256, hi - lo, dtype=np.uint8).tobytes()
    (root / "corrupt_middle.mp4").write_bytes(bytes(middle))
    add("corrupt_middle.mp4", root / "corrupt_middle.mp4")

    add("one_frame.mp4", encode_cv2(root / "one_frame.mp4", face_frames(1 / FPS, seed=2), FPS))
    add("short.mp4", encode_cv2(root / "short.mp4", face_frames(0.3, seed=3), FPS))
    add("no_face.mp4", encode_cv2(root / "no_face.mp4", no_face_frames(45), FPS))

    frames = face_frames(3.5, events=(RETURN_EVENT,), seed=4)
    empty = no_face_frames(len(frames), seed=4)
    for i in range(len(frames)):
        if FACE_GONE_S[0] <= i / FPS < FACE_GONE_S[1]:
            frames[i] = empty[i]
    add("leave_return.mp4", encode_cv2(root / "leave_return.mp4", frames, FPS))

    left = face_frames(2.0, events=(GOOD_EVENT,), seed=5)
    right = face_frames(2.0, seed=6, face_scale=0.8)
    add("two_faces.mp4", encode_cv2(root / "two_faces.mp4", [np.hstack([a, b]) for a, b in zip(left, right,
                                                                                              strict=True)], FPS))
    tiny = []
    for f in face_frames(1.0, seed=8):  # the whole 320x240 picture shrunk to 136x102 (face ~45x56 px) on a plain 640x480
        canvas = np.full((480, 640, 3), 90, np.uint8)
        canvas[190:292, 252:388] = cv2.resize(f, (136, 102), interpolation=cv2.INTER_AREA)
        tiny.append(canvas)
    add("small_face.mp4", encode_cv2(root / "small_face.mp4", tiny, FPS))
    small = face_frames(10 / FPS, size=(384, 216), seed=9)
    add("big_4k.mp4", encode_cv2(root / "big_4k.mp4", [cv2.resize(f, (3840, 2160), interpolation=cv2.INTER_LINEAR)
                                                       for f in small], FPS))

    uni = root / "sübfolder with spaces" / "vidéo ☺ 1.mp4"
    uni.parent.mkdir()
    shutil.copyfile(good, uni)
    add("unicode", uni)
    os.symlink(root, root / "sübfolder with spaces" / "loop")  # a symlink loop back to the input root

    (root / "readme.txt").write_text("notes\n", encoding="utf-8")
    os.symlink(base / "gone.mp4", root / "broken_link.mp4")  # a link to a video that was moved away
    add("broken_link.mp4", root / "broken_link.mp4")

    if ffmpeg_exe() is not None:
        upright = face_frames(1.5, seed=10)
        # stored sideways (rotated clockwise); the display matrix turns it upright, as phones record portrait video
        sideways = [np.ascontiguousarray(np.rot90(f, -1)) for f in upright]
        raw = encode_ffmpeg(base / "rot_raw.mp4", sideways, FPS)
        _ffmpeg(["-i", str(raw), "-c", "copy", "-metadata:s:v", "rotate=90", str(root / "rotated.mp4")])
        add("rotated.mp4", root / "rotated.mp4")
        vfr_expr = f"if(lt(N,{VFR_SLOW_FRAMES}),2*N,{VFR_SLOW_FRAMES}+N)/{int(FPS)}/TB"
        add("vfr.mp4", encode_ffmpeg(root / "vfr.mp4", face_frames(2.0, seed=11), FPS,
                                     extra_out=("-vf", f"setpts='{vfr_expr}'", "-fps_mode", "passthrough")))
        add("gray.mp4", encode_ffmpeg(root / "gray.mp4", face_frames(1.5, seed=12), FPS, pix_fmt="gray"))
        _ffmpeg(["-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "aac", str(root / "audio_only.mp4")])
        add("audio_only.mp4", root / "audio_only.mp4")
        fs = encode_ffmpeg(base / "fs.mp4", face_frames(3.0, seed=13), FPS, extra_out=("-movflags", "+faststart"))
        blob = fs.read_bytes()
        (root / "truncated_faststart.mp4").write_bytes(blob[: int(len(blob) * 0.3)])
        add("truncated_faststart.mp4", root / "truncated_faststart.mp4")

    non_videos = base / "non_videos"
    non_videos.mkdir()
    (non_videos / "notes.txt").write_text("x\n", encoding="utf-8")
    (non_videos / "table.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    return Corpus(root=root, good=good, files=files, non_videos=non_videos)


def local_checkpoint(folder: Path) -> str:
    """The shipped default weights when present, else a freshly initialised checkpoint saved in `folder`."""
    from au_annotate.weights import resolve_weights

    try:
        return str(resolve_weights(None))
    except Exception:
        from au_annotate.model import HTNet, HTNetConfig
        from au_annotate.weights import SEED25_AU_ORDER, save_checkpoint

        path = folder / "htnet-test.pt"
        if not path.exists():
            import torch

            torch.manual_seed(0)
            save_checkpoint(path, HTNet(), config=HTNetConfig(), au_names=SEED25_AU_ORDER)
        return str(path)


def spot_face0(path: Path, spot: dict | None = None) -> tuple[list, dict[int, float]]:
    """A real video through the product's tracker and one spotter on face0 (the real-video spotting tests): every
    window it emits and each frame's time in seconds from the first frame."""
    from au_annotate.decode import open_video
    from au_annotate.face import FaceTracker
    from au_annotate.spot import make_spotter

    windows: list = []
    times: dict[int, float] = {}
    with open_video(path, gray=True) as stream:
        tracker = FaceTracker(stream.info.fps)
        sp = make_spotter("roi-flow", stream.info.fps, spot)
        t0 = None
        for frame in stream:
            t0 = frame.pts_s if t0 is None else t0
            times[frame.index] = frame.pts_s - t0
            face = next((f for f in tracker.process_all(frame) if f.face_id == "face0"), None)
            windows += sp.process_frame(frame.index, frame.pts_s, face)
        windows += sp.flush()
    return windows, times
