//! The CustomResourceDefinitions of Tetragon's policy kinds (`cilium.io`,
//! `v1alpha1`), their OpenAPI schema generated from the `policy` crate's
//! types, so that what the API server accepts is what the sensors parse.
//! `deploy/manifests/05-crds.yaml` holds the generated text; the manifests
//! test fails when it falls behind the types.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionNames, CustomResourceDefinitionSpec,
    CustomResourceDefinitionVersion, CustomResourceValidation, JSONSchemaProps,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use schemars::generate::SchemaSettings;
use serde_json::{Value, json};

pub const GROUP: &str = "cilium.io";
pub const VERSION: &str = "v1alpha1";

/// The OpenAPI v3 schema of a policy object: its `spec` as the `policy`
/// crate parses it, structural (every node typed, subschemas inlined) as
/// the API server requires.
pub fn policy_schema() -> Value {
    let settings = SchemaSettings::openapi3().with(|s| {
        s.inline_subschemas = true;
        s.meta_schema = None;
    });
    let generator = settings
        .with_transform(kube_core::schema::OptionalEnum)
        .with_transform(kube_core::schema::StructuralSchemaRewriter)
        .into_generator();
    let mut spec = generator.into_root_schema_for::<policy::schema::Spec>().to_value();
    if let Some(o) = spec.as_object_mut() {
        o.remove("title");
        o.remove("$schema");
    }
    strip_descriptions(&mut spec);
    json!({
        "type": "object",
        "required": ["spec"],
        "properties": { "spec": spec },
    })
}

/// Doc comments are the crate's notes to its readers, not API
/// documentation: they stay out of the schema.
fn strip_descriptions(v: &mut Value) {
    match v {
        Value::Object(o) => {
            o.remove("description");
            o.values_mut().for_each(strip_descriptions);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_descriptions),
        _ => {}
    }
}

fn crd(kind: &str, plural: &str, short: &str, scope: &str) -> Result<CustomResourceDefinition, serde_json::Error> {
    let schema: JSONSchemaProps = serde_json::from_value(policy_schema())?;
    Ok(CustomResourceDefinition {
        metadata: ObjectMeta { name: Some(format!("{plural}.{GROUP}")), ..Default::default() },
        spec: CustomResourceDefinitionSpec {
            group: GROUP.into(),
            names: CustomResourceDefinitionNames {
                kind: kind.into(),
                list_kind: Some(format!("{kind}List")),
                plural: plural.into(),
                singular: Some(kind.to_lowercase()),
                short_names: Some(vec![short.into()]),
                categories: Some(vec!["tetragon".into()]),
            },
            scope: scope.into(),
            versions: vec![CustomResourceDefinitionVersion {
                name: VERSION.into(),
                served: true,
                storage: true,
                schema: Some(CustomResourceValidation { open_api_v3_schema: Some(schema) }),
                ..Default::default()
            }],
            ..Default::default()
        },
        status: None,
    })
}

/// `TracingPolicy` (cluster-wide) and `TracingPolicyNamespaced`, with the
/// names Tetragon registers them under, so existing policies apply with
/// `kubectl apply` unchanged.
pub fn tracing_policy_crds() -> Result<Vec<CustomResourceDefinition>, serde_json::Error> {
    Ok(vec![
        crd("TracingPolicy", "tracingpolicies", "tgtp", "Cluster")?,
        crd("TracingPolicyNamespaced", "tracingpoliciesnamespaced", "tgtpn", "Namespaced")?,
    ])
}

#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    #[error("the generated schema is not a JSONSchemaProps: {0}")]
    Schema(#[from] serde_json::Error),
    #[error("writing YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
}

/// The text of `05-crds.yaml`.
pub fn crds_yaml() -> Result<String, CrdError> {
    let mut out = String::from(
        "# Generated from the policy crate's types (deploy/check/crds.rs): do not edit.\n\
         # Regenerate with: VIGIL_BLESS=1 cargo test -p manifests --test crds\n",
    );
    let crds = tracing_policy_crds()?;
    for c in crds {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&c)?);
    }
    Ok(out)
}
