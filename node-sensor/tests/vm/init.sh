#!/bin/busybox sh
# PID 1 of the kernel-matrix VM: mounts what the sensor needs, starts it,
# runs the workload, snapshots /proc of live processes, prints everything
# between markers on the console, and powers off.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mkdir -p /sys/fs/cgroup /sys/fs/bpf
mount -t cgroup2 none /sys/fs/cgroup 2>/dev/null
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null
echo "VIGIL-KERNEL $(uname -r)"

/vigil-sensor --server-address unix:///tmp/s.sock --export-filename /tmp/events.jsonl \
  --enable-process-cred --enable-process-ns --node-name vigil-vm \
  --log-level info,node_sensor::loader=debug > /tmp/sensor.log 2>&1 &
SENSOR=$!
i=0
while [ ! -S /tmp/s.sock ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done
sleep 1
echo "VIGIL-SENSOR-READY $i"

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
/bin/sleep 31 & P=$!; sleep 1; snap root $P; kill -9 $P; wait $P; echo "VIGIL-STATUS root $?"
su vigil -s /bin/sh -c 'exec /bin/sleep 32' & P=$!; sleep 1; snap user $P; kill -9 $P; wait $P
unshare -n -u /bin/sleep 33 & P=$!; sleep 1; snap netuts $P; kill -9 $P; wait $P
unshare -U -r /bin/sleep 34 & P=$!; sleep 1; snap userns $P; kill -9 $P; wait $P
setpriv --inh-caps +net_bind_service /bin/sleep 36 & P=$!; sleep 1; snap inh $P; kill -9 $P; wait $P
cp /bin/busybox /tmp/suid-bb && chmod 4755 /tmp/suid-bb
su vigil -s /bin/sh -c 'exec /tmp/suid-bb true vigil-vm-suid'

sleep 2
kill $SENSOR
wait $SENSOR
echo "VIGIL-EVENTS-BEGIN"
cat /tmp/events.jsonl
echo "VIGIL-EVENTS-END"
sed 's/^/VIGIL-SENSOR-LOG /' /tmp/sensor.log
echo "VIGIL-DONE"
poweroff -f
