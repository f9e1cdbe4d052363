//! The relay's client listener as a TLS stack other than rustls sees it,
//! through OpenSSL's `s_client`: the properties Go's crypto/tls (the real
//! `tetra --tls-*`) and grpc-go depend on. ALPN must settle on h2 (grpc-go
//! 1.67+ refuses a connection without it); the CA must be among the
//! acceptable client-certificate CA names (Go sends no certificate when its
//! certificate's issuer is not); ECDSA with SHA-256, what our certificates
//! use, must be among the requested signature algorithms; the server
//! certificate must verify for the name given to `--relay-dns`. A client
//! without a certificate is refused. Loopback only, no root.

#[path = "support/local.rs"]
mod local;

use std::process::{Command, Stdio};
use std::time::Duration;

use local::Relay;

fn s_client(relay: &Relay, with_client_cert: bool) -> String {
    let dir = &relay.dir;
    let port = relay.clients.to_string().rsplit_once(':').map(|(_, p)| p.to_owned()).expect("port");
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-servername", "relay.local"])
        .args(["-verify_hostname", "relay.local", "-verify_return_error", "-alpn", "h2"])
        .arg("-CAfile")
        .arg(dir.join("ca.pem"));
    if with_client_cert {
        cmd.arg("-cert").arg(dir.join("client.pem")).arg("-key").arg(dir.join("client-key.pem"));
    }
    // An HTTP/2 preface, so a refused client certificate shows in the reply.
    let out = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
                std::thread::sleep(Duration::from_millis(500));
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
    let relay = Relay::spawn(dir, &[]);
    assert!(relay.serving_within(Duration::from_secs(20)).await, "relay did not start");

    let text = s_client(&relay, true);
    let section = |heading: &str| {
        text.split_once(heading).map(|(_, rest)| rest.lines().nth(1).unwrap_or_default().trim().to_owned())
    };
    assert!(text.contains("ALPN protocol: h2"), "{text}");
    assert_eq!(section("Acceptable client certificate CA names").as_deref(), Some("CN = vigil CA"), "{text}");
    let sigalgs = text.lines().find_map(|l| l.strip_prefix("Requested Signature Algorithms: ")).unwrap_or_default();
    assert!(sigalgs.split(':').any(|a| a == "ECDSA+SHA256"), "{text}");
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    assert!(text.contains("subject=CN = vigil-relay, OU = relay"), "{text}");

    let refused = s_client(&relay, false);
    assert!(refused.contains("alert certificate required") || refused.contains("alert handshake failure"), "{refused}");
}
