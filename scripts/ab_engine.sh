#!/usr/bin/env bash
# ab_engine.sh: the engine bench (benches/engine.rs) of two builds, run alternately, so
# that a machine's drift falls on both sides alike.
#
#   scripts/ab_engine.sh A_BIN B_BIN INPUT [RECORD_EVENTS] [REPS]
#
# A_BIN, B_BIN: engine bench binaries (`cargo bench --bench engine --no-run` prints the
# path; copy it aside between builds). INPUT: an NDJSON file (`shopstream gen -n 1000000
# -o /tmp/g1m.ndjson`). RECORD_EVENTS: events per log record (default: the config's
# 65,536). REPS (default 2): pairs of runs, 5 rounds each. Prints one BENCH_JSON line per
# run, prefixed with the side, then the median and range of each side.
set -euo pipefail
a=$1 b=$2 input=$3 record=${4:-65536} reps=${5:-2}
out=$(mktemp)
for rep in $(seq "$reps"); do
  for side in A B; do
    bin=$a; [ "$side" = B ] && bin=$b
    line=$(SHOPSTREAM_BENCH_INPUT=$input ENGINE_BENCH_RECORD_EVENTS=$record ENGINE_BENCH_ROUNDS=5 \
      "$bin" --bench 2>&1 | grep BENCH_JSON)
    echo "$side $rep $line" | tee -a "$out"
  done
done
python3 - "$out" <<'PY'
import json, statistics, sys, collections
d = collections.defaultdict(list)
for l in open(sys.argv[1]):
    side, _, _, js = l.split(' ', 3)
    for r in json.loads(js)['rounds']:
        d[side].append((r['events_per_s'], r['cpu_s_per_million']))
for side in sorted(d):
    e = sorted(x[0] for x in d[side]); c = sorted(x[1] for x in d[side])
    print(f"{side}: {statistics.median(e)/1e3:.0f}k [{e[0]/1e3:.0f}k-{e[-1]/1e3:.0f}k] events/s, "
          f"{statistics.median(c):.2f} [{c[0]:.2f}-{c[-1]:.2f}] CPU-s per 1M events ({len(e)} rounds)")
PY
rm -f "$out"
