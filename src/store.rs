//! The on-disk database (one redb file in the data directory) and the `Storage` bundle that runs
//! the result cache, the request statistics and their background tasks on top of it.
//!
//! Layout of `classifier.redb` (this layer's tables; other modules add their own to the same file
//! through [`Store::database`]):
//!
//! | table                       | key                          | value                          |
//! |-----------------------------|------------------------------|--------------------------------|
//! | `cache_v1`                  | normalized URL               | (label, confidence, expires ms)|
//! | `cache_expiry_v1`           | (expires ms, URL)            | ()                             |
//! | `url_stats_v1`              | normalized URL               | (count, min, max, sum) seconds |
//! | `url_stats_by_count_v1`     | (u64::MAX - count, URL)      | ()                             |
//! | `stats_totals_v1`           | ()                           | (count, min, max, sum) seconds |
//! | `storage_meta_v1`           | name                         | u64                            |
//!
//! The two index tables exist so that neither purging expired entries nor the top-N report ever
//! scans every URL: both read a prefix of an ordered index instead.
use std::io;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use redb::{Database, DatabaseError, TableDefinition};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cache::ResultCache;
use crate::clock::Clock;
use crate::stats::Stats;
use crate::writer::Writer;

/// Normalized URL → (label, confidence, absolute expiry in unix millis).
pub(crate) const CACHE: TableDefinition<&str, (&str, f32, u64)> = TableDefinition::new("cache_v1");
/// (expiry in unix millis, URL) → (). Ordered by expiry, so the purge reads only the expired prefix.
pub(crate) const CACHE_EXPIRY: TableDefinition<(u64, &str), ()> =
    TableDefinition::new("cache_expiry_v1");
/// Normalized URL → (count, min, max, sum) of processing times in seconds.
pub(crate) const URL_STATS: TableDefinition<&str, (u64, f64, f64, f64)> =
    TableDefinition::new("url_stats_v1");
/// (u64::MAX - count, URL) → (). Ascending iteration yields count descending, then URL ascending,
/// which is exactly the report order, so the top N are the first N keys.
pub(crate) const URL_STATS_BY_COUNT: TableDefinition<(u64, &str), ()> =
    TableDefinition::new("url_stats_by_count_v1");
/// Single row: (count, min, max, sum) across all URLs.
pub(crate) const STATS_TOTALS: TableDefinition<(), (u64, f64, f64, f64)> =
    TableDefinition::new("stats_totals_v1");
/// Small named counters of this layer (see [`WRITER_SEQ`]).
pub(crate) const STORAGE_META: TableDefinition<&str, u64> = TableDefinition::new("storage_meta_v1");
/// Sequence number of the last batch the writer committed. Stored in the batch's own transaction,
/// so a reader's snapshot tells exactly which in-memory batches it already contains.
pub(crate) const WRITER_SEQ: &str = "writer_seq";

/// The redb page cache. The hot working set lives in the in-memory result cache, so redb's own
/// cache mostly holds index pages; redb's 1 GiB default would be wasted memory.
const REDB_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Why the storage failed. `Clone` so one failed commit can be reported to every `flush()` waiting
/// on it; sources are behind `Arc` for that reason.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot create data directory {path}: {source}; create it or choose a writable --data-dir"
    )]
    CreateDir {
        path: PathBuf,
        source: Arc<io::Error>,
    },
    #[error("data directory {path} exists but is not a directory; remove it or choose another --data-dir")]
    NotADirectory { path: PathBuf },
    #[error(
        "cannot write database {path}: {source}; make the data directory writable by this user or choose another --data-dir"
    )]
    Unwritable {
        path: PathBuf,
        source: Arc<io::Error>,
    },
    #[error(
        "another classifier-api process is using {path}; stop it, or give this process its own --data-dir"
    )]
    AlreadyOpen { path: PathBuf },
    #[error(
        "database {path} is corrupt or is not a classifier-api database ({detail}); move the file aside and restart (cached results are rebuilt, request statistics restart from zero)"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error("cannot open database {path}: {detail}")]
    Open { path: PathBuf, detail: String },
    #[error("database error: {0}")]
    Db(Arc<redb::Error>),
    #[error("storage is shut down")]
    Closed,
    #[error("storage task failed: {0}")]
    Task(String),
}

// One impl per redb error type: a blanket `impl<E: Into<redb::Error>>` would overlap with the
// reflexive `From<StoreError>`.
macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(Arc::new(e.into()))
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::StorageError,
    redb::TransactionError,
    redb::TableError,
    redb::CommitError
);

/// The database of the service. Cheap to clone (an `Arc`); the file stays open, and locked against
/// other processes, until the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Store {
    db: Arc<Database>,
    path: Arc<PathBuf>,
}

