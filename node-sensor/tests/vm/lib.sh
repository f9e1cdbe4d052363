# Sourced by both VM init scripts (as /vigil-lib.sh, after busybox has
# installed its applets): the mounts the sensor needs, and waits on what
# can be observed, never on a time.

mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mkdir -p /sys/fs/cgroup /sys/fs/bpf
mount -t cgroup2 none /sys/fs/cgroup 2>/dev/null
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null

# Until the sensor says it serves (/tmp/sensor.log): it does so once its
# programs are attached and its process cache seeded from /proc, so what
# runs after it is seen as it happens. (Its socket exists earlier: it is
# bound before the seeding.) Prints VIGIL-SENSOR-READY with the polls.
# At most 400 s (an emulated VM on a busy host verifies and loads for
# minutes); past it the run fails, rather than go on with a sensor that
# may not read its ring buffer yet.
await_sensor() {
  i=0
  until grep -q "process cache seeded from procfs; serving" /tmp/sensor.log 2>/dev/null; do
    if [ $i -ge 4000 ]; then
      echo "VIGIL-WAIT-FAILED sensor"
      return 1
    fi
    sleep 0.1
    i=$((i+1))
  done
  echo "VIGIL-SENSOR-READY $i"
}

# Until process $1 has exec'd the program named $2 (its comm), at most 30 s.
await_comm() {
  i=0
  c=""
  while [ $i -lt 600 ]; do
    read -r c < "/proc/$1/comm" 2>/dev/null
    [ "$c" = "$2" ] && return 0
    sleep 0.05
    i=$((i+1))
  done
  echo "VIGIL-WAIT-FAILED comm $1 $2"
}

# The export's lines, oldest first. Past its size limit the file rotates:
# its backups (events-<time>.jsonl, oldest first by name) come before it,
# as a reader following the file by name sees them.
export_lines() {
  for f in /tmp/events-*.jsonl /tmp/events.jsonl; do
    [ -e "$f" ] && cat "$f"
  done
}

# Until the export file holds at least $2 lines matching $1, at most 60 s.
# One grep, exec'd by the command substitution's child: a pipeline there
# would add fork-only grandchildren of init to the parity VM's events.
# (The VMs that wait on the export stay under its rotation size.)
await_export() {
  i=0
  while [ $i -lt 1200 ]; do
    n=$(grep -c "$1" /tmp/events.jsonl 2>/dev/null)
    [ "${n:-0}" -ge "$2" ] && return 0
    sleep 0.05
    i=$((i+1))
  done
  echo "VIGIL-WAIT-FAILED export $1 $2"
}
