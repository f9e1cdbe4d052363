#!/bin/busybox sh
# PID 1 of the policies VM: kprobe policies on Debian's 6.1 kernel (this
# machine's has none). The seed's process-exec-elf-begin policy and a
# security_file_permission (file, int) return probe, with the workloads of the
# recorded Tetragon cases a and b (tests/compat/fixtures/tetragon-vm-policies).
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

/vigil-sensor --server-address unix:///tmp/s.sock --export-filename /tmp/events.jsonl --node-name vigil-vm \
  --tracing-policy /tmp/seed.yaml --tracing-policy /tmp/permission.yaml \
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
