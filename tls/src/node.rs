//! Which node a sensor certificate may speak for. A sensor certificate
//! carries a URI subject-alternative name `urn:vigil:node:<name>` binding
//! it to one node, or `urn:vigil:node:*` for a credential deliberately
//! valid for any node (issued only on request, and flagged by the relay).
//! A sensor certificate with neither binds nothing and is refused.

/// Prefix of the node-binding URI.
pub const NODE_PREFIX: &str = "urn:vigil:node:";
/// The binding of an any-node credential.
pub const ANY_NODE: &str = "*";
/// Longest node name: a DNS name (a Kubernetes node's name is one).
pub const MAX_NODE_NAME: usize = 253;

/// What a sensor certificate says about the node it speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeBinding {
    Node(String),
    AnyNode,
    /// No binding at all (a certificate from before bindings, or foreign).
    Unbound,
}

/// The binding in a DER certificate.
pub fn binding_of(der: &[u8]) -> NodeBinding {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return NodeBinding::Unbound;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return NodeBinding::Unbound;
    };
    san.value
        .general_names
        .iter()
        .find_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(uri) => uri.strip_prefix(NODE_PREFIX),
            _ => None,
        })
        .map_or(NodeBinding::Unbound, |name| {
            if name == ANY_NODE { NodeBinding::AnyNode } else { NodeBinding::Node(name.to_owned()) }
        })
}

/// Why a name cannot be a node's: it must be a usable file name (certificates
/// are written under `nodes/<name>/`) and fit a URI and a DNS name.
pub fn check_node_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NODE_NAME {
        return Err(format!("a node name has 1 to {MAX_NODE_NAME} bytes; this one has {}", name.len()));
    }
    if name == "." || name == ".." || name == ANY_NODE {
        return Err(format!("{name:?} cannot be a node name"));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))) {
        return Err(format!("node name {name:?} holds {c:?}; use letters, digits, '.', '-' and '_'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names() {
        assert!(check_node_name("kind-worker2").is_ok());
        assert!(check_node_name("ip-10-0-1-7.ec2.internal").is_ok());
        for bad in ["", "..", "*", "a/b", "a b", "(none)"] {
            assert!(check_node_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_node_name(&"n".repeat(254)).unwrap_err().contains("253"));
    }
}
