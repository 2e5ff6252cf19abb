#!/usr/bin/env bash
# Hit path against nginx: requests/s, throughput, p99 latency and peak memory
# of a Cascade edge serving cached objects, next to nginx serving the same
# objects from its own proxy cache, in the same run on the same machine.
#
#   make bench-hit-path                       # installs nginx and wrk first
#   DURATION=5 ROUNDS=1 benches/hit-path.sh   # a quick look
#
# Starts `cascade origin`, `cascade shield` and `cascade edge` as separate
# processes on free ports (configs and data in a temp dir), makes a 720p clip
# with the FFmpeg CLI and ingests it with a one-rung ladder whose 2 s
# segments are about 1 MiB, signs a token, and warms the edge. Then nginx is
# started as a caching reverse proxy whose upstream is that edge (nginx
# cannot package, so the edge stands in as its origin) and warmed, so that it
# answers every measured request from its own cache (checked with
# X-Cache-Status, and by the edge's request counter not moving while nginx is
# measured). For two objects, a media playlist of about 2 KiB and a segment of
# about 1 MiB, wrk loads the edge and nginx in turn, ROUNDS times each.
#
# The token goes in a request header named like the token (`__token__`), so
# the edge answers cached bytes as they are, without writing the token into a
# playlist.
#
# Settings (environment): DURATION (s per wrk run, 10), ROUNDS (3), THREADS
# (wrk threads, 2), CONNECTIONS (64), CLIP_SECS (120: 60 segments make a
# media playlist of about 2 KiB), KBPS (4100: 2 s segments of about 1 MiB),
# PRESET (x264 preset of the origin, ultrafast), CASCADE_BIN (a cascade binary
# to use instead of building target/release/cascade), EDGE_LOG (the edge's
# RUST_LOG, warn: no access log, as nginx has access_log off), KEEP_TMP=1
# (keep configs and logs), OUT_JSON (target/bench/hit-path.json),
# TOKEN_IN (header, or query: as players send it, so the edge writes the
# token into every child URL of each playlist it serves), ACCESS_LOG (0, or
# 1: the edge logs each request at info and nginx writes an access log, both
# to files), PROFILE (0, or 1: `perf record` samples the edge during its
# first playlist run and the top of `perf report` is printed, to say where
# the time goes; needs perf).

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-64}
CLIP_SECS=${CLIP_SECS:-120}
KBPS=${KBPS:-4100}
PRESET=${PRESET:-ultrafast}
TOKEN_IN=${TOKEN_IN:-header}
ACCESS_LOG=${ACCESS_LOG:-0}
PROFILE=${PROFILE:-0}
PROFILED=0
if [ "$ACCESS_LOG" = 1 ]; then EDGE_LOG=${EDGE_LOG:-info}; else EDGE_LOG=${EDGE_LOG:-warn}; fi
KEEP_TMP=${KEEP_TMP:-0}
OUT_JSON=${OUT_JSON:-$TARGET_DIR/bench/hit-path.json}
TOKEN_NAME=__token__

say() { echo "hit-path: $*" >&2; }
die() {
	say "error: $*"
	exit 1
}

# --- tools ----------------------------------------------------------------

NGINX=$(command -v nginx || true)
if [ -z "$NGINX" ] && [ -x /usr/sbin/nginx ]; then NGINX=/usr/sbin/nginx; fi
missing=()
[ -n "$NGINX" ] || missing+=(nginx)
for t in wrk ffmpeg curl; do
	command -v "$t" >/dev/null 2>&1 || missing+=("$t")
