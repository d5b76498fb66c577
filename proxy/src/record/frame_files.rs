//! Session frames on disk: one append-only file per session (`<store>/frames/<seq>.frames`),
//! each frame a length- and CRC-prefixed record.
//!
//! Why not a sled tree: a session streams tens of MB/s of frames in 16–32 KiB pieces. sled
//! writes every value that large as a blob file of its own (and each needs an fsync), which
//! capped recording at ~50 MiB/s; an append-only file takes frames at the speed of `write(2)`.
//! The audit log, the session records and their ids stay in sled.
//!
//! Owns: the file layout and the record framing. Must never: reorder or rewrite a frame once
//! written, or keep frames only in memory past [`FrameFiles::sync`] (that is the group commit
//! the recorder's flusher runs; a crash loses at most what was appended since).
//!
//! Record: `len: u32 LE`, `crc32(payload): u32 LE`, `payload` (a postcard `FrameRecord`).
//! A file starts with [`MAGIC`]. A record cut short at the end of the file, or a last record
//! whose CRC does not match, is the tail of an unclean stop and is reported as such; a bad CRC
//! anywhere else is corruption.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{IoSlice, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::store::StoreError;

/// The first bytes of every frame file (`PCFRAMES`, version 1).
pub const MAGIC: &[u8; 8] = b"PCFRAME1";
const HEADER: usize = 8;
/// Bigger frames are refused on write and treated as corruption on read.
pub const MAX_RECORD: usize = 64 << 20;

/// The frames of one session as read back.
#[derive(Debug, Default)]
pub struct ReadFrames {
    pub records: Vec<Vec<u8>>,
    /// Bytes at the end of the file that did not form a whole record (an unclean stop).
    pub torn_tail_bytes: u64,
}

/// The length/CRC header of one record whose payload is `parts` concatenated.
pub fn record_header(parts: &[&[u8]]) -> Result<[u8; HEADER], StoreError> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if len > MAX_RECORD {
        return Err(StoreError::Io(format!(
            "a frame of {len} bytes is larger than the {MAX_RECORD}-byte limit"
        )));
    }
    let mut crc = crc32fast::Hasher::new();
    for part in parts {
        crc.update(part);
    }
    let mut header = [0; HEADER];
    header[..4].copy_from_slice(&(len as u32).to_le_bytes());
    header[4..].copy_from_slice(&crc.finalize().to_le_bytes());
    Ok(header)
}

/// Splits a frame file's bytes into records. Pure: the reader's whole decision about what is
/// a torn tail and what is corruption lives here.
pub fn parse_records(bytes: &[u8]) -> Result<ReadFrames, StoreError> {
    let body = match bytes.strip_prefix(MAGIC.as_slice()) {
        Some(body) => body,
        // A crash right after creating the file can leave it shorter than the magic.
        None if bytes.len() < MAGIC.len() && MAGIC.starts_with(bytes) => {
            return Ok(ReadFrames {
                records: Vec::new(),
                torn_tail_bytes: bytes.len() as u64,
            })
        }
        None => return Err(StoreError::Io("not a portcullis frame file".into())),
    };
    let mut out = ReadFrames::default();
    let mut at = 0usize;
    while at < body.len() {
        let rest = &body[at..];
        let Some(header) = rest.get(..HEADER) else {
            out.torn_tail_bytes = rest.len() as u64;
            break;
        };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let end = HEADER.saturating_add(len);
        let Some(payload) = rest.get(HEADER..end).filter(|_| len <= MAX_RECORD) else {
            if len > MAX_RECORD && rest.len() > HEADER + MAX_RECORD {
                return Err(corrupt(out.records.len(), at));
            }
            out.torn_tail_bytes = rest.len() as u64;
            break;
        };
        if crc32fast::hash(payload) != crc {
            if end == rest.len() {
                out.torn_tail_bytes = rest.len() as u64;
                break;
            }
            return Err(corrupt(out.records.len(), at));
        }
        out.records.push(payload.to_vec());
        at += end;
    }
    Ok(out)
}

