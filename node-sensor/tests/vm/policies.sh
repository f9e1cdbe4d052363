#!/bin/sh
# PID 1 of the policies VM (started through /bin/sh, as the recorded one
# was): kprobe policies on Debian's 6.1 kernel (this machine's has none).
# The recorded Tetragon cases a (the seed's process-exec-elf-begin), b
# (security_file_permission, a return probe; its selector, a filter on a
# file's path, left out, as Vigil does not evaluate those yet), c
# (tcp_connect, tcp_sendmsg, tcp_close with sock arguments), d (the openat
# and raw_syscalls tracepoints with their selectors), e (sys_openat with a
# Sigkill selector and a return-value selector) and f (uprobes on bash's
# main and readline), with their workloads run as they were recorded
# (tests/compat/fixtures/tetragon-vm-policies): by a shell running
# /workload from /tmp that started before the sensor. Then a descriptor
# (sys_write) and a credential (commit_creds) policy, and one that takes
# stack traces.
/bin/busybox --install -s /bin
. /vigil-lib.sh
echo "VIGIL-KERNEL $(uname -r)"

cat > /tmp/a.yaml <<'POLICY'
@POLICY_A@
POLICY
cat > /tmp/b.yaml <<'POLICY'
@POLICY_B@
POLICY
cat > /tmp/c.yaml <<'POLICY'
@POLICY_C@
POLICY
cat > /tmp/d.yaml <<'POLICY'
@POLICY_D@
POLICY
cat > /tmp/e.yaml <<'POLICY'
@POLICY_E@
POLICY
cat > /tmp/f.yaml <<'POLICY'
@POLICY_F@
POLICY
cat > /tmp/fd-cred.yaml <<'POLICY'
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: "fd-and-cred"
spec:
  kprobes:
  - call: "sys_write"
    args:
    - index: 0
      type: "fd"
    - index: 2
      type: "size_t"
  - call: "commit_creds"
    syscall: false
    args:
    - index: 0
      type: "cred"
POLICY

# Path filters in the kernel on a kprobe's descriptor: of the three marked
# writes, the one whose path starts /tmp/marked-fd and ends d-file (each
# cut inside a component).
cat > /tmp/fd-selected.yaml <<'POLICY'
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: "fd-selected"
spec:
  kprobes:
  - call: "sys_write"
    args:
    - index: 0
      type: "fd"
    - index: 2
      type: "size_t"
    selectors:
    - matchArgs:
      - index: 0
        operator: "Prefix"
        values: ["/tmp/marked-fd"]
      - index: 0
        operator: "Postfix"
        values: ["d-file"]
POLICY

# Socket selectors on tcp_connect: the workload's one connection (to
# 127.0.0.1:8765) passes the first policy's filters, and none of the
# second's.
cat > /tmp/sock-in.yaml <<'POLICY'
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: "connect-selected"
spec:
  kprobes:
  - call: "tcp_connect"
    syscall: false
    args:
    - index: 0
      type: "sock"
    selectors:
    - matchArgs:
      - index: 0
        operator: "DPort"
        values: ["8765"]
      - index: 0
        operator: "DAddr"
        values: ["127.0.0.0/8", "fd00::/8"]
      - index: 0
        operator: "Protocol"
        values: ["IPPROTO_TCP"]
      - index: 0
        operator: "NotDPortPriv"
POLICY
cat > /tmp/sock-out.yaml <<'POLICY'
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: "connect-excluded"
spec:
  kprobes:
  - call: "tcp_connect"
    syscall: false
    args:
    - index: 0
      type: "sock"
    selectors:
    - matchArgs:
      - index: 0
        operator: "NotDAddr"
        values: ["127.0.0.0/8"]
    - matchArgs:
      - index: 0
        operator: "DPort"
        values: ["1:8764", "8766:65535"]
POLICY

# Stack traces: the marked sleep's entry into its clock_nanosleep call (as
# busybox sleeps), with the kernel's stack and its own.
cat > /tmp/stacks.yaml <<'POLICY'
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: "stacks"
spec:
  kprobes:
  - call: "sys_clock_nanosleep"
    selectors:
    - matchBinaries:
      - operator: "In"
        values: ["/tmp/stackdir/sleep"]
      matchActions:
      - action: Post
        kernelStackTrace: true
        userStackTrace: true
POLICY

