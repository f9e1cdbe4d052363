#!/usr/bin/env bash
# End-to-end on a real multi-node cluster (kind): builds the images, loads
# them, deploys Vigil, runs the seed's scenario and checks through the relay
# that each step's events arrive exactly once, with the right pod.
#
# Needs docker, kind and kubectl, and image pulls (tgraf/netperf,
# cilium/starwars, nginx, bitnami/kubectl). The project's CI machines have
# none of these, so this script is not part of `cargo xtask test`.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
here="$root/tests/kind"
work=$(mktemp -d)
cluster=vigil
trap 'rm -rf "$work"' EXIT

say() { printf '== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

say "building images"
for target in sensor relay cli; do
  case "$target" in
    sensor) tag=vigil/vigil-sensor:dev ;;
    relay) tag=vigil/vigil-relay:dev ;;
    cli) tag=vigil/vigil:dev ;;
  esac
  docker build -f "$root/deploy/images/Dockerfile" --target "$target" -t "$tag" "$root"
done

say "creating the kind cluster"
if ! kind get clusters | grep -qx "$cluster"; then
  kind create cluster --config "$here/kind-config.yaml"
fi
for tag in vigil/vigil-sensor:dev vigil/vigil-relay:dev vigil/vigil:dev; do
  kind load docker-image --name "$cluster" "$tag"
done

say "deploying Vigil"
kubectl apply -f "$root/deploy/manifests/00-namespace.yaml"
kubectl apply -f "$root/deploy/manifests/"
kubectl -n vigil wait --for=condition=complete job/vigil-certs --timeout=180s
kubectl -n vigil rollout status daemonset/vigil-sensor --timeout=300s
kubectl -n vigil rollout status deployment/vigil-relay --timeout=300s

say "deploying the demo workload"
kubectl apply -f "$here/demo.yaml"
kubectl wait --for=condition=Ready pod/xwing pod/tiefighter pod/privileged-the-pod --timeout=300s
kubectl rollout status deployment/deathstar --timeout=300s

say "client certificate and a tunnel to the relay"
for f in ca.pem client.pem client-key.pem; do
  kubectl -n vigil get secret vigil-client-tls -o "jsonpath={.data.${f//./\\.}}" | base64 -d > "$work/$f"
done
kubectl -n vigil port-forward service/vigil-relay 54330:54330 > "$work/port-forward.log" 2>&1 &
forward=$!
trap 'kill "$forward" 2>/dev/null || true; rm -rf "$work"' EXIT
sleep 3

vigil_events() {
  # Everything the relay holds from the last 10 minutes, as JSON lines.
  timeout 15 "$root/target/release/vigil" --server-address localhost:54330 \
    --tls-ca-cert-files "$work/ca.pem" --tls-cert-file "$work/client.pem" \
    --tls-key-file "$work/client-key.pem" --tls-server-name vigil-relay.vigil.svc.cluster.local \
    getevents -o json --since 10m || true
}

count() {
  # count KIND POD BINARY ARGUMENTS: events of that kind for that pod and binary.
  jq -c --arg kind "$1" --arg pod "$2" --arg bin "$3" --arg args "$4" \
    'select(.[$kind].process.pod.name == $pod and .[$kind].process.binary == $bin and (.[$kind].process.arguments // "") == $args)' \
    "$work/events.jsonl" | wc -l
}

say "the seed's scenario"
marker="vigil-kind-$RANDOM"
kubectl exec xwing -- /usr/bin/whoami
kubectl exec xwing -- /bin/sh -c "echo $marker > /dev/null"
kubectl exec privileged-the-pod -- /bin/sh -c "echo $marker-privileged > /dev/null"
sleep 5
vigil_events > "$work/events.jsonl"

[ "$(count process_exec xwing /usr/bin/whoami "")" -eq 1 ] || fail "whoami exec in xwing not seen exactly once"
[ "$(count process_exit xwing /usr/bin/whoami "")" -eq 1 ] || fail "whoami exit in xwing not seen exactly once"
[ "$(count process_exec xwing /bin/sh "-c \"echo $marker > /dev/null\"")" -eq 1 ] || fail "marked sh in xwing not seen exactly once"
privileged=$(jq -c --arg m "$marker-privileged" 'select(.process_exec.process.pod.name == "privileged-the-pod" and (.process_exec.process.arguments | contains($m)))' "$work/events.jsonl")
[ "$(printf '%s\n' "$privileged" | grep -c .)" -eq 1 ] || fail "privileged pod's marked exec not seen exactly once"
printf '%s\n' "$privileged" | jq -e '.process_exec.process.cap.effective | index("CAP_SYS_ADMIN")' > /dev/null \
  || fail "privileged pod's process lacks CAP_SYS_ADMIN"
printf '%s\n' "$privileged" | jq -e '.process_exec.process.ns.net.is_host == true' > /dev/null \
  || fail "privileged pod (hostNetwork) not in the host network namespace"

say "compact output, as the seed shows it"
"$root/target/release/vigil" getevents -o compact --color never --namespace default --pod xwing \
  < "$work/events.jsonl" | grep -F "🚀 process default/xwing /usr/bin/whoami" \
  || fail "compact line for xwing whoami missing"

say "per-node status"
"$root/target/release/vigil" --server-address localhost:54330 --tls-ca-cert-files "$work/ca.pem" \
  --tls-cert-file "$work/client.pem" --tls-key-file "$work/client-key.pem" \
  --tls-server-name vigil-relay.vigil.svc.cluster.local nodes

say "PASS"
