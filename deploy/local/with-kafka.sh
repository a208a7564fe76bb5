#!/usr/bin/env bash
# Run a command with the local broker up; stop the broker afterwards only if this script started it.
# With CDP_KAFKA_BOOTSTRAP naming another broker, the command just runs against it.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
started=
case "${CDP_KAFKA_BOOTSTRAP:-127.0.0.1:9092}" in
  127.0.0.1:9092|localhost:9092)
    if ! "$here/kafka.sh" status >/dev/null 2>&1; then
      "$here/kafka.sh" up || exit 1
      started=yes
    fi ;;
esac
"$@"
rc=$?
if [ -n "$started" ]; then "$here/kafka.sh" down >/dev/null; fi
exit $rc
