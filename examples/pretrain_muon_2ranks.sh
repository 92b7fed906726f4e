#!/usr/bin/env bash
# The main example: Muon on a small GPT, tensor parallel over 2 ranks (TP=2), embedded default data.
# About 2-3 minutes on 2 CPU cores; leaves runs/muon_tp2/{metrics.jsonl,training.png,iter_*/}.
# Run it again to resume from the latest checkpoint (a finished run has nothing left to do).
source "$(dirname "$0")/_launch.sh"
RUN_DIR="${RUN_DIR:-runs/muon_tp2}"
launch "${SMALL_GPT[@]}" \
    --tensor-model-parallel-size 2 \
    --optimizer muon --muon-fp32-matmul-prec highest --muon-momentum 0.95 --muon-nesterov \
    --lr 1e-2 --min-lr 1e-3 --weight-decay 0.01 --clip-grad 1.0 \
    --lr-decay-style cosine --lr-warmup-iters 20 \
    --train-iters 200 --log-interval 10 --eval-interval 50 --eval-iters 5 \
    --save "$RUN_DIR" --load "$RUN_DIR" --save-interval 100 \
    "$@"
