#!/bin/busybox sh
# PID 1 of the policies VM: kprobe policies on Debian's 6.1 kernel (this
# machine's has none). The seed's process-exec-elf-begin policy, a
# security_file_permission (file, int) return probe, and tcp_connect,
# tcp_sendmsg and tcp_close with sock arguments, with the workloads of the
# recorded Tetragon cases a, b and c (tests/compat/fixtures/tetragon-vm-policies).
/bin/busybox --install -s /bin
. /vigil-lib.sh
echo "VIGIL-KERNEL $(uname -r)"

cat > /tmp/seed.yaml <<'SEED'
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: "process-exec-elf-begin"
spec:
  kprobes:
  - call: "security_bprm_creds_from_file"
    syscall: false
    args:
    - index: 0
      type: "nop"
    - index: 1
      type: "file"
SEED
cat > /tmp/permission.yaml <<'PERM'
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: "file-permission"
spec:
  kprobes:
  - call: "security_file_permission"
    syscall: false
    return: true
    message: "file access"
    tags: ["observability.filesystem"]
    args:
    - index: 0
      type: "file"
    - index: 1
      type: "int"
    returnArg:
      index: 0
      type: "int"
PERM

cat > /tmp/connect.yaml <<'CONNECT'
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: "connect"
spec:
  kprobes:
  - call: "tcp_connect"
    syscall: false
    args:
    - index: 0
      type: "sock"
  - call: "tcp_close"
    syscall: false
    args:
    - index: 0
      type: "sock"
  - call: "tcp_sendmsg"
    syscall: false
    args:
    - index: 0
      type: "sock"
    - index: 2
      type: int
CONNECT

/vigil-sensor --server-address unix:///tmp/s.sock --export-filename /tmp/events.jsonl --node-name vigil-vm \
  --tracing-policy /tmp/seed.yaml --tracing-policy /tmp/permission.yaml --tracing-policy /tmp/connect.yaml \
  --log-level info,node_sensor::loader=debug > /tmp/sensor.log 2>&1 &
SENSOR=$!
await_sensor

cd /tmp
cp /bin/busybox /bin/busybox-copy
printf '#!/bin/sh\necho marked-script "$@"\n' > /tmp/marked-script.sh
chmod +x /tmp/marked-script.sh
/bin/busybox-copy true marked-a1
/tmp/marked-script.sh marked-a2
echo hello > /tmp/marked-file
/bin/cat /tmp/marked-file

# Case c: a connection to a local listener, 9 bytes sent.
ifconfig lo 127.0.0.1 up
# The listener's stdin stays open (it would otherwise close its side
# before the client sends, and the send would be in CLOSE_WAIT).
sleep 30 | /bin/nc -l -p 8765 > /tmp/nc-received &
NC=$!
i=0
until grep -q ':223D 0000' /proc/net/tcp /proc/net/tcp6 2>/dev/null || [ $i -ge 600 ]; do sleep 0.05; i=$((i+1)); done
echo marked-c | /bin/nc 127.0.0.1 8765
wait $NC
echo "VIGIL-STATUS nc $(cat /tmp/nc-received)"

# No wait on the export file here: reading it would be file accesses the
# policy reports, written to it, read again... The hooks wrote every record
# before the workload ended; on SIGTERM the sensor drains its ring buffer
# and finishes the export.
kill $SENSOR
wait $SENSOR
echo "VIGIL-EVENTS-BEGIN"
grep -v '"process_kprobe".*"path":"/\(proc\|sys\|dev\)/' /tmp/events.jsonl
echo "VIGIL-EVENTS-END"
sed 's/^/VIGIL-SENSOR-LOG /' /tmp/sensor.log
echo "VIGIL-DONE"
poweroff -f
