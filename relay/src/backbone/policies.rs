//! Tracing policies on the backbone: a JetStream key-value bucket holds
//! the managed set, one key per policy (its name) and the encoded
//! `ManagedPolicy` as value. Any relay on the backbone changes it (with
//! the revision it last saw, so two changes of one policy at once cannot
//! both win); every relay follows it, so each ingest relay sends its
//! sensors the same set, and a policy added at a query relay reaches every
//! node. The bucket's revision numbers are the set's generations.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{kv, stream};
use bytes::Bytes;
use prost::Message as _;
use proto::vigil::relay::v1::ManagedPolicy;
use tokio_stream::StreamExt as _;

use super::{Backbone, BackboneError};
use crate::policies::{BucketChange, RelayPolicies};

/// The bucket's name (`--backbone-policy-bucket`).
pub const DEFAULT_BUCKET: &str = "VIGIL_POLICIES";

/// A change to write, with the revision it was worked out against.
#[derive(Debug)]
pub enum Write {
    Create(ManagedPolicy),
    Update(ManagedPolicy, u64),
    Delete(String, u64),
}

/// Why a write did not take.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The key is there (a create) or is not as last seen (an update or a
    /// delete): another relay changed it meanwhile.
    #[error("changed meanwhile")]
    Conflict,
    #[error("the backbone did not store the change: {0}")]
    Unavailable(String),
}

/// The bucket, as one relay uses it.
#[derive(Clone)]
pub struct PolicyBucket {
    kv: kv::Store,
    name: String,
}

static WATCH_LOG: std::sync::LazyLock<serving::log_limit::LogLimit> =
    std::sync::LazyLock::new(|| serving::log_limit::LogLimit::new(Duration::from_secs(10)));

impl Backbone {
    /// The policy bucket, created (replicated as the event stream is) if
    /// missing.
    pub async fn policy_bucket(&self) -> Result<PolicyBucket, BackboneError> {
        let name = self.settings.policy_bucket.clone();
        let failed =
            |e: &dyn std::fmt::Display| BackboneError::Stream { stream: format!("KV_{name}"), reason: e.to_string() };
        let kv = match self.js.get_key_value(&name).await {
            Ok(kv) => kv,
            Err(_) => {
                // The bucket's stream, made as the key-value API makes it
                // (`create_key_value` first reads the account's limits in
                // a form Debian's server, 2.9, does not answer in).
                let config = stream::Config {
                    name: format!("KV_{name}"),
                    description: Some("Vigil's tracing policies, one key per policy".into()),
                    subjects: vec![format!("$KV.{name}.>")],
                    max_messages_per_subject: 1,
                    max_message_size: -1,
                    storage: stream::StorageType::File,
                    num_replicas: self.settings.replicas,
                    allow_rollup: true,
                    deny_delete: true,
                    allow_direct: true,
                    discard: stream::DiscardPolicy::New,
                    ..Default::default()
                };
                if let Err(created) = self.js.create_stream(config).await {
                    // Another relay starting at once made it first, or
                    // the stream cannot be made: told apart below.
                    tracing::debug!(error = %created, "creating the policy bucket");
                }
                self.js.get_key_value(&name).await.map_err(|e| failed(&e))?
            }
        };
        Ok(PolicyBucket { kv, name })
    }
}

impl PolicyBucket {
    /// Writes `change`; its revision, once stored.
    pub async fn write(&self, change: Write) -> Result<u64, WriteError> {
        use kv::{CreateErrorKind, UpdateErrorKind};
        let unavailable = |e: &dyn std::fmt::Display| WriteError::Unavailable(e.to_string());
        match change {
            Write::Create(policy) => self.kv.create(&policy.name, encoded(&policy)).await.map_err(|e| match e.kind() {
                CreateErrorKind::AlreadyExists => WriteError::Conflict,
                _ => unavailable(&e),
            }),
            Write::Update(policy, revision) => {
                self.kv.update(&policy.name, encoded(&policy), revision).await.map_err(|e| match e.kind() {
                    UpdateErrorKind::WrongLastRevision => WriteError::Conflict,
                    _ => unavailable(&e),
                })
            }
            Write::Delete(name, revision) => {
                // (A delete's error is an update's.)
                self.kv.delete_expect_revision(&name, Some(revision)).await.map_err(|e| match e.kind() {
                    UpdateErrorKind::WrongLastRevision => WriteError::Conflict,
                    _ => unavailable(&e),
                })?;
                // The delete marker's revision: the bucket's last.
                self.last_revision().await.map_err(|e| unavailable(&e))
            }
        }
    }

    /// The bucket's newest revision (0 when it never held anything).
    pub async fn last_revision(&self) -> Result<u64, kv::StatusError> {
        Ok(self.kv.status().await?.info.state.last_sequence)
    }

    /// Follows the bucket into `policies` until `stop`: the current
    /// policies first, then every change. A watch that fails is made
    /// again, from the current values.
    pub async fn follow(self, policies: Arc<RelayPolicies>, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            match self.kv.watch_all_from_revision(1).await {
                Ok(mut changes) => loop {
                    let next = tokio::select! {
                        _ = stop.changed() => return,
                        next = changes.next() => next,
                    };
                    match next {
                        Some(Ok(entry)) => policies.apply(change_of(entry)),
                        Some(Err(e)) => {
                            if let Some(n) = WATCH_LOG.hit() {
                                tracing::warn!(bucket = %self.name, error = %e, times = n, "following the policy bucket failed; following it again");
                            }
                            break;
                        }
                        None => break,
                    }
                },
                Err(e) => {
                    if let Some(n) = WATCH_LOG.hit() {
                        tracing::warn!(bucket = %self.name, error = %e, times = n, "the policy bucket cannot be followed; trying again every second");
                    }
                }
            }
            tokio::select! {
                _ = stop.changed() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

fn encoded(policy: &ManagedPolicy) -> Bytes {
    Bytes::from(policy.encode_to_vec())
}

fn change_of(entry: kv::Entry) -> BucketChange {
    match entry.operation {
        kv::Operation::Put => BucketChange::Put { key: entry.key, value: entry.value, revision: entry.revision },
        kv::Operation::Delete | kv::Operation::Purge => {
            BucketChange::Delete { key: entry.key, revision: entry.revision }
        }
    }
}
