#!/usr/bin/env bash
# Installs what building and testing pkb-edge needs on a Debian machine: cmake and a C compiler
# (Pingora's zlib-ng), pkg-config, Chromium with chromedriver for the browser test, and
# PostgreSQL for the tests of several instances on one store (started if it is not running, and
# reachable as postgres://postgres@127.0.0.1:5432 with trust authentication on loopback).
# With --bench, also wrk (the benchmark's load generator) and nginx (its baseline).
# Safe to run again. Needs root (or sudo).
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

need=()
command -v cmake >/dev/null || need+=(cmake)
command -v cc >/dev/null || need+=(gcc)
command -v pkg-config >/dev/null || need+=(pkg-config)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
command -v pg_ctlcluster >/dev/null || need+=(postgresql)
if [ "${1:-}" = "--bench" ]; then
  command -v wrk >/dev/null || need+=(wrk)
  [ -x /usr/sbin/nginx ] || need+=(nginx-light)
fi

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# PostgreSQL on 127.0.0.1:5432, as the tests expect it.
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  version="$(ls /etc/postgresql | sort -n | tail -1)"
  conf="/etc/postgresql/$version/main"
  # Trust local TCP connections (a test database on a developer's machine, never production).
  if [ -f "$conf/pg_hba.conf" ] && ! grep -q "pkb-edge tests" "$conf/pg_hba.conf"; then
    printf '# pkb-edge tests\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n' |
      cat - "$conf/pg_hba.conf" | $SUDO tee "$conf/pg_hba.conf.new" >/dev/null
    $SUDO mv "$conf/pg_hba.conf.new" "$conf/pg_hba.conf"
  fi
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
if pg_isready -q -h 127.0.0.1 -p 5432; then
  echo "setup: PostgreSQL is up at 127.0.0.1:5432"
else
  echo "setup: PostgreSQL did not start; the PostgreSQL tests will fail (PKB_EDGE_SKIP_POSTGRES=1 leaves them out)" >&2
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found; install Rust (https://rustup.rs) first" >&2
  exit 1
fi
echo "setup: ready ($(cmake --version | head -1), $(cargo --version))"
