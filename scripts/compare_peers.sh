#!/usr/bin/env bash
# compare_peers.sh: shopstream and its peer engines on one generated stream, in one run.
#
#   scripts/compare_peers.sh [EVENTS] [--peers duckdb,bytewax,pathway,flink]
#
# EVENTS defaults to 1000000; --peers picks the peers (default: all four; '' for none).
# Works from any directory. What it does, in order:
#   1. builds shopstream (`cargo build --release` in the repo root);
#   2. generates the stream once with ../shared/peers/gen.py into
#      /tmp/shopstream-peers/wEVENTS.{ndjson,flat} (kept; skipped when both are there
#      with the same number of lines);
#   3. installs the selected peers if they are missing, as ../shared/peers/README.md
#      says, in throwaway venvs: /tmp/peers/venv (pathway, bytewax, duckdb) and
#      /tmp/peers/flinkvenv (apache-flink, needs Java 17);
#   4. starts `shopstream serve` on a fresh data dir in /tmp, on ports the OS picks, sends
#      the .ndjson with `shopstream send --wait-visible` (durable: fsync always, then waits
#      until every view includes the last event), stops the server and removes the dir;
#   5. runs each peer job on the .flat file with its venv's python;
#   6. prints a table: engine, events/s, seconds, shopstream ÷ engine.
# A peer that fails to install or to run is shown as "not measured: REASON"; the run goes
# on. Logs go to /tmp/shopstream-peers/logs. Before each measurement it waits (at most
# 60 s) for the CPUs to be 92% idle for 3 s; QUIET=0 skips that.
#
# How long, on 2 cores, 1M events: 1 to 2 minutes once everything is installed and
# built (generating the stream ~15 s, skipped when it is there; 3 s of idle check before
# each engine; shopstream ~2 s; duckdb ~1 s; bytewax ~8 s; pathway ~12 s; flink ~13 s,
# much of it the mini-cluster's start). A busy machine adds up to 60 s per engine. The
# first run also installs the peers (a few minutes of pip) and may compile shopstream.
#
# Environment: PEERS_VENV, FLINK_VENV (venv paths), PEER_TIMEOUT (seconds per peer job,
# default 1800), QUIET (1: wait for an idle machine before each measurement).
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p;}' "$0"; }

# ---- arguments ---------------------------------------------------------------------------
EVENTS=1000000
PEERS=duckdb,bytewax,pathway,flink
while (($#)); do
    case $1 in
    --peers) [[ $# -ge 2 ]] || { echo "--peers needs a list" >&2; exit 2; }; PEERS=$2; shift 2 ;;
    --peers=*) PEERS=${1#--peers=}; shift ;;
    -h | --help) usage; exit 0 ;;
    *[!0-9]* | '') echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    *) EVENTS=$1; shift ;;
    esac
done
((EVENTS > 0)) || { echo "EVENTS must be positive" >&2; exit 2; }
IFS=, read -r -a SELECTED <<<"$PEERS"
for p in "${SELECTED[@]}"; do
    case $p in duckdb | bytewax | pathway | flink) ;; *) echo "unknown peer: $p" >&2; exit 2 ;; esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PEERS_DIR=$(cd "$ROOT/../shared/peers" 2>/dev/null && pwd) ||
    { echo "no ../shared/peers beside the repo ($ROOT)" >&2; exit 1; }
PEERS_VENV=${PEERS_VENV:-/tmp/peers/venv}
FLINK_VENV=${FLINK_VENV:-/tmp/peers/flinkvenv}
PEER_TIMEOUT=${PEER_TIMEOUT:-1800}
QUIET=${QUIET:-1}
WORK=/tmp/shopstream-peers
LOGS=$WORK/logs
mkdir -p "$WORK" "$LOGS" "$(dirname "$PEERS_VENV")" "$(dirname "$FLINK_VENV")"

say() { printf '== %s\n' "$*" >&2; }
has() { [[ ",$PEERS," == *",$1,"* ]]; }

