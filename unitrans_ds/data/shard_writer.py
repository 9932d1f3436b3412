"""Writing WebDataset shards: the sample schema (the loaders' contract), the manifest, the skip report and
restarting after a crash. `unitrans_ds.make_shards` is the command line over `make_shards(job)`.

Output folder
-------------
- `shard-000000.tar`, `shard-000001.tar`, ...: `--shard_size` samples each (the last one fewer).
- `manifest.json`: `{"format", "split", "tasks": [...("retrieval", "captioning", "vqa")], "total_samples",
  "num_captions", "num_questions", "frames": F | null, "shards": [{"name", "samples", "captions", "questions",
  "sha256", "bytes"}], "skipped": int, "args": {...}, "version"}`. `args` holds the arguments that decide the
  content (not `--out`, `--workers`, `--strict`, `--overwrite`). No timestamps: a run restarted after a crash
  writes the same manifest, byte for byte, as a clean run, whatever `--workers` was.
- `skipped.jsonl`: one `{"id", "path", "reason"}` line per item whose media was missing or undecodable.
- `.in_progress.json` (only while a run is unfinished): the content args, the finished shards with their
  sha256, and the skips so far. It is how a re-run of the same command resumes.

Sample (one per image or per video, carrying all of its texts)
--------------------------------------------------------------
- `__key__`: the sample id with every character other than `[A-Za-z0-9_-]` replaced by `_` (WebDataset splits
  member names at the first dot); a repeated key gets `-2`, `-3`, ...
- Image: the image's ORIGINAL bytes under `jpg`, `png` or `webp`, by the real format (sniffed, never trusted from
  the file name); re-encoded as JPEG quality 95 (`jpg`) only when `--max_side` shrinks it; other formats
  (GIF, BMP, TIFF) are stored losslessly as `png`.
- Video: frames `f000.jpg` ... `f{F-1:03d}.jpg` (JPEG, upright, time order; see `video_decode`).
- `json`: `{"id": str, "image" | "video": path relative to --media_root, "dataset": str, "split": str,
  "domain": str | null, "captions": [str, ...], "questions": [{"question_id": int | str, "question": str,
  "answers": [str, ...] (all 10 for VQA v2, one for MSRVTT-QA), "answer_type": str | null,
  "question_type": str | null}], "image_id": int | str (the data set's own id, COCO's number when known)}`;
  video samples add `"frame_times": [seconds] * F, "duration": seconds, "num_frames": F, "width", "height"`.
  Texts are as in the annotation file, whitespace collapsed; the loaders normalize them.

Order and restarts
------------------
Samples are written in annotation order (first appearance of each image or video); workers convert in
parallel but results are consumed in order, so shard contents do not depend on `--workers`. Each shard is
written to `<name>.tmp` and renamed when complete, so a crash never leaves a half shard under a real name.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import signal
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import webdataset as wds
from PIL import Image
from tqdm import tqdm

from .. import __version__
from .formats import SYNTHETIC_FORMATS, AnnotationError, ParseRequest, ShardError, SourceItem, parse
from .video_decode import VideoDecodeError, decode_clip

__all__ = ["AnnotationError", "ShardError", "ShardJob", "make_shards", "convert", "summary_line"]

MARKER = ".in_progress.json"
MANIFEST = "manifest.json"
SKIPPED = "skipped.jsonl"
# Test hook for a REAL crash: the process SIGKILLs itself after writing this many samples (no cleanup runs).
CRASH_ENV = "UNITRANS_DS_CRASH_AFTER_SAMPLES"
KEPT_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}  # PIL format -> extension, stored byte for byte
JPEG_QUALITY = 95


@dataclass
class ShardJob:
    """One make_shards run. Paths as the user gave them; see `make_shards --help` for each field."""

    format: str
    out: Path
    split: str = "train"
    annotations: Path | None = None
    questions: Path | None = None
    split_file: Path | None = None
    media_root: Path | None = None
    shard_size: int = 1000
    max_side: int | None = None
    frames: int = 16
    seed: int = 0
    domain: str | None = None
    num_samples: int | None = None
    task_set: str = "image"
    image_size: int = 64
    workers: int = 1
    strict: bool = False
    overwrite: bool = False
    progress: bool = True

    RUN_CONTROL = ("out", "workers", "strict", "overwrite", "progress")

    def content_args(self) -> dict[str, Any]:
        """The arguments that decide the output bytes (what the manifest and the resume marker record)."""
        out = {}
        for f in fields(self):
            if f.name in self.RUN_CONTROL:
                continue
            value = getattr(self, f.name)
            out[f.name] = str(value) if isinstance(value, Path) else value
        return out

    def parse_request(self) -> ParseRequest:
        return ParseRequest(
            split=self.split,
            annotations=self.annotations,
            questions=self.questions,
            split_file=self.split_file,
            domain=self.domain,
            seed=self.seed,
            num_samples=self.num_samples,
            task_set=self.task_set,
            image_size=self.image_size,
            frames=self.frames,
        )


# ------------------------------------------------------------------ converting one item


@dataclass(frozen=True)
class ConvertOptions:
    """`media_root`: folder of the media paths. `max_side`: shrink longer sides above it. `frames`: per clip."""

    media_root: Path | None
    max_side: int | None
    frames: int


@dataclass
class Converted:
    """A finished sample: `files` maps extension ("json", "jpg", "f000.jpg", ...) to bytes."""

    key: str
    files: dict[str, bytes]
    captions: int
    questions: int


@dataclass
class Skip:
    """An item that could not become a sample: one line of skipped.jsonl."""

    id: str
    path: str | None
    reason: str


def encode_json(meta: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON in schema order (stable bytes, so shard hashes are reproducible)."""
    return json.dumps(meta, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def jpeg_bytes(image: Image.Image, quality: int = JPEG_QUALITY, exif: bytes = b"") -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "JPEG", quality=quality, exif=exif)
    return buf.getvalue()