done
if [ ${#missing[@]} -gt 0 ]; then
	die "missing: ${missing[*]}. Run 'make bench-deps' (apt-get install nginx-light wrk) and 'make deps' (ffmpeg, curl)."
fi

# shellcheck source=benches/stack.sh
. "$ROOT/benches/stack.sh"

free_port
NGINX_PORT=$REPLY
NGINX_URL=http://127.0.0.1:$NGINX_PORT
say "nginx :$NGINX_PORT"

# --- nginx in front of the edge ----------------------------------------------

NG=$TMP/nginx
mkdir -p "$NG/cache" "$NG/temp"
# Run by root, nginx's workers would switch to nobody, who cannot write the
# private temp dir; keep them as the user running the benchmark.
NGINX_USER=""
if [ "$(id -u)" = 0 ]; then NGINX_USER="user $(id -un) $(id -gn);"; fi
cat >"$NG/nginx.conf" <<EOF
# A caching reverse proxy; its upstream is the Cascade edge of this run.
$NGINX_USER
worker_processes 2;
daemon off;
pid $NG/nginx.pid;
error_log $NG/error.log warn;
events { worker_connections 4096; }
http {
    $( [ "$ACCESS_LOG" = 1 ] && echo "access_log $NG/access.log;" || echo "access_log off;" )
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    open_file_cache max=1000 inactive=60s;
    client_body_temp_path $NG/temp/client;
    proxy_temp_path $NG/temp/proxy;
    fastcgi_temp_path $NG/temp/fastcgi;
    uwsgi_temp_path $NG/temp/uwsgi;
    scgi_temp_path $NG/temp/scgi;
    proxy_cache_path $NG/cache levels=1:2 keys_zone=bench:10m max_size=2g inactive=1h use_temp_path=off;
    upstream cascade_edge {
        server 127.0.0.1:$EDGE_PORT;
        keepalive 32;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        # The token header's name has underscores; nginx drops such headers otherwise.
        underscores_in_headers on;
        location / {
            proxy_pass http://cascade_edge;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache bench;
            proxy_cache_key \$uri;
            proxy_cache_valid 200 206 1h;
            # The edge's max-age for playlists is 60 s; keep everything for the run.
            proxy_ignore_headers Cache-Control Expires;
            proxy_cache_lock on;
            add_header X-Cache-Status \$upstream_cache_status always;
        }
    }
}
EOF
"$NGINX" -t -q -p "$NG" -e "$NG/error.log" -c "$NG/nginx.conf" 2>"$NG/test.log" ||
	die "nginx rejects its config: $(cat "$NG/test.log")"
"$NGINX" -p "$NG" -e "$NG/error.log" -c "$NG/nginx.conf" >"$NG/stdout.log" 2>&1 &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
for i in $(seq 1 100); do
	(exec 3<>"/dev/tcp/127.0.0.1/$NGINX_PORT") 2>/dev/null && break
	kill -0 "$NGINX_PID" 2>/dev/null || die "nginx exited: $(cat "$NG/error.log")"
	sleep 0.1
done
for p in "$PLAYLIST_PATH" "$SEGMENT_PATH"; do
	size "$NGINX_URL$p" >/dev/null
	status=$(header "$NGINX_URL$p" x-cache-status)
	[ "$status" = HIT ] || die "nginx does not answer $p from its cache (X-Cache-Status: $status)"
	[ "$(size "$NGINX_URL$p")" = "$(size "$EDGE_URL$p")" ] || die "nginx and the edge answer $p with different sizes"
done
say "edge and nginx both answer both objects from cache"

# --- measurement ---------------------------------------------------------------

# Converts wrk's figures: 1.5MB → bytes (wrk's units are powers of 1024).
to_bytes() { awk -v v="$1" 'BEGIN {n = v + 0; u = v; sub(/^[0-9.]+/, "", u); m = 1; if (u == "KB") m = 1024; else if (u == "MB") m = 1048576; else if (u == "GB") m = 1073741824; else if (u == "TB") m = 1099511627776; printf "%.0f\n", n * m}'; }
# 250.00us / 1.2ms / 1.5s → milliseconds.
to_ms() { awk -v v="$1" 'BEGIN {n = v + 0; u = v; sub(/^[0-9.]+/, "", u); m = 1; if (u == "us") m = 0.001; else if (u == "s") m = 1000; else if (u == "m") m = 60000; printf "%.3f\n", n * m}'; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

# run_wrk LABEL URL: one wrk run; sets RPS, BPS (bytes/s), P99 (ms), ERRORS.
run_wrk() {
	local label=$1 url=$2 out non2xx sock hdr=$AUTH
	if [ "$TOKEN_IN" = query ]; then
		url="$url?$TOKEN_NAME=$TOKEN"
		hdr="X-Bench: 1"
	fi
	local perf_pid=""
	if [ "$PROFILE" = 1 ] && [ "$label" = cascade ] && [ "$PROFILED" = 0 ]; then
		command -v perf >/dev/null 2>&1 || die "PROFILE=1 needs perf (apt-get install linux-perf)"
		perf record -q -F 499 -g -p "$EDGE_PID" -o "$TMP/perf.data" -- sleep "$DURATION" >/dev/null 2>&1 &
		perf_pid=$!
		PROFILED=1
	fi
	out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -H "$hdr" "$url" 2>&1) ||
		die "wrk failed against $label: $out"
	if [ -n "$perf_pid" ]; then
		wait "$perf_pid" || true
		perf report -i "$TMP/perf.data" --no-children --percent-limit 0.7 --stdio -g none \
			--sort dso,symbol 2>/dev/null | grep -v '^#' | grep -v '^$' | head -60 >"$TMP/profile.txt" || true
		say "where the edge's time goes (self time, ${url%%\?*}):"
		cat "$TMP/profile.txt" >&2
	fi
	printf '=== %s %s\n%s\n' "$label" "${url%%\?*}" "$out" >>"$TMP/wrk.log"
	RPS=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
	BPS=$(to_bytes "$(awk '/^Transfer\/sec:/ {print $2}' <<<"$out")")
	P99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
	non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' <<<"$out")
	sock=$(awk '/Socket errors:/ {for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) n += $i} END {print n + 0}' <<<"$out")
	ERRORS=$((${non2xx:-0} + ${sock:-0}))
	[ -n "$RPS" ] || die "could not read wrk's output: $out"
}

join() {
	local IFS=,
	echo "$*"
}
gbps() { awk -v b="$1" 'BEGIN {printf "%.3f\n", b * 8 / 1e9}'; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f\n", k / 1024}'; }

JSON_OBJECTS=()
for object in playlist segment; do
	if [ "$object" = playlist ]; then path=$PLAYLIST_PATH bytes=$PLAYLIST_BYTES; else path=$SEGMENT_PATH bytes=$SEGMENT_BYTES; fi
	c_rps=() c_bps=() c_p99=() n_rps=() n_bps=() n_p99=()
	c_err=0 n_err=0 edge_during_nginx=0
	for r in $(seq 1 "$ROUNDS"); do
		# Alternate which goes first, so drift in the machine's load falls on both.
		if [ $((r % 2)) -eq 1 ]; then order="cascade nginx"; else order="nginx cascade"; fi
		for who in $order; do
			say "$object, round $r/$ROUNDS: $who"
			if [ "$who" = cascade ]; then
				run_wrk cascade "$EDGE_URL$path"
				c_rps+=("$RPS") c_bps+=("$BPS") c_p99+=("$P99")
				c_err=$((c_err + ERRORS))
			else
				before=$(edge_requests)
				run_wrk nginx "$NGINX_URL$path"
				after=$(edge_requests)
				edge_during_nginx=$((edge_during_nginx + after - before - 1))
				n_rps+=("$RPS") n_bps+=("$BPS") n_p99+=("$P99")
				n_err=$((n_err + ERRORS))
			fi
		done
	done
	status=$(header "$NGINX_URL$path" x-cache-status)
	[ "$status" = HIT ] || say "warning: nginx answers $path with X-Cache-Status $status after the runs"
	c_rss=$(vmhwm_kib "$EDGE_PID")
	n_rss=$(tree_vmhwm_kib "$NGINX_PID")
	cr=$(median "${c_rps[@]}") cb=$(median "${c_bps[@]}") cp=$(median "${c_p99[@]}")
	nr=$(median "${n_rps[@]}") nb=$(median "${n_bps[@]}") np=$(median "${n_p99[@]}")
	ratio=$(awk -v a="$cr" -v b="$nr" 'BEGIN {if (b > 0) printf "%.3f\n", a / b; else print 0}')
	table=$(
		printf '\n%s  %s  (%s bytes)  wrk -t%s -c%s -d%ss, %s rounds, medians; token in the %s, access log %s\n' "$object" "$path" "$bytes" "$THREADS" "$CONNECTIONS" "$DURATION" "$ROUNDS" "$TOKEN_IN" "$ACCESS_LOG"
		printf '  %-16s %12s %9s %10s %14s %7s\n' "" "requests/s" "Gbit/s" "p99 ms" "peak RSS MiB" "errors"
		printf '  %-16s %12.0f %9s %10.2f %14s %7s\n' "Cascade edge" "$cr" "$(gbps "$cb")" "$cp" "$(mib "$c_rss")" "$c_err"
		printf '  %-16s %12.0f %9s %10.2f %14s %7s\n' "nginx (cached)" "$nr" "$(gbps "$nb")" "$np" "$(mib "$n_rss")" "$n_err"
		printf '  Cascade/nginx requests/s: %s   (rounds: Cascade %s; nginx %s)\n' "$ratio" "${c_rps[*]}" "${n_rps[*]}"
		printf '  requests nginx sent to the edge while measured: %s\n' "$edge_during_nginx"
	)
	echo "$table"
	JSON_OBJECTS+=("$(
		cat <<EOF
    {
      "object": "$object", "path": "$path", "bytes": $bytes,
      "cascade": {"requests_per_sec": $cr, "bytes_per_sec": $cb, "gbit_per_sec": $(gbps "$cb"), "p99_ms": $cp, "peak_rss_kib": $c_rss, "errors": $c_err,
                  "rounds_requests_per_sec": [$(join "${c_rps[@]}")], "rounds_p99_ms": [$(join "${c_p99[@]}")]},
      "nginx": {"requests_per_sec": $nr, "bytes_per_sec": $nb, "gbit_per_sec": $(gbps "$nb"), "p99_ms": $np, "peak_rss_kib": $n_rss, "errors": $n_err,
                "rounds_requests_per_sec": [$(join "${n_rps[@]}")], "rounds_p99_ms": [$(join "${n_p99[@]}")],
                "requests_to_upstream_while_measured": $edge_during_nginx},
      "ratio_requests_per_sec": $ratio
    }
EOF
	)")
done

mkdir -p "$(dirname "$OUT_JSON")"
{
	printf '{\n  "bench": "hit-path",\n  "unix_time": %s,\n' "$(date +%s)"
	printf '  "wrk": {"threads": %s, "connections": %s, "duration_secs": %s, "rounds": %s},\n' "$THREADS" "$CONNECTIONS" "$DURATION" "$ROUNDS"
	printf '  "clip": {"secs": %s, "kbps": %s, "segments": %s, "segment_bytes_min": %s, "segment_bytes_median": %s, "segment_bytes_max": %s},\n' \
		"$CLIP_SECS" "$KBPS" "$SEGMENTS" "$SEG_MIN" "$SEG_MED" "$SEG_MAX"
	printf '  "nginx_version": "%s",\n' "$("$NGINX" -v 2>&1 | sed 's/.*nginx\///')"
	printf '  "objects": [\n%s,\n%s\n  ]\n}\n' "${JSON_OBJECTS[0]}" "${JSON_OBJECTS[1]}"
} >"$OUT_JSON"
echo
say "results written to $OUT_JSON"
