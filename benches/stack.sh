# The Cascade stack of the load benchmarks (hit-path.sh, h3-hits.sh), sourced
# by them: builds or takes the cascade binary, starts origin, shield and edge
# as separate processes on free ports (configs, data and logs in $TMP, all
# stopped on exit), makes a clip with the FFmpeg CLI and ingests it with a
# one-rung ladder, signs a token, and picks and warms two objects: the video
# rung's media playlist ($PLAYLIST_PATH) and its segment nearest 1 MiB
# ($SEGMENT_PATH), both checked to be edge cache hits.
#
# Expects from the sourcing script: say, die, ROOT, TARGET_DIR, CLIP_SECS,
# KBPS, PRESET, EDGE_LOG, KEEP_TMP, TOKEN_NAME; optionally EDGE_EXTRA_TOML and
# a stack_prepare function. Sets EDGE_URL, EDGE_PID, ASSET, TOKEN, AUTH and
# the helpers get, size, header, free_port, wait_up, vmhwm_kib, edge_requests.

if [ -z "${CASCADE_BIN:-}" ]; then
	say "building target/release/cascade (cargo build --release --bin cascade)"
	(cd "$ROOT" && cargo build --release --bin cascade)
	CASCADE_BIN=$TARGET_DIR/release/cascade
fi
[ -x "$CASCADE_BIN" ] || die "no cascade binary at $CASCADE_BIN"

# --- processes and cleanup --------------------------------------------------

TMP=$(mktemp -d "${TMPDIR:-/tmp}/cascade-bench.XXXXXX")
PIDS=()
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
	for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
	if [ "$KEEP_TMP" = 1 ] || [ "$rc" -ne 0 ]; then
		say "configs and logs kept in $TMP"
	else
		rm -rf "$TMP"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Picks a port nothing listens on, below the kernel's ephemeral range, in REPLY.
USED_PORTS=" "
free_port() {
	local p i
	for i in $(seq 1 500); do
		p=$((20000 + RANDOM % 12000))
		case "$USED_PORTS" in *" $p "*) continue ;; esac
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			USED_PORTS="$USED_PORTS$p "
			REPLY=$p
			return 0
		fi
	done
	die "no free port found"
}

# wait_up NAME PID URL: until URL answers 2xx, or the process dies.
wait_up() {
	local name=$1 pid=$2 url=$3 i
	for i in $(seq 1 150); do
		if curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; then return 0; fi
		kill -0 "$pid" 2>/dev/null || die "$name exited; its log: $TMP/$name.log"
		sleep 0.2
	done
	die "$name did not answer at $url; its log: $TMP/$name.log"
}

# Peak resident memory (VmHWM) of a process, KiB.
vmhwm_kib() {
	if [ -r "/proc/$1/status" ]; then
		awk '/^VmHWM:/ {k = $2} END {print k + 0}' "/proc/$1/status"
	else
		echo 0
	fi
}

# Peak resident memory of a process and its children (nginx: master,
# workers, cache manager and loader), KiB.
tree_vmhwm_kib() {
	local total=0 p
	for p in $(with_children "$1"); do total=$((total + $(vmhwm_kib "$p"))); done
	echo "$total"
}

# A process and its children.
with_children() {
	local parent=$1 d
	echo "$parent"
	for d in /proc/[0-9]*; do
		[ "$(awk '{print $4}' "$d/stat" 2>/dev/null)" = "$parent" ] && echo "${d#/proc/}"
	done
	return 0
}

# Requests the edge has answered (its own /metrics, all statuses and outcomes).
edge_requests() {
	curl -fsS "$EDGE_URL/metrics" | awk '/^cascade_requests_total\{/ {n += $NF} END {printf "%.0f\n", n}'
}

# --- the Cascade stack -------------------------------------------------------

# A script may add lines to the edge's config, and prepare files for them
# (certificates) in a function named stack_prepare, run once $TMP exists.
if declare -F stack_prepare >/dev/null; then stack_prepare; fi

unset CASCADE_TOKEN_KEYS CASCADE_GEOIP_DB
KEY_HEX=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
printf 'bench:%s\n' "$KEY_HEX" >"$TMP/token-key"
chmod 600 "$TMP/token-key"
KEYS_TOML="[{ kid = \"bench\", key = \"$KEY_HEX\", algorithm = \"sha256\" }]"
# Uploads need the origin's admin credential; `cascade ingest` reads it here.
ADMIN_TOKEN=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
export CASCADE_ORIGIN_ADMIN_TOKEN=$ADMIN_TOKEN

free_port
ORIGIN_PORT=$REPLY
free_port
SHIELD_PORT=$REPLY
free_port
EDGE_PORT=$REPLY
ORIGIN_URL=http://127.0.0.1:$ORIGIN_PORT
SHIELD_URL=http://127.0.0.1:$SHIELD_PORT
EDGE_URL=http://127.0.0.1:$EDGE_PORT

cat >"$TMP/origin.toml" <<EOF
listen = "127.0.0.1:$ORIGIN_PORT"
data_dir = "$TMP/origin"
preset = "$PRESET"
segment_secs = 2
public_edge_url = "$EDGE_URL"
ladder = [{ height = 720, kbps = $KBPS }]
token_keys = $KEYS_TOML
admin_token = "$ADMIN_TOKEN"
EOF
cat >"$TMP/shield.toml" <<EOF
listen = "127.0.0.1:$SHIELD_PORT"
origins = ["$ORIGIN_URL"]
cache_memory_mib = 1024
cache_dir = ""
EOF
# Playlists stay fresh for the whole run at both the edge and nginx.
cat >"$TMP/edge.toml" <<EOF
listen = "127.0.0.1:$EDGE_PORT"
shields = ["$SHIELD_URL"]
origin = "$ORIGIN_URL"
origin_fallback = false
cache_memory_mib = 1024
cache_dir = ""
manifest_ttl_secs = 86400
token_name = "$TOKEN_NAME"
token_keys = $KEYS_TOML
${EDGE_EXTRA_TOML:-}
EOF

