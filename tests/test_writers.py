"""Output writers: registry, CSV dtypes and metadata, and read-back round trips for CSV, EAF, JSON and TextGrid."""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

import numpy as np
import pandas as pd
import pympi
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from praatio import textgrid

from au_annotate.records import DetectionFloor, Segment, VideoInfo, VideoJob, VideoResult
from au_annotate.writers import (
    WRITERS,
    CSVWriter,
    EAFWriter,
    JSONWriter,
    TextGridWriter,
    WriteContext,
    csv_columns,
    get_writers,
    output_path,
    read_csv_metadata,
    read_segments_csv,
    segments_dataframe,
    write_combined_csv,
    write_video_outputs,
)
from au_annotate.writers.tiers import plan_spans

AU_NAMES = ("AU04", "AU07", "AU12", "AU14")
CTX = WriteContext(
    tool_version="9.8.7",
    model_name="htnet-test",
    model_sha256="ab" * 32,
    settings={"formats": ["csv", "eaf"], "rules": None, "threshold": 0.5},
    au_names=AU_NAMES,
)


def seg(
    video: str,
    sid: int,
    onset: int,
    offset: int,
    fps: float = 30.0,
    *,
    present=(1, 0, 0, 0),
    face="face0",
    emotion: str = "",
    rule: str = "",
    kind: str = "micro",
    score: float = 0.8312,
) -> Segment:
    """A segment with frame times from `fps`, probabilities derived from `present`."""
    present_arr = np.array(present, dtype=bool)
    probs = np.where(present_arr, 0.9 - 0.01 * sid, 0.1 + 0.001 * sid).astype(np.float32)
    apex = (onset + offset) // 2
    aus = "+".join(str(int(n[2:])) for n, p in zip(AU_NAMES, present_arr, strict=True) if p)
    return Segment(
        video=video,
        face_id=face,
        segment_id=sid,
        kind=kind,
        onset_frame=onset,
        apex_frame=apex,
        offset_frame=offset,
        onset_s=round(onset / fps, 6),
        apex_s=round(apex / fps, 6),
        offset_s=round(offset / fps, 6),
        duration_s=round((offset - onset) / fps, 6),
        score=score,
        au_names=AU_NAMES,
        probs=probs,
        present=present_arr,
        aus=aus,
        emotion=emotion,
        rule=rule,
        flow_image=np.zeros((28, 28, 3), np.uint8),
    )


def make_result(
    video: Path, out_dir: Path, rel: str, segments: list[Segment], fps: float = 30.0, duration_s: float = 10.0
) -> VideoResult:
    """A done VideoResult for a (not necessarily existing) video file."""
    job = VideoJob(path=video, rel=PurePosixPath(rel), out_dir=out_dir)
    info = VideoInfo(
        path=video,
        backend="test",
        width=640,
        height=480,
        fps=fps,
        n_frames=int(duration_s * fps),
        duration_s=duration_s,
    )
    return VideoResult(
        job=job,
        status="done",
        info=info,
        segments=tuple(segments),
        frames=int(duration_s * fps),
        frames_with_face=int(duration_s * fps),
        faces=1,
        floors={"face0": DetectionFloor(pct_iod=1.5, regions=(("brow_l", 1.25), ("mouth_l", 1.75)), steps=120)},
    )


@pytest.fixture
def result(tmp_path: Path) -> VideoResult:
    """A unicode-named video in one folder, outputs in another; overlapping and one-frame segments included."""
    video_dir = tmp_path / "données vidéo"
    video_dir.mkdir()
    video = video_dir / "entrevista #3, 表情.mp4"
    video.write_bytes(b"not really a video")
    rel = "données vidéo/entrevista #3, 表情.mp4"
    segs = [
        seg(rel, 0, 30, 42, present=(1, 1, 0, 0), emotion="anger", rule="anger-prototype"),
        seg(rel, 1, 90, 99, present=(0, 0, 0, 0)),
        seg(rel, 2, 95, 110, present=(0, 0, 1, 0), emotion="happiness", rule="happiness"),  # overlaps 1
        seg(rel, 3, 150, 150, present=(0, 0, 1, 1)),  # one-frame window: zero length in seconds
        seg(rel, 4, 200, 260, present=(1, 0, 0, 0), kind="macro", score=2.5),
    ]
    return make_result(video, tmp_path / "out" / "données vidéo", rel, segs)


# --------------------------------------------------------------------------------------------- registry


def test_registry_names_and_extensions() -> None:
    assert set(WRITERS) == {"csv", "eaf", "json", "textgrid"}
    assert [w.name for w in get_writers(["all"])] == ["csv", "eaf", "json", "textgrid"]
    assert [w.extension for w in get_writers(["csv, EAF", "eaf", "json"])] == [".segments.csv", ".eaf", ".json"]
    assert [w.name for w in get_writers("textgrid")] == ["textgrid"]


def test_unknown_format_lists_choices() -> None:
    with pytest.raises(
        ValueError, match=r"unknown output format 'xlsx' \(choose from: csv, eaf, json, textgrid, all\)"
    ):
        get_writers(["csv", "xlsx"])


def test_output_path(result: VideoResult) -> None:
    assert output_path(result, CSVWriter()) == result.job.out_dir / "entrevista #3, 表情.segments.csv"
    assert output_path(result.job, TextGridWriter()).name == "entrevista #3, 表情.TextGrid"


def test_write_video_outputs_writes_every_format_and_no_temp_files(result: VideoResult) -> None:
    paths = write_video_outputs(result, CTX, ["all"])
    assert [p.name for p in paths] == [
        f"entrevista #3, 表情{e}" for e in (".segments.csv", ".eaf", ".json", ".TextGrid")
    ]
    assert sorted(p.name for p in result.job.out_dir.iterdir()) == sorted(p.name for p in paths)  # no .bak / temp


# --------------------------------------------------------------------------------------------- CSV


def test_csv_columns_and_pandas_dtypes(result: VideoResult) -> None:
    path = result.job.out_dir / "x.segments.csv"
    CSVWriter().write(result, path, CTX)
    df = pd.read_csv(path, comment="#")
    assert list(df.columns) == csv_columns(AU_NAMES)
    assert list(df.columns[:12]) == [
        "video",
        "face_id",
        "segment_id",
        "kind",
        "onset_frame",
        "apex_frame",
        "offset_frame",
        "onset_s",
        "apex_s",
        "offset_s",
        "duration_s",
        "score",
    ]
    assert list(df.columns[12:18]) == ["quality", "context", "AU04_p", "AU04_c", "AU07_p", "AU07_c"]
    assert list(df.columns[-5:]) == ["aus", "emotion_facs", "rule", "emotion_model", "emotion_model_p"]
    for col in ("segment_id", "onset_frame", "apex_frame", "offset_frame", "AU04_c", "AU14_c"):
        assert df[col].dtype == np.int64, col
    for col in ("onset_s", "apex_s", "offset_s", "duration_s", "score", "AU04_p", "AU14_p"):
        assert df[col].dtype == np.float64, col
    assert set(df["AU04_c"]) == {0, 1}
    # '#' and ',' inside a quoted file name do not cut the row; unicode survives
    assert (df["video"] == "données vidéo/entrevista #3, 表情.mp4").all()
    assert df["aus"].tolist()[0] == "4+7"
    assert pd.isna(df["aus"][1]) and pd.isna(df["emotion_facs"][1]) and pd.isna(df["rule"][1])  # empty -> NaN (documented)
    assert df["emotion_facs"][0] == "anger" and df["rule"][0] == "anger-prototype"
    expected = segments_dataframe(result)
    np.testing.assert_allclose(df["AU04_p"], expected["AU04_p"], atol=1e-6)
    np.testing.assert_allclose(df["onset_s"], [s.onset_s for s in result.segments], atol=1e-6)
    assert df["offset_frame"].tolist() == [42, 99, 110, 150, 260]


def test_read_segments_csv_keeps_text_as_text(tmp_path: Path) -> None:
    """A code that looks like a number ("4") stays text; empty values read back as ""."""
    rel = "a.mp4"
    r = make_result(tmp_path / "a.mp4", tmp_path, rel, [seg(rel, 0, 1, 5), seg(rel, 1, 10, 15, present=(0, 0, 0, 0))])
    path = tmp_path / "a.segments.csv"
    CSVWriter().write(r, path, CTX)
    assert pd.read_csv(path, comment="#")["aus"].dtype != object  # the pitfall read_segments_csv avoids
    df = read_segments_csv(path)
    assert df["aus"].tolist() == ["4", ""]
    assert df["emotion_facs"].tolist() == ["", ""]
    assert df["face_id"].tolist() == ["face0", "face0"]
    assert df["onset_frame"].dtype == np.int64 and df["AU04_p"].dtype == np.float64 and df["AU04_c"].dtype == np.int64


