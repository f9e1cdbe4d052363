//! The relay's client listener as a TLS stack other than rustls sees it,
//! through OpenSSL's `s_client`: the properties Go's crypto/tls (the real
//! `tetra --tls-*`) and grpc-go depend on. ALPN must settle on h2 (grpc-go
//! 1.67+ refuses a connection without it); the CA must be among the
//! acceptable client-certificate CA names (Go sends no certificate when its
//! certificate's issuer is not); ECDSA with SHA-256, what our certificates
//! use, must be among the requested signature algorithms; the server
//! certificate must verify for the name given to `--relay-dns`. A client
//! without a certificate is refused. Loopback only, no root.
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

#[path = "support/local.rs"]
mod local;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use local::Relay;

/// `s_client` against the relay, with a client certificate and key if given.
///
/// Accepted: stdin is closed at once, and s_client prints the session and
/// ends. Refused: the certificate goes with the client's second flight
/// (TLS 1.3), so s_client sends an HTTP/2 preface and, with `-ign_eof`,
/// reads until the relay's alert closes the connection. `timeout` bounds a
/// relay that wrongly accepts.
fn s_client(relay: &Relay, client: Option<(&Path, &Path)>, refused: bool) -> String {
    let dir = &relay.dir;
    let port = relay.clients().to_string().rsplit_once(':').map(|(_, p)| p.to_owned()).expect("port");
    let mut cmd = Command::new("timeout");
    cmd.args(["30", "openssl", "s_client", "-connect", &format!("127.0.0.1:{port}"), "-servername", "relay.local"])
        .args(["-verify_hostname", "relay.local", "-verify_return_error", "-alpn", "h2"])
        .arg("-CAfile")
        .arg(dir.join("ca.pem"));
    if let Some((cert, key)) = client {
        cmd.arg("-cert").arg(cert).arg("-key").arg(key);
    }
    if refused {
        cmd.arg("-ign_eof");
    }
    let out = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            if let Some(mut stdin) = child.stdin.take()
                && refused
            {
                let _ = stdin.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
            }
            child.wait_with_output()
        })
        .expect("run openssl s_client (Debian package openssl)");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_gives_go_clients_what_they_need() {
    let dir = std::env::temp_dir().join(format!("vigil-relay-foreign-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    tls::generate(&dir, &["relay.local".into()], 2).expect("certificates");
    let relay = Relay::spawn(dir.clone(), &["--log-level", "info"]);
    assert!(relay.serving_within(Duration::from_secs(20)).await, "relay did not start");

    let text = s_client(&relay, Some((&dir.join("client.pem"), &dir.join("client-key.pem"))), false);
    let section = |heading: &str| {
        text.split_once(heading).map(|(_, rest)| rest.lines().nth(1).unwrap_or_default().trim().to_owned())
    };
    assert!(text.contains("ALPN protocol: h2"), "{text}");
    let ca_name = section("Acceptable client certificate CA names").unwrap_or_default();
    assert!(ca_name.starts_with("CN = vigil CA "), "{text}");
    assert!(text.contains(&format!("issuer={ca_name}")), "the relay's issuer is the CA it names: {text}");
    let sigalgs = text.lines().find_map(|l| l.strip_prefix("Requested Signature Algorithms: ")).unwrap_or_default();
    assert!(sigalgs.split(':').any(|a| a == "ECDSA+SHA256"), "{text}");
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    assert!(text.contains("subject=CN = vigil-relay, OU = relay"), "{text}");

    // Refusals: the alert names the reason, and the relay logs it.
    let refused = s_client(&relay, None, true);
    assert!(refused.contains("alert certificate required"), "{refused}");
    let ca_pem = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
    let ca_key = std::fs::read_to_string(dir.join("ca-key.pem")).unwrap();
    let leaf = |name: &str, start_days: i64, days: i64| -> (PathBuf, PathBuf) {
        let (cert, key) = tls::leaf_from_ca(&ca_pem, &ca_key, tls::Role::Client, &[], start_days, days).unwrap();
        let (c, k) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}-key.pem")));
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        (c, k)
    };
    let (expired, expired_key) = leaf("expired", -10, 9);
    let refused = s_client(&relay, Some((&expired, &expired_key)), true);
    assert!(refused.contains("alert certificate expired"), "{refused}");
    let (future, future_key) = leaf("future", 5, 30);
    let refused = s_client(&relay, Some((&future, &future_key)), true);
    assert!(refused.contains("alert certificate expired"), "TLS has one alert for both: {refused}");
    let other = dir.join("other-ca");
    tls::generate(&other, &[], 2).unwrap();
    let refused = s_client(&relay, Some((&other.join("client.pem"), &other.join("client-key.pem"))), true);
    assert!(refused.contains("alert unknown ca"), "{refused}");

    let log = relay.stop();
    let refusals: Vec<&str> = log.lines().filter(|l| l.contains("TLS handshake refused")).collect();
    for reason in ["expired", "not valid", "UnknownIssuer", "no certificate"] {
        assert!(refusals.iter().any(|l| l.contains(reason)), "no refusal logged for {reason:?}:\n{log}");
    }
}