cat > /workload <<'WORKLOAD'
cd /tmp
until [ -e /tmp/go ]; do sleep 0.05; done
# Case a.
cp /bin/busybox /bin/busybox-copy
printf '#!/bin/sh\necho marked-script "$@"\n' > /tmp/marked-script.sh
chmod +x /tmp/marked-script.sh
/bin/busybox-copy true marked-a1
/tmp/marked-script.sh marked-a2
# Case b.
echo hello > /tmp/marked-file
cat /tmp/marked-file
/bin/sh -c 'echo more >> /tmp/marked-file'
echo x > /tmp/unmarked-file; cat /tmp/unmarked-file
# Case d.
cp /bin/busybox /tmp/busybox-marked
echo data > /tmp/marked-tp-file
cat /tmp/marked-tp-file
/tmp/busybox-marked cat /tmp/marked-tp-file
# Case e: the marked binary is killed at its open of a marked file.
echo ok > /tmp/marked-e-ok
echo x > /tmp/unmarked
mkdir -p /tmp/killme
cp /bin/busybox /tmp/killme/cat
cat /tmp/marked-e-ok
cat /tmp/marked-e-missing
/tmp/killme/cat /tmp/marked-e-ok
echo "VIGIL-STATUS e3 $?"
/tmp/killme/cat /tmp/unmarked > /dev/null 2>&1
echo "VIGIL-STATUS e4 $?"
# Case c: a connection to a local listener, 9 bytes sent. The listener's
# stdin stays open (at EOF it would close its side before the client
# sends, and the send would be in CLOSE_WAIT); it is up once its port is.
ifconfig lo 127.0.0.1 up
sleep 30 | nc -l -p 8765 > /tmp/nc-received &
NC=$!
i=0
until grep -q ':223D 0000' /proc/net/tcp /proc/net/tcp6 2>/dev/null || [ $i -ge 600 ]; do sleep 0.05; i=$((i+1)); done
echo marked-c | timeout 15 nc 127.0.0.1 8765
wait $NC
echo "VIGIL-STATUS nc $(cat /tmp/nc-received)"
# Case f: bash's main, and its readline reading two lines from a pipe.
/bin/bash -c 'echo marked-f1'
echo 'echo marked-f2' | /bin/bash -i
# A write through descriptor 1 of this shell, and credentials set.
printf marked-fd > /tmp/marked-fd-file
printf x > /tmp/marked-fd-filex
printf x > /tmp/marked-fe-file
su vigil -s /bin/sh -c '/bin/true marked-cred'
echo "VIGIL-STATUS su $?"
# A sleep whose stacks are taken (it lives on while the sensor reads its
# memory map).
mkdir -p /tmp/stackdir
cp /bin/busybox /tmp/stackdir/sleep
/tmp/stackdir/sleep 5
WORKLOAD

# The workload's shell exists before the sensor (found in /proc, as in
# the recordings) and starts once the sensor serves.
# The export's queue holds more than the run's events (7,600-9,400 in a
# normal run, 16,680 in one on a busy host): it is the test's record, and
# under emulation on a busy host the writer of JSON falls behind the
# reader of a backlog (10,000, the default, once overflowed by 2,879).
cd /tmp
sh /workload &
WORKLOAD=$!
cd /
/vigil-sensor --server-address unix:///tmp/s.sock --export-filename /tmp/events.jsonl \
  --export-file-max-size-mb 4 --export-file-max-backups 100 --subscriber-queue-size 65536 \
  --enable-process-cred --enable-process-ns \
  --tracing-policy /tmp/a.yaml --tracing-policy /tmp/b.yaml --tracing-policy /tmp/c.yaml \
  --tracing-policy /tmp/d.yaml --tracing-policy /tmp/e.yaml --tracing-policy /tmp/f.yaml \
  --tracing-policy /tmp/fd-cred.yaml --tracing-policy /tmp/fd-selected.yaml --tracing-policy /tmp/sock-in.yaml --tracing-policy /tmp/sock-out.yaml \
  --tracing-policy /tmp/stacks.yaml \
  --log-level info,node_sensor::loader=debug > /tmp/sensor.log 2>&1 &
SENSOR=$!
await_sensor
touch /tmp/go
wait $WORKLOAD

# No wait on the export file here: reading it would be file accesses the
# policy reports, written to it, read again... The hooks wrote every record
# before the workload ended; on SIGTERM the sensor drains its ring buffer
# and finishes the export.
kill $SENSOR
wait $SENSOR
echo "VIGIL-EVENTS-BEGIN"
# Left out: accesses of /proc, /sys and /dev, and writes other than the
# marked one (the console's, above all).
export_lines | grep -v '"process_kprobe".*"path":"/\(proc\|sys\|dev\)/' | grep -v '"function_name":"__x64_sys_write"'
export_lines | grep '"function_name":"__x64_sys_write".*"path":"/tmp/marked-f[de]-'
echo "VIGIL-EVENTS-END"
# The export rotates every 4 MB, so the events are read across its files.
echo "VIGIL-STATUS export-files $(ls /tmp/events*.jsonl | wc -l)"
sed 's/^/VIGIL-SENSOR-LOG /' /tmp/sensor.log
echo "VIGIL-DONE"
poweroff -f
