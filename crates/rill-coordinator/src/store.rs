//! Where dataflow records and join tokens survive a coordinator restart: a
//! redb file, or nothing (`--store memory`, for tests and throwaway setups).

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::dataflows::DataflowRecord;
use crate::tokens::TokenRecord;

/// uuid -> the record as JSON.
const DATAFLOWS: TableDefinition<&str, &str> = TableDefinition::new("dataflows");
/// token name -> the record as JSON (a hash, never the secret).
const TOKENS: TableDefinition<&str, &str> = TableDefinition::new("tokens");

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the coordinator store {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error(
        "the coordinator store {path} is in use by another coordinator; stop it, or give this one its own file with `--store redb:PATH`"
    )]
    InUse { path: PathBuf },
    #[error("coordinator store: {0}")]
    Io(String),
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

/// The coordinator's persistent state.
pub enum Store {
    Memory,
    Redb(Database),
}

impl Store {
    /// Opens (or creates) the redb file.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Open { path: path.to_owned(), reason: e.to_string() })?;
        }
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse { path: path.to_owned() },
            e => StoreError::Open { path: path.to_owned(), reason: e.to_string() },
        })?;
        let txn = db.begin_write().map_err(io)?;
        txn.open_table(DATAFLOWS).map_err(io)?;
        txn.open_table(TOKENS).map_err(io)?;
        txn.commit().map_err(io)?;
        Ok(Store::Redb(db))
    }

    /// Writes records and removes others in one transaction (durably: one fsync).
    pub fn write(
        &self,
        records: &[&DataflowRecord],
        deletes: &[&str],
        tokens: &[&TokenRecord],
    ) -> Result<(), StoreError> {
        let Store::Redb(db) = self else { return Ok(()) };
        let txn = db.begin_write().map_err(io)?;
        {
            let mut table = txn.open_table(TOKENS).map_err(io)?;
            for token in tokens {
                let json = serde_json::to_string(token).map_err(io)?;
                table.insert(token.name.as_str(), json.as_str()).map_err(io)?;
            }
        }
        {
            let mut table = txn.open_table(DATAFLOWS).map_err(io)?;
            for record in records {
                let json = serde_json::to_string(record).map_err(io)?;
                table.insert(record.uuid.as_str(), json.as_str()).map_err(io)?;
            }
            for uuid in deletes {
                table.remove(*uuid).map_err(io)?;
            }
        }
        txn.commit().map_err(io)
    }

    /// Every record, in start order.
    pub fn load(&self) -> Result<Vec<DataflowRecord>, StoreError> {
        let mut records: Vec<DataflowRecord> = self.load_table(DATAFLOWS, "dataflow")?;
        records.sort_by_key(|r| r.started_ms);
        Ok(records)
    }

    /// Every stored join token.
    pub fn load_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.load_table(TOKENS, "token")
    }

    /// Every value of `table`, parsed from JSON; an unreadable one is
    /// skipped with a line that names it a `what`.
    fn load_table<T: serde::de::DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &str>,
        what: &str,
    ) -> Result<Vec<T>, StoreError> {
        let Store::Redb(db) = self else { return Ok(Vec::new()) };
        let txn = db.begin_read().map_err(io)?;
        let table = txn.open_table(table).map_err(io)?;
        let mut values = Vec::new();
        for entry in table.iter().map_err(io)? {
            let (_, value) = entry.map_err(io)?;
            match serde_json::from_str::<T>(value.value()) {
                Ok(parsed) => values.push(parsed),
                Err(e) => eprintln!("rill coordinator: skipping an unreadable stored {what}: {e}"),
            }
        }
        Ok(values)
    }
}
