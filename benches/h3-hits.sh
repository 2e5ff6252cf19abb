#!/usr/bin/env bash
# HTTP/3 against HTTP/1.1 and against Caddy: throughput of 1 MiB cache hits
# from a Cascade edge over HTTP/3 and over HTTP/1.1 on TLS, next to Caddy
# (Debian's package, which serves HTTP/3) serving the same bytes from a file,
# in the same run on the same machine.
#
#   make bench-h3                            # installs caddy first
#   DURATION=5 ROUNDS=1 benches/h3-hits.sh   # a quick look
#
# Starts origin, shield and edge as separate processes (benches/stack.sh),
# the edge with TLS and HTTP/3 on one port and a certificate made here with
# openssl; ingests a clip whose 2 s segments are about 1 MiB and warms the
# edge. Caddy serves the chosen segment's bytes from a file at the same path,
# with the same certificate. One load generator, benches/src/bin/h3_load.rs
# (quinn + h3 for HTTP/3, reqwest + rustls for HTTP/1.1), loads each server
# in each protocol in turn, ROUNDS times, alternating the order.
#
# Settings (environment): DURATION (s per run, 10), ROUNDS (3), CONNECTIONS
# (HTTP/3 connections, 4), STREAMS (concurrent requests per HTTP/3
# connection, 8; HTTP/1.1 gets CONNECTIONS x STREAMS connections, so both
# have as many requests in flight), CLIP_SECS (20), KBPS (4100), PRESET
# (ultrafast), CASCADE_BIN, EDGE_LOG (warn), KEEP_TMP=1, OUT_JSON
# (target/bench/h3-hits.json).

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-4}
STREAMS=${STREAMS:-8}
CLIP_SECS=${CLIP_SECS:-20}
KBPS=${KBPS:-4100}
PRESET=${PRESET:-ultrafast}
EDGE_LOG=${EDGE_LOG:-warn}
KEEP_TMP=${KEEP_TMP:-0}
OUT_JSON=${OUT_JSON:-$TARGET_DIR/bench/h3-hits.json}
TOKEN_NAME=__token__

say() { echo "h3-hits: $*" >&2; }
die() {
	say "error: $*"
	exit 1
}

missing=()
for t in caddy openssl ffmpeg curl; do
	command -v "$t" >/dev/null 2>&1 || missing+=("$t")