fn corrupt(index: usize, offset: usize) -> StoreError {
    StoreError::Io(format!(
        "frame {index} (at byte {}) does not match its checksum: the file was changed",
        offset + MAGIC.len()
    ))
}

/// The frame files of one store.
pub struct FrameFiles {
    dir: PathBuf,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Sessions being written. Unbuffered: each frame is one `writev(2)`, so a killed process
    /// loses no frame that reached the writer thread.
    open: HashMap<u64, File>,
    /// Files written since the last sync (handles shared with `open`, or of closed sessions).
    unsynced: HashMap<u64, File>,
    /// A file was created since the last sync: the directory entry must be synced too.
    created: bool,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io(format!("{what} {}: {e}", path.display()))
}

impl FrameFiles {
    /// The frame files under `store_dir/frames` (created on first write).
    pub fn new(store_dir: &Path) -> Self {
        Self {
            dir: store_dir.join("frames"),
            state: Mutex::new(State::default()),
        }
    }

    fn path(&self, session_seq: u64) -> PathBuf {
        self.dir.join(format!("{session_seq:016x}.frames"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends one frame, its payload given as `parts` (concatenated; the data path hands over
    /// an encoded prefix and the stream's own buffers, so nothing is copied to join them):
    /// written to the OS now, durable at the next [`FrameFiles::sync`].
    pub fn append(&self, session_seq: u64, parts: &[&[u8]]) -> Result<(), StoreError> {
        let header = record_header(parts)?;
        let mut state = self.lock();
        if !state.open.contains_key(&session_seq) {
            let path = self.path(session_seq);
            std::fs::create_dir_all(&self.dir).map_err(|e| io("create", &self.dir, e))?;
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| io("open", &path, e))?;
            let fresh = file.metadata().map_err(|e| io("stat", &path, e))?.len() == 0;
            let handle = file.try_clone().map_err(|e| io("open", &path, e))?;
            if fresh {
                (&file)
                    .write_all(MAGIC)
                    .map_err(|e| io("write", &path, e))?;
                state.created = true;
            }
            state.unsynced.insert(session_seq, handle);
            state.open.insert(session_seq, file);
        } else if !state.unsynced.contains_key(&session_seq) {
            let handle = state.open.get(&session_seq).map(|file| file.try_clone());
            if let Some(handle) = handle {
                let handle = handle.map_err(|e| io("open", &self.path(session_seq), e))?;
                state.unsynced.insert(session_seq, handle);
            }
        }
        let Some(mut file) = state.open.get(&session_seq) else {
            return Err(StoreError::Io("frame file vanished while open".into()));
        };
        // One writev per frame (header and payload parts without copying them together). A
        // record of more parts than one writev takes is written in several calls, which is
        // just as whole once all returned.
        let mut slices = Vec::with_capacity(parts.len() + 1);
        slices.push(IoSlice::new(&header));
        slices.extend(parts.iter().map(|p| IoSlice::new(p)));
        let mut remaining: &mut [IoSlice<'_>] = &mut slices;
        while !remaining.is_empty() {
            match file.write_vectored(remaining) {
                Ok(0) => {
                    return Err(io(
                        "write",
                        &self.path(session_seq),
                        std::io::ErrorKind::WriteZero.into(),
                    ))
                }
                Ok(n) => IoSlice::advance_slices(&mut remaining, n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io("write", &self.path(session_seq), e)),
            }
        }
        Ok(())
    }

    /// The session ended: its file is closed (and still synced at the next
    /// [`FrameFiles::sync`]).
    pub fn close(&self, session_seq: u64) -> Result<(), StoreError> {
        self.lock().open.remove(&session_seq);
        Ok(())
    }

    /// Makes every frame appended so far durable: `fdatasync` each file written since the last
    /// sync (outside the lock, so appends go on meanwhile), then the directory if a file was
    /// created.
    pub fn sync(&self) -> Result<(), StoreError> {
        let (files, created) = {
            let mut state = self.lock();
            let created = std::mem::take(&mut state.created);
            (std::mem::take(&mut state.unsynced), created)
        };
        for (seq, file) in files {
            file.sync_data()
                .map_err(|e| io("fsync", &self.path(seq), e))?;
        }
        if created {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io("fsync", &self.dir, e))?;
        }
        Ok(())
    }

    /// Reads a session's frames (everything appended, synced or not).
    pub fn read(&self, session_seq: u64) -> Result<ReadFrames, StoreError> {
        let path = self.path(session_seq);
        match std::fs::read(&path) {
            Ok(bytes) => parse_records(&bytes).map_err(|e| match e {
                StoreError::Io(message) => StoreError::Io(format!("{}: {message}", path.display())),
                other => other,
            }),
            // A session that never produced a frame has no file.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ReadFrames::default()),
            Err(e) => Err(io("read", &path, e)),
        }
    }

    /// Deletes a session's frames (retention).
    pub fn remove(&self, session_seq: u64) -> Result<(), StoreError> {
        {
            let mut state = self.lock();
            state.open.remove(&session_seq);
            state.unsynced.remove(&session_seq);
        }
        let path = self.path(session_seq);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("remove", &path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_of(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        for p in payloads {
            out.extend_from_slice(&record_header(&[p]).unwrap());
            out.extend_from_slice(p);
        }
        out
    }

    #[test]
    fn records_round_trip_in_order() {
        let bytes = file_of(&[b"one", b"", b"three"]);
        let read = parse_records(&bytes).unwrap();
        assert_eq!(
            read.records,
            vec![b"one".to_vec(), vec![], b"three".to_vec()]
        );
        assert_eq!(read.torn_tail_bytes, 0);
    }

    #[test]
    fn a_record_cut_short_at_the_end_is_a_torn_tail_not_an_error() {
        let bytes = file_of(&[b"one", b"two-two"]);
        for cut in 1..(HEADER + 7) {
            let read = parse_records(&bytes[..bytes.len() - cut]).unwrap();
            assert_eq!(read.records, vec![b"one".to_vec()], "cut {cut}");
            assert_eq!(read.torn_tail_bytes as usize, HEADER + 7 - cut);
        }
        // Cut inside the magic of a file created just before a crash.
        let read = parse_records(&MAGIC[..3]).unwrap();
        assert!(read.records.is_empty());
    }

    #[test]
    fn a_bad_checksum_before_the_end_is_corruption() {
        let mut bytes = file_of(&[b"one", b"two", b"three"]);
        let second_payload = MAGIC.len() + HEADER + 3 + HEADER;
        bytes[second_payload] ^= 1;
        let err = parse_records(&bytes).unwrap_err().to_string();
        assert!(err.contains("frame 1"), "{err}");
        // The same damage in the last record is what a crash mid-write leaves.
        let mut bytes = file_of(&[b"one", b"two"]);
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let read = parse_records(&bytes).unwrap();
        assert_eq!(read.records, vec![b"one".to_vec()]);
        assert_eq!(read.torn_tail_bytes as usize, HEADER + 3);
        assert!(parse_records(b"something else entirely").is_err());
    }

    #[test]
    fn files_append_close_sync_read_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let files = FrameFiles::new(dir.path());
        files.append(7, &[b"a"]).unwrap();
        files.append(8, &[b"x"]).unwrap();
        files.append(7, &[b"b", b"", b"b"]).unwrap();
        files.sync().unwrap();
        assert_eq!(
            files.read(7).unwrap().records,
            vec![b"a".to_vec(), b"bb".to_vec()]
        );
        files.append(7, &[b"ccc"]).unwrap();
        files.close(7).unwrap();
        files.sync().unwrap();
        assert_eq!(files.read(7).unwrap().records.len(), 3);
        // A reopened store appends after what is there.
        let again = FrameFiles::new(dir.path());
        again.append(7, &[b"dddd"]).unwrap();
        again.close(7).unwrap();
        let read = again.read(7).unwrap();
        assert_eq!(read.records.last().unwrap(), b"dddd");
        assert_eq!(read.records.len(), 4);
        assert!(again.read(99).unwrap().records.is_empty());
        again.remove(7).unwrap();
        assert!(again.read(7).unwrap().records.is_empty());
        assert_eq!(files.read(8).unwrap().records, vec![b"x".to_vec()]);
    }
}
