#!/bin/sh
# PID 1 of the parity VM (started through /bin/sh, as the recorded one was). The sensor starts while a fork/exec/exit storm
# runs, with the flags the recorded Tetragon had; then the workload of
# tests/compat/fixtures/tetragon-vm-events.jsonl runs from /tmp. The
# events, the live-process count and the sensor's log are printed between
# markers on the console.
/bin/busybox --install -s /bin
. /vigil-lib.sh
echo "VIGIL-KERNEL $(uname -r)"

# The storm: each iteration forks and execs /bin/true with a marker, and
# forks a child that exits 7 without exec.
touch /tmp/storm-on
/bin/sh -c 'i=0; while [ -e /tmp/storm-on ]; do /bin/true vm-storm-$i; (exit 7); i=$((i+1)); done' &
STORM=$!

/vigil-sensor --server-address unix:///tmp/s.sock --export-filename /tmp/events.jsonl \
  --enable-process-cred --enable-process-ns > /tmp/sensor.log 2>&1 &
SENSOR=$!
await_sensor
# The storm runs on under the sensor until it has exported 40 storm execs.
await_export '^{"process_exec".*"arguments":"vm-storm-' 40
rm /tmp/storm-on
wait $STORM

# The recorded workload.
cd /tmp
/bin/sh -c '/usr/bin/env VIGIL_MARK=tvm-1 /bin/true; exit 3'
echo "VIGIL-STATUS chain $?"
# `sleep 1` is part of the recorded workload (busybox runs it as
# /proc/self/exe 1, an event the parity check compares), not a wait.
/bin/sleep 30 & P=$!; sleep 1; kill -9 $P; wait $P
echo "VIGIL-STATUS sleep $?"

# Live user-space processes (kernel threads and zombies have no command
# line), counted with builtins only so that nothing starts meanwhile.
n=0
for d in /proc/[0-9]*; do
  x=""
  read -r x < "$d/cmdline" 2>/dev/null
  [ -n "$x" ] && n=$((n+1))
done
echo "VIGIL-LIVE $n"
kill $SENSOR
wait $SENSOR
echo "VIGIL-EVENTS-BEGIN"
export_lines
echo "VIGIL-EVENTS-END"
sed 's/^/VIGIL-SENSOR-LOG /' /tmp/sensor.log
echo "VIGIL-DONE"
poweroff -f
