#!/usr/bin/env bash
# Make sure a `redis-server` binary exists (the tests and the demo start their own
# throwaway servers; nothing here starts a server or touches one that is running).
# --optional: report and succeed when it cannot be installed (the demo then falls back
# to the in-memory storage).
set -u
optional=0
[ "${1:-}" = "--optional" ] && optional=1
missing=""
[ -n "${BANTAI_REDIS_SERVER:-}" ] || command -v redis-server >/dev/null 2>&1 || missing="redis-server"
# openssl makes the TLS tests' self-signed certificate (and redis-tools' redis-benchmark
# comes with the redis-server package).
[ "$optional" = "1" ] || command -v openssl >/dev/null 2>&1 || missing="$missing openssl"
if [ -z "$missing" ]; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
  echo "missing:$missing — installing Debian's packages" >&2
  if (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing) >&2; then
    exit 0
  fi
fi
echo "$missing: not installed and could not be installed automatically." >&2
echo "Install it (Debian/Ubuntu: apt-get install -y redis-server; macOS: brew install redis;" >&2
echo "Fedora: dnf install redis) or set BANTAI_REDIS_SERVER=/path/to/redis-server." >&2
[ "$optional" = "1" ] && exit 0
exit 1
