#!/usr/bin/env bash
# similarity_memory.sh: resident memory of the server after INPUT, with the similarity
# view off and with history_items 10, 50 and 200.
#
#   scripts/similarity_memory.sh INPUT
#
# For each setting: `shopstream serve --config` with a [similarity] table (snapshots
# off) on a fresh data dir, `shopstream send INPUT --wait-visible`, then VmRSS from
# /proc before and after, and the interaction records the view holds (/metrics).
set -euo pipefail
cd "$(dirname "$0")/.."
input=$1
cargo build --release -q -p shopstream-tools
bin=target/release/shopstream
for setting in "enabled = false" "history_items = 10" "history_items = 50" "history_items = 200"; do
  dir=$(mktemp -d /tmp/similarity-memory.XXXXXX)
  printf '[similarity]\n%s\n[snapshot]\nevery_events = 0\n' "$setting" > "$dir.toml"
  "$bin" serve --config "$dir.toml" --data-dir "$dir" --ingest-addr 127.0.0.1:17710 \
    --http-addr 127.0.0.1:17711 > "$dir.log" 2>&1 &
  server=$!
  sleep 2
  before=$(awk '/VmRSS/ {print $2}' /proc/$server/status)
  "$bin" send "$input" --addr 127.0.0.1:17710 --wait-visible 127.0.0.1:17711 > /dev/null 2>&1
  sleep 2
  after=$(awk '/VmRSS/ {print $2}' /proc/$server/status)
  records=$(curl -s 127.0.0.1:17711/metrics | awk '/^shopstream_similarity_history_records/ {s += $2} END {print s + 0}')
  echo "$setting: RSS ${before} kB before, ${after} kB after (+$(( (after - before) / 1024 )) MiB); interaction records $records"
  kill $server; wait $server 2>/dev/null || true
  rm -rf "$dir" "$dir.toml" "$dir.log"
done
