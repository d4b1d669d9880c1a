#!/usr/bin/env bash
# Recipe of batml's bundled default model (hybrid_cnn_xgboost), made with batml's own code:
# see recipes/default_model.py for the training data (a varied simulated archive over real
# backgrounds, plus the real annotated sets of ../shared/data/real) and the licences the model
# inherits from them.
#
#   bash recipes/default_model.sh [WORK_DIR] [OUT_MODEL_DIR] [more options of default_model.py]
#
# It starts from the reference system's cnn8 (../shared/data/reference_models: research use only,
# non-commercial) and runs 10 simulated minutes, 30 epochs per phase, no hard negative mining, one
# worker (options given after the folders override these; --from is refused beside --from-reference).
# MINUTES, EPOCHS and SETS (environment) shrink the run for a quick check of the recipe itself,
# e.g. MINUTES=1 EPOCHS=1 SETS=annotated bash recipes/default_model.sh /tmp/check; PYTHON names the
# interpreter (default python3: the one batml is installed in).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="${1:-/tmp/batml-default-model}"
out="${2:-$work/model}"
shift $(( $# > 2 ? 2 : $# ))
options=(--work "$work" --out "$out" --from-reference --minutes "${MINUTES:-10}" --epochs "${EPOCHS:-30}" --hnm 0
         --workers 1)
[ -n "${SETS:-}" ] && options+=(--sets $SETS)
"${PYTHON:-python3}" "$here/default_model.py" "${options[@]}" "$@"
du -sh "$out"
