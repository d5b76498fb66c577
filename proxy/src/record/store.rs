//! The key-value store under the recorder: a small trait over named, ordered trees, and its sled
//! implementation.
//!
//! Owns: the tree names, key layouts, opening sled. Must never: interpret values (that is the
//! recorder's job), or create a store where a read-only command expected an existing one.

use std::path::{Path, PathBuf};

use super::frame_files::FrameFiles;
pub use super::frame_files::ReadFrames;

/// The trees a store holds. Keys are big-endian so byte order is numeric order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tree {
    /// seq (u64 BE) → [`super::entry::Envelope`].
    Audit,
    /// seq of the covered record (u64 BE) → [`super::chain::Checkpoint`].
    Checkpoints,
    /// session seq (u64 BE) → [`super::session::SessionRecord`].
    Sessions,
    /// session id (UTF-8) → session seq (u64 BE).
    SessionIds,
    /// Operational state that verification never trusts (the latest tombstone, ...).
    Meta,
}

impl Tree {
    pub const ALL: [Tree; 5] = [
        Tree::Audit,
        Tree::Checkpoints,
        Tree::Sessions,
        Tree::SessionIds,
        Tree::Meta,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Tree::Audit => "audit",
            Tree::Checkpoints => "checkpoints",
            Tree::Sessions => "sessions",
            Tree::SessionIds => "session_ids",
            Tree::Meta => "meta",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error("store {path} does not exist")]
    Missing { path: PathBuf },
    #[error("store I/O: {0}")]
    Io(String),
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Io(e.to_string())
    }
}

pub type KeyValue = (Vec<u8>, Vec<u8>);
pub type KvIter<'a> = Box<dyn Iterator<Item = Result<KeyValue, StoreError>> + Send + 'a>;

/// A store of ordered trees. Writes become durable at the next [`Store::flush`]; a crash loses at
/// most what was written since the last flush, and what survives is a prefix of the writes.
pub trait Store: Send + Sync + 'static {
    fn insert(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    fn remove(&self, tree: Tree, key: &[u8]) -> Result<(), StoreError>;
    /// Removes every key in `[start, end)`.
    fn remove_range(&self, tree: Tree, start: &[u8], end: &[u8]) -> Result<u64, StoreError>;
    /// The greatest key and its value.
    fn last(&self, tree: Tree) -> Result<Option<KeyValue>, StoreError>;
    /// The smallest key and its value.
    fn first(&self, tree: Tree) -> Result<Option<KeyValue>, StoreError>;
    /// Keys `>= start` in order.
    fn range_from<'a>(&'a self, tree: Tree, start: &[u8]) -> KvIter<'a>;
    /// Keys starting with `prefix` in order.
    fn scan_prefix<'a>(&'a self, tree: Tree, prefix: &[u8]) -> KvIter<'a>;
    /// Makes every write so far durable (fsync).
    fn flush(&self) -> Result<(), StoreError>;

    /// Writes `bytes` at `offset` of a session's frame file: a block laid out by
    /// [`super::frame_files::BlockBuilder`] (whole, or the part filled so far). Durable at the
    /// next [`Store::flush`], like everything else.
    fn write_frames(&self, session_seq: u64, offset: u64, bytes: &[u8]) -> Result<(), StoreError>;
    /// The session is over: its frame file ends at `end` bytes.
    fn close_frames(&self, session_seq: u64, end: u64) -> Result<(), StoreError>;
    /// A session's frames in the order they were appended.
    fn frames(&self, session_seq: u64) -> Result<ReadFrames, StoreError>;
    /// Deletes a session's frames.
    fn remove_frames(&self, session_seq: u64) -> Result<(), StoreError>;
}

pub fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

pub fn key_seq(key: &[u8]) -> Option<u64> {
    key.get(..8)
        .and_then(|k| <[u8; 8]>::try_from(k).ok())
        .map(u64::from_be_bytes)
}

/// How long [`SledStore::open`] waits for a store's lock held by this or another process.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// sled 0.34: one database directory, one sled tree per [`Tree`]; session frames in
/// [`FrameFiles`] under the same directory.
///
/// sled's own flush is not enough for power-failure durability: on Linux it ends its log writes
/// with `sync_file_range`, which neither persists the file's size nor flushes the disk's write
/// cache, and it writes large items to `blobs/` files without syncing them at all. So
/// [`Store::flush`] follows sled's flush with an `fsync` of the log file, of every blob file not
/// synced yet, and of the directories.
pub struct SledStore {
    db: sled::Db,
    trees: Vec<sled::Tree>,
    dir: PathBuf,
    log_file: std::fs::File,
    synced_blobs: std::sync::Mutex<std::collections::HashSet<std::ffi::OsString>>,
    frames: FrameFiles,
}

