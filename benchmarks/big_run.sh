#!/usr/bin/env bash
# End-to-end run at scale: synth -> train -> candidates, each stage under /usr/bin/time -v
# (wall time and peak RSS per stage), as recorded in benchmarks/RESULTS.md "Scaling".
#
#   nice -n 10 benchmarks/big_run.sh WORKDIR [USERS ITEMS RATINGS [WORKERS]]
#
# CONFIG=FILE trains with that config (e.g. CONFIG=configs/synthetic-large.yaml, settings chosen
# to finish in bounded time); by default the train stage runs with the defaults, as a user runs it,
# and movierec/core/sizing.py picks the size-dependent settings. The size rules also apply on top
# of a config file where it leaves a setting at its default: with synthetic-large.yaml at 20M
# ratings they cap its single two-tower epoch at 400 steps.
#
# TRAIN_SET="key=value ..." adds `--set` overrides to the train stage (e.g. a time-boxed run:
# TRAIN_SET="retrieval.max_steps_per_epoch=1000"). An existing WORKDIR/data is reused (no synth).
#
# BATCH_BENCH=1 then times the batch retrieval paths and the candidates job on the trained bundle
# (benchmarks/batch_candidates.py: exact, the bundle's index, the IVF batch index, recall@100 vs
# exact, one and two workers) into WORKDIR/batch_candidates.md.
#
# 1M ratings x 100k movies: nice -n 10 benchmarks/big_run.sh WORKDIR 20000 100000 1000000 2
#
# Defaults: 200,000 users, 100,000 items, 20,000,000 ratings, candidates with
# `--workers auto` (the command's default). Each stage's full `time -v` report is kept in WORKDIR/<stage>.time; a summary table is
# printed at the end.
set -euo pipefail

work=${1:?usage: big_run.sh WORKDIR [USERS ITEMS RATINGS [WORKERS]]}
users=${2:-200000}
items=${3:-100000}
ratings=${4:-20000000}
workers=${5:-auto}
here=$(cd "$(dirname "$0")/.." && pwd)
# the checkout's own code (a worktree has no venv of its own): python -m movierec from $here;
# PYTHON defaults to the checkout's venv, else the main checkout's
python=${PYTHON:-$here/.venv/bin/python}
[ -x "$python" ] || python=/work/main/.venv/bin/python
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
movierec="$python -m movierec"
config=${CONFIG:-}
mkdir -p "$work"

stage() {  # stage NAME COMMAND...
  local name=$1; shift
  echo "== $name: $*" >&2
  /usr/bin/time -v -o "$work/$name.time" "$@" > "$work/$name.out" 2> "$work/$name.log" || true
  tail -n 3 "$work/$name.out" >&2
  # GNU time exits 0 when the command was killed by a signal: read the recorded status instead
  if ! grep -q "Exit status: 0" "$work/$name.time"; then
    echo "== $name failed or was stopped (see $work/$name.log)" >&2
    exit 1
  fi
}

export MOVIEREC_PROGRESS=0
# one core: BLAS and torch single-threaded (the defaults and synthetic-large.yaml set threads: 1)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
[ -f "$work/data/ratings.csv" ] || stage synth $movierec synth --out "$work/data" --users "$users" --items "$items" --ratings "$ratings"
sets=()
if [ -n "$config" ]; then sets+=(--config "$config"); fi
for kv in ${TRAIN_SET:-}; do sets+=(--set "$kv"); done
stage train $movierec train --data "$work/data" --out "$work/model" "${sets[@]}"
# one parquet file either way: WORKERS=auto is the command's default (its own choice of processes)
stage candidates $movierec candidates --model "$work/model" --out "$work/candidates.parquet" --k 100 --workers "$workers"
if [ "${BATCH_BENCH:-0}" = 1 ]; then
  echo "== batch candidates benchmark (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  env -u OMP_NUM_THREADS -u OPENBLAS_NUM_THREADS -u MKL_NUM_THREADS "$python" "$here/benchmarks/batch_candidates.py" --model "$work/model" \
    --workers "${BENCH_WORKERS:-2}" > "$work/batch_candidates.md" 2> "$work/batch_candidates.log"
  cat "$work/batch_candidates.md" >&2
fi

echo
echo "| stage | wall | peak RSS MB | CPU s (user+sys) |"
echo "|---|---:|---:|---:|"
for name in synth train candidates; do
  f="$work/$name.time"
  [ -f "$f" ] || continue
  wall=$(grep "Elapsed (wall clock)" "$f" | awk '{print $NF}')
  rss=$(grep "Maximum resident set size" "$f" | awk '{printf "%.0f", $NF/1024}')
  cpu=$(grep -E "User time|System time" "$f" | awk '{s+=$NF} END {printf "%.0f", s}')
  echo "| $name | $wall | $rss | $cpu |"
done