def test_csv_metadata_comments(result: VideoResult) -> None:
    path = result.job.out_dir / "m.segments.csv"
    CSVWriter().write(result, path, CTX)
    meta = read_csv_metadata(path)
    assert meta["model"] == "htnet-test"
    assert meta["model_sha256"] == "ab" * 32
    assert json.loads(meta["settings"]) == {"formats": ["csv", "eaf"], "rules": None, "threshold": 0.5}
    assert json.loads(meta["video"]) == "données vidéo/entrevista #3, 表情.mp4"
    assert meta["status"] == "done"
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# au-annotate 9.8.7")


def test_zero_segment_video_gets_header_only_csv(tmp_path: Path) -> None:
    r = make_result(tmp_path / "empty.mp4", tmp_path, "empty.mp4", [])
    path = output_path(r, CSVWriter())
    CSVWriter().write(r, path, CTX)
    df = pd.read_csv(path, comment="#")
    assert len(df) == 0
    assert list(df.columns) == csv_columns(AU_NAMES)


def test_combined_csv_has_all_segments_in_order(tmp_path: Path, result: VideoResult) -> None:
    rel = "b/other.mp4"
    other = make_result(tmp_path / "other.mp4", tmp_path / "out" / "b", rel, [seg(rel, 0, 5, 9, face="face1")])
    empty = make_result(tmp_path / "e.mp4", tmp_path / "out", "e.mp4", [])
    path = write_combined_csv([result, empty, other], tmp_path / "out" / "segments.csv", CTX)
    df = read_segments_csv(path)
    assert len(df) == 6
    assert df["video"].tolist() == [result.job.rel.as_posix()] * 5 + [rel]
    assert df["face_id"].tolist()[-1] == "face1"
    assert read_csv_metadata(path)["segments"] == "6"


def test_mixed_au_orders_are_refused(tmp_path: Path, result: VideoResult) -> None:
    s = seg("x.mp4", 0, 1, 5)
    odd = Segment(**{**s.__dict__, "au_names": ("AU07", "AU04", "AU12", "AU14")})
    with pytest.raises(ValueError, match="different AU orders"):
        segments_dataframe([result.segments[0], odd])


# --------------------------------------------------------------------------------------------- EAF


def _no_overlaps(spans: list[tuple[int, int]]) -> bool:
    spans = sorted(spans)
    return all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)) and all(s < e for s, e in spans)


