#!/usr/bin/env bash
# Run a batml command inside ONE SLURM allocation: a Dask scheduler on the first node, one
# Dask worker per SLURM task (srun), and batml connected to that scheduler. For sites where
# jobs may not be submitted from a login node (what --cluster slurm does) or where one big
# allocation is preferred. Everything after the script's name is batml's command line:
#
#   sbatch cluster/sbatch-example.sh detect /data/audio --out /data/detections --model MODEL_DIR
#   sbatch cluster/sbatch-example.sh ingest /data/audio --cube /scratch/audio.zarr
#   sbatch --nodes=8 cluster/sbatch-example.sh detect ...     (command-line options win)
#
# batml must be installed on a filesystem the compute nodes see: set BATML_VENV to its
# virtual environment, or submit from a shell where `batml` is on PATH (sbatch passes the
# environment on). The Dask scheduler file is written to the submit folder (shared).
# An interrupted run (time limit, scancel) resumes where it stopped when submitted again.

#SBATCH --job-name=batml
#SBATCH --nodes=2                # worker nodes (the scheduler shares the first one)
#SBATCH --ntasks-per-node=1      # one Dask worker per node...
#SBATCH --cpus-per-task=16       # ...with one thread per CPU
#SBATCH --mem-per-cpu=2G         # spectrograms + TensorFlow: ~2 GiB per thread
#SBATCH --time=12:00:00
#SBATCH --output=batml-%j.out

set -euo pipefail

if [ $# -eq 0 ]; then
    echo "usage: sbatch $0 BATML_COMMAND [ARGS...]   e.g. detect AUDIO_DIR --out OUT_DIR" >&2
    exit 2
fi
if [ -n "${BATML_VENV:-}" ]; then
    # shellcheck disable=SC1091
    source "$BATML_VENV/bin/activate"
fi
command -v batml >/dev/null || { echo "batml not found: set BATML_VENV" >&2; exit 2; }

job=${SLURM_JOB_ID:?run this script with sbatch}
scheduler_file="$PWD/dask-scheduler-$job.json"
ntasks=${SLURM_NTASKS:-1}
threads=${SLURM_CPUS_PER_TASK:-1}
pids=()
cleanup() {
    # workers first (they would otherwise wait for the scheduler), then the scheduler
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill "${pids[i]}" 2>/dev/null || true
        wait "${pids[i]}" 2>/dev/null || true
    done
    rm -f "$scheduler_file"
}
trap cleanup EXIT

dask scheduler --scheduler-file "$scheduler_file" --port 0 --dashboard-address :0 &
pids+=($!)
for _ in $(seq 120); do [ -s "$scheduler_file" ] && break; sleep 1; done
[ -s "$scheduler_file" ] || { echo "the Dask scheduler did not start" >&2; exit 1; }

# One worker per task; --preload-nanny gives the workers batml's Dask defaults.
# Memory limit "auto": what SLURM's cgroup allows the task.
srun --ntasks="$ntasks" --cpus-per-task="$threads" \
    dask worker --scheduler-file "$scheduler_file" --nworkers 1 --nthreads "$threads" \
    --local-directory "${TMPDIR:-/tmp}" --preload-nanny pipeline.distributed &
pids+=($!)

python - "$scheduler_file" "$ntasks" <<'EOF'
import sys
from distributed import Client

with Client(scheduler_file=sys.argv[1], timeout="60s") as client:
    client.wait_for_workers(int(sys.argv[2]), timeout=600)  # a failed srun fails here
    print(f"batml: Dask scheduler {client.scheduler.address}, {sys.argv[2]} worker(s)", file=sys.stderr)
EOF
address=$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["address"])' "$scheduler_file")

status=0
batml "$@" --cluster "$address" || status=$?
exit "$status"
