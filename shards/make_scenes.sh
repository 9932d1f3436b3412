#!/usr/bin/env bash
# Generate the `scenes` world at its default benchmark size into shards/scenes/ (or $OUT), both domains, and
# print its statistics. Deterministic: the same code and SEED give byte-identical shards whatever WORKERS is.
# Not committed (102 MB); about 7 minutes on 2 busy cores. Run from anywhere: ./shards/make_scenes.sh
# Sizes per domain: images 3000/300/500 (train/val/test), clips 1000/100/200 of 8 frames, all 64 px.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
SEED="${SEED:-0}"
OUT="${OUT:-shards/scenes}"

make() {  # domain task_set split num_samples shard_size
    "$PYTHON" -m unitrans_ds.make_shards --format scenes --domain "$1" --task_set "$2" --split "$3" \
        --num_samples "$4" --shard_size "$5" --frames 8 --image_size 64 --seed "$SEED" \
        --workers "${WORKERS:-2}" --overwrite --no_progress --out "$OUT/$2_$1/$3"
}

for domain in a b; do
    make "$domain" image train 3000 500  # 6 shards: enough for 2 ranks x 2 loader workers
    make "$domain" image val 300 150
    make "$domain" image test 500 250
    make "$domain" video train 1000 250
    make "$domain" video val 100 50
    make "$domain" video test 200 100
done
"$PYTHON" -m unitrans_ds.data.scenes.stats "$OUT"/image_a/test "$OUT"/image_b/test "$OUT"/video_a/test "$OUT"/video_b/test
du -sh "$OUT"
