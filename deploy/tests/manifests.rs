//! Every manifest parses into the real Kubernetes types with no unknown
//! field, and the manifests agree with each other and with the binaries.
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use manifests::{Object, load_dir, pod_spec};

fn objects() -> Vec<(String, Object)> {
    load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests")).unwrap_or_else(|e| panic!("{e}"))
}

fn name_of(o: &Object) -> String {
    o.name()
}

fn template_labels(o: &Object) -> Option<BTreeMap<String, String>> {
    o.template_labels()
}

/// Secrets the certificate job creates: vigil-<role>-tls for each role in its loop.
fn secrets_created(objs: &[(String, Object)]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (_, o) in objs {
        let Object::Job(j) = o else { continue };
        for c in &j.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers {
            let script = c.command.clone().unwrap_or_default().join(" ");
            if let Some(list) = script.split("for role in ").nth(1).and_then(|r| r.split(';').next()) {
                assert!(script.contains("vigil-$role-tls"), "{script}");
                out.extend(list.split_whitespace().map(|r| format!("vigil-{r}-tls")));
            }
        }
    }
    out
}

#[test]
fn all_parse_without_unknown_fields() {
    let objs = objects();
    let kinds: BTreeSet<String> =
        objs.iter().map(|(_, o)| format!("{o:?}").split('(').next().unwrap().to_owned()).collect();
    for k in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "Job",
        "DaemonSet",
        "Deployment",
        "Service",
        "CustomResourceDefinition",
    ] {
        assert!(kinds.contains(k), "no {k} among {kinds:?}");
    }
}

#[test]
fn selectors_match_labels_and_services_find_pods() {
    let objs = objects();
    for (file, o) in &objs {
        let selector = match o {
            Object::DaemonSet(d) => d.spec.selector.match_labels.clone(),
            Object::Deployment(d) => d.spec.selector.match_labels.clone(),
            _ => continue,
        };
        let labels = template_labels(o).unwrap_or_default();
        for (k, v) in selector.unwrap_or_default() {
            assert_eq!(labels.get(&k), Some(&v), "{file}: selector {k}={v} does not match the pod template");
        }
    }
    for (file, o) in &objs {
        let Object::Service(s) = o else { continue };
        let sel = s.spec.as_ref().unwrap().selector.clone().unwrap_or_default();
        let target =
            objs.iter().find(|(_, w)| template_labels(w).is_some_and(|l| sel.iter().all(|(k, v)| l.get(k) == Some(v))));
        let (_, w) = target.unwrap_or_else(|| panic!("{file}: Service {} selects no workload", name_of(o)));
        // Named target ports exist on the selected pods' containers.
        let ports: BTreeSet<String> = pod_spec(w)
            .unwrap()
            .containers
            .iter()
            .flat_map(|c| c.ports.clone().unwrap_or_default())
            .filter_map(|p| p.name)
            .collect();
        for p in s.spec.as_ref().unwrap().ports.clone().unwrap_or_default() {
            if let Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name)) = p.target_port {
                assert!(ports.contains(&name), "{file}: targetPort {name} not on {}", name_of(w));
            }
        }
    }
}