# ---- cleanup: no server, peer job or data dir is left behind, whatever happens -----------
SERVER_PID='' PEER_PID='' DATA_DIR=''
stop_server() {
    [[ -n $SERVER_PID ]] || return 0
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=''
}
cleanup() {
    local rc=$?
    if [[ -n $PEER_PID ]]; then # timeout(1) passes the signal on to the job's process group
        kill -TERM "$PEER_PID" 2>/dev/null || true
        wait "$PEER_PID" 2>/dev/null || true
    fi
    stop_server
    if [[ -n $DATA_DIR ]]; then rm -rf -- "$DATA_DIR"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Waits (at most 60 s) until the CPUs have been at least 92% idle over 3 s; if they
# never are, notes the engine about to be measured in BUSY.
BUSY=()
wait_quiet() {
    [[ $QUIET == 1 && -r /proc/stat ]] || return 0
    local sample='/^cpu /{t=0; for (i = 2; i <= 9; i++) t += $i; print t, $5 + $6}'
    local t0 i0 t1 i1 start=$SECONDS
    while ((SECONDS - start < 60)); do
        read -r t0 i0 < <(awk "$sample" /proc/stat)
        sleep 3
        read -r t1 i1 < <(awk "$sample" /proc/stat)
        if awk -v dt=$((t1 - t0)) -v di=$((i1 - i0)) 'BEGIN { exit !(dt > 0 && di / dt >= 0.92) }'; then
            return 0
        fi
    done
    say "the machine did not get quiet within 60 s; measuring anyway"
    BUSY+=("$1")
}

# Formatting: 1234567 -> 1,234,567; a ratio -> 12×, 4.8×, 0.38×.
commas() { awk -v n="$1" 'BEGIN { s = sprintf("%.0f", n); o = ""
    while (length(s) > 3) { o = "," substr(s, length(s) - 2) o; s = substr(s, 1, length(s) - 3) }
    print s o }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { r = a / b
    if (a == b) print "1×"; else printf (r >= 10 ? "%.0f×" : r >= 1 ? "%.1f×" : "%.2f×"), r }'; }

# Results, one entry per engine: name, label, events/s, seconds, or a reason in NOTE.
declare -a NAME=() LABEL=() EPS=() SECS=() NOTE=()
result() { NAME+=("$1"); LABEL+=("$2"); EPS+=("$3"); SECS+=("$4"); NOTE+=("$5"); }

# ---- 1. build ----------------------------------------------------------------------------
say "building shopstream (cargo build --release in $ROOT)"
(cd "$ROOT" && cargo build --release) >"$LOGS/build.log" 2>&1 || {
    tail -20 "$LOGS/build.log" >&2; echo "cargo build --release failed" >&2; exit 1; }
BIN=$ROOT/target/release/shopstream

# ---- 2. the stream -----------------------------------------------------------------------
PREFIX=$WORK/w$EVENTS
lines() { wc -l <"$1" | tr -d ' '; }
if [[ -f $PREFIX.ndjson && -f $PREFIX.flat ]] && [[ $(lines "$PREFIX.ndjson") == "$(lines "$PREFIX.flat")" ]]; then
    say "reusing $PREFIX.ndjson and $PREFIX.flat"
else
    say "generating $EVENTS events: python3 gen.py $EVENTS $PREFIX"
    python3 "$PEERS_DIR/gen.py" "$EVENTS" "$PREFIX.partial"
    mv -f "$PREFIX.partial.ndjson" "$PREFIX.ndjson"
    mv -f "$PREFIX.partial.flat" "$PREFIX.flat"
    # Write the ~300 MB out now, so that its writeback does not compete with the log's
    # fsyncs during the measurement.
    sync
fi
N=$(lines "$PREFIX.ndjson")
say "stream: $N events, $(du -m "$PREFIX.ndjson" | cut -f1) MiB of NDJSON, $(du -m "$PREFIX.flat" | cut -f1) MiB flat"

# ---- 3. the peers' venvs -----------------------------------------------------------------
declare -A MISSING=() # peer -> why it cannot run
module() { case $1 in duckdb) echo duckdb ;; bytewax) echo bytewax.operators ;;
    pathway) echo pathway ;; flink) echo pyflink.table ;; esac; }
