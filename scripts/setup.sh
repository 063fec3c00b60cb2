#!/usr/bin/env bash
# Installs what building and testing pkb-edge needs on a Debian machine: cmake and a C compiler
# (Pingora's zlib-ng), pkg-config, and Chromium with chromedriver for the browser test.
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
if [ "${1:-}" = "--bench" ]; then
  command -v wrk >/dev/null || need+=(wrk)
  [ -x /usr/sbin/nginx ] || need+=(nginx-light)
fi

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found; install Rust (https://rustup.rs) first" >&2
  exit 1
fi
echo "setup: ready ($(cmake --version | head -1), $(cargo --version))"