impl SledStore {
    /// Opens (creating if needed) the store at `path`. `cache_bytes` bounds sled's page cache.
    pub fn open(path: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let open_err = |message: String| StoreError::Open {
            path: path.to_path_buf(),
            message,
        };
        // sled's own periodic flush is off: the recorder's flusher decides when to fsync, so the
        // loss window is the one the config states.
        let config = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .flush_every_ms(None);
        // sled releases its directory lock only when its I/O threads have let go of the last
        // reference, a moment after the `Db` of a store closed in this process is dropped: wait
        // a bounded time for that before calling the store busy.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(e) => {
                    let message = e.to_string();
                    let locked = message.contains("lock") || message.contains("WouldBlock");
                    if locked && std::time::Instant::now() < deadline {
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        continue;
                    }
                    return Err(if locked {
                        open_err(format!(
                            "{message} (is a gateway running on it? stop it or work on a copy of the directory)"
                        ))
                    } else {
                        open_err(message)
                    });
                }
            }
        };
        let trees = Tree::ALL
            .iter()
            .map(|t| db.open_tree(t.name()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| open_err(e.to_string()))?;
        let log_file = std::fs::File::open(path.join("db"))
            .map_err(|e| open_err(format!("cannot open the log file for fsync: {e}")))?;
        // A store created just now must keep its directory entries across a power failure.
        std::fs::File::open(path)
            .and_then(|d| d.sync_all())
            .map_err(|e| open_err(format!("cannot fsync the store directory: {e}")))?;
        Ok(Self {
            db,
            trees,
            dir: path.to_path_buf(),
            log_file,
            synced_blobs: std::sync::Mutex::new(std::collections::HashSet::new()),
            frames: FrameFiles::new(path),
        })
    }

    /// fsyncs blob files written since the last call, then the blob directory.
    fn sync_blobs(&self) -> std::io::Result<()> {
        let blobs = self.dir.join("blobs");
        let entries = match std::fs::read_dir(&blobs) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut synced = self
            .synced_blobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut present = std::collections::HashSet::new();
        let mut new_files = false;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if !synced.contains(&name) {
                match std::fs::File::open(entry.path()) {
                    Ok(f) => f.sync_all()?,
                    // sled removes blobs it has rewritten; one gone meanwhile needs no sync.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                new_files = true;
            }
            present.insert(name);
        }
        *synced = present;
        if new_files {
            std::fs::File::open(&blobs)?.sync_all()?;
        }
        Ok(())
    }

    /// Opens a store that must already exist (for the read-only commands).
    pub fn open_existing(path: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        if !path.join("conf").exists() && !path.join("db").exists() {
            return Err(StoreError::Missing {
                path: path.to_path_buf(),
            });
        }
        Self::open(path, cache_bytes)
    }

    fn tree(&self, tree: Tree) -> &sled::Tree {
        // `trees` is built from `Tree::ALL` in order, so the index always exists.
        &self.trees[tree as usize]
    }
}

fn to_kv(item: sled::Result<(sled::IVec, sled::IVec)>) -> Result<KeyValue, StoreError> {
    item.map(|(k, v)| (k.to_vec(), v.to_vec()))
        .map_err(StoreError::from)
}