#[test]
fn every_referenced_object_exists() {
    let objs = objects();
    let names = |f: fn(&Object) -> bool| -> BTreeSet<String> {
        objs.iter().filter(|(_, o)| f(o)).map(|(_, o)| name_of(o)).collect()
    };
    let config_maps = names(|o| matches!(o, Object::ConfigMap(_)));
    let accounts = names(|o| matches!(o, Object::ServiceAccount(_)));
    let roles = names(|o| matches!(o, Object::Role(_)));
    let cluster_roles = names(|o| matches!(o, Object::ClusterRole(_)));
    let secrets = secrets_created(&objs);
    assert_eq!(
        secrets,
        ["vigil-admin-tls", "vigil-client-tls", "vigil-relay-tls", "vigil-sensor-tls"].map(String::from).into()
    );
    for (file, o) in &objs {
        if let Some(spec) = pod_spec(o) {
            let sa = spec.service_account_name.clone().unwrap_or_default();
            assert!(accounts.contains(&sa), "{file}: service account {sa:?} does not exist");
            for v in spec.volumes.clone().unwrap_or_default() {
                if let Some(cm) = v.config_map {
                    assert!(config_maps.contains(&cm.name), "{file}: ConfigMap {} does not exist", cm.name);
                }
                if let Some(s) = v.secret {
                    let n = s.secret_name.unwrap_or_default();
                    assert!(secrets.contains(&n), "{file}: Secret {n} is never created");
                }
            }
        }
        let (role_ref, subjects) = match o {
            Object::RoleBinding(b) => (&b.role_ref, b.subjects.clone().unwrap_or_default()),
            Object::ClusterRoleBinding(b) => (&b.role_ref, b.subjects.clone().unwrap_or_default()),
            _ => continue,
        };
        let pool = if role_ref.kind == "Role" { &roles } else { &cluster_roles };
        // Kubernetes' own default roles exist in every cluster.
        let built_in = role_ref.kind == "ClusterRole" && role_ref.name.starts_with("system:");
        assert!(
            built_in || pool.contains(&role_ref.name),
            "{file}: {} {} does not exist",
            role_ref.kind,
            role_ref.name
        );
        for s in subjects {
            assert!(accounts.contains(&s.name), "{file}: subject {} does not exist", s.name);
        }
    }
}

#[test]
fn ports_agree_with_the_binaries_defaults() {
    let objs = objects();
    let flags = relay::config::Flags::default();
    let port = |addr: &str| addr.rsplit(':').next().unwrap().parse::<i32>().unwrap();
    let relay = objs.iter().find(|(_, o)| matches!(o, Object::Deployment(_))).map(|(_, o)| o).unwrap();
    let ports: BTreeMap<String, i32> = pod_spec(relay).unwrap().containers[0]
        .ports
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|p| (p.name.unwrap_or_default(), p.container_port))
        .collect();
    assert_eq!(ports.get("clients"), Some(&port(&flags.client_address.to_string())));
    assert_eq!(ports.get("ingest"), Some(&port(&flags.ingest_address.to_string())));
    // The sensor's config points at the ingest Service and port, and its
    // keys are ones vigil-sensor accepts.
    let cm = objs
        .iter()
        .find_map(|(_, o)| match o {
            Object::ConfigMap(c) if name_of(o) == "vigil-sensor-config" => Some(c.clone()),
            _ => None,
        })
        .unwrap();
    let text = cm.data.unwrap()["config.yaml"].clone();
    assert!(
        text.contains(&format!(
            "vigil-relay-ingest.vigil.svc.cluster.local:{}",
            port(&flags.ingest_address.to_string())
        ))
    );
    let tmp = std::env::temp_dir().join(format!("vigil-sensor-config-{}.yaml", std::process::id()));
    std::fs::write(&tmp, &text).unwrap();
    let checked = node_sensor::config::check_file(&tmp);
    let _ = std::fs::remove_file(&tmp);
    checked.unwrap_or_else(|e| panic!("sensor ConfigMap: {e}"));
    // The relay's config: keys it accepts, the ports its Service names.
    let cm = objs
        .iter()
        .find_map(|(_, o)| match o {
            Object::ConfigMap(c) if name_of(o) == "vigil-relay-config" => Some(c.clone()),
            _ => None,
        })
        .expect("vigil-relay-config");
    let text = cm.data.unwrap()["config.yaml"].clone();
    for (name, p) in &ports {
        assert!(text.contains(&format!(":{p}")), "relay config does not listen on the {name} port {p}: {text}");
    }
    let tmp = std::env::temp_dir().join(format!("vigil-relay-config-{}.yaml", std::process::id()));
    std::fs::write(&tmp, &text).unwrap();
    let checked = relay::config::check_file(&tmp);
    let _ = std::fs::remove_file(&tmp);
    checked.unwrap_or_else(|e| panic!("relay ConfigMap: {e}"));
}

