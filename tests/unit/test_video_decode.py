"""Video decoding on real clips: rotation metadata, out-of-order storage, headers without a frame count,
corrupted files, and the frames make_shards writes for them."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from unitrans_ds.data.video_decode import VideoDecodeError, decode_clip
from unitrans_ds.make_shards import main

VIDEOS = Path(__file__).parents[1] / "fixtures" / "make_shards" / "video"


def _all_frames(path: Path) -> list[tuple[float, np.ndarray]]:
    """Every frame of the clip, decoded plainly (no rotation), sorted by timestamp: the reference."""
    with av.open(str(path)) as c:
        frames = [(float(f.time), f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
    return sorted(frames, key=lambda tf: tf[0])


def _tkhd_matrix_offset(data: bytes) -> int:
    """Byte offset of the 3x3 display matrix in the (only) track header box of a QuickTime file."""
    i = data.find(b"tkhd")
    assert i > 0, "no tkhd box"
    return i - 4 + (48 if data[i + 4] == 0 else 60)


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_rotation_metadata_gives_upright_frames(tmp_path, degrees):
    """video_0.mov with the display matrix of the real video_<deg>.mov must come out as video_0's frames turned
    <deg> degrees clockwise (QuickTime's convention, which players follow)."""
    base = (VIDEOS / "video_0.mov").read_bytes()
    rotated = (VIDEOS / f"video_{degrees}.mov").read_bytes()
    b, r = _tkhd_matrix_offset(base), _tkhd_matrix_offset(rotated)
    patched = tmp_path / f"video_0_as_{degrees}.mov"
    patched.write_bytes(base[:b] + rotated[r : r + 36] + base[b + 36 :])

    reference = _all_frames(VIDEOS / "video_0.mov")
    clip = decode_clip(patched, 3)
    assert clip.decoded == 3
    for k in range(3):
        expected = np.rot90(reference[k][1], k=-degrees // 90)
        assert np.array_equal(np.asarray(clip.frames[k]), expected), f"frame {k} is not upright"
    assert (clip.width, clip.height) == (expected.shape[1], expected.shape[0])


def test_real_rotated_clips_have_display_size():
    """The real rotated files are stored 568x320; shown upright, 90 and 270 are 320 wide and 568 tall."""
    sizes = {deg: decode_clip(VIDEOS / f"video_{deg}.mov", 3).frames[0].size for deg in (0, 90, 180, 270)}
    assert sizes == {0: (568, 320), 90: (320, 568), 180: (568, 320), 270: (320, 568)}


def test_unordered_frames_come_out_in_time_order():
    reference = _all_frames(VIDEOS / "unordered.mov")
    clip = decode_clip(VIDEOS / "unordered.mov", 4)
    assert clip.times == sorted(clip.times)
    assert clip.times == pytest.approx([t for t, _ in reference])
    for frame, (_, ref) in zip(clip.frames, reference):
        assert np.array_equal(np.asarray(frame), ref)


def test_pancake_frames_are_at_segment_centres():
    """The mkv's header has no frame count, so the decoder counts; each kept frame is the one on screen at the
    centre of its segment, and the stored time is that frame's timestamp."""
    with av.open(str(VIDEOS / "flipping_a_pancake.mkv")) as c:
        assert c.streams.video[0].frames == 0  # the premise: no count in the header
    reference = _all_frames(VIDEOS / "flipping_a_pancake.mkv")
    fps = 30.0
    clip = decode_clip(VIDEOS / "flipping_a_pancake.mkv", 16)
    assert clip.decoded == len(reference) == 310
    assert clip.duration == pytest.approx(len(reference) / fps, abs=1 / fps)
    ref_times = np.array([t for t, _ in reference])
    for k, (time, frame) in enumerate(zip(clip.times, clip.frames)):
        centre = (k + 0.5) * clip.duration / 16
        assert centre - 1 / fps - 1e-6 <= time <= centre + 1e-6, (k, time, centre)
        shown = int(np.searchsorted(ref_times, centre, side="right")) - 1
        assert time == pytest.approx(ref_times[shown])
        assert np.array_equal(np.asarray(frame), reference[shown][1])


def test_corrupted_and_missing_clips_raise_with_reason(tmp_path):
    with pytest.raises(VideoDecodeError, match="decoding failed"):
        decode_clip(VIDEOS / "corrupted.mp4", 8)
    with pytest.raises(VideoDecodeError, match="file not found"):
        decode_clip(tmp_path / "nope.mp4", 8)
    (tmp_path / "text.mp4").write_text("not a video")
    with pytest.raises(VideoDecodeError):
        decode_clip(tmp_path / "text.mp4", 8)


def _samples(out: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for shard in sorted(out.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return samples


def test_make_shards_video_samples_and_corrupted_skip(tmp_path, capsys):
    """MSRVTT-QA records over real clips: one sample per video with F upright JPEG frames in time order, and
    the corrupted clip a counted skip with its reason."""
    media = tmp_path / "videos"
    media.mkdir()
    shutil.copy(VIDEOS / "flipping_a_pancake.mkv", media / "video7010.mp4")
    shutil.copy(VIDEOS / "video_90.mov", media / "video7011.mp4")
    shutil.copy(VIDEOS / "corrupted.mp4", media / "video7012.mp4")
    records = [
        {"video_id": 7010, "question": "what is being flipped?", "answer": "pancake", "id": 1},
        {"video_id": 7011, "question": "what is shown?", "answer": "keyboard", "id": 2},
        {"video_id": 7012, "question": "what is this?", "answer": "nothing", "id": 3},
        {"video_id": 7010, "question": "who is cooking?", "answer": "man", "id": 4},
    ]
    ann = tmp_path / "qa.json"
    ann.write_text(json.dumps(records))
    out = tmp_path / "out"
    rc = main(["--format", "msrvtt-qa", "--annotations", str(ann), "--media-root", str(media), "--out", str(out),
               "--split", "test", "--frames", "8", "--workers", "1", "--no-progress"])  # fmt: skip
    assert rc == 0
    assert "skipped 1" in capsys.readouterr().out
    samples = _samples(out)
    assert sorted(samples) == ["video7010", "video7011"]
    pancake = json.loads(samples["video7010"]["json"])
    assert [q["answers"] for q in pancake["questions"]] == [["pancake"], ["man"]]
    assert pancake["num_frames"] == 8 and len(pancake["frame_times"]) == 8
    assert pancake["frame_times"] == sorted(pancake["frame_times"])
    assert sorted(k for k in samples["video7010"] if k != "json") == [f"f{k:03d}.jpg" for k in range(8)]
    rotated = json.loads(samples["video7011"]["json"])
    frame = Image.open(io.BytesIO(samples["video7011"]["f000.jpg"]))
    assert frame.format == "JPEG" and frame.size == (rotated["width"], rotated["height"]) == (320, 568)
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert [(s["id"], s["reason"].split(":")[0]) for s in skipped] == [("video7012", "video decoding failed")]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["frames"] == 8 and manifest["skipped"] == 1 and manifest["tasks"] == ["vqa"]
