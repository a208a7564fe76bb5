#!/usr/bin/env bash
# `make demo`: broker up, a synthetic shop's traffic through the whole pipeline, then what came out of it.
# Each run uses its own topic prefix and ClickHouse path (DEMO_DIR, .local/demo by default, replaced by the next
# run), so runs never mix; it stops only what it started. It ends by writing $DEMO_DIR/env: `source` it and the cdp
# commands explore the demo's data.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PWD/.venv/bin:$PATH"
demo=${DEMO_DIR:-.local/demo}
rm -rf "$demo" && mkdir -p "$demo"
export demo="$(cd "$demo" && pwd)"
export CDP_TOPIC_PREFIX="demo$(date +%s)"
export CDP_CLICKHOUSE_URL="chdb://$demo/clickhouse"
export users=${DEMO_USERS:-2000}
export days=${DEMO_DAYS:-3}

run() {
  set -euo pipefail
  echo "== generating $users shoppers' traffic over $days days"
  cdp generate --users "$users" --days "$days" --seed "$(date +%s)" > "$demo/events.jsonl"
  # A few broken messages, as real apps send: they must land in the DLQ, not stop anything.
  printf '%s\n' '{"type":"track","event":"add_to_cart"}' 'not json at all' '{"type":"track","messageId":"x"}' \
    >> "$demo/events.jsonl"
  echo "== replaying $(wc -l < "$demo/events.jsonl") messages through the pipeline (worker, ClickHouse)"
  cdp replay "$demo/events.jsonl"
  echo
  echo "== funnel (persons by OneID, within 1 day)"
  cdp funnel --steps product_view,add_to_cart,checkout_start,order_paid --window 1d
  echo
  echo "== events by name"
  cdp sql "SELECT event, count() AS events, uniqExact(oneid) AS persons FROM cdp.events GROUP BY event ORDER BY events DESC" --format pretty
  echo
  echo "== actions emitted (rule, channel); the history is replayed in minutes, so the triggers of days ago fire now:"
  echo "   senders drop those already past expires_at (sendable = the others)"
  cdp sql "SELECT rule_id, channel, template, count() AS actions, uniqExact(oneid) AS persons, countIf(expires_at > created_at) AS sendable FROM cdp.actions GROUP BY rule_id, channel, template" --format pretty
  echo
  echo "== the latest action, as the SMS sender receives it (cdp.actions.sms)"
  cdp sql "SELECT action_id, oneid, rule_id, created_at, not_before, expires_at, reason FROM cdp.actions ORDER BY expires_at DESC, action_id LIMIT 1" --format vertical
  echo
  echo "== bad rows kept on ${CDP_TOPIC_PREFIX}.events.dlq (the demo appended 3 broken messages)"
  cdp dlq stats
  echo
  echo "== report: funnel, retention heatmap, actions per day (open it in a browser)"
  cdp report --out "$demo/report.html" --period day --periods "$days"
  # The next step: the same commands on the demo's data, from any shell.
  {
    echo "export CDP_TOPIC_PREFIX=$CDP_TOPIC_PREFIX CDP_CLICKHOUSE_URL=$CDP_CLICKHOUSE_URL"
    if [ -n "${CDP_DATA_DIR:-}" ]; then echo "export CDP_DATA_DIR=$(cd "$CDP_DATA_DIR" && pwd)"; fi
    echo "export PATH=\"$PWD/.venv/bin:\$PATH\""
  } > "$demo/env"
  echo
  echo "== explore the demo's data: its settings are in $demo/env"
  echo "   source $demo/env"
  echo "   cdp sql \"SELECT event, count() FROM cdp.events GROUP BY event\" --format pretty"
  echo "   cdp funnel --steps product_view,add_to_cart,order_paid --window 1d"
  echo "   cdp retention --period day"
}
bash deploy/local/with-kafka.sh bash -c "$(declare -f run); run"