def test_eaf_round_trip_matches_csv(result: VideoResult) -> None:
    ctx = WriteContext(**{**CTX.__dict__, "au_tiers": True})
    csv_path = output_path(result, CSVWriter())
    eaf_path = output_path(result, EAFWriter())
    CSVWriter().write(result, csv_path, ctx)
    EAFWriter().write(result, eaf_path, ctx)
    df = read_segments_csv(csv_path)
    assert eaf_path.read_text(encoding="utf-8").startswith('<?xml version="1.0" encoding="UTF-8"?>')
    eaf = pympi.Elan.Eaf(str(eaf_path))

    # media descriptor: URLs percent-encoded (unicode, '#', ',' and spaces), decoding back to the video; MIME type
    (media,) = eaf.get_linked_files()
    assert media["MIME_TYPE"] == "video/mp4"
    assert media["RELATIVE_MEDIA_URL"] == "../../donn%C3%A9es%20vid%C3%A9o/entrevista%20%233%2C%20%E8%A1%A8%E6%83%85.mp4"
    assert (eaf_path.parent / unquote(media["RELATIVE_MEDIA_URL"])).resolve() == result.job.path.resolve()
    assert media["MEDIA_URL"] == result.job.path.resolve().as_uri()  # the standard library's file URL, same bytes
    assert url2pathname(urlparse(media["MEDIA_URL"]).path) == str(result.job.path.resolve())
    props = dict(eaf.get_properties())
    assert props["au-annotate:tool_version"] == "9.8.7"
    assert props["au-annotate:model_sha256"] == "ab" * 32
    assert json.loads(props["au-annotate:settings"])["threshold"] == 0.5

    # segment 2 overlaps segment 1, so it goes to the overflow lane "segments 2"
    # the coder's review tiers (review, AUs (coder)) are checked in test_review.py
    tiers = {t for t in eaf.get_tier_names() if not t.startswith(("review", "AUs (coder)"))}
    assert {"segments", "AUs", "emotion_facs", "segments 2", "AUs 2", "emotion_facs 2", "AU04", "AU12 2"} <= tiers
    got: dict[str, list[tuple[int, int, str]]] = {t: eaf.get_annotation_data_for_tier(t) for t in tiers}
    for t, anns in got.items():
        assert _no_overlaps([(a[0], a[1]) for a in anns]), t

    # every CSV row appears on the segments/AUs/emotion_facs/AU tiers with the same times and values
    def find(base: str, start: int) -> list[tuple[int, int, str]]:
        return [a for t, anns in got.items() if t == base or t.startswith(base + " ") for a in anns if a[0] == start]

    n_annotations = 0
    for row in df.itertuples(index=False):
        start = round(row.onset_s * 1000)
        end = round(row.offset_s * 1000) if row.offset_frame > row.onset_frame else start + round(1000 / 30)
        (s,) = find("segments", start)
        assert (s[1], s[2]) == (end, f"{row.kind} {row.score:.2f}×")  # the score as a multiple of the threshold
        assert [a[2] for a in find("AUs", start)] == ([row.aus] if row.aus else [])
        assert [a[2] for a in find("emotion_facs", start)] == ([row.emotion_facs] if row.emotion_facs else [])
        for name in AU_NAMES:
            assert [a[2] for a in find(name, start)] == ([name] if getattr(row, f"{name}_c") else [])
        n_annotations += 1 + bool(row.aus) + bool(row.emotion_facs) + sum(getattr(row, f"{n}_c") for n in AU_NAMES)
    assert sum(len(a) for a in got.values()) == n_annotations

    # controlled vocabularies: AU names with FACS descriptions, and emotions, bound through linguistic types
    assert {"AUs", "emotions"} <= set(eaf.get_controlled_vocabulary_names())
    au_values = {v[0][0][0]: v[0][0][2] for v in eaf.get_cv_entries("AUs").values()}
    assert au_values["AU04"] == "Brow Lowerer" and au_values["AU12"] == "Lip Corner Puller"
    assert eaf.get_parameters_for_linguistic_type("AU")["CONTROLLED_VOCABULARY_REF"] == "AUs"
    assert eaf.get_parameters_for_tier("AU04")["LINGUISTIC_TYPE_REF"] == "AU"


def test_eaf_without_au_tiers_and_several_faces(tmp_path: Path) -> None:
    rel = "two faces.mov"
    segs = [seg(rel, 0, 10, 20, face="face0"), seg(rel, 1, 12, 18, face="face1", present=(0, 1, 0, 0))]
    r = make_result(tmp_path / rel, tmp_path, rel, segs)
    path = output_path(r, EAFWriter())
    EAFWriter().write(r, path, CTX)
    eaf = pympi.Elan.Eaf(str(path))
    assert set(eaf.get_tier_names()) == {
        "segments face0",
        "AUs face0",
        "emotion_facs face0",
        "emotion_model face0",
        "segments face1",
        "AUs face1",
        "emotion_facs face1",
        "emotion_model face1",
        "review face0",
        "AUs (coder) face0",
        "review face1",
        "AUs (coder) face1",
    }
    assert eaf.get_linked_files()[0]["MIME_TYPE"] == "video/quicktime"
    assert eaf.get_linked_files()[0]["RELATIVE_MEDIA_URL"] == "./two%20faces.mov"
    assert eaf.get_parameters_for_tier("AUs face1")["PARTICIPANT"] == "face1"
    assert eaf.get_annotation_data_for_tier("AUs face1") == [(400, 600, "7")]


