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
  echo "== persons merged across channels (OneID: web, app, mini-program and logins joined by the events themselves)"
  # Each identifier's person, resolved through the merges (a OneID merged away counts as its survivor).
  local ids="WITH ids AS (SELECT identifier_type, identifier_hash, if(r.oneid != '', r.oneid, i.oneid) AS person
    FROM cdp.identities AS i FINAL LEFT JOIN cdp.oneid_current AS r ON r.from_oneid = i.oneid)"
  cdp sql "$ids SELECT (SELECT count() FROM cdp.identity_merges FINAL WHERE op = 'merge') AS merges,
    (SELECT uniqExact(person) FROM ids) AS persons,
    (SELECT count() FROM (SELECT person FROM ids GROUP BY person HAVING uniqExact(identifier_type) > 1))
      AS with_several_identifier_types,
    (SELECT count() FROM cdp.identity_refusals FINAL) AS refused_links" --format pretty
  cdp sql "$ids SELECT types AS identifier_types, count() AS persons FROM (SELECT person,
    arrayStringConcat(arraySort(groupUniqArray(identifier_type)), ' + ') AS types FROM ids GROUP BY person
    HAVING uniqExact(identifier_type) > 1) GROUP BY types ORDER BY persons DESC, types LIMIT 8" --format pretty
  echo "   refused links (a shared tablet's second userId; placeholder userIds and the QA phone number are never"
  echo "   identifiers at all, so they join no one):"
  cdp sql "SELECT reason, id_type, count() AS refused FROM cdp.identity_refusals FINAL GROUP BY reason, id_type
    ORDER BY refused DESC" --format pretty
  # The person with a userId that absorbed the most kinds of identifiers. ClickHouse holds identifiers hashed and
  # masked only: the demo finds the userId behind the hash among the ones it generated.
  local hash user
  hash=$(cdp sql "$ids SELECT identifier_hash FROM ids WHERE identifier_type = 'user_id' AND person IN (
    SELECT person FROM ids WHERE person IN (SELECT oneid FROM cdp.oneid_current) GROUP BY person
    HAVING countIf(identifier_type = 'user_id') > 0
    ORDER BY uniqExact(identifier_type) DESC, count() DESC, person LIMIT 1)" --format tsv | tail -n +2 | head -n 1)
  user=$(python - "$demo/events.jsonl" "$hash" <<'PY'
import sys

import orjson

from config.settings import Settings
from core.ids import identifier_hash

salt, want, seen = Settings().pii_salt, sys.argv[2], set()
for line in open(sys.argv[1], "rb"):
    try:
        user_id = orjson.loads(line).get("userId")
    except (orjson.JSONDecodeError, AttributeError):  # the demo's broken lines
        continue
    if isinstance(user_id, str) and user_id.strip() not in seen:
        seen.add(user_id.strip())
        if identifier_hash(salt, "user_id", user_id.strip()) == want:
            print(user_id.strip())
            break
PY
  )
  echo
  if [ -n "$user" ]; then
    echo "== one merged person: cdp profile user_id:$user"
    cdp profile "user_id:$user" || echo "(no profile for user_id:$user)"
  else
    echo "== no merged person with a userId to show"
  fi
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