impl Store for SledStore {
    fn insert(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.tree(tree).insert(key, value)?;
        Ok(())
    }

    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree(tree).get(key)?.map(|v| v.to_vec()))
    }

    fn remove(&self, tree: Tree, key: &[u8]) -> Result<(), StoreError> {
        self.tree(tree).remove(key)?;
        Ok(())
    }

    fn remove_range(&self, tree: Tree, start: &[u8], end: &[u8]) -> Result<u64, StoreError> {
        let t = self.tree(tree);
        let mut removed = 0;
        let mut batch = sled::Batch::default();
        for item in t.range(start..end) {
            let (k, _) = item?;
            batch.remove(k);
            removed += 1;
            if removed % 4096 == 0 {
                t.apply_batch(std::mem::take(&mut batch))?;
            }
        }
        t.apply_batch(batch)?;
        Ok(removed)
    }

    fn last(&self, tree: Tree) -> Result<Option<KeyValue>, StoreError> {
        Ok(self
            .tree(tree)
            .last()?
            .map(|(k, v)| (k.to_vec(), v.to_vec())))
    }

    fn first(&self, tree: Tree) -> Result<Option<KeyValue>, StoreError> {
        Ok(self
            .tree(tree)
            .first()?
            .map(|(k, v)| (k.to_vec(), v.to_vec())))
    }

    fn range_from<'a>(&'a self, tree: Tree, start: &[u8]) -> KvIter<'a> {
        Box::new(self.tree(tree).range(start.to_vec()..).map(to_kv))
    }

    fn scan_prefix<'a>(&'a self, tree: Tree, prefix: &[u8]) -> KvIter<'a> {
        Box::new(self.tree(tree).scan_prefix(prefix).map(to_kv))
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.frames.sync()?;
        self.db.flush()?;
        let io = |e: std::io::Error| StoreError::Io(format!("fsync: {e}"));
        self.log_file.sync_all().map_err(io)?;
        self.sync_blobs().map_err(io)?;
        Ok(())
    }

    fn write_frames(&self, session_seq: u64, offset: u64, bytes: &[u8]) -> Result<(), StoreError> {
        self.frames.write(session_seq, offset, bytes)
    }

    fn close_frames(&self, session_seq: u64, end: u64) -> Result<(), StoreError> {
        self.frames.close(session_seq, end)
    }

    fn frames(&self, session_seq: u64) -> Result<ReadFrames, StoreError> {
        self.frames.read(session_seq)
    }

    fn remove_frames(&self, session_seq: u64) -> Result<(), StoreError> {
        self.frames.remove(session_seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::frame_files::{BlockBuilder, BlockPool, ALIGN, MAGIC};

    #[test]
    fn sled_store_orders_keys_numerically_and_removes_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 1 << 20).unwrap();
        for seq in [256u64, 1, 2, 255, 3] {
            store
                .insert(Tree::Audit, &seq_key(seq), &seq.to_le_bytes())
                .unwrap();
        }
        let keys: Vec<u64> = store
            .range_from(Tree::Audit, &seq_key(0))
            .map(|kv| key_seq(&kv.unwrap().0).unwrap())
            .collect();
        assert_eq!(keys, vec![1, 2, 3, 255, 256]);
        assert_eq!(
            key_seq(&store.last(Tree::Audit).unwrap().unwrap().0),
            Some(256)
        );
        assert_eq!(
            store
                .remove_range(Tree::Audit, &seq_key(0), &seq_key(255))
                .unwrap(),
            3
        );
        assert_eq!(
            key_seq(&store.first(Tree::Audit).unwrap().unwrap().0),
            Some(255)
        );
        let pool = BlockPool::new(ALIGN);
        let mut five = BlockBuilder::new(&pool).unwrap();
        let mut six = BlockBuilder::new(&pool).unwrap();
        five.push(&pool, &[b"b"], |_| {}).unwrap();
        six.push(&pool, &[b"c"], |_| {}).unwrap();
        five.push(&pool, &[b"a"], |_| {}).unwrap();
        for (seq, builder) in [(5, five), (6, six)] {
            let tail = builder.finish();
            store
                .write_frames(seq, tail.offset(), tail.filled())
                .unwrap();
        }
        store.close_frames(5, MAGIC.len() as u64 + 2 * 9).unwrap();
        store.flush().unwrap();
        assert_eq!(
            store.frames(5).unwrap().records,
            vec![b"b".to_vec(), b"a".to_vec()]
        );
        store.remove_frames(5).unwrap();
        assert!(store.frames(5).unwrap().records.is_empty());
        assert_eq!(store.frames(6).unwrap().records, vec![b"c".to_vec()]);
    }

    #[test]
    fn flush_syncs_large_values_written_as_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 1 << 20).unwrap();
        // Far above sled's inline item size: stored as a file under blobs/.
        let big = vec![7u8; 2 * 1024 * 1024];
        store.insert(Tree::Sessions, &seq_key(1), &big).unwrap();
        store.flush().unwrap();
        let blobs = std::fs::read_dir(dir.path().join("blobs")).unwrap().count();
        assert!(blobs > 0, "expected sled to write a blob file");
        assert_eq!(store.synced_blobs.lock().unwrap().len(), blobs);
        drop(store);
        let reopened = SledStore::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(
            reopened
                .get(Tree::Sessions, &seq_key(1))
                .unwrap()
                .as_deref(),
            Some(&big[..])
        );
    }

    #[test]
    fn open_existing_refuses_a_missing_directory() {
        let dir = tempfile::tempdir().unwrap();
        let err = SledStore::open_existing(&dir.path().join("nope"), 1 << 20)
            .err()
            .unwrap();
        assert!(matches!(err, StoreError::Missing { .. }), "{err}");
    }
}
