#!/usr/bin/env bash
# AdamW on the same small GPT with tensor parallel 2 (the Muon example's baseline).
# Leaves runs/adam_tp2/{metrics.jsonl,training.png,iter_*/}.
source "$(dirname "$0")/_launch.sh"
RUN_DIR="${RUN_DIR:-runs/adam_tp2}"
launch "${SMALL_GPT[@]}" \
    --tensor-model-parallel-size 2 \
    --optimizer adam --adam-beta1 0.9 --adam-beta2 0.95 \
    --lr 3e-3 --min-lr 3e-4 --weight-decay 0.1 --clip-grad 1.0 \
    --lr-decay-style cosine --lr-warmup-iters 20 \
    --train-iters 200 --log-interval 10 --eval-interval 50 --eval-iters 5 \
    --save "$RUN_DIR" --load "$RUN_DIR" --save-interval 100 \
    "$@"
