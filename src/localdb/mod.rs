//! The per-replica redb file, `classifier.redb` in the data directory, and nothing else: opening
//! it (with an actionable message for every way that fails), the one list of its tables
//! ([`schema`]), and [`LocalDb::run`], the one way to run blocking redb work from async code.
//!
//! Every module that keeps data in the file (the redb storage backend, auth, the Elasticsearch
//! outbox) goes through this module and reports failures as [`DbError`].
use std::io;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, DatabaseError};

pub(crate) mod schema;

/// The redb page cache. The hot working set lives in the in-memory result cache, so redb's own
/// cache mostly holds index pages; redb's 1 GiB default would be wasted memory.
const REDB_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Why the database failed. `Clone` so one failed commit can be reported to every `flush()` waiting
/// on it; sources are behind `Arc` for that reason.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DbError {
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
    #[error("storage task failed: {0}")]
    Task(String),
}

// One impl per redb error type: a blanket `impl<E: Into<redb::Error>>` would overlap with the
// reflexive `From<DbError>`.
macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for DbError {
            fn from(e: $t) -> Self {
                DbError::Db(Arc::new(e.into()))
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
pub struct LocalDb {
    db: Arc<Database>,
    path: Arc<PathBuf>,
}

impl LocalDb {
    /// File name of the database inside the data directory.
    pub const FILE_NAME: &'static str = "classifier.redb";

    /// Creates `data_dir` if needed, opens or creates `data_dir/classifier.redb` and creates every
    /// table of [`schema`]. Blocking (file I/O, possibly a crash repair): call it before serving
    /// or through [`LocalDb::open_async`].
    pub fn open(data_dir: &Path) -> Result<LocalDb, DbError> {
        match std::fs::metadata(data_dir) {
            Ok(meta) if !meta.is_dir() => {
                return Err(DbError::NotADirectory {
                    path: data_dir.to_owned(),
                })
            }
            Ok(_) => {}
            Err(_) => std::fs::create_dir_all(data_dir).map_err(|e| DbError::CreateDir {
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
                return Err(DbError::Corrupt {
                    path,
                    detail: format!("redb panicked while opening: {}", panic_message(&*panic)),
                })
            }
        };
        Ok(LocalDb {
            db: Arc::new(db),
            path: Arc::new(path),
        })
    }

    /// [`LocalDb::open`] on the blocking pool.
    pub async fn open_async(data_dir: &Path) -> Result<LocalDb, DbError> {
        let dir = data_dir.to_owned();
        match tokio::task::spawn_blocking(move || LocalDb::open(&dir)).await {
            Ok(result) => result,
            Err(e) => Err(DbError::Task(e.to_string())),
        }
    }

    /// The open database, for synchronous callers (the CLI, code already on the blocking pool).
    pub fn database(&self) -> &Arc<Database> {
        &self.db
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs blocking work with the database (redb transactions, and whatever CPU work belongs
    /// with them) on the blocking pool, never on an async worker thread. A panic in `f` becomes
    /// [`DbError::Task`], not a crash.
    pub async fn run<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&Database) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        match tokio::task::spawn_blocking(move || f(&db)).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => Err(DbError::Task(format!(
                "database task panicked: {}",
                panic_message(&*e.into_panic())
            ))
            .into()),
            Err(e) => Err(DbError::Task(e.to_string()).into()),
        }
    }
}

fn open_database(path: &Path) -> Result<Database, DbError> {
    let db = Database::builder()
        .set_cache_size(REDB_CACHE_BYTES)
        .create(path)
        .map_err(|e| open_error(path, e))?;
    create_tables(&db).map_err(|e| tables_error(path, e))?;
    Ok(db)
}

fn create_tables(db: &Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    schema::create_all(&txn)?;
    txn.commit()?;
    Ok(())
}

fn open_error(path: &Path, e: DatabaseError) -> DbError {
    let path = path.to_owned();
    match e {
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
            DbError::AlreadyOpen { path }
        }
        DatabaseError::Storage(redb::StorageError::Io(io)) => match io.kind() {
            // redb reports a file without its magic header as InvalidData.
            io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => DbError::Corrupt {
                path,
                detail: io.to_string(),
            },
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
                DbError::Unwritable {
                    path,
                    source: Arc::new(io),
                }
            }
            _ => DbError::Open {
                path,
                detail: io.to_string(),
            },
        },
        DatabaseError::Storage(redb::StorageError::Corrupted(detail)) => {
            DbError::Corrupt { path, detail }
        }
        DatabaseError::UpgradeRequired(version) => DbError::Open {
            path,
            detail: format!(
                "the file uses redb file format {version}, which this build cannot open; move it aside and restart"
            ),
        },
        other => DbError::Open {
            path,
            detail: other.to_string(),
        },
    }
}

