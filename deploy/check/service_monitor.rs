//! The Prometheus operator's `ServiceMonitor` (monitoring.coreos.com/v1),
//! typed from the operator's API (v0.8x: every field of the spec, its
//! endpoints, relabelings and attached metadata, as the
//! `@kubernetes-models/prometheus-operator` definitions generated from the
//! CRD list them), so a misspelt or misplaced field is refused as the CRD's
//! structural schema would prune it. Fields Vigil does not use are kept as
//! raw JSON: they are known, not checked further.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMonitor {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: ServiceMonitorSpec,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMonitorSpec {
    pub selector: LabelSelector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<NamespaceSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Endpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attach_metadata: Option<AttachMetadata>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_labels: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_target_labels: Option<Vec<String>>,
    #[serde(flatten)]
    pub rest: SpecRest,
}

/// The spec's fields Vigil leaves at their defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpecRest {
    body_size_limit: Option<Value>,
    convert_classic_histograms_to_nhcb: Option<Value>,
    fallback_scrape_protocol: Option<Value>,
    keep_dropped_targets: Option<Value>,
    label_limit: Option<Value>,
    label_name_length_limit: Option<Value>,
    label_value_length_limit: Option<Value>,
    native_histogram_bucket_limit: Option<Value>,
    native_histogram_min_bucket_factor: Option<Value>,
    sample_limit: Option<Value>,
    scrape_class: Option<Value>,
    scrape_classic_histograms: Option<Value>,
    scrape_native_histograms: Option<Value>,
    scrape_protocols: Option<Value>,
    selector_mechanism: Option<Value>,
    service_discovery_role: Option<Value>,
    target_limit: Option<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub any: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_names: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// The Service port's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scrape_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub honor_labels: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relabelings: Option<Vec<RelabelConfig>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_relabelings: Option<Vec<RelabelConfig>>,
    #[serde(flatten)]
    pub rest: EndpointRest,
}

/// An endpoint's fields Vigil leaves at their defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointRest {
    authorization: Option<Value>,
    basic_auth: Option<Value>,
    bearer_token_file: Option<Value>,
    bearer_token_secret: Option<Value>,
    filter_running: Option<Value>,
    follow_redirects: Option<Value>,
    honor_timestamps: Option<Value>,
    no_proxy: Option<Value>,
    params: Option<Value>,
    proxy_connect_header: Option<Value>,
    proxy_from_environment: Option<Value>,
    proxy_url: Option<Value>,
    tls_config: Option<Value>,
    track_timestamps_staleness: Option<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RelabelConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modulus: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub separator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_labels: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_label: Option<String>,
}
