#!/usr/bin/env bash
# Data parallel over 2 ranks with the distributed optimizer: Adam state sharded ZeRO-1 style
# (gradients reduce-scattered, parameters all-gathered after the step).
# OPTIMIZER=muon runs Muon instead; --use-distributed-optimizer then selects the layer-wise
# distributed optimizer (each rank orthogonalizes and updates its share of the matrices).
# Leaves runs/<optimizer>_dp2_distopt/{metrics.jsonl,training.png,iter_*/}.
source "$(dirname "$0")/_launch.sh"
OPTIMIZER="${OPTIMIZER:-adam}"
RUN_DIR="${RUN_DIR:-runs/${OPTIMIZER}_dp2_distopt}"
if [ "$OPTIMIZER" = muon ]; then
    OPT_FLAGS=(--optimizer muon --muon-fp32-matmul-prec highest --muon-nesterov --lr 1e-2 --min-lr 1e-3 --weight-decay 0.01)
else
    OPT_FLAGS=(--optimizer "$OPTIMIZER" --lr 3e-3 --min-lr 3e-4 --weight-decay 0.1)
fi
launch "${SMALL_GPT[@]}" \
    --use-distributed-optimizer --overlap-grad-reduce \
    "${OPT_FLAGS[@]}" --clip-grad 1.0 \
    --lr-decay-style cosine --lr-warmup-iters 20 \
    --train-iters 200 --log-interval 10 --eval-interval 50 --eval-iters 5 \
    --save "$RUN_DIR" --load "$RUN_DIR" --save-interval 100 \
    "$@"