say "temp dir $TMP; origin :$ORIGIN_PORT, shield :$SHIELD_PORT, edge :$EDGE_PORT"
"$CASCADE_BIN" origin --config "$TMP/origin.toml" >"$TMP/origin.log" 2>&1 &
ORIGIN_PID=$!
PIDS+=("$ORIGIN_PID")
"$CASCADE_BIN" shield --config "$TMP/shield.toml" >"$TMP/shield.log" 2>&1 &
SHIELD_PID=$!
PIDS+=("$SHIELD_PID")
RUST_LOG=$EDGE_LOG "$CASCADE_BIN" edge --config "$TMP/edge.toml" >"$TMP/edge.log" 2>&1 &
EDGE_PID=$!
PIDS+=("$EDGE_PID")
wait_up origin "$ORIGIN_PID" "$ORIGIN_URL/healthz"
wait_up shield "$SHIELD_PID" "$SHIELD_URL/healthz"
wait_up edge "$EDGE_PID" "$EDGE_URL/healthz"

say "making a ${CLIP_SECS} s 1280x720 clip with ffmpeg"
ffmpeg -v error -y -f lavfi -i "testsrc2=s=1280x720:r=25:d=$CLIP_SECS" \
	-f lavfi -i "sine=f=440:sample_rate=48000:d=$CLIP_SECS" \
	-c:v libx264 -preset ultrafast -crf 18 -pix_fmt yuv420p -c:a aac -shortest \
	"$TMP/clip.mp4"

say "ingesting it (one rung: 720p at $KBPS kbps, preset $PRESET)"
"$CASCADE_BIN" ingest "$TMP/clip.mp4" --title "Hit path bench" --origin "$ORIGIN_URL" >"$TMP/ingest.out" 2>"$TMP/ingest.err" ||
	die "ingest failed: $(tail -3 "$TMP/ingest.err")"
ASSET=$(sed -n 's/.*(asset \([A-Za-z0-9_-]*\)).*/\1/p' "$TMP/ingest.out" | head -1)
[ -n "$ASSET" ] || die "no asset id in the ingest output: $(cat "$TMP/ingest.out")"
TOKEN=$("$CASCADE_BIN" token sign --acl "/vod/$ASSET/*" --ttl 86400 --key-file "$TMP/token-key")
AUTH="$TOKEN_NAME: $TOKEN"

# get URL: the body to stdout.
get() { curl -fsS -H "$AUTH" "$1"; }
# size URL: bytes of the body.
size() { curl -fsS -o /dev/null -w '%{size_download}\n' -H "$AUTH" "$1"; }
# header URL NAME: one response header's value.
header() {
	curl -fsS -o /dev/null -D - -H "$AUTH" "$1" | tr -d '\r' |
		awk -v n="$(echo "$2" | tr 'A-Z' 'a-z')" 'BEGIN {FS=": "} tolower($1) == n {v=$2} END {print v}'
}

# The objects: the video rung's media playlist, and its segment nearest 1 MiB.
TRACK=$(get "$EDGE_URL/vod/$ASSET/master.m3u8" | tr -d '\r' | grep -v '^#' | grep '\.m3u8$' | head -1)
TRACK=${TRACK%.m3u8}
[ -n "$TRACK" ] || die "no media playlist in the master playlist"
PLAYLIST_PATH=/vod/$ASSET/$TRACK.m3u8
SEGMENTS=$(get "$EDGE_URL$PLAYLIST_PATH" | grep -c '\.m4s$')
say "asset $ASSET, track $TRACK: $SEGMENTS segments; fetching each through the edge (warm-up)"
: >"$TMP/segment-sizes"
for n in $(seq 1 "$SEGMENTS"); do
	echo "$n $(size "$EDGE_URL/vod/$ASSET/$TRACK/$n.m4s")" >>"$TMP/segment-sizes"
done
# The last segment may be short: choose among the others.
SEGMENT_N=$(awk -v last="$SEGMENTS" '$1 < last || last == 1 {d = $2 - 1048576; if (d < 0) d = -d; if (best == "" || d < bd) {best = $1; bd = d}} END {print best}' "$TMP/segment-sizes")
SEGMENT_PATH=/vod/$ASSET/$TRACK/$SEGMENT_N.m4s
read -r SEG_MIN SEG_MED SEG_MAX < <(awk '{print $2}' "$TMP/segment-sizes" | sort -n |
	awk '{a[NR]=$1} END {print a[1], a[int((NR+1)/2)], a[NR]}')
PLAYLIST_BYTES=$(size "$EDGE_URL$PLAYLIST_PATH")
SEGMENT_BYTES=$(size "$EDGE_URL$SEGMENT_PATH")
say "media playlist $PLAYLIST_PATH: $PLAYLIST_BYTES bytes (aim: about 2 KiB)"
say "segments of $TRACK: min $SEG_MIN, median $SEG_MED, max $SEG_MAX bytes; measured: $SEGMENT_N.m4s, $SEGMENT_BYTES bytes (aim: about 1 MiB)"

for p in "$PLAYLIST_PATH" "$SEGMENT_PATH"; do
	size "$EDGE_URL$p" >/dev/null
	status=$(header "$EDGE_URL$p" cache-status)
	case "$status" in
	*"cascade-edge; hit"*) ;;
	*) die "the edge does not answer $p from its cache (Cache-Status: $status)" ;;
	esac
done

