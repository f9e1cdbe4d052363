//! Vigil's mTLS. Every certificate names a role (relay, sensor, client) in a
//! URI subject-alternative name `urn:vigil:role:<role>`; the relay takes
//! ingest only from sensor certificates and serves queries only to client
//! certificates, and says which rule a refused peer broke. A sensor
//! certificate also names the node it may speak for (see `node`).
#![forbid(unsafe_code)]

pub mod auth;
pub mod node;
pub mod reload;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

const ROLE_PREFIX: &str = "urn:vigil:role:";

/// What a certificate may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Relay,
    Sensor,
    /// Reads: events, status, policy lists.
    Client,
    /// A client that may also change tracing policies.
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Relay => "relay",
            Role::Sensor => "sensor",
            Role::Client => "client",
            Role::Admin => "admin",
        }
    }

    fn from_name(s: &str) -> Option<Role> {
        match s {
            "relay" => Some(Role::Relay),
            "sensor" => Some(Role::Sensor),
            "client" => Some(Role::Client),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    // The causes are in the messages, not `source`s, so a report that
    // prints the chain does not print them twice.
    #[error("generating the {what} certificate: {error}")]
    Generate { what: &'static str, error: rcgen::Error },
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("{path}: no certificate in the file")]
    Empty { path: String },
    #[error("certificate {path} expired at {not_after}; peers will refuse it")]
    Expired { path: String, not_after: String },
    #[error("certificate {path} is not valid before {not_before}; peers will refuse it")]
    NotYetValid { path: String, not_before: String },
    #[error("certificate {path} cannot be parsed: {reason}")]
    Unparsable { path: String, reason: String },
    #[error("TLS settings from {cert} and {key}: {reason}")]
    Unusable { cert: String, key: String, reason: String },
    #[error("invalid node name for a sensor credential: {0}")]
    NodeName(String),
}

/// Refuses to present a certificate that is outside its validity period:
/// the peer would reject it with a bare TLS alert, this names the reason.
pub fn check_validity(path: &Path, pem: &[u8]) -> Result<(), TlsError> {
    let bad = |reason: String| TlsError::Unparsable { path: path.display().to_string(), reason };
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).map_err(|e| bad(e.to_string()))?;
    let cert = pem.parse_x509().map_err(|e| bad(e.to_string()))?;
    let validity = cert.validity();
    let now = x509_parser::time::ASN1Time::now();
    if now > validity.not_after {
        return Err(TlsError::Expired { path: path.display().to_string(), not_after: validity.not_after.to_string() });
    }
    if now < validity.not_before {
        return Err(TlsError::NotYetValid {
            path: path.display().to_string(),
            not_before: validity.not_before.to_string(),
        });
    }
    Ok(())
}

/// File names in a certificate directory.
pub struct CertFiles;

impl CertFiles {
    pub const CA: &'static str = "ca.pem";
    pub const CA_KEY: &'static str = "ca-key.pem";

    pub fn cert(role: Role) -> String {
        format!("{}.pem", role.name())
    }

