//! Vigil's mTLS. Every certificate names a role (relay, sensor, client) in a
//! URI subject-alternative name `urn:vigil:role:<role>`; the relay takes
//! ingest only from sensor certificates and serves queries only to client
//! certificates, and says which rule a refused peer broke.
#![forbid(unsafe_code)]

pub mod auth;
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
    Client,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Relay => "relay",
            Role::Sensor => "sensor",
            Role::Client => "client",
        }
    }

    fn from_name(s: &str) -> Option<Role> {
        match s {
            "relay" => Some(Role::Relay),
            "sensor" => Some(Role::Sensor),
            "client" => Some(Role::Client),
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
/// for `days` days, with `dns` names (servers) in its SANs.
pub fn leaf(
    role: Role,
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
    // Relays and sensors also serve (a sensor its own Tetragon API off
    // loopback); clients only connect.
    if role != Role::Client {
        for ip in ["127.0.0.1", "::1"] {
            params
                .subject_alt_names
                .push(SanType::IpAddress(ip.parse().map_err(|_| gen_err(rcgen::Error::CouldNotParseCertificate))?));
        }
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = match role {
        Role::Relay | Role::Sensor => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        Role::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
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

/// `vigil certs generate`: a CA and relay, sensor and client certificates
/// in `out`. Returns the files written.
pub fn generate(out: &Path, relay_dns: &[String], days: i64) -> Result<Vec<PathBuf>, TlsError> {
    generate_for(out, relay_dns, &[], days)
}

/// `generate`, with `sensor_dns` names (and addresses) the sensor
/// certificate is valid for when a sensor serves its API off loopback.
pub fn generate_for(
    out: &Path,
    relay_dns: &[String],
    sensor_dns: &[String],
    days: i64,
) -> Result<Vec<PathBuf>, TlsError> {
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    let (ca_pem, ca_key, issuer) = ca(days)?;
    let mut files = vec![(out.join(CertFiles::CA), ca_pem), (out.join(CertFiles::CA_KEY), ca_key)];
    let with_localhost = |names: &[String]| {
        let mut names = names.to_vec();
        if !names.iter().any(|d| d == "localhost") {
            names.push("localhost".into());
        }
        names
    };
    let now = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    for role in [Role::Relay, Role::Sensor, Role::Client] {
        let names = match role {
            Role::Relay => with_localhost(relay_dns),
            Role::Sensor => with_localhost(sensor_dns),
            Role::Client => vec![],
        };
        let (cert, key) = leaf(role, &names, &issuer, now, days)?;
        files.push((out.join(CertFiles::cert(role)), cert));
        files.push((out.join(CertFiles::key(role)), key));
    }
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
        assert_eq!(files.len(), 8);
        for role in [Role::Relay, Role::Sensor, Role::Client] {
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
}