done
if [ ${#missing[@]} -gt 0 ]; then
	die "missing: ${missing[*]}. Run 'make bench-deps' (caddy) and 'make deps' (ffmpeg, curl)."
fi

say "building the load generator (cargo build --release -p cascade-benches --bin h3_load)"
(cd "$ROOT" && cargo build --release -p cascade-benches --bin h3_load)
LOAD=$TARGET_DIR/release/h3_load

# A CA and a leaf for localhost and 127.0.0.1, shared by the edge and Caddy.
stack_prepare() {
	free_port
	TLS_PORT=$REPLY
	local c=$TMP/tls
	mkdir -p "$c"
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
		-keyout "$c/ca.key" -out "$c/ca.pem" -days 2 -subj "/CN=Cascade bench CA" 2>/dev/null
	openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
		-keyout "$c/key.pem" -out "$c/leaf.csr" -subj "/CN=localhost" 2>/dev/null
	printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$c/leaf.ext"
	openssl x509 -req -in "$c/leaf.csr" -CA "$c/ca.pem" -CAkey "$c/ca.key" -CAcreateserial \
		-out "$c/cert.pem" -days 2 -extfile "$c/leaf.ext" 2>/dev/null
	EDGE_EXTRA_TOML="tls_listen = \"127.0.0.1:$TLS_PORT\"
tls_cert = \"$c/cert.pem\"
tls_key = \"$c/key.pem\""
}

# shellcheck source=benches/stack.sh
. "$ROOT/benches/stack.sh"

EDGE_TLS=https://127.0.0.1:$TLS_PORT
curl -fsS -o /dev/null --cacert "$TMP/tls/ca.pem" -H "$AUTH" "$EDGE_TLS$SEGMENT_PATH" ||
	die "the edge does not answer over TLS"

# --- Caddy with the same bytes -------------------------------------------------

free_port
CADDY_PORT=$REPLY
free_port
CADDY_HTTP_PORT=$REPLY
CADDY_TLS=https://127.0.0.1:$CADDY_PORT
mkdir -p "$TMP/www$(dirname "$SEGMENT_PATH")" "$TMP/caddy"
get "$EDGE_URL$SEGMENT_PATH" >"$TMP/www$SEGMENT_PATH"
cat >"$TMP/caddy/Caddyfile" <<EOF
{
	admin off
	http_port $CADDY_HTTP_PORT
	https_port $CADDY_PORT
	auto_https disable_redirects
	servers {
		protocols h1 h2 h3
	}
}
https://127.0.0.1:$CADDY_PORT {
	bind 127.0.0.1
	tls $TMP/tls/cert.pem $TMP/tls/key.pem
	root * $TMP/www
	file_server
}
EOF
XDG_DATA_HOME=$TMP/caddy XDG_CONFIG_HOME=$TMP/caddy HOME=$TMP/caddy \
	caddy run --config "$TMP/caddy/Caddyfile" --adapter caddyfile >"$TMP/caddy.log" 2>&1 &
CADDY_PID=$!
PIDS+=("$CADDY_PID")
for i in $(seq 1 100); do
	curl -fsS -o /dev/null --cacert "$TMP/tls/ca.pem" "$CADDY_TLS$SEGMENT_PATH" 2>/dev/null && break
	kill -0 "$CADDY_PID" 2>/dev/null || die "caddy exited: $(tail -5 "$TMP/caddy.log")"
	sleep 0.1
done
cmp -s <(curl -fsS --cacert "$TMP/tls/ca.pem" "$CADDY_TLS$SEGMENT_PATH") "$TMP/www$SEGMENT_PATH" ||
	die "Caddy and the edge serve different bytes"
say "caddy :$CADDY_PORT $(caddy version | head -1)"

# --- measurement ---------------------------------------------------------------

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
field() { sed -n "s/.*\"$1\":\([0-9.e+-]*\).*/\1/p" <<<"$2"; }
join() {
	local IFS=,
	echo "$*"
}

# run WHO PROTO: one load run; appends its figures to the arrays of WHO_PROTO.
declare -A RPS GBPS P50 P99 ERR
run() {
	local who=$1 proto=$2 base out conns
	if [ "$who" = cascade ]; then base=$EDGE_TLS; else base=$CADDY_TLS; fi
	if [ "$proto" = h3 ]; then conns=$CONNECTIONS; else conns=$((CONNECTIONS * STREAMS)); fi
	out=$("$LOAD" --url "$base$SEGMENT_PATH" --proto "$proto" --ca "$TMP/tls/ca.pem" \
		--header "$AUTH" --connections "$conns" --streams "$STREAMS" --duration "$DURATION") ||
		die "the load generator failed against $who over $proto"
	echo "$who $proto $out" >>"$TMP/load.log"
	[ "$(field object_bytes "$out")" = "$SEGMENT_BYTES" ] || die "$who over $proto answered $(field object_bytes "$out") bytes, not $SEGMENT_BYTES: $out"
	RPS[$who.$proto]+="$(field rps "$out") "
	GBPS[$who.$proto]+="$(field gbps "$out") "
	P50[$who.$proto]+="$(field p50_ms "$out") "
	P99[$who.$proto]+="$(field p99_ms "$out") "
	ERR[$who.$proto]=$((${ERR[$who.$proto]:-0} + $(field errors "$out")))
}

RUNS="cascade.h3 cascade.h1 caddy.h3 caddy.h1"
for r in $(seq 1 "$ROUNDS"); do
	# Alternate the order, so drift in the machine's load falls on all.
	if [ $((r % 2)) -eq 1 ]; then order=$RUNS; else order=$(echo "$RUNS" | tr ' ' '\n' | tac | tr '\n' ' '); fi
	for run in $order; do
		say "round $r/$ROUNDS: ${run%.*} over ${run#*.}"
		run "${run%.*}" "${run#*.}"
	done
done

declare -A M
for run in $RUNS; do
	# shellcheck disable=SC2086
	M[$run]=$(median ${RPS[$run]})
done
table=$(
	printf '\n1 MiB cache hits: %s (%s bytes), %s s per run, %s rounds, medians;\n' "$SEGMENT_PATH" "$SEGMENT_BYTES" "$DURATION" "$ROUNDS"
	printf 'HTTP/3: %s connections x %s streams; HTTP/1.1 over TLS: %s connections\n' "$CONNECTIONS" "$STREAMS" "$((CONNECTIONS * STREAMS))"
	printf '  %-24s %12s %9s %9s %9s %7s\n' "" "requests/s" "Gbit/s" "p50 ms" "p99 ms" "errors"
	for run in $RUNS; do
		# shellcheck disable=SC2086
		printf '  %-24s %12.0f %9.3f %9.2f %9.2f %7s\n' "$run" "${M[$run]}" "$(median ${GBPS[$run]})" "$(median ${P50[$run]})" "$(median ${P99[$run]})" "${ERR[$run]}"
	done
)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.3f\n", a / b; else print 0}'; }
H3_H1=$(ratio "${M[cascade.h3]}" "${M[cascade.h1]}")
H3_CADDY=$(ratio "${M[cascade.h3]}" "${M[caddy.h3]}")
H1_CADDY=$(ratio "${M[cascade.h1]}" "${M[caddy.h1]}")
echo "$table"
printf '  Cascade HTTP/3 / Cascade HTTP/1.1: %s   (goal: at least 0.5)\n' "$H3_H1"
printf '  Cascade HTTP/3 / Caddy HTTP/3:     %s   (goal: at least 1.0)\n' "$H3_CADDY"
printf '  Cascade HTTP/1.1 / Caddy HTTP/1.1: %s\n' "$H1_CADDY"
for run in $RUNS; do printf '  rounds %-10s requests/s: %s\n' "$run" "${RPS[$run]}"; done

mkdir -p "$(dirname "$OUT_JSON")"
{
	printf '{\n  "bench": "h3-hits",\n  "unix_time": %s,\n  "object": {"path": "%s", "bytes": %s},\n' "$(date +%s)" "$SEGMENT_PATH" "$SEGMENT_BYTES"
	printf '  "load": {"h3_connections": %s, "h3_streams": %s, "h1_connections": %s, "duration_secs": %s, "rounds": %s},\n' \
		"$CONNECTIONS" "$STREAMS" "$((CONNECTIONS * STREAMS))" "$DURATION" "$ROUNDS"
	printf '  "caddy_version": "%s",\n  "runs": {\n' "$(caddy version | head -1 | awk '{print $1}')"
	first=1
	for run in $RUNS; do
		[ $first = 1 ] || printf ',\n'
		first=0
		# shellcheck disable=SC2086
		printf '    "%s": {"requests_per_sec": %s, "rounds_requests_per_sec": [%s], "errors": %s}' \
			"$run" "${M[$run]}" "$(join ${RPS[$run]})" "${ERR[$run]}"
	done
	printf '\n  },\n  "ratios": {"cascade_h3_over_cascade_h1": %s, "cascade_h3_over_caddy_h3": %s, "cascade_h1_over_caddy_h1": %s}\n}\n' \
		"$H3_H1" "$H3_CADDY" "$H1_CADDY"
} >"$OUT_JSON"
echo
say "results written to $OUT_JSON"