def shrink(image: Image.Image, max_side: int | None) -> Image.Image | None:
    """`image` scaled (bicubic) so its longer side is `max_side`; None when it already fits."""
    if not max_side or max(image.size) <= max_side:
        return None
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


def convert(item: SourceItem, opts: ConvertOptions) -> Converted | Skip:
    """One item -> one sample (runs in the workers). Missing or undecodable media become a `Skip`."""
    meta = dict(item.meta)
    if item.scene is not None:
        files = _synthetic(item, meta)
    elif item.kind == "image":
        files = _image(item, opts)
    else:
        files = _video(item, opts, meta)
    if isinstance(files, Skip):
        return files
    files["json"] = encode_json(meta)
    return Converted(item.key, files, len(meta["captions"]), len(meta["questions"]))


def _media_path(item: SourceItem, opts: ConvertOptions) -> Path:
    return (opts.media_root if opts.media_root is not None else Path(".")) / item.media


def _image(item: SourceItem, opts: ConvertOptions) -> dict[str, bytes] | Skip:
    path = _media_path(item, opts)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Skip(item.meta["id"], str(path), "image file not found")
    except OSError as e:
        return Skip(item.meta["id"], str(path), f"cannot read image: {e}")
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format
            img.load()  # a full decode: truncated files open fine and fail only here
            small = shrink(img, opts.max_side)
            if small is not None:
                return {"jpg": jpeg_bytes(small, exif=img.info.get("exif", b""))}
            if fmt not in KEPT_FORMATS:
                buf = io.BytesIO()
                img.save(buf, "PNG")
                return {"png": buf.getvalue()}
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        return Skip(item.meta["id"], str(path), f"undecodable image: {type(e).__name__}: {e}")
    return {KEPT_FORMATS[fmt]: data}


