#!/bin/busybox sh
# PID 1 of the kernel-matrix VM: mounts what the sensor needs, starts it,
# runs the workload, snapshots /proc of live processes, prints everything
# between markers on the console, and powers off.
/bin/busybox --install -s /bin
. /vigil-lib.sh
echo "VIGIL-KERNEL $(uname -r)"

/vigil-sensor --server-address unix:///tmp/s.sock --export-filename /tmp/events.jsonl \
  --enable-process-cred --enable-process-ns --node-name vigil-vm \
  --log-level info,node_sensor::loader=debug > /tmp/sensor.log 2>&1 &
SENSOR=$!
await_sensor

snap() {
  tag=$1; pid=$2
  echo "VIGIL-PROC $tag pid $pid"
  grep -E '^(Uid|Gid|CapInh|CapPrm|CapEff|CapAmb):' /proc/$pid/status | sed "s/^/VIGIL-PROC $tag status /"
  for n in uts ipc mnt pid pid_for_children net time time_for_children cgroup user; do
    echo "VIGIL-PROC $tag ns $n $(stat -L -c %i /proc/$pid/ns/$n 2>/dev/null)"
  done
  echo "VIGIL-PROC $tag cwd $(readlink /proc/$pid/cwd)"
}

cd /tmp
# Commands are named by path: busybox's shell runs bare applet names
# through /proc/self/exe, which is what the kernel (and Tetragon) would report.
# A chain with exit codes: sh (exit 3) runs true (exit 0) in /tmp.
/bin/sh -c 'cd /tmp && /bin/true vigil-vm-true; exit 3' vigil-vm-chain
echo "VIGIL-STATUS chain $?"

# Live processes, each compared with /proc by the host.
/bin/sleep 31 & P=$!; await_comm $P sleep; snap root $P; kill -9 $P; wait $P; echo "VIGIL-STATUS root $?"
su vigil -s /bin/sh -c 'exec /bin/sleep 32' & P=$!; await_comm $P sleep; snap user $P; kill -9 $P; wait $P
unshare -n -u /bin/sleep 33 & P=$!; await_comm $P sleep; snap netuts $P; kill -9 $P; wait $P
unshare -U -r /bin/sleep 34 & P=$!; await_comm $P sleep; snap userns $P; kill -9 $P; wait $P
setpriv --inh-caps +net_bind_service /bin/sleep 36 & P=$!; await_comm $P sleep; snap inh $P; kill -9 $P; wait $P
cp /bin/busybox /tmp/suid-bb && chmod 4755 /tmp/suid-bb
su vigil -s /bin/sh -c 'exec /tmp/suid-bb true vigil-vm-suid'

# The last workload event is exported: everything before it is too.
await_export '^{"process_exit".*"arguments":"true vigil-vm-suid"' 1
kill $SENSOR
wait $SENSOR
echo "VIGIL-EVENTS-BEGIN"
export_lines
echo "VIGIL-EVENTS-END"
sed 's/^/VIGIL-SENSOR-LOG /' /tmp/sensor.log
echo "VIGIL-DONE"
poweroff -f