impl Store {
    /// File name of the database inside the data directory.
    pub const FILE_NAME: &'static str = "classifier.redb";

    /// Creates `data_dir` if needed, opens or creates `data_dir/classifier.redb` and creates this
    /// layer's tables. Blocking (file I/O, possibly a crash repair): call it before serving or from
    /// `spawn_blocking`, as [`Storage::open`] does.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        match std::fs::metadata(data_dir) {
            Ok(meta) if !meta.is_dir() => {
                return Err(StoreError::NotADirectory {
                    path: data_dir.to_owned(),
                })
            }
            Ok(_) => {}
            Err(_) => std::fs::create_dir_all(data_dir).map_err(|e| StoreError::CreateDir {
                path: data_dir.to_owned(),
                source: Arc::new(e),
            })?,
        }
        let path = data_dir.join(Self::FILE_NAME);

        // redb documents that opening a file damaged outside redb may panic rather than return an
        // error (it does, e.g. for a file with a valid header and scrambled pages); a damaged file
        // must produce a message, not a crash. Creating the tables reads the damaged trees too.
        let db = match std::panic::catch_unwind(AssertUnwindSafe(|| open_database(&path))) {
            Ok(result) => result?,
            Err(panic) => {
                return Err(StoreError::Corrupt {
                    path,
                    detail: format!("redb panicked while opening: {}", panic_message(&*panic)),
                })
            }
        };
        Ok(Store {
            db: Arc::new(db),
            path: Arc::new(path),
        })
    }

    /// The shared database, for modules that keep their own tables in the same file.
    pub fn database(&self) -> &Arc<Database> {
        &self.db
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs blocking redb work on the blocking pool, never on an async worker thread.
    pub async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let db = Arc::clone(&self.db);
        match tokio::task::spawn_blocking(move || f(&db)).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => Err(StoreError::Task(format!(
                "database task panicked: {}",
                panic_message(&*e.into_panic())
            ))),
            Err(e) => Err(StoreError::Task(e.to_string())),
        }
    }
}

fn open_database(path: &Path) -> Result<Database, StoreError> {
    let db = Database::builder()
        .set_cache_size(REDB_CACHE_BYTES)
        .create(path)
        .map_err(|e| open_error(path, e))?;
    create_tables(&db).map_err(|e| tables_error(path, e))?;
    Ok(db)
}

fn create_tables(db: &Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    // Opening a table in a write transaction creates it; doing it once here means readers never
    // meet a missing table, and a type mismatch surfaces at startup rather than mid-request.
    txn.open_table(CACHE)?;
    txn.open_table(CACHE_EXPIRY)?;
    txn.open_table(URL_STATS)?;
    txn.open_table(URL_STATS_BY_COUNT)?;
    txn.open_table(STATS_TOTALS)?;
    txn.open_table(STORAGE_META)?;
    txn.commit()?;
    Ok(())
}

fn open_error(path: &Path, e: DatabaseError) -> StoreError {
    let path = path.to_owned();
    match e {
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
            StoreError::AlreadyOpen { path }
        }
        DatabaseError::Storage(redb::StorageError::Io(io)) => match io.kind() {
            // redb reports a file without its magic header as InvalidData.
            io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => StoreError::Corrupt {
                path,
                detail: io.to_string(),
            },
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
                StoreError::Unwritable {
                    path,
                    source: Arc::new(io),
                }
            }
            _ => StoreError::Open {
                path,
                detail: io.to_string(),
            },
        },
        DatabaseError::Storage(redb::StorageError::Corrupted(detail)) => {
            StoreError::Corrupt { path, detail }
        }
        DatabaseError::UpgradeRequired(version) => StoreError::Open {
            path,
            detail: format!(
                "the file uses redb file format {version}, which this build cannot open; move it aside and restart"
            ),
        },
        other => StoreError::Open {
            path,
            detail: other.to_string(),
        },
    }
}

