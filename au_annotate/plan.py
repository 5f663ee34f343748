"""Planning a run: discover the videos and check every option (formats, faces, timeouts, weights, rules, engine)
before anything is created on disk, then decide which videos an earlier run already finished (resume).

A usage error therefore never leaves an output folder behind, and a resumed run redoes only what changed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from au_annotate._version import __version__
from au_annotate.discover import DiscoverError, Discovery, discover
from au_annotate.engines import Engine, EngineError, get_engine
from au_annotate.errors import AnnotateError
from au_annotate.face import parse_faces
from au_annotate.flow import TVL1_PRESETS
from au_annotate.manifest import Manifest, output_key, segments_from_csv
from au_annotate.ranges import assign_ranges
from au_annotate.records import VideoJob, VideoResult
from au_annotate.segments import ModelBundle, load_model
from au_annotate.settings import Settings
from au_annotate.writers import WriteContext, get_writers


@dataclass
class RunPlan:
    """What a run will do, fully checked: its inputs, output folder, settings (with the model's input layout), the
    loaded model, the engine and the writers' context."""

    paths: tuple[str, ...]
    out: Path
    settings: Settings
    found: Discovery
    model: ModelBundle
    engine: Engine
    ctx: WriteContext
    errors: tuple[str, ...] = ()  # input problems that concern no single video (a range table row naming no input)


@dataclass
class Resume:
    """The videos to process now, the results reused from an earlier run, and each video's output key."""

    todo: list[VideoJob] = field(default_factory=list)
    reused: dict[VideoJob, VideoResult] = field(default_factory=dict)
    keys: dict[VideoJob, str | None] = field(default_factory=dict)


def plan_run(paths: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str], settings: Settings) -> RunPlan:
    """Discover the videos under `paths` and check every option; creates nothing.

    Raises DiscoverError (missing input, no videos) or AnnotateError (formats, faces, weights, rules, engine...)."""
    from au_annotate.infer import InferenceError
    from au_annotate.rules import RulesError
    from au_annotate.weights import WeightsError

    out = Path(out_dir)
    found = discover(paths, out, recursive=settings.recursive)
    if not found.jobs:
        where = ", ".join(str(p) for p in paths)
        skipped = f" ({len(found.skipped)} other files skipped)" if found.skipped else ""
        raise DiscoverError(f"{where}: no video files found{skipped}")
    try:
        _check_options(settings)
        jobs, errors = assign_ranges(found.jobs, settings.ranges, settings.range_table, settings.range_tier)
        found = replace(found, jobs=jobs)
        model = load_model(settings)
        settings = settings_for_model(settings, model)
        engine = get_engine(settings.engine, **_engine_options(settings))
    except (ValueError, OSError, WeightsError, RulesError, InferenceError, EngineError) as e:
        raise AnnotateError(str(e)) from None
    ctx = WriteContext(tool_version=__version__, model_name=model.name, model_sha256=model.sha256,
                       settings=settings.as_dict(), au_tiers=settings.au_tiers, au_names=model.decoder.au_names,
                       uncalibrated=model.decoder.uncalibrated,
                       thresholds=tuple((au, round(float(t), 6)) for au, t in zip(model.decoder.au_names,
                                                                                   model.decoder.thresholds, strict=True)
                                        if au not in model.decoder.uncalibrated))
    return RunPlan(paths=tuple(str(p) for p in paths), out=out, settings=settings, found=found, model=model,
                   engine=engine, ctx=ctx, errors=tuple(errors))


def _check_options(settings: Settings) -> None:
    """The options that need no model: output formats, the faces limit, the stall timeout (ValueError)."""
    get_writers(settings.formats)
    parse_faces(settings.faces)
    if not isinstance(settings.stall_timeout_s, int | float) or not settings.stall_timeout_s > 0:
        raise ValueError(f"stall_timeout_s must be a positive number of seconds, got {settings.stall_timeout_s!r}")
    if settings.tvl1 not in TVL1_PRESETS:
        raise ValueError(f"tvl1 must be one of {', '.join(TVL1_PRESETS)}, got {settings.tvl1!r}")


def settings_for_model(settings: Settings, model: ModelBundle) -> Settings:
    """`input_layout = auto` becomes the layout the model was trained on; any other value must match it. A checkpoint in
    another encoding than the seed's gets it appended (``face:htnet-uvs``): the flow stage computes what it names."""
    layout = settings.input_layout
    if layout == "auto":
        layout = model.input_layout
    elif layout.partition(":")[0] != model.input_layout:
        raise ValueError(f"{model.name}: the model was trained on '{model.input_layout}' flow pictures, not "
                         f"'{settings.input_layout}': use --input-layout {model.input_layout} or other weights")
    layout = layout.partition(":")[0]
    if model.input_encoding != "seed-hsv":
        layout = f"{layout}:{model.input_encoding}"
    return settings.replace(input_layout=layout)


def _engine_options(settings: Settings) -> dict[str, object]:
    if settings.engine == "local":
        from au_annotate.engines.local import default_jobs

        return {"jobs": settings.jobs or default_jobs()}
    return {"address": settings.ray_address, "jobs": settings.jobs}


def resume(plan: RunPlan, manifest: Manifest) -> Resume:
    """Split the discovered videos into those to process and those whose outputs an earlier run left up to date (same
    file, settings and model: the manifest's key), re-reading the latter's segments from their CSV."""
    out = Resume()
    for job in plan.found.jobs:
        try:
            out.keys[job] = output_key(job, plan.settings, plan.model.sha256)
        except OSError:
            out.keys[job] = None
        key = out.keys[job]
        entry = None if plan.settings.overwrite or key is None else manifest.reusable(job, key)
        reused = _reuse(job, entry, plan.out) if entry is not None else None
        if reused is None:
            out.todo.append(job)
        else:
            out.reused[job] = reused
    return out


def _reuse(job: VideoJob, entry: dict, out: Path) -> VideoResult | None:
    """The earlier result of `job` from its manifest entry and CSV; None when that CSV cannot be read back."""
    csv_out = job.out_dir / f"{job.stem}.segments.csv"
    try:
        segs = segments_from_csv(csv_out, job.rel.as_posix()) if csv_out.is_file() else ()
    except Exception:  # unreadable earlier output: recompute instead of trusting it
        return None
    return VideoResult(job=job, status="skipped", error=None, segments=segs, frames=int(entry.get("frames", 0)),
                       frames_with_face=int(entry.get("frames_with_face", 0)),
                       decoded_s=float(entry.get("decoded_s") or 0.0),
                       outputs=tuple(out / o for o in entry.get("outputs", [])),
                       warnings=tuple(w for w in entry.get("warnings") or [] if isinstance(w, str)))
