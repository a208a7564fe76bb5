#!/usr/bin/env bash
# What tests/integration/test_browser_sdk.py needs: Chromium (Debian's package) and Segment's browser SDK,
# analytics-next, installed from npm into tests/integration/browser as its package-lock.json pins it. Idempotent, and
# fast when both are there. What cannot be installed is said here and left to the test to fail on, clearly; the rest
# of `make setup` (and `make demo`) does not need it.
set -uo pipefail
cd "$(dirname "$0")/../.."
dir=tests/integration/browser

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"; else return 1; fi
}

apt_install() {  # the packages named, once the package lists are fetched (once per run of this script)
  command -v apt-get >/dev/null 2>&1 || return 1
  if [ -z "${apt_updated:-}" ]; then as_root apt-get update -qq || return 1; apt_updated=yes; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if [ -z "${CDP_CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1; then
  echo "browser.sh: installing Debian's chromium (for the browser SDK test)"
  apt_install chromium ||
    echo "browser.sh: chromium could not be installed; tests/integration/test_browser_sdk.py will fail until it is" >&2
fi

if ! command -v npm >/dev/null 2>&1; then
  echo "browser.sh: installing node and npm"
  apt_install nodejs npm || echo "browser.sh: npm could not be installed; the browser SDK test will fail" >&2
fi

# npm writes node_modules/.package-lock.json on every install: newer than the lock file means installed as pinned.
if command -v npm >/dev/null 2>&1 && ! [ "$dir/node_modules/.package-lock.json" -nt "$dir/package-lock.json" ]; then
  echo "browser.sh: npm ci in $dir"
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) ||
    echo "browser.sh: npm ci failed in $dir; the browser SDK test will fail" >&2
fi
exit 0