def test_eaf_overwrites_without_leaving_backup(result: VideoResult) -> None:
    path = output_path(result, EAFWriter())
    EAFWriter().write(result, path, CTX)
    EAFWriter().write(result, path, CTX)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_plan_spans_uses_fewest_lanes_and_never_zero_length() -> None:
    segs = [seg("v", 0, 0, 30), seg("v", 1, 10, 20), seg("v", 2, 15, 25), seg("v", 3, 30, 30), seg("v", 4, 21, 29)]
    spans = {sp.segment.segment_id: sp for sp in plan_spans(segs, fps=30)}
    assert spans[0].lane == 0 and spans[1].lane == 1 and spans[2].lane == 2
    assert spans[4].lane == 1  # reuses lane 1 once segment 1 has ended
    assert spans[3].lane == 0 and (spans[3].start_ms, spans[3].end_ms) == (1000, 1033)  # touches segment 0's end


# --------------------------------------------------------------------------------------------- JSON, TextGrid


def test_json_round_trip(result: VideoResult) -> None:
    path = output_path(result, JSONWriter())
    JSONWriter().write(result, path, CTX)
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["schema"] == "au-annotate/segments-v2"
    assert doc["metadata"]["model_sha256"] == "ab" * 32 and doc["metadata"]["tool_version"] == "9.8.7"
    assert doc["video"]["rel"] == "données vidéo/entrevista #3, 表情.mp4" and doc["video"]["info"]["fps"] == 30.0
    assert doc["au_names"] == list(AU_NAMES)
    assert len(doc["segments"]) == 5
    first = doc["segments"][0]
    assert first["active"] == ["AU04", "AU07"] and first["aus"] == "4+7" and first["emotion_facs"] == "anger"
    assert first["probs"]["AU04"] == pytest.approx(0.9, abs=1e-6)
    assert first["onset_frame"] == 30 and first["offset_s"] == pytest.approx(1.4)
    assert doc["video"]["detection_floor"] == {"face0": {"pct_iod": 1.5, "steps": 120,
                                                         "regions": {"brow_l": 1.25, "mouth_l": 1.75}}}


def test_textgrid_round_trip(result: VideoResult) -> None:
    path = output_path(result, TextGridWriter())
    TextGridWriter().write(result, path, WriteContext(**{**CTX.__dict__, "au_tiers": True}))
    tg = textgrid.openTextgrid(str(path), includeEmptyIntervals=False)
    assert tg.maxTimestamp == pytest.approx(10.0)
    segs = tg.getTier("segments").entries + tg.getTier("segments 2").entries
    assert len(segs) == 5
    by_start = {round(e.start * 1000): e for e in segs}
    for s in result.segments:
        e = by_start[round(s.onset_s * 1000)]
        assert e.label == f"{s.kind} {s.score:.2f}×"
        assert e.end > e.start
    assert [e.label for e in tg.getTier("emotion_facs").entries + tg.getTier("emotion_facs 2").entries] == ["anger", "happiness"]
    assert [e.label for e in tg.getTier("AU14").entries] == ["AU14"]
    assert "sha256 " + "ab" * 32 in tg.getTier("au-annotate").entries[0].label


def test_textgrid_has_the_model_emotion_tier(result: VideoResult, tmp_path: Path) -> None:
    """The model's 3-class emotion goes on its own tier, as in the EAF (label `negative 0.81`)."""
    from dataclasses import replace as dc_replace

    segs = tuple(dc_replace(s, emotion_model="negative", emotion_model_p=0.8125) for s in result.segments[:1])
    r = dc_replace(result, segments=segs)
    path = output_path(r, TextGridWriter())
    TextGridWriter().write(r, path, CTX)
    tg = textgrid.openTextgrid(str(path), includeEmptyIntervals=False)
    assert [e.label for e in tg.getTier("emotion_model").entries] == ["negative 0.81"]


def test_outputs_name_unicode_paths_on_disk(result: VideoResult) -> None:
    paths = write_video_outputs(result, CTX, ["csv", "eaf", "textgrid", "json"])
    for p in paths:
        assert p.exists() and "表情" in os.fsdecode(p)
        p.read_text(encoding="utf-8")  # every output is valid UTF-8


