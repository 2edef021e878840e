#!/usr/bin/env bash
# Redis CPU per notification of the history write, against a plain PUBLISH of the same payload,
# measured in one run with Redis's own accounting (INFO commandstats usec_per_call, and the
# process's CPU time from INFO cpu). Usage: tests/bench-history-write.sh [N] (default 200000
# calls per variant; pipelined 16 deep, 1,000 users), first with no subscriber, then with one
# connection subscribed to all 1,000 channels, as a gateway node is (each PUBLISH then writes
# the message to it). Needs redis-server and
# redis-benchmark (apt-get install -y redis-server redis-tools).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-200000}
for tool in redis-server redis-cli redis-benchmark; do
  command -v "$tool" >/dev/null || { echo "$tool not found: apt-get install -y redis-server redis-tools" >&2; exit 1; }
done
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" --daemonize no \
  >"$dir/redis.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; rm -rf "$dir"' EXIT
cli() { redis-cli -p "$port" "$@"; }
until cli ping >/dev/null 2>&1; do sleep 0.05; done

payload='{"type":"info","message":"Your car wash is complete","data":{"u":1000001,"s":1}}'
sha=$(cli script load "$(cat publisher-lib/src/publish.lua)")
# Floors: a script that only publishes, and one that only does XADD + PUBLISH.
sha_pub=$(cli script load "return redis.call('PUBLISH', ARGV[1], ARGV[2])")
sha_xadd=$(cli script load "local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'p', ARGV[2]) return { id, redis.call('PUBLISH', ARGV[1], ARGV[2]) }")

# The same script as a Redis 7 function (FCALL), and a function that only publishes.
cli function load replace "$(printf '#!lua name=gwbench\nredis.register_function("gw_publish", function(KEYS, ARGV)\n%s\nend)\nredis.register_function("publish_only", function(KEYS, ARGV) return redis.call("PUBLISH", ARGV[1], ARGV[2]) end)\n' "$(grep -v '^--' publisher-lib/src/publish.lua)")" >/dev/null

cpu() { cli info cpu | awk -F: '/^used_cpu_(user|sys):/ {s += $2} END {printf "%.6f", s}'; }
# usec_per_call of one command from INFO commandstats.
usec() { cli info commandstats | tr -d '\r' | awk -F'[:,=]' -v c="cmdstat_$1" '$1 == c {for (i = 2; i <= NF; i += 2) if ($i == "usec_per_call") print $(i + 1)}'; }

declare -A per_call cpu_per_call
run() { # name, command name in commandstats, command...
  local name=$1 stat=$2; shift 2
  cli flushall >/dev/null
  cli config resetstat >/dev/null
  local before after
  before=$(cpu)
  redis-benchmark -p "$port" -q -n "$n" -P 16 -c 8 -r 1000 "$@" >/dev/null
  after=$(cpu)
  per_call[$name]=$(usec "$stat")
  cpu_per_call[$name]=$(python3 -c "print(round(($after - $before) * 1e6 / $n, 2))")
}

report() { # title
  run publish publish PUBLISH user___rand_int__ "$payload"
  run script evalsha EVALSHA "$sha" 1 history:user___rand_int__ user___rand_int__ "$payload" 1000 86400000
  run script_no_age evalsha EVALSHA "$sha" 1 history:user___rand_int__ user___rand_int__ "$payload" 1000 0
  run script_xadd_publish evalsha EVALSHA "$sha_xadd" 1 history:user___rand_int__ user___rand_int__ "$payload" 1000
  run script_publish_only evalsha EVALSHA "$sha_pub" 0 user___rand_int__ "$payload"
  run function fcall FCALL gw_publish 1 history:user___rand_int__ user___rand_int__ "$payload" 1000 86400000
  run function_publish_only fcall FCALL publish_only 0 user___rand_int__ "$payload"

  local base=${per_call[publish]} base_cpu=${cpu_per_call[publish]}
  echo "$1"
  printf '%-22s %14s %8s %20s %8s\n' variant usec_per_call ratio "process_cpu_us/call" ratio
  for v in publish script script_no_age script_xadd_publish script_publish_only function function_publish_only; do
    printf '%-22s %14s %8s %20s %8s\n' "$v" "${per_call[$v]}" \
      "$(python3 -c "print(round(${per_call[$v]} / $base, 2))")" "${cpu_per_call[$v]}" \
      "$(python3 -c "print(round(${cpu_per_call[$v]} / $base_cpu, 2))")"
  done
}

report "no subscriber:"
# One connection subscribed to every user's channel (redis-benchmark's __rand_int__ is 12
# digits), reading and discarding what it gets, as a gateway node does.
# shellcheck disable=SC2046
redis-cli -p "$port" subscribe $(seq -f 'user_%012g' 0 999) >/dev/null &
subscriber=$!
trap 'kill $subscriber $pid 2>/dev/null; rm -rf "$dir"' EXIT
until [ "$(cli pubsub numsub user_000000000999 | tail -1)" = 1 ]; do sleep 0.05; done
report "one subscriber to all 1,000 channels (a gateway node):"
echo "($(redis-server --version | cut -d' ' -f3), $n calls each, pipelined 16 deep, 8 connections, 1,000 users, load $(cut -d' ' -f1-3 /proc/loadavg))"
