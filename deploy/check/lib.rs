//! Parses manifests into the real Kubernetes types (k8s-openapi), rejects
//! fields those types do not have, and exposes the parsed objects for
//! cross-reference checks.
#![forbid(unsafe_code)]

pub mod crds;
pub mod service_monitor;

use std::path::Path;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PodSpec, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// One parsed manifest document.
#[derive(Debug, Clone)]
#[expect(clippy::large_enum_variant, reason = "a handful of parsed manifests; boxing buys nothing")]
pub enum Object {
    Namespace(Namespace),
    ServiceAccount(ServiceAccount),
    ClusterRole(ClusterRole),
    ClusterRoleBinding(ClusterRoleBinding),
    Role(Role),
    RoleBinding(RoleBinding),
    ConfigMap(ConfigMap),
    Job(Job),
    DaemonSet(DaemonSet),
    Deployment(Deployment),
    StatefulSet(StatefulSet),
    Service(Service),
    ServiceMonitor(service_monitor::ServiceMonitor),
    CustomResourceDefinition(CustomResourceDefinition),
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{file}: {reason}")]
    Parse { file: String, reason: String },
    #[error("{file}: {kind} {name}: unknown field {path}")]
    UnknownField { file: String, kind: String, name: String, path: String },
    #[error("{file}: unsupported kind {kind}")]
    Kind { file: String, kind: String },
}

/// Paths present in `input` but not in `typed` (what the type dropped).
fn unknown_paths(input: &Value, typed: &Value, at: &str, out: &mut Vec<String>) {
    match (input, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let path = format!("{at}.{k}");
                match b.get(k) {
                    Some(t) => unknown_paths(v, t, &path, out),
                    // null and empty values legitimately disappear.
                    None if v.is_null() || v == &Value::Object(Default::default()) || v == &Value::Array(vec![]) => {}
                    None => out.push(path),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                unknown_paths(x, y, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn typed<T: DeserializeOwned + Serialize>(file: &str, doc: &Value) -> Result<T, ManifestError> {
    let obj: T = serde_json::from_value(doc.clone())
        .map_err(|e| ManifestError::Parse { file: file.into(), reason: e.to_string() })?;
    let back =
        serde_json::to_value(&obj).map_err(|e| ManifestError::Parse { file: file.into(), reason: e.to_string() })?;
    let mut unknown = Vec::new();
    unknown_paths(doc, &back, "", &mut unknown);
    if let Some(path) = unknown.into_iter().next() {
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        let name = doc["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        return Err(ManifestError::UnknownField { file: file.into(), kind, name, path });
    }
    Ok(obj)
}

/// Parses every document of a YAML text.
pub fn parse(file: &str, text: &str) -> Result<Vec<Object>, ManifestError> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value: Value = serde::Deserialize::deserialize(doc)
            .map_err(|e| ManifestError::Parse { file: file.into(), reason: e.to_string() })?;
        if value.is_null() {
            continue;
        }
        let kind = value["kind"].as_str().unwrap_or_default();
        out.push(match kind {
            "Namespace" => Object::Namespace(typed(file, &value)?),
            "ServiceAccount" => Object::ServiceAccount(typed(file, &value)?),
            "ClusterRole" => Object::ClusterRole(typed(file, &value)?),
            "ClusterRoleBinding" => Object::ClusterRoleBinding(typed(file, &value)?),
            "Role" => Object::Role(typed(file, &value)?),
            "RoleBinding" => Object::RoleBinding(typed(file, &value)?),
            "ConfigMap" => Object::ConfigMap(typed(file, &value)?),
            "Job" => Object::Job(typed(file, &value)?),
            "DaemonSet" => Object::DaemonSet(typed(file, &value)?),
            "Deployment" => Object::Deployment(typed(file, &value)?),
            "StatefulSet" => Object::StatefulSet(typed(file, &value)?),
            "Service" => Object::Service(typed(file, &value)?),
            "ServiceMonitor" => Object::ServiceMonitor(typed(file, &value)?),
            "CustomResourceDefinition" => Object::CustomResourceDefinition(typed(file, &value)?),
            other => return Err(ManifestError::Kind { file: file.into(), kind: other.into() }),
        });
    }
    Ok(out)
}

/// Every `*.yaml` under `dir`, parsed, in file-name order.
pub fn load_dir(dir: &Path) -> Result<Vec<(String, Object)>, ManifestError> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| ManifestError::Parse { file: dir.display().to_string(), reason: e.to_string() })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let text = std::fs::read_to_string(&f)
            .map_err(|e| ManifestError::Parse { file: name.clone(), reason: e.to_string() })?;
        out.extend(parse(&name, &text)?.into_iter().map(|o| (name.clone(), o)));
    }
    Ok(out)
}