def _video(item: SourceItem, opts: ConvertOptions, meta: dict[str, Any]) -> dict[str, bytes] | Skip:
    path = _media_path(item, opts)
    try:
        clip = decode_clip(path, opts.frames, opts.max_side)
    except VideoDecodeError as e:
        return Skip(item.meta["id"], str(path), f"video {e}")
    meta.update(
        frame_times=clip.times,
        duration=clip.duration,
        num_frames=len(clip.frames),
        width=clip.width,
        height=clip.height,
    )
    return {f"f{k:03d}.jpg": jpeg_bytes(frame) for k, frame in enumerate(clip.frames)}


def _synthetic(item: SourceItem, meta: dict[str, Any]) -> dict[str, bytes]:
    # A `scenes` layout says so; `shapes` layouts predate the key (their bytes must not change).
    if item.scene.get("world") == "scenes":
        from .scenes import clip_times, render_jpegs
    else:
        from .shapes import clip_times, render_jpegs

    jpegs = render_jpegs(item.scene)
    if item.kind == "image":
        return {"jpg": jpegs[0]}
    times, duration = clip_times(len(jpegs))
    size = item.scene["size"]
    meta.update(frame_times=times, duration=duration, num_frames=len(jpegs), width=size, height=size)
    return {f"f{k:03d}.jpg": data for k, data in enumerate(jpegs)}


_WORKER_OPTS: ConvertOptions | None = None


def _init_worker(opts: ConvertOptions) -> None:
    global _WORKER_OPTS
    _WORKER_OPTS = opts


def _convert_in_worker(item: SourceItem) -> Converted | Skip:
    return convert(item, _WORKER_OPTS)


# ------------------------------------------------------------------ the output folder and its resume state


@dataclass
class _RunState:
    """Finished shards (with `next_item` and `skipped_count` at their end) and the skips so far."""

    shards: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)

    @property
    def next_item(self) -> int:
        return self.shards[-1]["next_item"] if self.shards else 0


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _save_marker(out: Path, args: dict[str, Any], state: _RunState) -> None:
    body = {"args": args, "shards": state.shards, "skipped": state.skipped}
    _write_atomic(out / MARKER, json.dumps(body, indent=1).encode())


def _ours(path: Path) -> bool:
    name = path.name
    return (name.startswith("shard-") and (name.endswith(".tar") or name.endswith(".tar.tmp"))) or name in (
        MANIFEST,
        MANIFEST + ".tmp",
        SKIPPED,
        SKIPPED + ".tmp",
        MARKER,
        MARKER + ".tmp",
    )


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _prepare_out(job: ShardJob, args: dict[str, Any]) -> _RunState:
    """A fresh state for an empty folder (or with --overwrite), the saved state for an unfinished run of the
    same command; anything else is refused."""
    out = Path(job.out)
    out.mkdir(parents=True, exist_ok=True)
    if job.overwrite:
        for p in out.iterdir():
            if _ours(p):
                p.unlink()
        return _RunState()
    marker = out / MARKER
    if marker.exists():
        saved = json.loads(marker.read_text())
        if saved["args"] != args:
            diff = sorted(k for k in set(args) | set(saved["args"]) if args.get(k) != saved["args"].get(k))
            changes = ", ".join(f"{k}: {saved['args'].get(k)!r} -> {args.get(k)!r}" for k in diff)
            raise ShardError(
                f"{out} holds an unfinished run of a different command ({changes}). Re-run that command to "
                "finish it, or pass --overwrite to start over."
            )
        return _resume(out, saved)
    if any(out.iterdir()):
        done = " (a finished run: it has a manifest.json)" if (out / MANIFEST).exists() else ""
        raise ShardError(f"{out} is not empty{done}. Pass --overwrite to replace its shards, or choose another --out.")
    return _RunState()