fn tables_error(path: &Path, e: redb::Error) -> DbError {
    let path = path.to_owned();
    match e {
        // Our table names with other types: another program's file, or a newer schema.
        redb::Error::TableTypeMismatch { .. }
        | redb::Error::TypeDefinitionChanged { .. }
        | redb::Error::TableIsMultimap(_)
        | redb::Error::Corrupted(_) => DbError::Corrupt {
            path,
            detail: e.to_string(),
        },
        redb::Error::Io(io)
            if matches!(
                io.kind(),
                io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
            ) =>
        {
            DbError::Unwritable {
                path,
                source: Arc::new(io),
            }
        }
        other => DbError::Open {
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

#[cfg(test)]
mod tests {
    use super::schema::*;
    use super::*;
    use redb::{ReadableDatabase, ReadableTableMetadata, TableDefinition};

    #[test]
    fn open_creates_dir_file_and_tables() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("nested").join("data");
        let store = LocalDb::open(&dir).unwrap();
        assert_eq!(store.path(), dir.join("classifier.redb"));
        assert!(store.path().is_file());
        let txn = store.database().begin_read().unwrap();
        // Every table exists right after open, so readers never see TableDoesNotExist.
        assert_eq!(txn.open_table(CACHE).unwrap().len().unwrap(), 0);
        assert_eq!(txn.open_table(CACHE_EXPIRY).unwrap().len().unwrap(), 0);
        assert_eq!(txn.open_table(URL_STATS).unwrap().len().unwrap(), 0);
        let by_count = txn.open_table(URL_STATS_BY_COUNT).unwrap();
        assert_eq!(by_count.len().unwrap(), 0);
        assert_eq!(txn.open_table(STATS_TOTALS).unwrap().len().unwrap(), 0);
        assert_eq!(txn.open_table(STORAGE_META).unwrap().len().unwrap(), 0);
        assert_eq!(txn.open_table(USERS).unwrap().len().unwrap(), 0);
        assert_eq!(txn.open_table(AUTH_META).unwrap().len().unwrap(), 0);
        assert_eq!(txn.open_table(REVOKED).unwrap().len().unwrap(), 0);
        assert_eq!(txn.open_table(OUTBOX).unwrap().len().unwrap(), 0);
        assert_eq!(txn.open_table(DEAD_LETTERS).unwrap().len().unwrap(), 0);
        assert_eq!(txn.open_table(ES_META).unwrap().len().unwrap(), 0);
    }

    #[test]
    fn reopen_after_close_keeps_data() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let store = LocalDb::open(tmp.path()).unwrap();
            let txn = store.database().begin_write().unwrap();
            txn.open_table(STORAGE_META)
                .unwrap()
                .insert("x", 7)
                .unwrap();
            txn.commit().unwrap();
        }
        let store = LocalDb::open(tmp.path()).unwrap();
        let txn = store.database().begin_read().unwrap();
        let meta = txn.open_table(STORAGE_META).unwrap();
        assert_eq!(meta.get("x").unwrap().map(|g| g.value()), Some(7));
    }

    #[test]
    fn garbage_file_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let garbage: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7 + 13) as u8).collect();
        std::fs::write(tmp.path().join(LocalDb::FILE_NAME), garbage).unwrap();
        let err = LocalDb::open(tmp.path()).unwrap_err();
        assert!(matches!(err, DbError::Corrupt { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("classifier.redb"), "{msg}");
        assert!(msg.contains("move the file aside"), "{msg}");
    }

    #[test]
    fn short_garbage_file_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join(LocalDb::FILE_NAME),
            b"hello, not a database",
        )
        .unwrap();
        let err = LocalDb::open(tmp.path()).unwrap_err();
        assert!(matches!(err, DbError::Corrupt { .. }), "{err:?}");
    }

    #[test]
    fn damaged_database_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        drop(LocalDb::open(tmp.path()).unwrap());
        let path = tmp.path().join(LocalDb::FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        // Keep the header page (so it still looks like redb), scramble everything after it.
        for b in bytes.iter_mut().skip(4096) {
            *b ^= 0x5a;
        }
        std::fs::write(&path, &bytes).unwrap();
        let err = LocalDb::open(tmp.path()).unwrap_err();
        assert!(matches!(err, DbError::Corrupt { .. }), "{err:?}");
    }

    #[test]
    fn foreign_schema_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        {
            // A redb file with our table name but other types.
            let db = Database::create(tmp.path().join(LocalDb::FILE_NAME)).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(TableDefinition::<u64, u64>::new("url_stats_v1"))
                .unwrap();
            txn.commit().unwrap();
        }
        let err = LocalDb::open(tmp.path()).unwrap_err();
        assert!(matches!(err, DbError::Corrupt { .. }), "{err:?}");
    }

    #[test]
    fn data_dir_that_is_a_file_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("data");
        std::fs::write(&file, b"x").unwrap();
        let err = LocalDb::open(&file).unwrap_err();
        assert!(matches!(err, DbError::NotADirectory { .. }), "{err:?}");
        assert!(err.to_string().contains("not a directory"), "{err}");

        // A path below a file cannot be created at all.
        let below = file.join("sub");
        let err = LocalDb::open(&below).unwrap_err();
        assert!(matches!(err, DbError::CreateDir { .. }), "{err:?}");
        assert!(err.to_string().contains(&*below.to_string_lossy()), "{err}");
    }

    #[test]
    fn unwritable_dir_is_a_clear_error() {
        // sysfs refuses new files to every user, root included (permission bits would not stop
        // root, and the tests run as root on CI).
        let dir = Path::new("/sys");
        let err = LocalDb::open(dir).unwrap_err();
        assert!(matches!(err, DbError::Unwritable { .. }), "{err:?}");
        assert!(err.to_string().contains("classifier.redb"), "{err}");
    }

    #[test]
    fn second_open_is_another_process_error() {
        let tmp = tempfile::tempdir().unwrap();
        let first = LocalDb::open(tmp.path()).unwrap();
        let err = LocalDb::open(tmp.path()).unwrap_err();
        assert!(matches!(err, DbError::AlreadyOpen { .. }), "{err:?}");
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
        LocalDb::open(tmp.path()).unwrap();
    }

    #[tokio::test]
    async fn run_executes_on_blocking_pool() {
        let tmp = tempfile::tempdir().unwrap();
        let db = LocalDb::open(tmp.path()).unwrap();
        // A current-thread runtime: work run inline would share this thread's id.
        let caller = std::thread::current().id();
        let (ran_on, n) = db
            .run(|db| {
                let txn = db.begin_read()?;
                Ok::<_, DbError>((
                    std::thread::current().id(),
                    txn.open_table(URL_STATS)?.len()?,
                ))
            })
            .await
            .unwrap();
        assert_ne!(ran_on, caller);
        assert_eq!(n, 0);
    }

    #[tokio::test]
    async fn panicking_work_is_an_error_not_a_crash() {
        let tmp = tempfile::tempdir().unwrap();
        let db = LocalDb::open(tmp.path()).unwrap();
        let err = db
            .run(|_| -> Result<(), DbError> { panic!("boom") })
            .await
            .unwrap_err();
        assert!(
            matches!(&err, DbError::Task(m) if m.contains("boom")),
            "{err:?}"
        );
    }
}
