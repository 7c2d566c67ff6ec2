#!/bin/bash
# The offline-RL queue on one lent GPU machine, for a bounded call.
#
#     bash experiments/gpu_offline_queue.sh SECONDS                # session 13's queues
#     bash experiments/gpu_offline_queue.sh SECONDS PLAN [PLAN ...] # these plans, WORKERS (14) runs at once
#
# Installs Python wheels carried in .whl/ (a machine that cannot reach PyPI), starts NVIDIA's MPS daemon, makes the
# missing generated datasets in parallel, runs the queues until SECONDS have passed since the start, and packs each
# finished run's record (report, config, environment, log) into $OUT/records.tgz (or runs/records.tgz). Runs cut off
# resume from their checkpoints when the script runs again on the same machine. Unpack the tarball into
# runs/experiments/ and run `python experiments/offline_queue.py --plan PLAN --report` for the tables.
DEADLINE=${1:-540}
T0=$(date +%s)
cd "$(dirname "$0")/.."
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
unset MUJOCO_GL  # state-based training and evaluation render nothing
pgrep -f nvidia-cuda-mps >/dev/null || nvidia-cuda-mps-control -d
OUT=${OUT:-$PWD/runs}
D=${CLEANDIFFUSER_DATA:-~/.cache/cleandiffuser/datasets}; mkdir -p runs/logs
shift; PLANS="$*"
if [ -n "$PLANS" ]; then  # the plans' datasets; a medium-expert one needs its medium and expert parts first
  NEEDED=$(python3 -c "import sys; sys.path.insert(0, 'experiments'); from offline_queue import DATASETS
print(' '.join(sorted({DATASETS[p].removesuffix('-cd-v0') for p in sys.argv[1:]})))" $PLANS) || exit 1
  FIRST=$(for d in $NEEDED; do case $d in *-medium-expert) echo ${d%-expert}; echo ${d%-medium-expert}-expert;;
    *) echo $d;; esac; done | sort -u); SECOND=$(for d in $NEEDED; do case $d in *-medium-expert) echo $d;; esac; done)
else
  FIRST="halfcheetah-medium hopper-medium hopper-expert walker2d-medium walker2d-expert"
  SECOND="hopper-medium-expert walker2d-medium-expert"
fi
for d in $FIRST; do
  [ -f $D/$d-cd-v0.hdf5 ] || python3 -m cleandiffuser.cli dataset make $d-cd-v0 > runs/logs/make-$d.log 2>&1 &
done; wait
for d in $SECOND; do  # concatenations of the two above: seconds
  [ -f $D/$d-cd-v0.hdf5 ] || python3 -m cleandiffuser.cli dataset make $d-cd-v0 > runs/logs/make-$d.log 2>&1
done
grep -H -E "^(episodes|return):" runs/logs/make-*.log
echo "datasets ready after $(( $(date +%s) - T0 )) s"
LEFT=$(( DEADLINE - ($(date +%s) - T0) )); [ $LEFT -lt 30 ] && LEFT=30
if [ -n "$PLANS" ]; then
  timeout $LEFT python3 experiments/offline_queue.py --plan $PLANS --workers ${WORKERS:-14} --set compile=false \
    > runs/logs/q-main.log 2>&1 &
else
  timeout $LEFT python3 experiments/offline_queue.py --plan halfcheetah-medium-cpu --seeds 2 --only dql edp dbc \
    --workers 3 --set compile=false > runs/logs/q-hc.log 2>&1 &
  timeout $LEFT python3 experiments/offline_queue.py --plan hopper-medium-expert-cpu walker2d-medium-cpu \
    walker2d-medium-expert-cpu hopper-medium-replay-cpu --workers 12 --set compile=false > runs/logs/q-main.log 2>&1 &
fi
wait
cd runs/experiments
echo "finished runs: $(ls */*/report.json | wc -l)"
tar czf $OUT/records.tgz $(for r in */*/report.json; do d=$(dirname $r); echo $d/report.json $d/config.yaml \
  $d/environment.json $d/log.csv; done)
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv
