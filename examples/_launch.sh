# Shared by the example launch scripts (sourced, not run): how to start torchrun.
#   PYTHON   interpreter with megatron_opt installed (default: .venv/bin/python, created and
#            installed on first use by tools/setup_venv.sh, torch==2.13.0 CPU wheel pinned)
#   NPROC    ranks on this node (default: 2)
# Extra arguments given to an example script are appended to its flags, so they win, e.g.
#   bash examples/pretrain_muon_2ranks.sh --train-iters 20
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -z "${PYTHON:-}" ]; then
    source tools/setup_venv.sh
    PYTHON="$VENV_PYTHON"
fi
NPROC="${NPROC:-2}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"   # one BLAS thread per rank: 2 ranks on 2 cores

launch() {
    exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" training/pretrain_gpt.py "$@"
}

# A small GPT that trains in a few minutes on 2 CPU cores (byte-level tokens, embedded stdlib text).
SMALL_GPT=(
    --num-layers 4 --hidden-size 128 --num-attention-heads 4 --seq-length 128
    --micro-batch-size 4 --global-batch-size 8
)
