#!/usr/bin/env bash
# The demo: simulated Modbus devices → edge-agent → local buffer → local MQTT broker.
# Sets itself up (Mosquitto, a virtual environment), starts the simulator and the agent on
# config.toml, and prints the messages arriving at the broker. Stops everything it started.
# Usage: scripts/demo.sh [--follow]    (--follow: keep printing until Ctrl-C)
set -euo pipefail
cd "$(dirname "$0")/.."

venv=$(scripts/setup.sh --for demo | tail -n 1)

pids=()
conf=""
cleanup() {
  # The agent first, the broker last: the agent says "offline" to a broker still there.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
  done
  [ -z "$conf" ] || rm -f "$conf"
}
# Ctrl-C ends the demo (the EXIT trap then stops what it started), not only the step it was at.
trap cleanup EXIT
trap 'exit 130' INT TERM

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  for _ in $(seq 100); do port_open "$1" && return 0; sleep 0.1; done
  echo "demo: nothing answers on 127.0.0.1:$1" >&2; return 1
}

if port_open 1883; then
  echo "demo: using the MQTT broker already listening on 127.0.0.1:1883"
else
  echo "demo: starting Mosquitto on 127.0.0.1:1883"
  conf=$(mktemp)
  printf 'listener 1883 127.0.0.1\nallow_anonymous true\npersistence false\n' >"$conf"
  "$(command -v mosquitto || echo /usr/sbin/mosquitto)" -c "$conf" >/dev/null 2>&1 &
  pids+=($!)
  wait_port 1883
fi

echo "demo: simulating the devices of config.toml on 127.0.0.1:5020"
"$venv/bin/edge-agent" simulate -c config.toml --tcp 127.0.0.1:5020 &
pids+=($!)
wait_port 5020

# The command is not on PATH: it lives in the venv (`. $venv/bin/activate` puts it there).
echo "demo: starting $venv/bin/edge-agent run -c config.toml"
"$venv/bin/edge-agent" run -c config.toml &
pids+=($!)

topic="fields/demo-gw01/#"
echo "demo: messages on $topic (retained status and meta first, then telemetry):"
if [ "${1:-}" = "--follow" ]; then
  mosquitto_sub -h 127.0.0.1 -p 1883 -t "$topic" -v
else
  mosquitto_sub -h 127.0.0.1 -p 1883 -t "$topic" -v -C 6 -W 60 || {
    echo "demo: no readings arrived within 60 s" >&2; exit 1; }
  echo "demo: readings arrive; run scripts/demo.sh --follow to keep watching"
fi
