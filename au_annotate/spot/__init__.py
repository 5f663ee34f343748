"""Streaming spotters: aligned face crops in, candidate expression windows (onset, apex, offset, score, kind) out.

The parts, one module each (PySceneDetect-style: a detector interface with `process_frame` + `flush`):
`config.py` (SpotConfig), `regions.py` (region motion: flow, face motion removed, one vector per region; steps 1-3),
`detector.py` (one time scale: transient score, adaptive threshold, peaks; steps 4-5), `windows.py` (onset, offset,
durations; step 6), `judge.py` (quality gate and face state; steps 7-8), `held.py` (held expressions, optional; step
8), `spotter.py` (RoiFlowSpotter, the recipe that runs them over one face and owns the rings they share;
make_spotter).

The default spotter, "roi-flow", follows the no-training optical-flow recipe (He et al., MEGC 2021) adapted to a
stream:

1. Each aligned crop is downscaled (`flow_size`) and DIS optical flow (ultrafast preset, finest level
   `dis_finest_scale`) is computed against the crop k frames back (k = `k_s` seconds, about half a micro-expression)
   and, for macro-expressions, K frames back (`macro_k_s`). The micro signal is sampled at up to `micro_rate` frames
   per second (every frame at 30 fps, every 2nd at 200 fps), the macro signal at about `macro_rate`.
2. Head motion is cancelled by fitting a motion model to the flow over the face (the worst-fitting 30 % of points,
   i.e. moving facial parts and background, dropped and the fit repeated) and subtracting it. `motion_model` affine
   (default) is the in-plane head motion; quadratic/cubic add the smooth non-planar part (a face is not flat: a small
   3-D head turn leaves a residual an affine model cannot remove). Measured in docs/spotting.md (round 6).
3. Regions of interest placed from the 5 landmarks (brows, upper eyelids, lower lids, cheeks, mouth corners, upper and
   lower lip): the mean of the strongest residual vectors (`top_fraction`; 1 = the plain region mean, computed as the
   mean flow minus the model at the region's mean basis, without a residual per pixel) gives one motion vector per
   region and frame.
4. The vectors are smoothed in time (`smooth_s`). A facial movement that goes and comes back makes the k-back motion at
   the apex point one way and the motion k frames later point the other way, so the per-region score is
   sqrt(max(0, -v(c) . v(c + k))): large at the apex of a transient movement, near zero for noise (random directions),
   for slow drifts and for steps.
5. Adaptive threshold: each region's score is divided by `p` times its robust noise level (median of the region's motion
   magnitude over a sliding history of `history_s` seconds, floored by `min_motion_px`); the spotting signal is the
   largest ratio over the regions, and a peak is the maximum of a run above 1. Peaks closer than `min_gap_s`
   (default 2 k) merge into the stronger one.
6. Onset and offset: optical flow from the apex crop to crops before and after it; the displacement of the active regions
   grows as we move away from the apex and levels off where the movement begins/ends: onset/offset are where it reaches
   `extent_fraction` of that first plateau.
7. Duration <= `max_micro_s` is a micro-expression, longer (up to `max_window_s`) a macro-expression; each time scale
   keeps only its own kind, and a macro window over an already reported micro one is dropped. Eye-area-only events whose
   motion at the apex points down (an upper lid closing) are blinks: labelled "blink" (default), dropped, or kept
   (`blinks`). With the landmark model on (`landmarks`, the default), blinks come from the eyes' openness instead,
   and every window carries its context (speech, blink, head motion; au_annotate/facestate.py). Optionally
   (`return_ratio` > 0, off by default) a micro window must also come back: its net onset->offset motion at most
   `return_ratio` of its excursion.
8. Quality gate (au_annotate/quality.py): every micro/macro window gets a `quality` (ok, occlusion, head_motion,
   tracking_lost, lighting) from the template score, crop brightness, the rigid fit's rotation/scale and the spread
   of the residual over the face around it; the pipeline reports only "ok" ones unless `gated = "label"`. An optional
   local noise level (`context_s`) raises a region's threshold while that region keeps moving around the event.
   Held expressions (`held = "on"`, off by default; held.py): a change of the brows or the mouth that stays, proposed
   by the macro motion and confirmed by the landmarks' geometry in the head's own frame, is a macro window with context
   `held`; a detector's window that starts such a change becomes that window (one window per movement).
9. Detection floor (`detection_floor()`, records.DetectionFloor): the thresholds each region was held to, as medians
   over the stream in % of the inter-ocular distance, so a video that yields nothing says how small a movement it
   could have shown (bounded histograms; measured in docs/spotting.md, round 8).

All durations are in seconds and converted with the video's nominal frame rate; every buffer is a ring sized from
seconds, so the state is bounded for any video length. A window is emitted at most `max_latency_frames` frames after its
onset frame.

Variable frame rate: the frames' timestamps (`pts_s`) decide what depends on real time. A window's duration (micro vs
macro, `min_duration_s`, `max_window_s`) is measured from its onset frame's timestamp to the end of its offset frame,
and the k- and K-back distances of both detectors follow the timestamps (the frames nearest to k_s seconds before and
after, for local rates from half to twice the nominal one). The other distances stay in nominal frames: the smoothing
(a frame or two), the noise history, the peak gap and the onset/offset search radius and stall; at a local rate far
from the nominal one they cover proportionally more or less time. At a constant rate everything is as before: the
timestamps then give exactly k frames and (offset - onset + 1) / fps seconds.

`on_signal(detector, frame, value)`, when given, receives every decided sample of both detectors ("micro", "macro"):
the frame index and the value its threshold (1.0) is applied to, in frame order per detector (a window's score is its
detector's value at its apex).
"""

from au_annotate.spot.config import MOTION_DEGREES, SpotConfig, SpotError
from au_annotate.spot.detector import DIP_RATIO, _Candidate, _Detector
from au_annotate.spot.regions import EYE_AREA_ROIS, EYE_ROIS, REF_SIZE, ROI_NAMES, ROIS
from au_annotate.spot.spotter import SPOTTERS, RoiFlowSpotter, SignalHook, Spotter, make_spotter

__all__ = [
    "DIP_RATIO", "EYE_AREA_ROIS", "EYE_ROIS", "MOTION_DEGREES", "REF_SIZE", "ROIS", "ROI_NAMES", "SPOTTERS",
    "RoiFlowSpotter", "SignalHook", "SpotConfig", "SpotError", "Spotter", "_Candidate", "_Detector", "make_spotter",
]