    pub fn key(role: Role) -> String {
        format!("{}-key.pem", role.name())
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |error| TlsError::Io { path: path.display().to_string(), error }
}

fn validity(params: &mut CertificateParams, not_before: time::OffsetDateTime, days: i64) {
    params.not_before = not_before;
    params.not_after = not_before + time::Duration::days(days);
}

/// A leaf certificate for `role`, signed by the CA, valid from `not_before`
/// for `days` days, with `dns` names (servers) in its SANs. A sensor
/// certificate made here is an any-node one; see [`sensor_leaf`].
pub fn leaf(
    role: Role,
    dns: &[String],
    issuer: &Issuer<'_, KeyPair>,
    not_before: time::OffsetDateTime,
    days: i64,
) -> Result<(String, String), TlsError> {
    let node = (role == Role::Sensor).then_some(node::ANY_NODE);
    leaf_bound(role, node, dns, issuer, not_before, days)
}

/// A sensor certificate bound to `node` (a name, or [`node::ANY_NODE`]).
pub fn sensor_leaf(
    node: &str,
    dns: &[String],
    issuer: &Issuer<'_, KeyPair>,
    not_before: time::OffsetDateTime,
    days: i64,
) -> Result<(String, String), TlsError> {
    leaf_bound(Role::Sensor, Some(node), dns, issuer, not_before, days)
}

fn leaf_bound(
    role: Role,
    node: Option<&str>,
    dns: &[String],
    issuer: &Issuer<'_, KeyPair>,
    not_before: time::OffsetDateTime,
    days: i64,
) -> Result<(String, String), TlsError> {
    let gen_err = |error| TlsError::Generate { what: role.name(), error };
    let mut params = CertificateParams::new(dns.to_vec()).map_err(gen_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("vigil-{}", role.name()));
    dn.push(DnType::OrganizationalUnitName, role.name());
    params.distinguished_name = dn;
    let uri = format!("{ROLE_PREFIX}{}", role.name()).try_into().map_err(gen_err)?;
    params.subject_alt_names.push(SanType::URI(uri));
    if let Some(node) = node {
        let uri = format!("{}{node}", node::NODE_PREFIX).try_into().map_err(gen_err)?;
        params.subject_alt_names.push(SanType::URI(uri));
    }
    // Relays and sensors also serve (a sensor its own Tetragon API off
    // loopback); clients only connect.
    if !matches!(role, Role::Client | Role::Admin) {
        for ip in ["127.0.0.1", "::1"] {
            params
                .subject_alt_names
                .push(SanType::IpAddress(ip.parse().map_err(|_| gen_err(rcgen::Error::CouldNotParseCertificate))?));
        }
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = match role {
        Role::Relay | Role::Sensor => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        Role::Client | Role::Admin => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    validity(&mut params, not_before, days);
    let key = KeyPair::generate().map_err(gen_err)?;
    let cert = params.signed_by(&key, issuer).map_err(gen_err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A leaf signed by an existing CA (PEM certificate and key), valid from
/// `start_days` days from now (negative: in the past) for `days` days.
pub fn leaf_from_ca(
    ca_pem: &str,
    ca_key_pem: &str,
    role: Role,
    dns: &[String],
    start_days: i64,
    days: i64,
) -> Result<(String, String), TlsError> {
    let gen_err = |error| TlsError::Generate { what: "CA", error };
    let key = KeyPair::from_pem(ca_key_pem).map_err(gen_err)?;
    let issuer = Issuer::from_ca_cert_pem(ca_pem, key).map_err(gen_err)?;
    let start = time::OffsetDateTime::now_utc() + time::Duration::days(start_days);
    leaf(role, dns, &issuer, start, days)
}

/// A CA's name, distinct per CA: with one shared name, a certificate from
/// another cluster's CA would look issued by ours and fail as a bad
/// signature instead of an unknown CA, and TLS clients that pick their
/// certificate by the server's acceptable CA names (Go's) would offer it.
fn ca_name(key: &KeyPair) -> String {
    // An EC public key's raw form is 0x04 || X || Y; X is random.
    let id: String = key.public_key_raw().iter().skip(1).take(6).map(|b| format!("{b:02x}")).collect();
    format!("vigil CA {id}")
}

/// A new CA: (certificate PEM, key PEM, issuer for signing).
pub fn ca(days: i64) -> Result<(String, String, Issuer<'static, KeyPair>), TlsError> {
    let gen_err = |error| TlsError::Generate { what: "CA", error };
    let key = KeyPair::generate().map_err(gen_err)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, ca_name(&key));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut params, time::OffsetDateTime::now_utc() - time::Duration::hours(1), days);
    let cert = params.self_signed(&key).map_err(gen_err)?;
    let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
    Ok((cert_pem, key_pem, Issuer::new(params, key)))
}

/// A CA and relay, any-node sensor and client certificates in `out`, for
/// tests and benchmarks. Returns the files written.
pub fn generate(out: &Path, relay_dns: &[String], days: i64) -> Result<Vec<PathBuf>, TlsError> {
    let plan = Plan { relay_dns: relay_dns.to_vec(), any_node_sensor: true, days, ..Plan::default() };
    generate_for(out, &plan)
}

/// What `vigil certs generate` writes.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub relay_dns: Vec<String>,
    /// Names (and addresses) sensors are reached by when they serve their
    /// API off loopback with mTLS.
    pub sensor_dns: Vec<String>,
    /// One sensor credential per node, each bound to its node.
    pub sensor_nodes: Vec<String>,
    /// Also a sensor credential valid for any node (`sensor.pem`).
    pub any_node_sensor: bool,
    pub days: i64,
}

fn with_localhost(names: &[String]) -> Vec<String> {
    let mut names = names.to_vec();
    if !names.iter().any(|d| d == "localhost") {
        names.push("localhost".into());
    }
    names
}

/// `vigil certs generate`: a CA, relay, client and admin certificates, and the
/// sensor credentials the plan asks for: `nodes/<name>/` per node (a
/// ready `--tls-dir`: ca.pem, sensor.pem, sensor-key.pem) and, only when
/// asked, an any-node `sensor.pem`. Returns the files written.
pub fn generate_for(out: &Path, plan: &Plan) -> Result<Vec<PathBuf>, TlsError> {
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    let (ca_pem, ca_key, issuer) = ca(plan.days)?;
    let mut files = vec![(out.join(CertFiles::CA), ca_pem.clone()), (out.join(CertFiles::CA_KEY), ca_key)];
    let now = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    for role in [Role::Relay, Role::Client, Role::Admin] {
        let names = if role == Role::Relay { with_localhost(&plan.relay_dns) } else { vec![] };
        let (cert, key) = leaf(role, &names, &issuer, now, plan.days)?;
        files.push((out.join(CertFiles::cert(role)), cert));
        files.push((out.join(CertFiles::key(role)), key));
    }
    let sensor_dns = with_localhost(&plan.sensor_dns);
    if plan.any_node_sensor {
        let (cert, key) = sensor_leaf(node::ANY_NODE, &sensor_dns, &issuer, now, plan.days)?;
        files.push((out.join(CertFiles::cert(Role::Sensor)), cert));
        files.push((out.join(CertFiles::key(Role::Sensor)), key));
    }
    for name in &plan.sensor_nodes {
        files.extend(node_credential(out, name, &ca_pem, &issuer, &sensor_dns, now, plan.days)?);
    }
    write_all(files)
}

/// `vigil certs sensor`: one more node's credential from the CA in `dir`
/// (ca.pem, ca-key.pem), into `dir/nodes/<node>/`.
pub fn issue_node(dir: &Path, node: &str, sensor_dns: &[String], days: i64) -> Result<Vec<PathBuf>, TlsError> {
    let ca_path = dir.join(CertFiles::CA);
    let key_path = dir.join(CertFiles::CA_KEY);
    let ca_pem = std::fs::read_to_string(&ca_path).map_err(io_err(&ca_path))?;
    let ca_key = std::fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
    let gen_err = |error| TlsError::Generate { what: "CA", error };
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, KeyPair::from_pem(&ca_key).map_err(gen_err)?).map_err(gen_err)?;
    let now = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    write_all(node_credential(dir, node, &ca_pem, &issuer, &with_localhost(sensor_dns), now, days)?)
}

/// The files of one node's credential directory.
fn node_credential(
    out: &Path,
    node: &str,
    ca_pem: &str,
    issuer: &Issuer<'_, KeyPair>,
    sensor_dns: &[String],
    now: time::OffsetDateTime,
    days: i64,
) -> Result<Vec<(PathBuf, String)>, TlsError> {
    node::check_node_name(node).map_err(TlsError::NodeName)?;
    let dir = out.join("nodes").join(node);
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let (cert, key) = sensor_leaf(node, sensor_dns, issuer, now, days)?;
    Ok(vec![
        (dir.join(CertFiles::CA), ca_pem.to_owned()),
        (dir.join(CertFiles::cert(Role::Sensor)), cert),
        (dir.join(CertFiles::key(Role::Sensor)), key),
    ])
}

fn write_all(files: Vec<(PathBuf, String)>) -> Result<Vec<PathBuf>, TlsError> {
    let mut written = Vec::new();
    for (path, pem) in files {
        std::fs::write(&path, pem).map_err(io_err(&path))?;
        if path.to_string_lossy().ends_with("-key.pem") {
            set_private(&path)?;
        }
        written.push(path);
    }
    Ok(written)
}

fn set_private(path: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err(path))
}

