//! Dataflow records are written off the async executor: one thread owns the
//! store, takes every record queued since its last commit, keeps the newest
//! of each dataflow and writes them in one transaction (one fsync). Requests
//! that must not succeed unless their record is stored (start, stop) wait for
//! their write without blocking the executor; other changes (node statuses)
//! are queued, and a failure is logged.

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use tokio::sync::oneshot;

use crate::dataflows::DataflowRecord;
use crate::store::Store;
use crate::tokens::TokenRecord;

/// Changes queued for the writer. A full queue (the disk is far behind)
/// drops a queued-only change; the next change of that dataflow stores it.
pub const QUEUE: usize = 10_000;
/// Most records per transaction.
const BATCH: usize = 256;

enum Change {
    Save(Box<DataflowRecord>),
    SaveToken(Box<TokenRecord>),
    Delete(String),
    /// Nothing: answered once everything queued before it is written.
    Flush,
}

struct Job {
    change: Change,
    done: Option<oneshot::Sender<Result<(), String>>>,
}

/// The handle the coordinator writes through.
pub struct Persister {
    tx: SyncSender<Job>,
}

impl Persister {
    /// Starts the writer thread, which owns `store` from now on.
    pub fn start(store: Store) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new().name("rill-store".into()).spawn(move || write_batches(&store, &rx))?;
        Ok(Self { tx })
    }

    /// Queues a write; a failure is logged by the writer.
    pub fn save(&self, record: &DataflowRecord) {
        match self.tx.try_send(Job { change: Change::Save(Box::new(record.clone())), done: None }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                eprintln!("rill coordinator: the store is {QUEUE} changes behind; skipped one of {}", record.name)
            }
            Err(TrySendError::Disconnected(_)) => eprintln!("rill coordinator: the store writer is gone"),
        }
    }

    /// Queues the removal of pruned records.
    pub fn delete(&self, uuids: Vec<String>) {
        for uuid in uuids {
            if self.tx.try_send(Job { change: Change::Delete(uuid), done: None }).is_err() {
                eprintln!("rill coordinator: the store is behind; a pruned record stays stored");
            }
        }
    }

    /// Waits until everything queued so far is written (at shutdown).
    pub async fn flush(&self) {
        let (done, result) = oneshot::channel();
        if self.tx.send(Job { change: Change::Flush, done: Some(done) }).is_ok() {
            let _ = result.await;
        }
    }

    /// Stores a token record; resolves once it is stored (a token is never
    /// shown, nor a certificate issued, before its record is safe).
    pub fn save_token(&self, token: &TokenRecord) -> impl std::future::Future<Output = Result<(), String>> + use<> {
        self.confirmed(Change::SaveToken(Box::new(token.clone())))
    }

    /// Queues `record` now (so it is ordered with the changes queued before
    /// and after this call) and returns a future that resolves once it is
    /// stored; `Err` says why not.
    pub fn save_confirmed(
        &self,
        record: &DataflowRecord,
    ) -> impl std::future::Future<Output = Result<(), String>> + use<> {
        self.confirmed(Change::Save(Box::new(record.clone())))
    }

    fn confirmed(&self, change: Change) -> impl std::future::Future<Output = Result<(), String>> + use<> {
        let (done, result) = oneshot::channel();
        let job = Job { change, done: Some(done) };
        let queued = match self.tx.try_send(job) {
            Ok(()) => Ok(result),
            Err(TrySendError::Full(_)) => Err(format!("the store is {QUEUE} changes behind")),
            Err(TrySendError::Disconnected(_)) => Err("the store writer is gone".to_owned()),
        };
        async move {
            match queued {
                Ok(result) => result.await.unwrap_or_else(|_| Err("the store writer is gone".into())),
                Err(e) => Err(e),
            }
        }
    }
}

fn write_batches(store: &Store, rx: &Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < BATCH
            && let Ok(job) = rx.try_recv()
        {
            jobs.push(job);
        }
        // The last change of each dataflow wins.
        let mut newest: BTreeMap<&str, Option<&DataflowRecord>> = BTreeMap::new();
        let mut tokens: BTreeMap<&str, &TokenRecord> = BTreeMap::new();
        for job in &jobs {
            match &job.change {
                Change::Save(record) => {
                    newest.insert(record.uuid.as_str(), Some(&**record));
                }
                Change::SaveToken(token) => {
                    tokens.insert(token.name.as_str(), &**token);
                }
                Change::Delete(uuid) => {
                    newest.insert(uuid.as_str(), None);
                }
                Change::Flush => {}
            }
        }
        let tokens: Vec<&TokenRecord> = tokens.into_values().collect();
        let saves: Vec<&DataflowRecord> = newest.values().flatten().copied().collect();
        let deletes: Vec<&str> = newest.iter().filter(|(_, r)| r.is_none()).map(|(uuid, _)| *uuid).collect();
        let result = store.write(&saves, &deletes, &tokens).map_err(|e| e.to_string());
        if let Err(e) = &result {
            eprintln!("rill coordinator: {e}");
        }
        for job in jobs {
            if let Some(done) = job.done {
                let _ = done.send(result.clone());
            }
        }
    }
}