/// The pod spec of a workload object.
pub fn pod_spec(o: &Object) -> Option<&PodSpec> {
    match o {
        Object::DaemonSet(d) => d.spec.template.spec.as_ref(),
        Object::Deployment(d) => d.spec.template.spec.as_ref(),
        Object::StatefulSet(s) => s.spec.template.spec.as_ref(),
        Object::Job(j) => j.spec.as_ref()?.template.spec.as_ref(),
        _ => None,
    }
}

impl Object {
    /// The object's name.
    pub fn name(&self) -> String {
        let meta = match self {
            Object::Namespace(x) => &x.metadata,
            Object::ServiceAccount(x) => &x.metadata,
            Object::ClusterRole(x) => &x.metadata,
            Object::ClusterRoleBinding(x) => &x.metadata,
            Object::Role(x) => &x.metadata,
            Object::RoleBinding(x) => &x.metadata,
            Object::ConfigMap(x) => &x.metadata,
            Object::Job(x) => &x.metadata,
            Object::DaemonSet(x) => &x.metadata,
            Object::Deployment(x) => &x.metadata,
            Object::StatefulSet(x) => &x.metadata,
            Object::Service(x) => &x.metadata,
            Object::ServiceMonitor(x) => &x.metadata,
            Object::CustomResourceDefinition(x) => &x.metadata,
        };
        meta.name.clone().unwrap_or_default()
    }

    /// A workload's pod template labels.
    pub fn template_labels(&self) -> Option<std::collections::BTreeMap<String, String>> {
        match self {
            Object::DaemonSet(d) => d.spec.template.metadata.as_ref()?.labels.clone(),
            Object::Deployment(d) => d.spec.template.metadata.as_ref()?.labels.clone(),
            Object::StatefulSet(s) => s.spec.template.metadata.as_ref()?.labels.clone(),
            _ => None,
        }
    }

    /// Which kind it is, as manifests spell it.
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Namespace(_) => "Namespace",
            Object::ServiceAccount(_) => "ServiceAccount",
            Object::ClusterRole(_) => "ClusterRole",
            Object::ClusterRoleBinding(_) => "ClusterRoleBinding",
            Object::Role(_) => "Role",
            Object::RoleBinding(_) => "RoleBinding",
            Object::ConfigMap(_) => "ConfigMap",
            Object::Job(_) => "Job",
            Object::DaemonSet(_) => "DaemonSet",
            Object::Deployment(_) => "Deployment",
            Object::StatefulSet(_) => "StatefulSet",
            Object::Service(_) => "Service",
            Object::ServiceMonitor(_) => "ServiceMonitor",
            Object::CustomResourceDefinition(_) => "CustomResourceDefinition",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_rejected_with_their_path() {
        let yaml =
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\nspec:\n  selector: {a: b}\n  prots:\n    - port: 1\n";
        let e = parse("x.yaml", yaml).unwrap_err().to_string();
        assert_eq!(e, "x.yaml: Service s: unknown field .spec.prots");
        let yaml = "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\nspec:\n  ports:\n    - port: 1\n      tragetPort: 2\n";
        assert!(parse("x.yaml", yaml).unwrap_err().to_string().ends_with(".spec.ports[0].tragetPort"));
        assert!(matches!(parse("x.yaml", "kind: Gadget\n"), Err(ManifestError::Kind { .. })));
    }
}
