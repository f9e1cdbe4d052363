//! Node identity on Kubernetes (`--sensor-identity kubernetes`): a sensor
//! proves which node it runs on with its pod's projected service-account
//! token (audience `vigil-relay`), which only that pod holds and which the
//! kubelet rotates. The relay asks the API server (TokenReview) whose token
//! it is: the sensors' service account, and, in the bound pod's claims, the
//! node (`authentication.kubernetes.io/node-name`, Kubernetes 1.30+). The
//! hello's node name must be that node. One review per stream connect.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};

/// The user-info extra key under which a reviewed token names its node.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
/// Largest token taken from a peer.
pub const MAX_TOKEN_BYTES: usize = 16 << 10;

/// Why a token does not name a node. Never echoes the token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "no service-account token (authorization: Bearer …): this relay takes node names from tokens \
         (--sensor-identity kubernetes); give the sensor --relay-token-file"
    )]
    Missing,
    #[error("the token is {len} bytes; the limit is {MAX_TOKEN_BYTES}")]
    TooLong { len: usize },
    #[error("the API server did not authenticate the token{}", .0.as_deref().map(|e| format!(": {e}")).unwrap_or_default())]
    NotAuthenticated(Option<String>),
    #[error("the token is {got:?}'s, not the sensors' service account {want:?}")]
    WrongAccount { got: String, want: String },
    #[error("the token names no node (it must be a pod-bound token, Kubernetes 1.30 or later)")]
    NoNode,
    #[error("the token is for node {named:?}; the hello claims node {claimed:?}")]
    OtherNode { named: String, claimed: String },
    #[error("TokenReview failed: {0}")]
    Api(String),
}

/// Reviews tokens against the API server.
pub struct TokenReviewer {
    client: Client,
    audience: String,
    service_account: String,
}

impl TokenReviewer {
    pub fn new(client: Client, audience: String, service_account: String) -> Self {
        TokenReviewer { client, audience, service_account }
    }

    /// Checks that `token` is the sensors' and names `node`.
    pub async fn check(&self, token: Option<&str>, node: &str) -> Result<(), TokenError> {
        let token = token.ok_or(TokenError::Missing)?;
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLong { len: token.len() });
        }
        let review = TokenReview {
            spec: TokenReviewSpec { token: token.to_owned(), audiences: Some(vec![self.audience.clone()]) },
            ..Default::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| TokenError::Api(e.to_string()))?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(TokenError::NotAuthenticated(status.error));
        }
        let user = status.user.unwrap_or_default();
        let got = user.username.unwrap_or_default();
        if got != self.service_account {
            return Err(TokenError::WrongAccount { got, want: self.service_account.clone() });
        }
        let named = user
            .extra
            .as_ref()
            .and_then(|e| e.get(NODE_NAME_EXTRA))
            .and_then(|v| v.first())
            .ok_or(TokenError::NoNode)?;
        if named != node {
            return Err(TokenError::OtherNode { named: named.clone(), claimed: node.to_owned() });
        }
        Ok(())
    }
}

/// The bearer token of a request's `authorization` metadata.
pub fn bearer(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    let value = metadata.get("authorization")?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(|t| t.trim().to_owned())
}