fn tables_error(path: &Path, e: redb::Error) -> StoreError {
    let path = path.to_owned();
    match e {
        // Our table names with other types: another program's file, or a newer schema.
        redb::Error::TableTypeMismatch { .. }
        | redb::Error::TypeDefinitionChanged { .. }
        | redb::Error::TableIsMultimap(_)
        | redb::Error::Corrupted(_) => StoreError::Corrupt {
            path,
            detail: e.to_string(),
        },
        redb::Error::Io(io)
            if matches!(
                io.kind(),
                io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
            ) =>
        {
            StoreError::Unwritable {
                path,
                source: Arc::new(io),
            }
        }
        other => StoreError::Open {
            path,
            detail: other.to_string(),
        },
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}

/// Tunables of the storage layer. `Default` is the production setting; tests shorten intervals.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// How long a classification is served from the cache.
    pub cache_ttl: Duration,
    /// Entries kept in memory (the disk tier holds every unexpired entry).
    pub cache_capacity: usize,
    /// The writer commits pending updates at least this often. This is the durability window:
    /// a SIGKILL loses at most the updates of the last interval.
    pub flush_interval: Duration,
    /// ... or as soon as this many updates are pending, whichever comes first.
    pub flush_max_updates: usize,
    /// How often expired cache rows are deleted from disk.
    pub purge_interval: Duration,
    /// Rows deleted per purge transaction, so a large backlog never makes one huge commit.
    pub purge_batch: usize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            cache_ttl: Duration::from_secs(3600),
            cache_capacity: 100_000,
            flush_interval: Duration::from_millis(100),
            flush_max_updates: 1024,
            purge_interval: Duration::from_secs(300),
            purge_batch: 10_000,
        }
    }
}

/// The running storage layer: the database, the result cache, the statistics, and the two
/// background tasks (batched writer, expired-row purge).
///
/// Owns the tasks the way mini-redis's `DbDropGuard` owns its purge task: [`Storage::shutdown`]
/// stops them after a final commit; if a `Storage` is just dropped, the tasks are still told to
/// stop and the writer still attempts its final commit, but nobody learns whether it succeeded.
///
/// [`ResultCache`] and [`Stats`] are cheap handles to hand to request handlers. The database file
/// is closed when the last handle (they hold a [`Store`]) is gone.
#[derive(Debug)]
pub struct Storage {
    store: Store,
    cache: ResultCache,
    stats: Stats,
    writer: Writer,
    shutdown: watch::Sender<bool>,
    writer_task: Option<JoinHandle<Result<(), StoreError>>>,
    purge_task: Option<JoinHandle<()>>,
}

impl Storage {
    /// Opens the database in `data_dir` (on the blocking pool) and starts the layer on it.
    pub async fn open(
        data_dir: &Path,
        clock: Arc<dyn Clock>,
        config: StorageConfig,
    ) -> Result<Storage, StoreError> {
        let dir = data_dir.to_owned();
        let store = match tokio::task::spawn_blocking(move || Store::open(&dir)).await {
            Ok(result) => result?,
            Err(e) => return Err(StoreError::Task(e.to_string())),
        };
        Self::start(store, clock, config).await
    }

