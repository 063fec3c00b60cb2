#!/usr/bin/env bash
# Installs what building and testing pkb-edge needs on a Debian machine: cmake and a C compiler
# (Pingora's zlib-ng), pkg-config, Chromium with chromedriver for the browser test, and
# PostgreSQL for the tests of several instances on one store (started if it is not running, and
# reachable as postgres://postgres@127.0.0.1:5432 without a password on loopback).
# promtool (from Debian's prometheus package; its server is not left running) for the alert
# rules' test. With --bench, also wrk (the benchmark's load generator) and nginx (its baseline).
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
# promtool (Debian ships it with Prometheus) checks conf/pkb-edge-alerts.yml in a test.
command -v promtool >/dev/null || need+=(prometheus)
if [ "${1:-}" = "--bench" ]; then
  command -v wrk >/dev/null || need+=(wrk)
  [ -x /usr/sbin/nginx ] || need+=(nginx-light)
fi

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  # Only promtool is wanted: a Prometheus server the package may have started is stopped.
  if [[ " ${need[*]} " == *" prometheus "* ]] && pgrep -x prometheus >/dev/null; then
    $SUDO service prometheus stop >/dev/null 2>&1 || true
  fi
fi

# PostgreSQL on 127.0.0.1:5432, as the tests expect it: running, and the `postgres` role let in
# without a password over loopback TCP (postgres://postgres@127.0.0.1:5432). That is for a
# developer's or CI machine's own test server; never do it to a server that holds real data.
pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
pg_lets_tests_in() {
  psql -h 127.0.0.1 -p 5432 -U postgres -d postgres -w -Atqc 'select 1' >/dev/null 2>&1
}
pg_wait() { for _ in $(seq 1 30); do "$@" && return 0; sleep 1; done; return 1; }
version="$(ls /etc/postgresql 2>/dev/null | sort -n | tail -1 || true)"
if [ -z "$version" ]; then
  echo "setup: PostgreSQL has no cluster under /etc/postgresql (pg_createcluster makes one)" >&2
else
  conf="/etc/postgresql/$version/main"
  if ! pg_up; then
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    pg_wait pg_up || true
  fi
  # A fresh install asks for a password over TCP: put a trust rule for `postgres` on loopback
  # first (the first matching line wins), once, and have the server read it again.
  if pg_up && ! pg_lets_tests_in && [ -f "$conf/pg_hba.conf" ] &&
    ! $SUDO grep -q "pkb-edge tests" "$conf/pg_hba.conf"; then
    echo "setup: letting the postgres role in without a password on 127.0.0.1 and ::1 ($conf/pg_hba.conf)"
    hba="$(mktemp)"
    {
      printf '# pkb-edge tests\nhost all postgres 127.0.0.1/32 trust\nhost all postgres ::1/128 trust\n'
      $SUDO cat "$conf/pg_hba.conf"
    } >"$hba"
    $SUDO cp "$hba" "$conf/pg_hba.conf" # into the file: its owner and mode stay
    rm -f "$hba"
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main reload || true
    pg_wait pg_lets_tests_in || true
  fi
fi
if pg_lets_tests_in; then
  echo "setup: PostgreSQL is up at 127.0.0.1:5432 and the tests can use it"
elif pg_up; then
  echo "setup: PostgreSQL is up but refuses postgres@127.0.0.1 without a password; the PostgreSQL tests will fail (PKB_EDGE_SKIP_POSTGRES=1 leaves them out)" >&2
else
  echo "setup: PostgreSQL did not start; the PostgreSQL tests will fail (PKB_EDGE_SKIP_POSTGRES=1 leaves them out)" >&2
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found; install Rust (https://rustup.rs) first" >&2
  exit 1
fi
echo "setup: ready ($(cmake --version | head -1), $(cargo --version))"
