#!/usr/bin/env bash
# Remake the committed demo shards in shards/demo/ exactly: domain B of the `scenes` world (the transfer target of
# the backbones in pretrained/scenes/, which were trained on domain A), at demo size. The output is byte-identical
# for the same code: sample i comes from its own seeded generator, tars carry no timestamps. So the demo's samples
# are the first ones of the benchmark's own splits (./shards/make_scenes.sh, same seed).
# Sizes: images 600/100/100 (train/val/test), clips 120/40/40 of 8 frames, all 64 px; about 10 MB.
# Run from anywhere: ./shards/make_demo.sh   (OUT=... writes elsewhere)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
SEED=0
OUT="${OUT:-shards/demo}"

make() {  # task_set split num_samples shard_size
    "$PYTHON" -m unitrans_ds.make_shards --format scenes --domain b --task_set "$1" --split "$2" \
        --num_samples "$3" --shard_size "$4" --frames 8 --image_size 64 --seed "$SEED" \
        --workers "${WORKERS:-2}" --overwrite --no_progress --out "$OUT/$1_b/$2"
}

make image train 600 150   # 4 shards: 2 ranks x 2 loader workers each get one
make image val 100 50
make image test 100 50
make video train 120 30    # 4 shards
make video val 40 20
make video test 40 20
du -sh "$OUT"