#[test]
fn sensor_gets_what_bpf_needs_and_rbac_is_least_privilege() {
    let objs = objects();
    let (_, ds) = objs.iter().find(|(_, o)| matches!(o, Object::DaemonSet(_))).unwrap();
    let spec = pod_spec(ds).unwrap();
    assert_eq!(spec.host_pid, Some(true));
    let c = &spec.containers[0];
    let env = c.env.clone().unwrap_or_default();
    let node = env.iter().find(|e| e.name == "NODE_NAME").expect("NODE_NAME");
    assert_eq!(node.value_from.as_ref().unwrap().field_ref.as_ref().unwrap().field_path, "spec.nodeName");
    let mounts: BTreeSet<String> =
        c.volume_mounts.clone().unwrap_or_default().into_iter().map(|m| m.mount_path).collect();
    for m in ["/sys/kernel/btf", "/sys/fs/cgroup", "/host/proc", "/etc/vigil/tls"] {
        assert!(mounts.contains(m), "sensor lacks {m}");
    }
    assert!(c.liveness_probe.is_some() && c.readiness_probe.is_some());
    let res = c.resources.as_ref().unwrap();
    assert!(res.requests.is_some() && res.limits.is_some());
    let sc = c.security_context.as_ref().unwrap();
    assert_ne!(sc.privileged, Some(true), "no privileged mode: named capabilities only");
    assert_eq!(sc.capabilities.as_ref().unwrap().drop, Some(vec!["ALL".to_owned()]));
    // RBAC: the sensor may read pods, nodes and the tracing policies,
    // nothing more, and write nothing.
    let (_, cr) =
        objs.iter().find(|(_, o)| matches!(o, Object::ClusterRole(_)) && name_of(o) == "vigil-sensor").unwrap();
    let Object::ClusterRole(cr) = cr else { unreachable!() };
    let rules = cr.rules.clone().unwrap_or_default();
    let granted: Vec<(Vec<String>, Vec<String>, Vec<String>)> = rules
        .iter()
        .map(|r| (r.api_groups.clone().unwrap_or_default(), r.resources.clone().unwrap_or_default(), r.verbs.clone()))
        .collect();
    let read = vec!["get".to_owned(), "list".to_owned(), "watch".to_owned()];
    let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert_eq!(
        granted,
        [
            (strings(&[""]), strings(&["pods", "nodes"]), read.clone()),
            (strings(&["cilium.io"]), strings(&["tracingpolicies", "tracingpoliciesnamespaced"]), read),
        ]
    );
    // What the sensor watches is what the CRDs define.
    let crds: Vec<String> = objs
        .iter()
        .filter_map(|(_, o)| match o {
            Object::CustomResourceDefinition(c) => Some(format!("{}.{}", c.spec.names.plural, c.spec.group)),
            _ => None,
        })
        .collect();
    assert_eq!(crds, ["tracingpolicies.cilium.io", "tracingpoliciesnamespaced.cilium.io"]);
    // Node identity: the sensor's projected token for the relay's audience,
    // and the relay allowed to review tokens.
    assert!(mounts.contains("/var/run/secrets/vigil"), "sensor lacks its relay token");
    let projected = spec
        .volumes
        .clone()
        .unwrap_or_default()
        .into_iter()
        .find_map(|v| v.projected)
        .and_then(|p| p.sources)
        .unwrap_or_default()
        .into_iter()
        .find_map(|s| s.service_account_token)
        .expect("a projected service-account token");
    assert_eq!((projected.audience.as_deref(), projected.path.as_str()), (Some("vigil-relay"), "relay-token"));
    let delegated = objs.iter().any(|(_, o)| {
        matches!(o, Object::ClusterRoleBinding(b) if b.role_ref.name == "system:auth-delegator"
            && b.subjects.iter().flatten().any(|s| s.name == "vigil-relay"))
    });
    assert!(delegated, "the relay may not review tokens");
    // The relay: two replicas, headless ingest Service.
    let (_, d) = objs.iter().find(|(_, o)| matches!(o, Object::Deployment(_))).unwrap();
    let Object::Deployment(d) = d else { unreachable!() };
    assert_eq!(d.spec.replicas, Some(2));
    let headless = objs.iter().any(|(_, o)| matches!(o, Object::Service(s) if name_of(o) == "vigil-relay-ingest" && s.spec.as_ref().unwrap().cluster_ip.as_deref() == Some("None")));
    assert!(headless);
}

