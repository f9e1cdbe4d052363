//! Where the relay keeps the policies it manages: an embedded database
//! (redb) in one file, so they survive restarts, or in memory when no file
//! is given. Every change is one transaction holding the policy and the
//! set's new generation together, so a crash leaves the old set or the new
//! one, never half of a change.

use std::path::Path;

use prost::Message;
use proto::vigil::relay::v1::ManagedPolicy;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// Policy name → the `ManagedPolicy` message, encoded.
const POLICIES: TableDefinition<&str, &[u8]> = TableDefinition::new("policies");
/// `generation` → the policy set's generation.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const GENERATION: &str = "generation";

/// Why the store failed: the file named, the cause kept.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("policy store {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("policy store: {0}")]
    Io(String),
    #[error("policy store: entry {name:?} does not decode: {reason}")]
    Corrupt { name: String, reason: String },
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

/// The policies and the generation, as they were last committed.
#[derive(Debug, Default)]
pub struct Contents {
    pub generation: u64,
    pub policies: Vec<ManagedPolicy>,
}

pub struct Store {
    db: Database,
}

impl Store {
    /// Opens (or creates) the store in `path`; `None` keeps it in memory.
    pub fn open(path: Option<&Path>) -> Result<Store, StoreError> {
        let db = match path {
            Some(path) => Database::create(path)
                .map_err(|e| StoreError::Open { path: path.display().to_string(), reason: e.to_string() })?,
            None => Database::builder().create_with_backend(redb::backends::InMemoryBackend::new()).map_err(io)?,
        };
        Ok(Store { db })
    }

    /// Everything committed.
    pub fn load(&self) -> Result<Contents, StoreError> {
        let txn = self.db.begin_read().map_err(io)?;
        let generation = match txn.open_table(META) {
            Ok(meta) => meta.get(GENERATION).map_err(io)?.map_or(0, |g| g.value()),
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Contents::default()),
            Err(e) => return Err(io(e)),
        };
        let mut policies = Vec::new();
        match txn.open_table(POLICIES) {
            Ok(table) => {
                for entry in table.iter().map_err(io)? {
                    let (name, bytes) = entry.map_err(io)?;
                    let policy = ManagedPolicy::decode(bytes.value())
                        .map_err(|e| StoreError::Corrupt { name: name.value().to_owned(), reason: e.to_string() })?;
                    policies.push(policy);
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(io(e)),
        }
        Ok(Contents { generation, policies })
    }

    /// Puts `policy` (replacing one of its name) and sets the generation.
    pub fn put(&self, policy: &ManagedPolicy, generation: u64) -> Result<(), StoreError> {
        self.write(generation, |table| table.insert(policy.name.as_str(), policy.encode_to_vec().as_slice()).map(drop))
    }

    /// Removes the policy `name` and sets the generation.
    pub fn remove(&self, name: &str, generation: u64) -> Result<(), StoreError> {
        self.write(generation, |table| table.remove(name).map(drop))
    }

    fn write(
        &self,
        generation: u64,
        change: impl FnOnce(&mut redb::Table<&str, &[u8]>) -> Result<(), redb::StorageError>,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(io)?;
        {
            let mut table = txn.open_table(POLICIES).map_err(io)?;
            change(&mut table).map_err(io)?;
            let mut meta = txn.open_table(META).map_err(io)?;
            meta.insert(GENERATION, generation).map_err(io)?;
        }
        txn.commit().map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, enabled: bool) -> ManagedPolicy {
        ManagedPolicy { name: name.into(), yaml: format!("name: {name}"), enabled, monitor: false }
    }

    #[test]
    fn what_is_committed_survives_reopening() {
        let dir = std::env::temp_dir().join(format!("vigil-policy-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("policies.redb");
        {
            let store = Store::open(Some(&path)).unwrap();
            assert_eq!(store.load().unwrap().generation, 0, "a new store is empty");
            store.put(&policy("a", true), 1).unwrap();
            store.put(&policy("b", true), 2).unwrap();
            store.put(&policy("a", false), 3).unwrap();
            store.remove("b", 4).unwrap();
        }
        let contents = Store::open(Some(&path)).unwrap().load().unwrap();
        assert_eq!(contents.generation, 4);
        assert_eq!(contents.policies, vec![policy("a", false)]);
        // Another process holding the file is named, not waited for.
        let _held = Store::open(Some(&path)).unwrap();
        let e = Store::open(Some(&path)).err().unwrap().to_string();
        assert!(e.starts_with(&format!("policy store {}: ", path.display())), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn in_memory_without_a_file() {
        let store = Store::open(None).unwrap();
        store.put(&policy("a", true), 7).unwrap();
        let contents = store.load().unwrap();
        assert_eq!((contents.generation, contents.policies.len()), (7, 1));
    }
}
