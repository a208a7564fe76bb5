#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft) for the demo and the tests.
#   deploy/local/kafka.sh fetch|up|down|status
# Jars come from Maven Central through deploy/local/pom.xml; data and logs live under $CDP_DATA_DIR/kafka
# (default .local/kafka). `up` is idempotent: a running broker is left alone, a stale pid file is cleared.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
data_dir=${CDP_DATA_DIR:-$root/.local}
case "$data_dir" in /*) ;; *) data_dir="$root/$data_dir" ;; esac
kdir="$data_dir/kafka"
libs="$root/.local/kafka/libs"
port=${CDP_LOCAL_KAFKA_PORT:-9092}
cport=$((port + 1))
pidfile="$kdir/broker.pid"
log="$kdir/logs/server.log"

fetch() {
  if [ -f "$libs/.complete" ] && [ "$libs/.complete" -nt "$here/pom.xml" ]; then return 0; fi
  echo "fetching Apache Kafka jars from Maven Central into $libs"
  rm -rf "$libs"
  mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies -DoutputDirectory="$libs"
  touch "$libs/.complete"
}

running() {
  [ -f "$pidfile" ] || return 1
  local pid; pid=$(cat "$pidfile" 2>/dev/null || true)
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -q "kafka.Kafka" "/proc/$pid/cmdline" 2>/dev/null
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

up() {
  if running; then echo "kafka already running (pid $(cat "$pidfile")) on 127.0.0.1:$port"; return 0; fi
  rm -f "$pidfile"
  if port_open "$port"; then
    echo "something else listens on 127.0.0.1:$port; set CDP_KAFKA_BOOTSTRAP to use it, or free the port" >&2
    return 1
  fi
  fetch
  mkdir -p "$kdir/data" "$kdir/logs"
  cat > "$kdir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$kdir/data
num.partitions=4
default.replication.factor=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
log.retention.hours=168
# Files of deleted topics go within a second, not a minute: \`cdp bench\` and the tests delete theirs when they end,
# and with the default delay that disk work fell inside the next run's measurements.
log.segment.delete.delay.ms=1000
PROPS
  cat > "$kdir/log4j2.properties" <<PROPS
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = $log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
PROPS
  local java_opts="-Xms256m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true -Dlog4j2.configurationFile=$kdir/log4j2.properties"
  if [ ! -f "$kdir/data/meta.properties" ]; then
    local cid; cid=$(java -cp "$libs/*" $java_opts kafka.tools.StorageTool random-uuid)
    java -cp "$libs/*" $java_opts kafka.tools.StorageTool format -t "$cid" -c "$kdir/server.properties" >/dev/null
  fi
  : > "$log"
  # setsid: the broker outlives this shell and is stopped by `down`, not by the caller's signals.
  setsid nohup java -cp "$libs/*" $java_opts kafka.Kafka "$kdir/server.properties" \
    > "$kdir/logs/stdout.log" 2>&1 < /dev/null &
  local pid=$!
  echo "$pid" > "$pidfile"
  for _ in $(seq 1 120); do
    # Alive is enough here: right after the fork the child may not have exec'd java yet, so its command line
    # does not name kafka.Kafka (`running`, which checks that for a stale pid file, failed a start under load).
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "kafka exited during start; see $kdir/logs" >&2
      tail -n 20 "$kdir/logs/stdout.log" "$log" >&2 || true
      rm -f "$pidfile"; return 1
    fi
    if grep -q "Kafka Server started" "$log" 2>/dev/null && port_open "$port"; then
      echo "kafka up (pid $(cat "$pidfile")) on 127.0.0.1:$port"; return 0
    fi
    sleep 0.5
  done
  echo "kafka did not become ready in 60s; see $log" >&2
  down; return 1
}

down() {
  if ! running; then rm -f "$pidfile"; echo "kafka not running"; return 0; fi
  local pid; pid=$(cat "$pidfile")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  rm -f "$pidfile"
  echo "kafka stopped"
}

status() { if running; then echo "kafka running (pid $(cat "$pidfile")) on 127.0.0.1:$port"; else echo "kafka not running"; return 3; fi; }

case "${1:-}" in
  fetch) fetch ;;
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 fetch|up|down|status" >&2; exit 2 ;;
esac