/// The role a DER certificate claims, if any.
pub fn role_of(der: &[u8]) -> Option<Role> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(uri) => uri.strip_prefix(ROLE_PREFIX).and_then(Role::from_name),
        _ => None,
    })
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    if !String::from_utf8_lossy(&bytes).contains("-----BEGIN") {
        return Err(TlsError::Empty { path: path.display().to_string() });
    }
    Ok(bytes)
}

/// Server settings: our identity and the CA that client certificates must
/// chain to (mTLS: a client without a valid certificate is refused), as a
/// rustls configuration the serving layer swaps in without closing its
/// listener. ALPN offers h2 (grpc-go 1.67+ requires it), and the CA's name
/// is sent as a hint (Go's client sends no certificate without it).
pub fn server_config(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cert_pem = read(cert)?;
    check_validity(cert, &cert_pem)?;
    let unusable = |reason: String| TlsError::Unusable {
        cert: cert.display().to_string(),
        key: key.display().to_string(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Unparsable { path: cert.display().to_string(), reason: e.to_string() })?;
    let key_der = PrivateKeyDer::from_pem_slice(&read(key)?)
        .map_err(|e| TlsError::Unparsable { path: key.display().to_string(), reason: e.to_string() })?;
    let mut roots = rustls::RootCertStore::empty();
    for ca_cert in CertificateDer::pem_slice_iter(&read(ca)?) {
        let ca_cert =
            ca_cert.map_err(|e| TlsError::Unparsable { path: ca.display().to_string(), reason: e.to_string() })?;
        roots
            .add(ca_cert)
            .map_err(|e| TlsError::Unparsable { path: ca.display().to_string(), reason: e.to_string() })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::Unparsable { path: ca.display().to_string(), reason: e.to_string() })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| unusable(e.to_string()))?
        .with_client_cert_verifier(verifier)
        // Checks that the key belongs to the certificate.
        .with_single_cert(chain, key_der)
        .map_err(|e| unusable(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Client settings: the CA the server must chain to, our identity, and the
/// name to check the server certificate against.
pub fn client_config(ca: &Path, cert: &Path, key: &Path, server_name: &str) -> Result<ClientTlsConfig, TlsError> {
    let cert_pem = read(cert)?;
    check_validity(cert, &cert_pem)?;
    Ok(ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(ca)?))
        .identity(Identity::from_pem(cert_pem, read(key)?))
        .domain_name(server_name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(pem: &str) -> Vec<u8> {
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap().1.contents
    }

    #[test]
    fn expired_and_future_certificates_are_named() {
        let (ca_pem, ca_key, _) = ca(10).unwrap();
        let (old, _) = leaf_from_ca(&ca_pem, &ca_key, Role::Client, &[], -10, 9).unwrap();
        let e = check_validity(Path::new("old.pem"), old.as_bytes()).unwrap_err().to_string();
        assert!(e.starts_with("certificate old.pem expired at"), "{e}");
        let (future, _) = leaf_from_ca(&ca_pem, &ca_key, Role::Client, &[], 2, 9).unwrap();
        let e = check_validity(Path::new("new.pem"), future.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("is not valid before"), "{e}");
        let (ok, _) = leaf_from_ca(&ca_pem, &ca_key, Role::Client, &[], -1, 9).unwrap();
        assert!(check_validity(Path::new("ok.pem"), ok.as_bytes()).is_ok());
    }

    #[test]
    fn generated_certificates_carry_their_roles() {
        let dir = std::env::temp_dir().join(format!("vigil-certs-{}", std::process::id()));
        let files = generate(&dir, &["relay.local".into()], 30).unwrap();
        assert_eq!(files.len(), 10);
        let sensor = std::fs::read_to_string(dir.join("sensor.pem")).unwrap();
        assert_eq!(node::binding_of(&der(&sensor)), node::NodeBinding::AnyNode, "generate() is for tests: any node");
        for role in [Role::Relay, Role::Sensor, Role::Client, Role::Admin] {
            let pem = std::fs::read_to_string(dir.join(CertFiles::cert(role))).unwrap();
            assert_eq!(role_of(&der(&pem)), Some(role));
        }
        let ca = std::fs::read_to_string(dir.join(CertFiles::CA)).unwrap();
        assert_eq!(role_of(&der(&ca)), None);
        let (_, other_key, _) = super::ca(1).unwrap();
        let name = |pem: &str| {
            let der = der(pem);
            x509_parser::parse_x509_certificate(&der).unwrap().1.subject().to_string()
        };
        let key = KeyPair::from_pem(&other_key).unwrap();
        assert!(name(&ca).starts_with("CN=vigil CA "), "{}", name(&ca));
        assert_ne!(name(&ca), format!("CN={}", ca_name(&key)), "each CA has its own name");
        let relay = std::fs::read_to_string(dir.join("relay.pem")).unwrap();
        let relay_der = der(&relay);
        let (_, cert) = x509_parser::parse_x509_certificate(&relay_der).unwrap();
        let names = format!("{:?}", cert.subject_alternative_name().unwrap().unwrap().value.general_names);
        assert!(names.contains("relay.local") && names.contains("localhost"), "{names}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("sensor-key.pem")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn per_node_credentials_are_bound_and_any_node_only_on_request() {
        let dir = std::env::temp_dir().join(format!("vigil-node-certs-{}", std::process::id()));
        let plan = Plan { sensor_nodes: vec!["node-a".into()], days: 30, ..Plan::default() };
        generate_for(&dir, &plan).unwrap();
        assert!(!dir.join("sensor.pem").exists(), "no any-node credential unless asked");
        let a = std::fs::read_to_string(dir.join("nodes/node-a/sensor.pem")).unwrap();
        assert_eq!(node::binding_of(&der(&a)), node::NodeBinding::Node("node-a".into()));
        assert_eq!(role_of(&der(&a)), Some(Role::Sensor));
        assert!(dir.join("nodes/node-a/ca.pem").exists() && dir.join("nodes/node-a/sensor-key.pem").exists());
        // A node added later, from the same CA.
        issue_node(&dir, "node-b", &[], 30).unwrap();
        let b = std::fs::read_to_string(dir.join("nodes/node-b/sensor.pem")).unwrap();
        assert_eq!(node::binding_of(&der(&b)), node::NodeBinding::Node("node-b".into()));
        let e = issue_node(&dir, "../escape", &[], 30).unwrap_err().to_string();
        assert!(e.contains("invalid node name"), "{e}");
        let client = std::fs::read_to_string(dir.join("client.pem")).unwrap();
        assert_eq!(node::binding_of(&der(&client)), node::NodeBinding::Unbound);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
