#!/usr/bin/env bash
# The GPU check, one script of at most 8 minutes on a GPU machine (an H200 in our budget): installs icg with faiss on
# the GPU, runs the CUDA-only tests (pytest -m cuda) and prints one table (benchmarks/gpu_table.py): ICG and BoT train
# images/s (ResNet-50, 256x128, bf16, channels-last) with and without the decoded cache, the clustering pass against
# a training epoch, evaluation at Market-1501 size, peak GPU memory.
#
#   bash benchmarks/gpu_check.sh              # on a GPU machine
#   bash benchmarks/gpu_check.sh --dry-run    # anywhere (DRY_RUN=1 too): the same steps on the CPU, tiny sizes;
#                                             # tests/test_gpu_check.py runs it so that it cannot rot
#
# Environment: PYTHON, an interpreter that already has icg and faiss (skips the install); otherwise `make install`
# builds VENV (default .venv-gpu, or .venv for the dry run) with EXTRAS (default gpu,dev: faiss-gpu, never next to
# faiss-cpu) and TORCH (the Makefile's pin unless given); pip's own settings (PIP_FIND_LINKS, PIP_NO_INDEX) reach
# it, for a machine without an index. BUDGET_SECONDS (default 480) bounds the whole run. Other arguments go to
# gpu_table.py (e.g. --data DIR).
set -euo pipefail
cd "$(dirname "$0")/.."

dry_run="${DRY_RUN:-0}"
table_args=()
for arg in "$@"; do
  if [[ "$arg" == --dry-run ]]; then dry_run=1; else table_args+=("$arg"); fi
done
budget="${BUDGET_SECONDS:-480}"

# runs "$@" with what is left of the budget, and says which step ran out of it
step() {
  local left=$((budget - SECONDS))
  if ((left <= 0)) || ! timeout "$left" "$@"; then
    echo "gpu_check: '$*' failed or ran past the ${budget} s budget (${SECONDS} s spent)" >&2
    exit 1
  fi
}

if [[ -n "${PYTHON:-}" ]]; then
  python="$PYTHON"
else
  if [[ "$dry_run" == 1 ]]; then venv="${VENV:-.venv}" extras="${EXTRAS:-cpu,dev}"; else venv="${VENV:-.venv-gpu}" extras="${EXTRAS:-gpu,dev}"; fi
  step make install VENV="$venv" EXTRAS="$extras" ${TORCH:+TORCH="$TORCH"}
  python="$venv/bin/python"
fi

if [[ "$dry_run" == 1 ]]; then
  table_args=(--dry-run "${table_args[@]}")
else
  step "$python" -c 'import faiss, torch; assert torch.cuda.is_available(), "no CUDA device: use --dry-run"'
fi

# the CUDA-only tests; on the CPU they are collected and skipped ("no tests ran" would mean the marker got lost)
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
step "$python" -m pytest -m cuda -q -p no:cacheprovider tests 2>&1 | tee "$log"
summary="$(grep -E '(passed|skipped|failed|error)' "$log" | tail -n 1 | tr -d '=' | xargs)"

step "$python" benchmarks/gpu_table.py --tests "$summary" "${table_args[@]}"
echo "gpu_check: done in ${SECONDS} s"