importable() { "$2/bin/python" -c "import $(module "$1")" >/dev/null 2>&1; }
need=()
for p in duckdb bytewax pathway; do has $p && ! importable $p "$PEERS_VENV" && need+=("$p"); done
if ((${#need[@]})); then
    say "installing pathway bytewax duckdb into $PEERS_VENV (log: $LOGS/pip-venv.log)"
    [[ -x $PEERS_VENV/bin/python ]] || python3 -m venv "$PEERS_VENV" >"$LOGS/pip-venv.log" 2>&1 || true
    if ! "$PEERS_VENV/bin/pip" install pathway bytewax duckdb >>"$LOGS/pip-venv.log" 2>&1; then
        # The three together failed: try the ones we need one by one, so that one bad
        # wheel does not take the others down with it.
        for p in "${need[@]}"; do
            "$PEERS_VENV/bin/pip" install "$p" >>"$LOGS/pip-venv.log" 2>&1 || true
        done
    fi
    for p in "${need[@]}"; do
        importable "$p" "$PEERS_VENV" || MISSING[$p]="pip install $p into $PEERS_VENV failed (see $LOGS/pip-venv.log)"
    done
fi
if has flink; then
    java_major=$(java -version 2>&1 | sed -n '1s/.*version "\([0-9]*\).*/\1/p' || true)
    if [[ -z $java_major ]]; then
        MISSING[flink]="no java on PATH (apache-flink needs Java 17)"
    elif ((java_major < 17)); then
        MISSING[flink]="Java $java_major found, apache-flink needs Java 17"
    elif ! importable flink "$FLINK_VENV"; then
        say "installing apache-flink into $FLINK_VENV (log: $LOGS/pip-flinkvenv.log)"
        [[ -x $FLINK_VENV/bin/python ]] || python3 -m venv "$FLINK_VENV" >"$LOGS/pip-flinkvenv.log" 2>&1 || true
        "$FLINK_VENV/bin/pip" install apache-flink >>"$LOGS/pip-flinkvenv.log" 2>&1 || true
        importable flink "$FLINK_VENV" ||
            MISSING[flink]="pip install apache-flink into $FLINK_VENV failed (see $LOGS/pip-flinkvenv.log)"
    fi
fi
version() { # the installed version of a peer's package, for the record
    local pkg=$1 venv=$2
    "$venv/bin/python" -c "import importlib.metadata as m; print(m.version('$pkg'))" 2>/dev/null || echo '?'
}

# ---- 4. shopstream -----------------------------------------------------------------------
wait_quiet shopstream
DATA_DIR=$(mktemp -d /tmp/shopstream-peers-data.XXXXXX)
say "starting shopstream serve (data dir $DATA_DIR, embedded defaults: fsync always)"
# Embedded defaults, whatever the caller's environment says.
env -u SHOPSTREAM_CONFIG -u SHOPSTREAM_WORKERS -u SHOPSTREAM_CLOCK \
    "$BIN" serve --data-dir "$DATA_DIR" --ingest-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
    >"$LOGS/serve.out" 2>"$LOGS/serve.log" &
SERVER_PID=$!
INGEST='' HTTP=''
for _ in $(seq 600); do
    read -r INGEST HTTP < <(sed -n 's/^shopstream listening ingest=\([^ ]*\) http=\([^ ]*\).*/\1 \2/p' \
        "$LOGS/serve.out") || true
    [[ -n $INGEST ]] && break
    kill -0 "$SERVER_PID" 2>/dev/null || { tail -20 "$LOGS/serve.log" >&2; echo "shopstream serve exited" >&2; exit 1; }
    sleep 0.1
done
[[ -n $INGEST ]] || { echo "shopstream serve printed no 'listening' line within 60 s" >&2; exit 1; }
say "sending $PREFIX.ndjson to $INGEST, waiting until visible at $HTTP"
"$BIN" send "$PREFIX.ndjson" --addr "$INGEST" --wait-visible "$HTTP" >"$LOGS/send.out" 2>"$LOGS/send.log" || {
    cat "$LOGS/send.out" >&2; tail -20 "$LOGS/send.log" >&2; echo "shopstream send failed" >&2; exit 1; }
cat "$LOGS/send.out" >&2
stop_server
rm -rf -- "$DATA_DIR"
DATA_DIR=''
accepted=$(sed -n 's/^sent .* accepted \([0-9]*\) rejected \([0-9]*\) .*/\1 \2/p' "$LOGS/send.out")
[[ $accepted == "$N 0" ]] || say "WARNING: expected $N accepted and 0 rejected, got: $accepted"
read -r S_SECS S_EPS < <(sed -n 's/^visible after \([0-9.]*\) s = \([0-9]*\) events\/s.*/\1 \2/p' "$LOGS/send.out")
[[ -n ${S_EPS:-} ]] || { echo "could not read 'visible after' from $LOGS/send.out" >&2; exit 1; }
result shopstream "shopstream, durable, to visible" "$S_EPS" "$S_SECS" ''

# ---- 5. the peers --------------------------------------------------------------------------
name() { case $1 in duckdb) echo DuckDB ;; bytewax) echo Bytewax ;; pathway) echo Pathway ;;
    flink) echo "Flink SQL" ;; esac; }
