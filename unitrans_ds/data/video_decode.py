"""Decode F frames of a video clip with PyAV: upright, in time order, at the centres of F equal segments.

Called by `shard_writer` (one clip per worker call). The sampling matches BLIP-style video evaluation: the
clip's duration D is cut into F equal segments and the frame shown at each segment centre
`t_k = (k + 0.5) * D / F` is kept (the last frame whose timestamp is <= t_k). Working in timestamps rather than
frame indices keeps the choice right for variable frame rates and for streams whose decoder hands frames out
of presentation order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import av
from PIL import Image


class VideoDecodeError(RuntimeError):
    """The clip cannot be decoded; the message says why (it becomes the skip reason)."""


@dataclass
class DecodedClip:
    """`frames`: F upright RGB images in time order. `times`: their timestamps in seconds from the stream
    start. `duration`: seconds. `width`/`height`: upright size of the stored frames. `decoded`: frames decoded."""

    frames: list[Image.Image]
    times: list[float]
    duration: float
    width: int
    height: int
    decoded: int


def segment_centres(duration: float, num_frames: int) -> list[float]:
    """Centres (seconds) of `num_frames` equal segments of `[0, duration)`."""
    return [(k + 0.5) * duration / num_frames for k in range(num_frames)]


def upright(image: Image.Image, rotation: float) -> Image.Image:
    """Apply the stream's display rotation (PyAV's `frame.rotation`, degrees counter-clockwise, as FFmpeg's
    `av_display_rotation_get`) so the image looks as a player shows it (FFmpeg's autorotate)."""
    turn = round(rotation / 90) % 4
    if turn == 1:
        return image.transpose(Image.Transpose.ROTATE_90)
    if turn == 2:
        return image.transpose(Image.Transpose.ROTATE_180)
    if turn == 3:
        return image.transpose(Image.Transpose.ROTATE_270)
    return image


def _frame_time(frame: av.VideoFrame, index: int, fps: float) -> float:
    # Some containers leave pts unset; fall back to the nominal rate.
    return float(frame.time) if frame.time is not None else index / fps


def _stream_info(container: av.container.InputContainer) -> tuple[av.video.stream.VideoStream, float, float | None]:
    if not container.streams.video:
        raise VideoDecodeError("no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    fps = float(stream.average_rate or stream.guessed_rate or 25)
    duration = None
    if stream.frames and stream.duration and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    return stream, fps, duration


def _count_pass(path: Path) -> tuple[float, float]:
    """First pass for headers without a frame count: decode every frame for its timestamp.

    Returns (start time, duration) where the duration runs to the end of the last frame.
    """
    times: list[float] = []
    with av.open(str(path)) as container:
        stream, fps, _ = _stream_info(container)
        for i, frame in enumerate(container.decode(stream)):
            times.append(_frame_time(frame, i, fps))
    if not times:
        raise VideoDecodeError("no decodable frames")
    times.sort()
    step = min((b - a for a, b in zip(times, times[1:]) if b > a), default=1.0 / fps)
    return times[0], times[-1] - times[0] + step


def decode_clip(path: str | Path, num_frames: int, max_side: int | None = None) -> DecodedClip:
    """Decode `num_frames` frames of the clip at `path` (see the module docstring for which ones).

    The duration comes from the stream header when it states a frame count and a duration; otherwise a
    first decoding pass counts the frames. `max_side` shrinks frames whose longer side exceeds it (bicubic).
    Raises `VideoDecodeError` for a missing, empty or undecodable file, with the reason.
    """
    path = Path(path)
    if not path.is_file():
        raise VideoDecodeError("file not found")
    decoded = 0
    try:
        with av.open(str(path)) as container:
            stream, fps, duration = _stream_info(container)
            start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
            if duration is None:
                start, duration = _count_pass(path)
            targets = [start + t for t in segment_centres(duration, num_frames)]
            chosen: list[tuple[float, av.VideoFrame] | None] = [None] * num_frames
            for frame in container.decode(stream):
                t = _frame_time(frame, decoded, fps)
                decoded += 1
                for k, target in enumerate(targets):
                    chosen[k] = _better(chosen[k], (t, frame), target)
    except av.FFmpegError as e:
        # The frame count at failure varies with decoder threading, so it stays out of the (recorded) reason.
        raise VideoDecodeError(f"decoding failed: {e}") from None
    if decoded == 0 or any(c is None for c in chosen):
        raise VideoDecodeError("no decodable frames")
    frames = [_to_image(frame, max_side) for _, frame in chosen]  # type: ignore[misc]
    times = [round(t - start, 6) for t, _ in chosen]  # type: ignore[misc]
    width, height = frames[0].size
    return DecodedClip(frames, times, round(duration, 6), width, height, decoded)


def _better(
    current: tuple[float, av.VideoFrame] | None, candidate: tuple[float, av.VideoFrame], target: float
) -> tuple[float, av.VideoFrame]:
    """The frame shown at `target`: the latest one at or before it; before any such, the earliest one."""
    if current is None:
        return candidate
    cur_t, cand_t = current[0], candidate[0]
    if cand_t <= target:
        return candidate if (cur_t > target or cand_t > cur_t) else current
    return candidate if (cur_t > target and cand_t < cur_t) else current


def _to_image(frame: av.VideoFrame, max_side: int | None) -> Image.Image:
    image = upright(frame.to_image(), frame.rotation or 0)
    if max_side and max(image.size) > max_side:
        scale = max_side / max(image.size)
        size = (max(1, math.floor(image.width * scale + 0.5)), max(1, math.floor(image.height * scale + 0.5)))
        image = image.resize(size, Image.Resampling.BICUBIC)
    return image
