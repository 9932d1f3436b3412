#!/usr/bin/env bash
# Remake the committed demo shards in shards/demo/ exactly (the output is byte-identical for the same code:
# scenes come from --seed, tars carry no timestamps). Run from anywhere: ./shards/make_demo.sh
# Sizes per domain: images 300/100/100 (train/val/test), clips 80/20/20 of 8 frames, all 64 px.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
SEED=0

make() {  # domain task_set split num_samples shard_size
    "$PYTHON" -m unitrans_ds.make_shards --format shapes --domain "$1" --task_set "$2" --split "$3" \
        --num_samples "$4" --shard_size "$5" --frames 8 --image_size 64 --seed "$SEED" \
        --workers "${WORKERS:-2}" --overwrite --out "shards/demo/$2_$1/$3"
}

for domain in a b; do
    make "$domain" image train 300 75   # 4 shards: 2 ranks x 2 workers each get one
    make "$domain" image val 100 50
    make "$domain" image test 100 50
    make "$domain" video train 80 20    # 4 shards
    make "$domain" video val 20 10
    make "$domain" video test 20 10
done
du -sh shards/demo
