#!/usr/bin/env bash
# Viewer API load on SQLite and on PostgreSQL, in the same run on the same
# machine: stream heartbeats accepted per second (with p50/p99, and the
# watch-history flushes and rows per second they cost), a check that
# watch_history ends with each viewer's last position, and playback API
# requests per second with p50/p99/p999. See benches/README.md.
#
#   make bench-viewer
#   benches/viewer-api.sh --db sqlite --viewers 200 --duration 3   # a quick look
#   benches/viewer-api.sh --json | grep '^RESULT '                  # one JSON line per database
#
# PostgreSQL is the one at 127.0.0.1:5432 (database test), or --postgres-url /
# CASCADE_TEST_POSTGRES_URL; the run makes a schema of its own and drops it.
# Flags: --db sqlite|postgres|both (both), --viewers (2000), --concurrency
# (64), --duration (s per phase, 10), --flush-ms (1000), --signup-concurrency
# (8), --db-connections (16), --json. Exits 1 when fewer than 99% of viewers'
# history rows hold their last position, 2 on any other failure.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --release -p cascade-benches --bin viewer_load -- "$@"