#[test]
fn kind_script_is_shellcheck_clean() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/kind/run.sh");
    match std::process::Command::new("shellcheck").arg(&script).output() {
        Ok(out) => assert!(out.status.success(), "shellcheck:\n{}", String::from_utf8_lossy(&out.stdout)),
        Err(e) => {
            assert!(std::env::var_os("VIGIL_REQUIRE_ALL").is_none(), "shellcheck is not installed: {e}");
            eprintln!("SKIP kind_script_is_shellcheck_clean: shellcheck not installed ({e})");
        }
    }
}

/// The sensor's DaemonSet or the relay's Deployment.
fn workload<'a>(objs: &'a [(String, Object)], kind: &str) -> &'a Object {
    objs.iter()
        .map(|(_, o)| o)
        .find(|o| match kind {
            "DaemonSet" => matches!(o, Object::DaemonSet(_)),
            _ => matches!(o, Object::Deployment(_)),
        })
        .unwrap_or_else(|| panic!("no {kind}"))
}

/// The container port declared under `name`.
fn declared_port(c: &k8s_openapi::api::core::v1::Container, name: &str) -> Option<i32> {
    c.ports.iter().flatten().find(|p| p.name.as_deref() == Some(name)).map(|p| p.container_port)
}

/// The port of the config's `key` (`:PORT` or `HOST:PORT`).
fn config_port(objs: &[(String, Object)], config_map: &str, key: &str) -> i32 {
    let cm = objs
        .iter()
        .find_map(|(_, o)| match o {
            Object::ConfigMap(c) if name_of(o) == config_map => Some(c.clone()),
            _ => None,
        })
        .unwrap();
    let text = cm.data.unwrap()["config.yaml"].clone();
    let value = text
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("{config_map} sets no {key}"));
    let value = value.trim().trim_matches('"');
    value.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or_else(|| panic!("{config_map}: {value}"))
}

#[test]
fn probes_ask_the_health_service_on_its_configured_port() {
    let objs = objects();
    for (kind, config_map, ready_service) in [
        ("DaemonSet", "vigil-sensor-config", None),
        ("Deployment", "vigil-relay-config", Some("vigil.relay.v1.Ingest")),
    ] {
        let o = workload(&objs, kind);
        let c = &pod_spec(o).unwrap().containers[0];
        let port = config_port(&objs, config_map, "health-server-address");
        assert_eq!(declared_port(c, "health"), Some(port), "{kind}: the health port is declared");
        for (which, probe) in [("liveness", &c.liveness_probe), ("readiness", &c.readiness_probe)] {
            let grpc = probe.as_ref().and_then(|p| p.grpc.as_ref()).unwrap_or_else(|| panic!("{kind} {which}: gRPC"));
            assert_eq!(grpc.port, port, "{kind} {which}");
            let service = if which == "readiness" { ready_service } else { None };
            assert_eq!(grpc.service.as_deref(), service, "{kind} {which}");
        }
    }
}

#[test]
fn pods_are_annotated_for_scraping_on_the_configured_metrics_port() {
    let objs = objects();
    for (kind, config_map) in [("DaemonSet", "vigil-sensor-config"), ("Deployment", "vigil-relay-config")] {
        let o = workload(&objs, kind);
        let port = config_port(&objs, config_map, "metrics-address");
        let template = match o {
            Object::DaemonSet(d) => d.spec.template.metadata.clone(),
            Object::Deployment(d) => d.spec.template.metadata.clone(),
            _ => unreachable!(),
        };
        let annotations = template.and_then(|m| m.annotations).unwrap_or_default();
        assert_eq!(annotations.get("prometheus.io/scrape").map(String::as_str), Some("true"), "{kind}");
        assert_eq!(annotations.get("prometheus.io/port"), Some(&port.to_string()), "{kind}");
        assert_eq!(annotations.get("prometheus.io/path").map(String::as_str), Some("/metrics"), "{kind}");
        let c = &pod_spec(o).unwrap().containers[0];
        assert_eq!(declared_port(c, "metrics"), Some(port), "{kind}: the metrics port is declared");
    }
}