def _resume(out: Path, saved: dict[str, Any]) -> _RunState:
    """Keep the recorded shards whose file still has the recorded sha256, up to the first that does not."""
    state = _RunState()
    for rec in saved["shards"]:
        path = out / rec["name"]
        if not path.is_file() or sha256_file(path) != rec["sha256"]:
            break
        state.shards.append(rec)
    count = state.shards[-1]["skipped_count"] if state.shards else 0
    state.skipped = saved["skipped"][:count]
    kept = {rec["name"] for rec in state.shards}
    for p in out.iterdir():
        if _ours(p) and p.name.startswith("shard-") and p.name not in kept:
            p.unlink()  # a temporary file or a shard finished after the last marker update: both are redone
    return state


# ------------------------------------------------------------------ writing


class _ShardSink:
    """Streams samples into `shard-NNNNNN.tar.tmp` and renames it when the shard is complete."""

    def __init__(self, out: Path, index: int):
        self.out, self.index = out, index
        self.name = f"shard-{index:06d}.tar"
        self.tmp = out / (self.name + ".tmp")
        self.file = open(self.tmp, "wb")  # noqa: SIM115 -- stays open across add() calls; commit() closes it
        self.tar = wds.TarWriter(self.file, encoder=False, mtime=0, user="", group="", format="PAX_FORMAT")
        self.samples = self.captions = self.questions = 0

    def add(self, sample: Converted) -> None:
        self.tar.write({"__key__": sample.key, **sample.files})
        self.samples += 1
        self.captions += sample.captions
        self.questions += sample.questions

    def commit(self) -> dict[str, Any]:
        self.tar.close()
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        final = self.out / self.name
        os.replace(self.tmp, final)
        return {
            "name": self.name,
            "samples": self.samples,
            "captions": self.captions,
            "questions": self.questions,
            "sha256": sha256_file(final),
            "bytes": final.stat().st_size,
        }

    def flush_for_crash(self) -> None:
        self.file.flush()