    /// Starts the writer and purge tasks on an already opened store. Must run inside a Tokio
    /// runtime; the tasks live until [`Storage::shutdown`] or until the `Storage` is dropped.
    pub async fn start(
        store: Store,
        clock: Arc<dyn Clock>,
        config: StorageConfig,
    ) -> Result<Storage, StoreError> {
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (writer, writer_task) = Writer::start(
            store.clone(),
            config.flush_interval,
            config.flush_max_updates,
            shutdown_rx.clone(),
        )
        .await?;
        let cache = ResultCache::new(
            store.clone(),
            writer.clone(),
            clock,
            config.cache_ttl,
            config.cache_capacity,
        );
        let purge_task = tokio::spawn(crate::cache::run_purge(
            cache.clone(),
            config.purge_interval,
            config.purge_batch,
            shutdown_rx,
        ));
        let stats = Stats::new(store.clone(), writer.clone());
        Ok(Storage {
            store,
            cache,
            stats,
            writer,
            shutdown,
            writer_task: Some(writer_task),
            purge_task: Some(purge_task),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn cache(&self) -> &ResultCache {
        &self.cache
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    #[cfg(test)]
    pub(crate) fn writer(&self) -> &Writer {
        &self.writer
    }

    /// Commits everything recorded or cached so far and waits for the commit.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.writer.flush().await
    }

    /// Stops accepting updates, commits what is pending, and stops both background tasks.
    /// Returns the result of the final commit.
    pub async fn shutdown(mut self) -> Result<(), StoreError> {
        self.shutdown.send_replace(true);
        if let Some(purge) = self.purge_task.take() {
            if let Err(e) = purge.await {
                tracing::error!(error = %e, "cache purge task failed");
            }
        }
        match self.writer_task.take() {
            Some(writer) => match writer.await {
                Ok(result) => result,
                Err(e) => Err(StoreError::Task(e.to_string())),
            },
            None => Ok(()),
        }
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        // Without shutdown(): still tell the tasks to stop, so the writer makes its final commit.
        self.shutdown.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{ReadableDatabase, ReadableTableMetadata};

    #[test]
    fn open_creates_dir_file_and_tables() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("nested").join("data");
        let store = Store::open(&dir).unwrap();
        assert_eq!(store.path(), dir.join("classifier.redb"));
        assert!(store.path().is_file());
        let txn = store.database().begin_read().unwrap();
        // Every table exists right after open, so readers never see TableDoesNotExist.
        assert_eq!(txn.open_table(CACHE).unwrap().len().unwrap(), 0);
        assert_eq!(txn.open_table(CACHE_EXPIRY).unwrap().len().unwrap(), 0);
        assert_eq!(txn.open_table(URL_STATS).unwrap().len().unwrap(), 0);
        assert_eq!(
            txn.open_table(URL_STATS_BY_COUNT).unwrap().len().unwrap(),
            0
        );
        assert_eq!(txn.open_table(STATS_TOTALS).unwrap().len().unwrap(), 0);
        assert_eq!(txn.open_table(STORAGE_META).unwrap().len().unwrap(), 0);
    }

    #[test]
    fn reopen_after_close_keeps_data() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let store = Store::open(tmp.path()).unwrap();
            let txn = store.database().begin_write().unwrap();
            txn.open_table(STORAGE_META)
                .unwrap()
                .insert("x", 7)
                .unwrap();
            txn.commit().unwrap();
        }
        let store = Store::open(tmp.path()).unwrap();
        let txn = store.database().begin_read().unwrap();
        let meta = txn.open_table(STORAGE_META).unwrap();
        assert_eq!(meta.get("x").unwrap().map(|g| g.value()), Some(7));
    }

    #[test]
    fn garbage_file_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let garbage: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7 + 13) as u8).collect();
        std::fs::write(tmp.path().join(Store::FILE_NAME), garbage).unwrap();
        let err = Store::open(tmp.path()).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("classifier.redb"), "{msg}");
        assert!(msg.contains("move the file aside"), "{msg}");
    }

    #[test]
    fn short_garbage_file_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(Store::FILE_NAME), b"hello, not a database").unwrap();
        let err = Store::open(tmp.path()).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    }

    #[test]
    fn damaged_database_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        drop(Store::open(tmp.path()).unwrap());
        let path = tmp.path().join(Store::FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        // Keep the header page (so it still looks like redb), scramble everything after it.
        for b in bytes.iter_mut().skip(4096) {
            *b ^= 0x5a;
        }
        std::fs::write(&path, &bytes).unwrap();
        let err = Store::open(tmp.path()).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    }

    #[test]
    fn foreign_schema_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        {
            // A redb file with our table name but other types.
            let db = Database::create(tmp.path().join(Store::FILE_NAME)).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(TableDefinition::<u64, u64>::new("cache_v1"))
                .unwrap();
            txn.commit().unwrap();
        }
        let err = Store::open(tmp.path()).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    }

    #[test]
    fn data_dir_that_is_a_file_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("data");
        std::fs::write(&file, b"x").unwrap();
        let err = Store::open(&file).unwrap_err();
        assert!(matches!(err, StoreError::NotADirectory { .. }), "{err:?}");
        assert!(err.to_string().contains("not a directory"), "{err}");

        // A path below a file cannot be created at all.
        let below = file.join("sub");
        let err = Store::open(&below).unwrap_err();
        assert!(matches!(err, StoreError::CreateDir { .. }), "{err:?}");
        assert!(err.to_string().contains(&*below.to_string_lossy()), "{err}");
    }

    #[test]
    fn unwritable_dir_is_a_clear_error() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ro");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).unwrap();
        // root ignores permission bits; there is nothing to observe then.
        if std::fs::write(dir.join("probe"), b"x").is_ok() {
            eprintln!("skipped: running with CAP_DAC_OVERRIDE (root), permissions not enforced");
            return;
        }
        let err = Store::open(&dir).unwrap_err();
        assert!(matches!(err, StoreError::Unwritable { .. }), "{err:?}");
        assert!(err.to_string().contains("classifier.redb"), "{err}");
    }

    #[test]
    fn second_open_is_another_process_error() {
        let tmp = tempfile::tempdir().unwrap();
        let first = Store::open(tmp.path()).unwrap();
        let err = Store::open(tmp.path()).unwrap_err();
        assert!(matches!(err, StoreError::AlreadyOpen { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("another classifier-api process is using")
                && msg.contains(&*first.path().to_string_lossy()),
            "{msg}"
        );
        // Clones share the one open database; dropping all of them releases the lock.
        let clone = first.clone();
        assert!(Arc::ptr_eq(first.database(), clone.database()));
        drop(first);
        drop(clone);
        Store::open(tmp.path()).unwrap();
    }

    #[tokio::test]
    async fn run_executes_on_blocking_pool() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let n = store
            .run(|db| {
                let txn = db.begin_read()?;
                Ok(txn.open_table(URL_STATS)?.len()?)
            })
            .await
            .unwrap();
        assert_eq!(n, 0);
    }
}