/// The Prometheus operator's objects in deploy/monitoring/ (apart: they
/// need its CRDs).
fn monitoring() -> Vec<(String, Object)> {
    load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("monitoring")).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn service_monitors_scrape_every_sensor_and_relay_pod_on_the_metrics_port() {
    let objs = objects();
    let monitors: Vec<_> = monitoring()
        .into_iter()
        .map(|(file, o)| match o {
            Object::ServiceMonitor(m) => (file, m),
            other => panic!("{file}: only ServiceMonitors belong in deploy/monitoring, not {other:?}"),
        })
        .collect();
    let mut scraped = BTreeSet::new();
    for (file, m) in &monitors {
        let name = m.metadata.name.clone().unwrap_or_default();
        assert_eq!((m.api_version.as_str(), m.kind.as_str()), ("monitoring.coreos.com/v1", "ServiceMonitor"));
        let wanted = m.spec.selector.match_labels.clone().unwrap_or_default();
        let namespaces = m.spec.namespace_selector.as_ref().map(|n| n.match_names.clone()).unwrap_or_default();
        // The Services it selects, in the namespaces it names.
        let services: Vec<&k8s_openapi::api::core::v1::Service> = objs
            .iter()
            .filter_map(|(_, o)| match o {
                Object::Service(s) => Some(s),
                _ => None,
            })
            .filter(|s| namespaces.contains(&s.metadata.namespace.clone().unwrap_or_default()))
            .filter(|s| {
                let labels = s.metadata.labels.clone().unwrap_or_default();
                wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .collect();
        assert_eq!(services.len(), 1, "{file}: {name} selects {} Services", services.len());
        let service = services[0];
        let spec = service.spec.as_ref().unwrap();
        assert!(!m.spec.endpoints.is_empty(), "{file}: {name} has no endpoints");
        for e in &m.spec.endpoints {
            let port = e.port.clone().expect("endpoints name their Service port");
            let service_port =
                spec.ports.clone().unwrap_or_default().into_iter().find(|p| p.name.as_deref() == Some(&port));
            let service_port = service_port.unwrap_or_else(|| panic!("{file}: {name}: the Service has no port {port}"));
            assert_eq!(e.path.as_deref().unwrap_or("/metrics"), "/metrics");
            // That port is the pods' declared metrics port, the one the
            // daemon's config serves on.
            let selector = spec.selector.clone().unwrap_or_default();
            let (_, workload) = objs
                .iter()
                .find(|(_, w)| template_labels(w).is_some_and(|l| selector.iter().all(|(k, v)| l.get(k) == Some(v))))
                .unwrap_or_else(|| panic!("{file}: {name}: the Service selects no workload"));
            let container = &pod_spec(workload).unwrap().containers[0];
            let target = match service_port.target_port {
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(n)) => n,
                other => panic!("{file}: {name}: the target port is not named: {other:?}"),
            };
            assert_eq!(target, "metrics");
            assert_eq!(declared_port(container, "metrics"), Some(service_port.port), "{file}: {name}");
            scraped.insert(name_of(workload));
        }
    }
    assert_eq!(scraped, BTreeSet::from(["vigil-relay".to_owned(), "vigil-sensor".to_owned()]));
}

#[test]
fn a_misplaced_service_monitor_field_is_refused() {
    let text = "apiVersion: monitoring.coreos.com/v1\nkind: ServiceMonitor\nmetadata:\n  name: m\nspec:\n  \
                selector: {}\n  endpoints:\n    - port: metrics\n      intervall: 30s\n";
    let e = manifests::parse("m.yaml", text).unwrap_err().to_string();
    assert!(e.contains("unknown field .spec.endpoints[0].intervall"), "{e}");
}