def _results(items: list[SourceItem], opts: ConvertOptions, workers: int):
    """Converted items in input order, however many workers convert them."""
    if workers <= 1:
        for item in items:
            yield convert(item, opts)
        return
    chunk = max(1, min(16, len(items) // (workers * 8)))
    with multiprocessing.Pool(workers, initializer=_init_worker, initargs=(opts,)) as pool:
        yield from pool.imap(_convert_in_worker, items, chunksize=chunk)


def _refuse_unused_args(job: ShardJob) -> None:
    """An argument the format never reads is an error, not silently ignored."""
    unused = {
        "--questions": job.questions is not None and job.format != "vqav2",
        "--split_file": job.split_file is not None and job.format != "msrvtt",
        "--domain": job.domain is not None and job.format not in SYNTHETIC_FORMATS,
        "--num_samples": job.num_samples is not None and job.format not in SYNTHETIC_FORMATS,
        "--annotations": job.annotations is not None and job.format in SYNTHETIC_FORMATS,
        "--media_root": job.media_root is not None and job.format in SYNTHETIC_FORMATS,
        "--max_side": job.max_side is not None and job.format in SYNTHETIC_FORMATS,
    }
    named = [arg for arg, bad in unused.items() if bad]
    if named:
        raise ShardError(f"{', '.join(named)} not used by --format {job.format}; drop it (see --help)")


def make_shards(job: ShardJob) -> dict[str, Any]:
    """Convert `job`'s annotations and media into shards under `job.out`; returns the manifest.

    Raises `ShardError` (or its `AnnotationError`) for bad input, a refused output folder, or a skip under
    `--strict`. Restartable: see the module docstring.
    """
    if job.shard_size < 1:
        raise ShardError(f"--shard_size must be at least 1, got {job.shard_size}")
    if job.frames < 1:
        raise ShardError(f"--frames must be at least 1, got {job.frames}")
    _refuse_unused_args(job)
    items = parse(job.format, job.parse_request())
    if not items:
        raise ShardError(f"{job.annotations}: no images or videos found for split {job.split!r}")
    args = job.content_args()
    out = Path(job.out)
    state = _prepare_out(job, args)
    _save_marker(out, args, state)
    opts = ConvertOptions(Path(job.media_root) if job.media_root else None, job.max_side, job.frames)
    crash_after = int(os.environ.get(CRASH_ENV, "0"))
    written = 0
    sink: _ShardSink | None = None
    start = state.next_item
    bar = tqdm(
        total=len(items), initial=start, unit="sample", desc=f"make_shards {job.split}", disable=not job.progress
    )
    for index, result in enumerate(_results(items[start:], opts, job.workers), start=start):
        bar.update(1)
        if isinstance(result, Skip):
            if job.strict:
                raise ShardError(f"{result.path}: {result.reason} (item {result.id!r}; --strict makes skips fatal)")
            state.skipped.append(asdict(result))
        else:
            sink = sink or _ShardSink(out, len(state.shards))
            sink.add(result)
            written += 1
            if crash_after and written >= crash_after:
                sink.flush_for_crash()
                os.kill(os.getpid(), signal.SIGKILL)
        if sink is not None and (sink.samples == job.shard_size or index == len(items) - 1):
            state.shards.append({**sink.commit(), "next_item": index + 1, "skipped_count": len(state.skipped)})
            _save_marker(out, args, state)
            sink = None
    bar.close()
    return _finish(job, out, args, items, state)


def _finish(
    job: ShardJob, out: Path, args: dict[str, Any], items: list[SourceItem], state: _RunState
) -> dict[str, Any]:
    shards = [
        {k: rec[k] for k in ("name", "samples", "captions", "questions", "sha256", "bytes")} for rec in state.shards
    ]
    captions = sum(s["captions"] for s in shards)
    questions = sum(s["questions"] for s in shards)
    tasks = (["retrieval", "captioning"] if captions else []) + (["vqa"] if questions else [])
    manifest = {
        "format": job.format,
        "split": job.split,
        "tasks": tasks,
        "total_samples": sum(s["samples"] for s in shards),
        "num_captions": captions,
        "num_questions": questions,
        "frames": job.frames if items[0].kind == "video" else None,
        "shards": shards,
        "skipped": len(state.skipped),
        "args": args,
        "version": __version__,
    }
    skipped = "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in state.skipped)
    _write_atomic(out / SKIPPED, skipped.encode("utf-8"))
    if not manifest["total_samples"]:  # an empty manifest would only fail later, in training
        (out / MARKER).unlink()
        reasons = Counter(s["reason"].split(":")[0] for s in state.skipped)
        raise ShardError(
            f"no sample was written: all {len(state.skipped)} items were skipped "
            f"({', '.join(f'{n} {r}' for r, n in reasons.most_common(3))}); check --media_root (the folder the "
            f"annotation's media paths are relative to) and {out / SKIPPED}. No manifest.json was written"
        )
    _write_atomic(out / MANIFEST, (json.dumps(manifest, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))
    (out / MARKER).unlink()
    return manifest


def summary_line(manifest: dict[str, Any], out: Path, skipped: list[dict[str, Any]] | None = None) -> str:
    """One line for people: what was written and what was skipped (with reason counts)."""
    text = (
        f"wrote {manifest['total_samples']} samples ({manifest['num_captions']} captions, "
        f"{manifest['num_questions']} questions) in {len(manifest['shards'])} shards to {out}"
    )
    if manifest["skipped"]:
        if skipped is None:
            skipped = [json.loads(line) for line in (Path(out) / SKIPPED).read_text().splitlines()]
        reasons = Counter(s["reason"].split(":")[0] for s in skipped)
        detail = ", ".join(f"{n} {r}" for r, n in reasons.most_common())
        text += f"; skipped {manifest['skipped']} ({detail}); see {Path(out) / SKIPPED}"
    return text