label() { case $1 in
    duckdb) echo "DuckDB $(version duckdb "$PEERS_VENV"), one-shot batch SQL" ;;
    bytewax) echo "Bytewax $(version bytewax "$PEERS_VENV")" ;;
    pathway) echo "Pathway $(version pathway "$PEERS_VENV")" ;;
    flink) echo "Flink SQL $(version apache-flink "$FLINK_VENV"), parallelism 2, incl. start" ;;
    esac; }
for p in "${SELECTED[@]}"; do
    [[ -n $p ]] || continue
    if [[ -n ${MISSING[$p]:-} ]]; then result "$p" "$(name "$p")" '' '' "${MISSING[$p]}"; continue; fi
    py=$PEERS_VENV/bin/python
    [[ $p == flink ]] && py=$FLINK_VENV/bin/python
    wait_quiet "$p"
    say "running ${p}_job.py (log: $LOGS/$p.log)"
    # In /tmp, so that nothing a job writes lands in the repo; timeout(1) runs the job in
    # its own process group, which cleanup can stop as a whole.
    (cd "$WORK" && exec timeout -k 10 "$PEER_TIMEOUT" "$py" "$PEERS_DIR/${p}_job.py" "$PREFIX.flat") \
        >"$LOGS/$p.out" 2>"$LOGS/$p.log" &
    PEER_PID=$!
    rc=0
    wait "$PEER_PID" || rc=$?
    PEER_PID=''
    line=$(grep -E "^$p [0-9]+ events [0-9.]+ s [0-9,]+ ev/s" "$LOGS/$p.out" | tail -1 || true)
    if ((rc == 124 || rc == 137)); then
        result "$p" "$(name "$p")" '' '' "timed out after $PEER_TIMEOUT s (see $LOGS/$p.log)"
    elif ((rc != 0)) || [[ -z $line ]]; then
        why=$(grep -v '^[[:space:]]*$' "$LOGS/$p.log" | tail -1 | cut -c1-120)
        result "$p" "$(name "$p")" '' '' "${p}_job.py exited $rc: ${why:-no result line} (see $LOGS/$p.log)"
    else
        printf '%s\n' "$line" >&2
        read -r _ n _ secs _ eps _ <<<"$line"
        [[ $n == "$N" ]] || say "WARNING: $p counted $n events, the stream has $N"
        result "$p" "$(label "$p")" "${eps//,/}" "$secs" ''
    fi
done

# ---- 6. the table ------------------------------------------------------------------------
echo
echo "$N events ($(basename "$PREFIX").ndjson / .flat), $(nproc) cores, $(date -u +%Y-%m-%d)"
echo
printf '| %-52s | %12s | %8s | %s |\n' engine events/s seconds "shopstream ÷ engine"
printf '|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..54})" "$(printf -- '-%.0s' {1..14})" \
    "$(printf -- '-%.0s' {1..10})" "$(printf -- '-%.0s' {1..21})"
for i in "${!NAME[@]}"; do
    if [[ -n ${NOTE[$i]} ]]; then
        printf '| %-52s | not measured: %s | | |\n' "${LABEL[$i]}" "${NOTE[$i]}"
    else
        printf '| %-52s | %12s | %8s | %s |\n' "${LABEL[$i]}" "$(commas "${EPS[$i]}")" "${SECS[$i]}" \
            "$(ratio "$S_EPS" "${EPS[$i]}")"
    fi
done
if ((${#BUSY[@]})); then
    echo
    echo "Measured on a busy machine (not 92% idle for 3 s within 60 s before): ${BUSY[*]}."
fi
cat <<'EOF'

shopstream's figure is durable, incremental ingest until visible: Segment messages over
one TCP connection, parsed, validated, deduplicated, logged with fsync before each ack
(fsync "always"), fed through the profile dataflows, and the clock stops once a read
sees the last event. Its views compute only the per-user half of the peers' aggregates
(no campaign view yet), though richer per user (windows, cart, categories, RFM).
DuckDB is a one-shot batch pass over the whole file (read, parse, group by): neither
incremental nor durable, a ceiling rather than a like-for-like figure. The peers read
the pre-flattened .flat file and persist nothing; Flink's time includes starting its
local mini-cluster (use 5M+ events for a steady-state figure).
EOF