def test_no_face_video_gets_readable_outputs_in_every_format(tmp_path: Path) -> None:
    job = VideoJob(path=tmp_path / "dark.avi", rel=PurePosixPath("dark.avi"), out_dir=tmp_path / "out")
    r = VideoResult(job=job, status="no_face", error="dark.avi: no face found")
    csv_p, eaf_p, json_p, tg_p = write_video_outputs(r, CTX, ["all"])
    df = pd.read_csv(csv_p, comment="#")
    assert len(df) == 0 and list(df.columns) == csv_columns(AU_NAMES)
    assert read_csv_metadata(csv_p)["error"] == "dark.avi: no face found"
    eaf = pympi.Elan.Eaf(str(eaf_p))
    assert eaf.get_linked_files()[0]["MIME_TYPE"] == "video/x-msvideo"
    assert all(not eaf.get_annotation_data_for_tier(t) for t in eaf.get_tier_names())
    doc = json.loads(json_p.read_text(encoding="utf-8"))
    assert doc["video"]["status"] == "no_face" and doc["video"]["info"] is None and doc["segments"] == []
    tg = textgrid.openTextgrid(str(tg_p), includeEmptyIntervals=False)
    assert len(tg.getTier("segments").entries) == 0


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 40)), min_size=0, max_size=25))
def test_plan_spans_property(windows: list[tuple[int, int]]) -> None:
    """Spans never overlap on a lane, are never empty, and use as many lanes as the deepest overlap (the minimum)."""
    segs = [seg("v", i, on, on + length) for i, (on, length) in enumerate(windows)]
    spans = plan_spans(segs, fps=30)
    assert sorted(sp.segment.segment_id for sp in spans) == list(range(len(segs)))
    for lane in {sp.lane for sp in spans}:
        assert _no_overlaps([(sp.start_ms, sp.end_ms) for sp in spans if sp.lane == lane])
    depth = max((sum(o.start_ms <= sp.start_ms < o.end_ms for o in spans) for sp in spans), default=0)
    assert 1 + max((sp.lane for sp in spans), default=-1) == depth


def test_context_column_round_trips_through_csv_json_and_eaf(tmp_path: Path) -> None:
    """A window's face-state context (speech, blink, ...) is written in the CSV, the JSON and the EAF segment label,
    and reads back from each."""
    import dataclasses

    segs = [dataclasses.replace(seg("v.mp4", 0, 30, 42), context="speech+blink"), seg("v.mp4", 1, 90, 99)]
    res = make_result(tmp_path / "v.mp4", tmp_path, "v.mp4", segs)
    CSVWriter().write(res, tmp_path / "v.segments.csv", CTX)
    back = read_segments_csv(tmp_path / "v.segments.csv")
    assert back["context"].tolist() == ["speech+blink", ""]
    assert pd.read_csv(tmp_path / "v.segments.csv", comment="#")["context"].tolist()[0] == "speech+blink"
    JSONWriter().write(res, tmp_path / "v.json", CTX)
    doc = json.loads((tmp_path / "v.json").read_text())
    assert [s["context"] for s in doc["segments"]] == ["speech+blink", ""]
    EAFWriter().write(res, tmp_path / "v.eaf", CTX)
    eaf = pympi.Elan.Eaf(str(tmp_path / "v.eaf"))
    labels = sorted(eaf.get_annotation_data_for_tier(next(t for t in eaf.get_tier_names() if t.startswith("segments"))))
    assert labels[0][2].endswith("(speech+blink)") and "(" not in labels[1][2]


def test_a_csv_written_before_the_emotion_rename_reads_under_todays_names(tmp_path: Path) -> None:
    """Outputs of a run before 2026-12-08 call the FACS-rule emotion `emotion`: read_segments_csv and the resume path
    (manifest.segments_from_csv) give it as `emotion_facs`, text kept as text."""
    from au_annotate.manifest import segments_from_csv

    old = tmp_path / "old.segments.csv"
    old.write_text(
        "# au-annotate 0.1.0 segments table\n"
        "video,face_id,segment_id,kind,onset_frame,apex_frame,offset_frame,onset_s,apex_s,offset_s,duration_s,score,"
        "quality,context,AU04_p,AU04_c,aus,emotion,rule,emotion_model,emotion_model_p\n"
        '"v.mp4","face0",0,"micro",10,14,20,0.333,0.467,0.667,0.367,2.0,"ok","",0.9,1,"4","anger","anger-x","",\n',
        encoding="utf-8")
    df = read_segments_csv(old)
    assert "emotion" not in df.columns and df["emotion_facs"].tolist() == ["anger"] and df["aus"].tolist() == ["4"]
    (seg,) = segments_from_csv(old, "v.mp4")
    assert seg.emotion == "anger" and seg.rule == "anger-x" and seg.aus == "4"
