#!/bin/sh
# The kernel and model tests with Numba compiling for another CPU than this one (issue 25: every design decision
# follows the compile target, not the host). Each target gets its own Numba cache, so nothing compiled for the host
# is reused.
#
#   nice -n 19 bench/targets.sh                    # generic (x86-64 baseline: SSE2, no F16C/AVX), then haswell (AVX2)
#   nice -n 19 bench/targets.sh haswell -x -k q4_0  # one target; further arguments go to pytest
#
# haswell's features are the avx2 bench profile's (bench/profiles.py: + the profile's, - every other feature LLVM
# knows), as a Haswell-class laptop would have them. The real model's tests need EDGEGEMMA_HF_MODEL and
# EDGEGEMMA_REFERENCE (defaults below); they skip without them.
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
export EDGEGEMMA_HF_MODEL="${EDGEGEMMA_HF_MODEL:-$HOME/.cache/edgegemma/embeddinggemma-300m}"
export EDGEGEMMA_REFERENCE="${EDGEGEMMA_REFERENCE:-$REPO/../shared/reference}"
TESTS="tests/test_kernels.py tests/test_model.py tests/test_reference.py tests/test_block_types.py"

targets=""
while [ $# -gt 0 ]; do
    case $1 in generic|haswell) targets="$targets $1"; shift ;; *) break ;; esac
done
[ -n "$targets" ] || targets="generic haswell"

status=0
summary=""
for target in $targets; do
    case $target in
        generic) features="" ;;
        haswell) features=$(python -c 'from bench import profiles as P; print(P.numba_features(P.PROFILES["avx2"]))') || exit 2 ;;
    esac
    cache="${TMPDIR:-/tmp}/edgegemma-numba-$target"
    echo "== NUMBA_CPU_NAME=$target NUMBA_CPU_FEATURES=${features:-(empty)} NUMBA_CACHE_DIR=$cache" >&2
    start=$(date +%s)
    NUMBA_CPU_NAME=$target NUMBA_CPU_FEATURES=$features NUMBA_CACHE_DIR=$cache \
        python -m pytest -q -p no:cacheprovider $TESTS "$@"
    code=$?
    [ $code -eq 0 ] || status=1
    summary="$summary
$target: pytest exit $code in $(( $(date +%s) - start )) s"
done
echo "$summary" >&2
exit $status
