"""`python -m unitrans_ds.make_shards`: convert a data set's native annotations and media into WebDataset shards.

The work and the sample schema live in `unitrans_ds.data.shard_writer`; this module only parses arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .cli import ArgumentParser
from .data.formats import FORMATS
from .data.shard_writer import ShardError, ShardJob, make_shards, summary_line

#: above this fraction of skipped items the summary is followed by a warning (often a wrong --media_root)
WARN_SKIP_FRACTION = 0.01

EPILOG = """\
formats and their inputs:
  coco-karpathy, flickr30k-karpathy  --annotations BLIP/LAVIS Karpathy JSON (train: one row per caption;
                                     val/test: 5 captions per row); --media_root: the image root
  coco-captions   --annotations official captions_*.json (images + annotations)
  vqav2           --questions v2_OpenEnded_mscoco_*_questions.json [--annotations v2_mscoco_*_annotations.json];
                  or only --annotations BLIP's vqa_*.json; --media_root holds train2014/, val2014/, ...
  msrvtt          --annotations train_val_videodatainfo.json [--split_file 1k-A ids] or a 1k-A split jsonl;
                  --media_root holds <video_id>.mp4
  msrvtt-qa       --annotations {video_id, question, answer} records (JSON list or jsonl)
  didemo          --annotations native DiDeMo JSON; all descriptions of a video form one paragraph caption
  shapes          synthetic: --domain a|b --num_samples N --task_set image|video [--image_size 64] --seed S
                  (the world of the committed demo shards and pretrained tiny BLIPs)
  scenes          synthetic, same arguments: the richer successor world (several objects with colour, shape,
                  size, mark; relations; balanced answers; order-dependent clips, --frames >= 2); domains a and
                  b share every word and differ in look. Statistics: python -m unitrans_ds.data.scenes.stats DIR

output folder and restarts:
  --out gets shard-000000.tar, ..., manifest.json and skipped.jsonl. While a run works, --out also holds
  .in_progress.json (the arguments and the finished shards with their sha256). A non-empty --out is refused,
  except when it holds an unfinished run of the SAME command (same arguments other than --workers, --strict
  and --overwrite): then the run resumes, keeping the finished shards whose sha256 still matches.
  --overwrite deletes earlier shards, manifest and skip list in --out and starts over.

exit status: 0 done (skips are listed in skipped.jsonl and counted in the summary line, with a warning above
1%); 2 bad arguments, malformed annotations, a refused output folder, a skip under --strict, or every item
skipped (then no manifest.json is written).
"""


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m unitrans_ds.make_shards",
        description="Convert a data set's native annotations and media into WebDataset tar shards "
        "(one sample per image or video, with all its captions and questions).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--format", required=True, choices=FORMATS, help="Annotation format (see below).")
    p.add_argument("--out", required=True, type=Path, help="Output folder for the shards.")
    p.add_argument("--split", default="train", choices=("train", "val", "test"), help="Split name (default train).")
    p.add_argument("--annotations", type=Path, help="Annotation file in the format's native layout.")
    p.add_argument("--questions", type=Path, help="vqav2: the official questions file.")
    p.add_argument("--split_file", type=Path, help="msrvtt: video ids of the split (e.g. 1k-A), one per line or jsonl.")
    p.add_argument("--media_root", type=Path, help="Folder the annotation's image or video paths are relative to.")
    p.add_argument("--shard_size", type=int, default=1000, help="Samples per shard (default 1000).")
    p.add_argument(
        "--max_side", type=int, help="Shrink images/frames whose longer side exceeds this (re-encodes JPEG 95)."
    )
    p.add_argument("--frames", type=int, default=16, help="Frames per video clip, at segment centres (default 16).")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="Conversion processes.")
    p.add_argument("--strict", action="store_true", help="A missing or undecodable image/video is fatal, not a skip.")
    p.add_argument("--overwrite", action="store_true", help="Replace the shards already in --out.")
    p.add_argument("--seed", type=int, default=0, help="shapes, scenes: seed of the synthetic data (default 0).")
    p.add_argument("--domain", choices=("a", "b"), help="shapes, scenes: the domain (look; and for shapes, words).")
    p.add_argument("--num_samples", type=int, help="shapes, scenes: images or clips to make.")
    p.add_argument("--task_set", default="image", choices=("image", "video"), help="shapes, scenes: images or clips.")
    p.add_argument("--image_size", type=int, default=64, help="shapes, scenes: image side in pixels (default 64).")
    p.add_argument("--no_progress", action="store_true", help="Hide the progress bar.")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    job = ShardJob(
        format=args.format,
        out=args.out,
        split=args.split,
        annotations=args.annotations,
        questions=args.questions,
        split_file=args.split_file,
        media_root=args.media_root,
        shard_size=args.shard_size,
        max_side=args.max_side,
        frames=args.frames,
        seed=args.seed,
        domain=args.domain,
        num_samples=args.num_samples,
        task_set=args.task_set,
        image_size=args.image_size,
        workers=args.workers,
        strict=args.strict,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    try:
        manifest = make_shards(job)
    except ShardError as e:
        print(f"make_shards: error: {e}", file=sys.stderr)
        return 2
    print(summary_line(manifest, args.out))
    items = manifest["total_samples"] + manifest["skipped"]
    if manifest["skipped"] > WARN_SKIP_FRACTION * items:
        print(
            f"make_shards: warning: skipped {manifest['skipped']} of {items} items "
            f"({100 * manifest['skipped'] / items:.1f}%, more than {100 * WARN_SKIP_FRACTION:.0f}%): check "
            f"--media_root and {args.out / 'skipped.jsonl'}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
