//! TracingPolicy documents (`cilium.io/v1alpha1`, kinds `TracingPolicy` and
//! `TracingPolicyNamespaced`) parsed and checked as Tetragon does before it
//! loads anything: strict fields, the CRD's enum spellings and defaults, and
//! the limits of POLICY-REFERENCE.md. Every error names the field by its
//! path in the YAML (`spec.kprobes[0].args[1].type`) and never echoes a
//! value back. No BPF and no I/O: the sensor compiles what this returns, and
//! the relay and the CLI (`vigil tracingpolicy validate`) check policies
//! with the same code before they go anywhere. Checks that need the
//! kernel (a function in BTF, a tracepoint's format) are the sensor's.
#![forbid(unsafe_code)]

pub mod compile;
pub mod schema;
pub mod scope;
pub mod select;
pub mod tracefs;
mod validate;

pub use schema::TracingPolicy;

/// Largest policy document taken (a policy is a few KiB).
pub const MAX_POLICY_BYTES: usize = 1 << 20;

/// Why a policy was refused: where, and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct PolicyError {
    /// The field's path in the document (`spec.kprobes[0].call`), or
    /// `(document)` for the whole.
    pub path: String,
    pub reason: String,
}

impl PolicyError {
    pub(crate) fn at(path: impl Into<String>, reason: impl Into<String>) -> Self {
        PolicyError { path: path.into(), reason: reason.into() }
    }
}

/// Parses and checks one policy document.
pub fn parse(text: &str) -> Result<TracingPolicy, PolicyError> {
    if text.len() > MAX_POLICY_BYTES {
        return Err(PolicyError::at("(document)", format!("{} bytes; the limit is {MAX_POLICY_BYTES}", text.len())));
    }
    let deserializer = serde_yaml::Deserializer::from_str(text);
    let policy: TracingPolicy = serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { "(document)".to_owned() } else { path };
        let message = e.into_inner().to_string();
        // serde_yaml names the path itself, and for an unknown field names
        // the object holding it (the field's own name is the sender's).
        let (path, message) = match message.split_once(": ") {
            Some((p, m)) if !p.contains(char::is_whitespace) => (p.to_owned(), m),
            _ => (path, message.as_str()),
        };
        PolicyError::at(path, without_value(without_location(message)))
    })?;
    validate::check(&policy)?;
    Ok(policy)
}

/// serde_yaml's message without its trailing " at line L column C" (the
/// path says where; the position would point into the peer's text).
fn without_location(message: &str) -> &str {
    message.find(" at line ").map_or(message, |i| &message[..i])
}

/// The message without the value it quotes from the document (what was
/// given is the sender's; what is expected is ours): "unknown variant
/// `filez`, expected one of …" becomes "unknown variant, expected one of …".
fn without_value(message: &str) -> String {
    let (head, rest) = message.split_once(", expected").map_or((message, None), |(h, r)| (h, Some(r)));
    let head = match head.find(['`', '"']) {
        Some(open) => {
            let quote = &head[open..=open];
            let close = head[open + 1..].find(quote).map_or(head.len(), |c| open + 1 + c + 1);
            format!("{}{}", head[..open].trim_end(), &head[close..])
        }
        None => head.to_owned(),
    };
    match rest {
        Some(r) => format!("{head}, expected{r}"),
        None => head,
    }
}
