#!/usr/bin/env bash
# similarity_memory.sh: resident memory of the server after INPUT, with the similarity
# and recommend views off, with recommend off and similarity's history_items 10, 50
# and 200, and with both on (the defaults).
#
#   scripts/similarity_memory.sh INPUT
#
# For each setting: `shopstream serve --config` with the setting's tables (snapshots
# off) on a fresh data dir, `shopstream send INPUT --wait-visible`, then VmRSS from
# /proc before and after, the interaction records the similarity view holds and the
# signals the recommend view has scheduled (/metrics).
set -euo pipefail
cd "$(dirname "$0")/.."
input=$1
cargo build --release -q -p shopstream-tools
bin=target/release/shopstream
off='[recommend]\nenabled = false\n'
for setting in "[similarity]\nenabled = false\n$off" \
  "[similarity]\nhistory_items = 10\n$off" "[similarity]\nhistory_items = 50\n$off" \
  "[similarity]\nhistory_items = 200\n$off" "[similarity]\nhistory_items = 50\n"; do
  dir=$(mktemp -d /tmp/similarity-memory.XXXXXX)
  printf "$setting[snapshot]\nevery_events = 0\n" > "$dir.toml"
  "$bin" serve --config "$dir.toml" --data-dir "$dir" --ingest-addr 127.0.0.1:17710 \
    --http-addr 127.0.0.1:17711 > "$dir.log" 2>&1 &
  server=$!
  sleep 2
  before=$(awk '/VmRSS/ {print $2}' /proc/$server/status)
  "$bin" send "$input" --addr 127.0.0.1:17710 --wait-visible 127.0.0.1:17711 > /dev/null 2>&1
  sleep 2
  after=$(awk '/VmRSS/ {print $2}' /proc/$server/status)
  metrics=$(curl -s 127.0.0.1:17711/metrics)
  records=$(awk '/^shopstream_similarity_history_records/ {s += $2} END {print s + 0}' <<< "$metrics")
  signals=$(awk '/^shopstream_recommend_scheduled_signals/ {s += $2} END {print s + 0}' <<< "$metrics")
  echo "$(printf "$setting" | tr '\n' ' '): RSS ${before} kB before, ${after} kB after (+$(( (after - before) / 1024 )) MiB); interaction records $records, scheduled signals $signals"
  kill $server; wait $server 2>/dev/null || true
  rm -rf "$dir" "$dir.toml" "$dir.log"
done
