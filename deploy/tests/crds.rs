//! The policy CRDs: `05-crds.yaml` is what the policy crate's types
//! generate, its schema is structural as the API server requires, and the
//! example policies (Vigil's and those recorded from Tetragon) are valid
//! under it while documents the sensors would refuse by type are not.
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

use std::path::{Path, PathBuf};

use serde_json::Value;

fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests")
}

#[test]
fn checked_in_crds_are_the_generated_ones() {
    let generated = manifests::crds::crds_yaml().unwrap();
    let file = manifests().join("05-crds.yaml");
    if std::env::var_os("VIGIL_BLESS").is_some() {
        std::fs::write(&file, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        checked_in == generated,
        "{} is not what the policy types generate; regenerate it with \
         VIGIL_BLESS=1 cargo test -p manifests --test crds",
        file.display()
    );
}

/// Where a schema breaks the API server's structural rules: a node
/// without a type (unless it keeps unknown fields), a reference, or a
/// type inside a logical junction.
fn structural_faults(v: &Value, at: &str, out: &mut Vec<String>) {
    let Some(o) = v.as_object() else {
        out.push(format!("{at}: not an object"));
        return;
    };
    let free = o.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if o.get("type").is_none() && !free {
        out.push(format!("{at}: no type"));
    }
    for k in ["$ref", "$defs", "definitions", "$schema"] {
        if o.contains_key(k) {
            out.push(format!("{at}: {k}"));
        }
    }
    for junction in ["oneOf", "anyOf", "allOf", "not"] {
        if let Some(branches) = o.get(junction) {
            let typed = branches.as_array().into_iter().flatten().any(|b| b.get("type").is_some());
            if typed {
                out.push(format!("{at}.{junction}: a branch sets a type"));
            }
        }
    }
    if o.contains_key("additionalProperties") && o.contains_key("properties") {
        out.push(format!("{at}: both properties and additionalProperties"));
    }
    if let Some(props) = o.get("properties").and_then(Value::as_object) {
        for (k, p) in props {
            structural_faults(p, &format!("{at}.{k}"), out);
        }
    }
    if let Some(items) = o.get("items") {
        structural_faults(items, &format!("{at}[]"), out);
    }
    if let Some(extra) = o.get("additionalProperties").filter(|a| a.is_object()) {
        structural_faults(extra, &format!("{at}{{}}"), out);
    }
}

#[test]
fn the_schema_is_structural() {
    let schema = manifests::crds::policy_schema();
    let mut faults = Vec::new();
    structural_faults(&schema, "", &mut faults);
    assert!(faults.is_empty(), "{faults:#?}");
    let spec = &schema["properties"]["spec"]["properties"];
    // Spot checks that the schema is the policy crate's, with its spellings.
    assert_eq!(spec["kprobes"]["items"]["properties"]["syscall"]["default"], Value::Bool(true));
    let arg_types = &spec["kprobes"]["items"]["properties"]["args"]["items"]["properties"]["type"]["enum"];
    for t in ["int", "char_buf", "size_t", "kernel_cap_t", "sock"] {
        assert!(arg_types.as_array().unwrap().contains(&Value::String(t.into())), "{t} in {arg_types}");
    }
    assert_eq!(spec["podSelector"]["x-kubernetes-preserve-unknown-fields"], Value::Bool(true));
    // Both CRDs parse as the real Kubernetes type, with Tetragon's names.
    let crds = manifests::crds::tracing_policy_crds().unwrap();
    let names: Vec<_> = crds.iter().map(|c| (c.metadata.name.clone().unwrap(), c.spec.scope.clone())).collect();
    assert_eq!(
        names,
        [
            ("tracingpolicies.cilium.io".to_owned(), "Cluster".to_owned()),
            ("tracingpoliciesnamespaced.cilium.io".to_owned(), "Namespaced".to_owned())
        ]
    );
}

fn validator() -> jsonschema::Validator {
    let crds = manifests::crds::tracing_policy_crds().unwrap();
    let version = &crds[0].spec.versions[0];
    let schema = serde_json::to_value(version.schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap()).unwrap();
    jsonschema::options().with_draft(jsonschema::Draft::Draft4).build(&schema).unwrap()
}

fn yaml(text: &str) -> Value {
    serde_yaml::from_str(text).unwrap()
}

/// Every example policy: in `deploy/examples`, and the policies recorded
/// with the real Tetragon agent (`tests/compat/fixtures`).
fn examples() -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for dir in [root.join("examples"), root.join("../tests/compat/fixtures/tetragon-vm-policies")] {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                out.push((path.clone(), std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn example_policies_are_valid_under_the_schema() {
    let v = validator();
    let examples = examples();
    assert!(examples.len() >= 11, "examples: {}", examples.len());
    for (path, text) in &examples {
        let errors: Vec<String> = v.iter_errors(&yaml(text)).map(|e| format!("{}: {e}", e.instance_path)).collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
        // Vigil's own examples also load as they are.
        if path.parent().is_some_and(|d| d.ends_with("examples")) {
            policy::parse(text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }
}

#[test]
fn documents_of_the_wrong_shape_are_not() {
    let v = validator();
    let base = "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: x}\n";
    let cases = [
        ("spec:\n  kprobes:\n  - call: f\n    args:\n    - {index: 0, type: filez}\n", "/spec/kprobes/0/args/0/type"),
        (
            "spec:\n  kprobes:\n  - call: f\n    selectors:\n    - matchArgs:\n      - {index: 0, operator: Equalz}\n",
            "/spec/kprobes/0/selectors/0/matchArgs/0/operator",
        ),
        ("spec:\n  kprobes:\n  - syscall: true\n", "/spec/kprobes/0"),
        ("spec:\n  tracepoints: {subsystem: a}\n", "/spec/tracepoints"),
        (
            "spec:\n  kprobes:\n  - call: f\n    selectors:\n    - matchPIDs:\n      - {operator: In, values: [-1]}\n",
            "/spec/kprobes/0/selectors/0/matchPIDs/0/values/0",
        ),
        ("", ""),
    ];
    for (spec, at) in cases {
        let doc = yaml(&format!("{base}{spec}"));
        let errors: Vec<String> = v.iter_errors(&doc).map(|e| e.instance_path.to_string()).collect();
        assert!(errors.iter().any(|p| p == at), "{spec}: errors at {errors:?}, expected one at {at:?}");
    }
}
