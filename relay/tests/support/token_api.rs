//! A Kubernetes API test double for TokenReview: `POST
//! /apis/authentication.k8s.io/v1/tokenreviews` answered as the API server
//! does (TokenReview JSON with `status.authenticated`, `status.user` with the
//! bound pod's node in `extra`, `status.audiences`), for a table of tokens.
//! Anything else is 404. It also writes a kubeconfig pointing at itself.
#![allow(dead_code, reason = "each test file uses part of it")]

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};

/// Who a token belongs to: (service account user, node).
pub type Owner = (String, String);

#[derive(Clone, Default)]
pub struct TokenApi {
    tokens: Arc<Mutex<HashMap<String, Owner>>>,
    /// Audiences and the caller's own bearer token, per review asked.
    pub reviews: Arc<Mutex<Vec<(Value, String)>>>,
    pub port: u16,
}

pub const RELAY_CREDENTIAL: &str = "relay-sa-token";
pub const SENSOR_ACCOUNT: &str = "system:serviceaccount:vigil:vigil-sensor";

impl TokenApi {
    pub async fn start() -> TokenApi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = TokenApi { port: listener.local_addr().unwrap().port(), ..Default::default() };
        let served = api.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let api = served.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let api = api.clone();
                        async move { Ok::<_, Infallible>(api.answer(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        api
    }

    /// `token` belongs to `account` in a pod on `node`.
    pub fn issue(&self, token: &str, account: &str, node: &str) {
        self.tokens.lock().unwrap().insert(token.into(), (account.into(), node.into()));
    }

    /// A kubeconfig for this server, authenticating as the relay.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\nclusters:\n- name: test\n  cluster:\n    server: \
             http://127.0.0.1:{}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: relay\nusers:\n- \
             name: relay\n  user:\n    token: {RELAY_CREDENTIAL}\n",
            self.port
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    async fn answer(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        if req.method() != hyper::Method::POST || req.uri().path() != "/apis/authentication.k8s.io/v1/tokenreviews" {
            return Response::builder().status(StatusCode::NOT_FOUND).body(Full::new(Bytes::new())).unwrap();
        }
        let caller = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default()
            .to_owned();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let review: Value = serde_json::from_slice(&body).unwrap();
        let token = review["spec"]["token"].as_str().unwrap_or_default().to_owned();
        let audiences = review["spec"]["audiences"].clone();
        self.reviews.lock().unwrap().push((audiences.clone(), caller));
        let status = match self.tokens.lock().unwrap().get(&token) {
            Some((account, node)) => json!({
                "authenticated": true,
                "user": {
                    "username": account,
                    "uid": "0d7a2c5e-1111-2222-3333-444455556666",
                    "groups": ["system:serviceaccounts", "system:serviceaccounts:vigil", "system:authenticated"],
                    "extra": {
                        "authentication.kubernetes.io/node-name": [node],
                        "authentication.kubernetes.io/pod-name": [format!("vigil-sensor-{node}")],
                    },
                },
                "audiences": audiences,
            }),
            None => {
                json!({"authenticated": false, "error": "[invalid bearer token, service account token is not valid]"})
            }
        };
        let out = json!({
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": null},
            "spec": review["spec"],
            "status": status,
        });
        Response::builder()
            .status(StatusCode::CREATED)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(out.to_string())))
            .unwrap()
    }
}
