//! The backbone overlay (`deploy/backbone`, applied after `deploy/manifests`):
//! it parses into the real types, its objects replace the base's of the same
//! kind and name, every Service finds its pods, and the relays' configs and
//! the NATS cluster agree with each other and with `vigil-relay`'s flags.
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

use std::collections::BTreeMap;
use std::path::Path;

use manifests::{Object, load_dir, pod_spec};

/// The base with the overlay applied on top (same kind and name: replaced).
fn applied() -> BTreeMap<(String, String), Object> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = BTreeMap::new();
    for sub in ["manifests", "backbone"] {
        for (_, o) in load_dir(&dir.join(sub)).unwrap_or_else(|e| panic!("{e}")) {
            out.insert((o.kind().to_owned(), o.name()), o);
        }
    }
    out
}

fn get<'a>(objs: &'a BTreeMap<(String, String), Object>, kind: &str, name: &str) -> &'a Object {
    objs.get(&(kind.to_owned(), name.to_owned())).unwrap_or_else(|| panic!("{kind} {name} is missing"))
}

/// A ConfigMap's `key`.
fn config(objs: &BTreeMap<(String, String), Object>, name: &str, key: &str) -> String {
    let Object::ConfigMap(c) = get(objs, "ConfigMap", name) else { unreachable!() };
    c.data.as_ref().and_then(|d| d.get(key)).cloned().unwrap_or_else(|| panic!("{name} has no {key}"))
}

/// A relay config's value of `key` (one `key: value` line).
fn value_of(text: &str, key: &str) -> String {
    text.lines().find_map(|l| l.trim().strip_prefix(&format!("{key}: "))).unwrap_or_else(|| panic!("no {key}")).into()
}

#[test]
fn every_service_finds_pods_with_its_ports() {
    let objs = applied();
    for o in objs.values() {
        let Object::Service(s) = o else { continue };
        let spec = s.spec.as_ref().unwrap();
        let selector = spec.selector.clone().unwrap_or_default();
        let pods: Vec<&Object> = objs
            .values()
            .filter(|w| w.template_labels().is_some_and(|l| selector.iter().all(|(k, v)| l.get(k) == Some(v))))
            .collect();
        assert!(!pods.is_empty(), "Service {} selects no pods", o.name());
        for port in spec.ports.clone().unwrap_or_default() {
            let Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(target)) = port.target_port
            else {
                continue;
            };
            for w in &pods {
                let declared = pod_spec(w).unwrap().containers.iter().flat_map(|c| c.ports.clone().unwrap_or_default());
                assert!(
                    declared.into_iter().any(|p| p.name.as_deref() == Some(target.as_str())),
                    "Service {}: {} has no port {target}",
                    o.name(),
                    w.name()
                );
            }
        }
    }
    // Sensors reach the ingest relays, clients the query relays.
    let selects = |service: &str| {
        let Object::Service(s) = get(&objs, "Service", service) else { unreachable!() };
        s.spec.as_ref().unwrap().selector.clone().unwrap()["app.kubernetes.io/name"].clone()
    };
    assert_eq!(selects("vigil-relay-ingest"), "vigil-relay");
    assert_eq!(selects("vigil-relay"), "vigil-relay-query");
}

#[test]
fn relays_and_nats_agree_and_the_relay_takes_the_configs() {
    let objs = applied();
    let Object::StatefulSet(nats) = get(&objs, "StatefulSet", "vigil-nats") else { unreachable!() };
    let replicas = nats.spec.replicas.unwrap();
    assert_eq!(nats.spec.service_name.as_deref(), Some("vigil-nats"));
    get(&objs, "Service", "vigil-nats");
    let servers: Vec<String> =
        (0..replicas).map(|i| format!("vigil-nats-{i}.vigil-nats.vigil.svc.cluster.local")).collect();
    // The servers route to each other on the cluster port.
    let conf = config(&objs, "vigil-nats-config", "nats.conf");
    for s in &servers {
        assert!(conf.contains(&format!("nats://{s}:6222")), "no route to {s}: {conf}");
    }
    assert!(conf.contains("jetstream"), "{conf}");
    for (name, role) in [("vigil-relay-config", "ingest"), ("vigil-relay-query-config", "query")] {
        let text = config(&objs, name, "config.yaml");
        assert_eq!(value_of(&text, "backbone-role"), role, "{name}");
        let urls = value_of(&text, "backbone");
        let want: Vec<String> = servers.iter().map(|s| format!("nats://{s}:4222")).collect();
        assert_eq!(urls.split(',').map(String::from).collect::<Vec<_>>(), want, "{name}");
        assert_eq!(value_of(&text, "backbone-replicas"), replicas.to_string(), "{name}: a copy per server");
        let tmp = std::env::temp_dir().join(format!("vigil-{name}-{}.yaml", std::process::id()));
        std::fs::write(&tmp, &text).unwrap();
        let checked = relay::config::check_file(&tmp);
        let _ = std::fs::remove_file(&tmp);
        checked.unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // Each relay Deployment mounts its own config.
    for (deployment, config_map) in
        [("vigil-relay", "vigil-relay-config"), ("vigil-relay-query", "vigil-relay-query-config")]
    {
        let volumes = pod_spec(get(&objs, "Deployment", deployment)).unwrap().volumes.clone().unwrap_or_default();
        let mounted: Vec<String> = volumes.into_iter().filter_map(|v| Some(v.config_map?.name)).collect();
        assert_eq!(mounted, [config_map], "{deployment}");
    }
}
