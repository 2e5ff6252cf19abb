#!/usr/bin/env bash
# Live latency at the player: Cascade's LL-HLS through edge and shield
# against Debian's nginx RTMP module (libnginx-mod-rtmp) with HLS output,
# both fed by one FFmpeg encoder (tee) in the same run, both played by
# hls.js in one headless Chromium page (benches/live-latency.mjs).
#
#   make bench-live-latency             # installs nginx + its RTMP module, builds, runs
#   SECS=30 benches/live-latency.sh     # shorter
#   NGINX_FRAGMENT=1s NGINX_PLAYLIST=3s benches/live-latency.sh   # nginx tuned harder
#
# nginx runs as a user would deploy it for low latency: 2 s fragments (the
# encoder sends a keyframe every second) and a 6 s playlist. Server-side
# latency (ingest to fetchable at the edge, p50/p99) and fan-in come from
# `live_fanin` (benches/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-60}
CASCADE_BIN=${CASCADE_BIN:-target/release/cascade}
NGINX_FRAGMENT=${NGINX_FRAGMENT:-2s}
NGINX_PLAYLIST=${NGINX_PLAYLIST:-6s}
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
MODULE=/usr/lib/nginx/modules/ngx_rtmp_module.so
[ -x "$CASCADE_BIN" ] || { echo "build it first: cargo build --release --bin cascade" >&2; exit 1; }
[ -e "$MODULE" ] || { echo "nginx's RTMP module is missing: make bench-deps" >&2; exit 1; }
[ -d web/node_modules/playwright-core ] || { echo "web/node_modules is missing: make web" >&2; exit 1; }

T=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$T/nginx.pid" ] && kill "$(cat "$T/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$T"
}
trap cleanup EXIT

# Ports away from a running `cascade dev`.
EDGE=18080 SHIELD=18081 ORIGIN=18082 CONTROL=18083 RTMP=11935 SRT=18890 NGX_RTMP=11936 NGX_HTTP=18090
RUST_LOG=warn "$CASCADE_BIN" dev --data "$T/data" --edge-port $EDGE --tls-port 0 --shield-port $SHIELD \
  --origin-port $ORIGIN --control-port $CONTROL --rtmp-port $RTMP --srt-port $SRT --no-samples \
  > "$T/dev.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 150); do
  curl -fs "http://127.0.0.1:$EDGE/healthz" >/dev/null 2>&1 && curl -fs "http://127.0.0.1:$ORIGIN/healthz" >/dev/null 2>&1 && break
  sleep 0.2
done

mkdir -p "$T/hls"
# nginx's workers (not root) write and serve the HLS files.
chmod 755 "$T"
chmod 777 "$T/hls"
cat > "$T/nginx.conf" <<NGINX
load_module $MODULE;
daemon on;
pid $T/nginx.pid;
error_log $T/nginx-error.log warn;
events { worker_connections 1024; }
rtmp {
  server {
    listen 127.0.0.1:$NGX_RTMP;
    application live {
      live on;
      hls on;
      hls_path $T/hls;
      hls_fragment $NGINX_FRAGMENT;
      hls_playlist_length $NGINX_PLAYLIST;
      hls_fragment_naming system;
    }
  }
}
http {
  access_log off;
  server {
    listen 127.0.0.1:$NGX_HTTP;
    location /hls/ {
      alias $T/hls/;
      types { application/vnd.apple.mpegurl m3u8; video/mp2t ts; }
      add_header Cache-Control no-cache;
      add_header Access-Control-Allow-Origin *;
    }
  }
}
NGINX
"$NGINX" -c "$T/nginx.conf" -p "$T"

export CASCADE_ORIGIN_ADMIN_TOKEN
CASCADE_ORIGIN_ADMIN_TOKEN=$(cat "$T/data/control-admin-token")
RTMP_URL=$("$CASCADE_BIN" live create bench --origin "http://127.0.0.1:$ORIGIN" | head -1)
# The encoder: 720p30 with a tone, a keyframe every second, no B-frames,
# to both servers at once.
ffmpeg -v error -re -f lavfi -i "testsrc2=s=1280x720:r=30" -f lavfi -i "sine=f=440:sample_rate=48000" \
  -map 0:v -map 1:a -c:v libx264 -preset veryfast -tune zerolatency -g 30 -pix_fmt yuv420p -flags +global_header \
  -b:v 3M -c:a aac -f tee -use_fifo 1 "[f=flv]$RTMP_URL|[f=flv]rtmp://127.0.0.1:$NGX_RTMP/live/bench" \
  > "$T/ffmpeg.log" 2>&1 &
pids+=($!)

TOKEN=$("$CASCADE_BIN" token sign --acl '/live/bench/*' --key-file "$T/data/dev-token-key" --ttl 7200 | tail -1)
CASCADE_URL="http://127.0.0.1:$EDGE/live/bench/master.m3u8?__token__=$TOKEN"
NGINX_URL="http://127.0.0.1:$NGX_HTTP/hls/bench.m3u8"
ready=0
for _ in $(seq 1 100); do
  if curl -fs "$CASCADE_URL" | grep -q m3u8 && curl -fs "$NGINX_URL" | grep -q EXTINF; then ready=1; break; fi
  sleep 0.3
done
if [ $ready = 0 ]; then
  echo "the streams never started: Cascade $(curl -s -o /dev/null -w '%{http_code}' "$CASCADE_URL"), nginx $(curl -s -o /dev/null -w '%{http_code}' "$NGINX_URL")" >&2
  tail -n 5 "$T/dev.log" "$T/ffmpeg.log" "$T/nginx-error.log" >&2
  exit 1
fi
echo "encoder: 1280x720 30 fps, keyframe every 1 s; nginx: hls_fragment $NGINX_FRAGMENT, hls_playlist_length $NGINX_PLAYLIST; ${SECS} s measured"
node benches/live-latency.mjs "http://127.0.0.1:$EDGE/" "$CASCADE_URL" "$NGINX_URL" "$SECS"
