#!/usr/bin/env bash
# query_load.sh: read latency of one kind of query while ingesting, on a real server.
#
#   scripts/query_load.sh INPUT RATE [QUERY...]
#
# Starts `shopstream serve` (release build, fresh data dir in /tmp, ports 17700/17701),
# preloads INPUT with `shopstream send --wait-visible`, then for each QUERY (default:
# similar profile) runs `shopstream load --rate RATE --qps 2000 --query QUERY
# --duration 20` (RATE 0: queries only) and prints its query lines. Client and server
# share the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
input=$1 rate=$2; shift 2
[ $# -eq 0 ] && set -- similar profile
cargo build --release -q -p shopstream-tools
bin=target/release/shopstream
dir=$(mktemp -d /tmp/query-load.XXXXXX)
"$bin" serve --data-dir "$dir" --ingest-addr 127.0.0.1:17700 --http-addr 127.0.0.1:17701 \
  > "$dir.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$dir" "$dir.log"' EXIT
sleep 3
"$bin" send "$input" --addr 127.0.0.1:17700 --wait-visible 127.0.0.1:17701 2>&1 | tail -1
for q in "$@"; do
  echo "== $q at $rate events/s"
  "$bin" load --ingest 127.0.0.1:17700 --http 127.0.0.1:17701 --rate "$rate" --qps 2000 \
    --query "$q" --duration 20 --seed 11 2>&1 | grep -E "ingest  |queries|query"
done
