//! Session frames on disk: one append-only file per session (`<store>/frames/<seq>.frames`),
//! each frame a length- and CRC-prefixed record.
//!
//! Why not a sled tree: a session streams tens of MB/s of frames in 16–32 KiB pieces. sled
//! writes every value that large as a blob file of its own (and each needs an fsync), which
//! capped recording at ~50 MiB/s; an append-only file takes frames at the speed of `write(2)`.
//! The audit log, the session records and their ids stay in sled.
//!
//! Owns: the file layout, the record framing, the blocks frames are gathered in and how they
//! reach the disk. Must never: reorder or change a frame once written (a partial block is
//! rewritten only with the same bytes and more), or report a sync before what was written is
//! durable.
//!
//! Record: `len: u32 LE`, `crc32(payload): u32 LE`, `payload` (a postcard `FrameRecord`, never
//! empty). A file starts with [`MAGIC`]. A record cut short at the end of the file, a last
//! record whose CRC does not match, or zeros from a header of zeros to the end (the padding of
//! a direct-I/O block synced before the session ended) are the tail of an unclean stop and are
//! reported as such; a bad CRC anywhere else, or anything but zeros after a zero header, is
//! corruption.
//!
//! The data path lays records out in blocks ([`BlockBuilder`]: header, CRC and copy while the
//! data is in cache); the recorder's writer thread only writes whole blocks at their offsets
//! ([`FrameFiles::write`]), bypassing the page cache where the file system allows
//! ([`WriteMode::Direct`]), plus the part of a block filled so far, zero-padded, before a group
//! commit; a closed session's file is cut to its exact length.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};

use bytes::BytesMut;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
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

/// The length/CRC header of one record whose payload is `parts` concatenated. The checksum is
/// CRC-32 as zlib and gzip compute it.
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
        if header == [0; HEADER] {
            // The zero padding after the frames a direct-I/O sync wrote; an unclean stop left
            // it (a closed session's file is cut to its length). Anything but zeros after it
            // is damage.
            if rest.iter().any(|&b| b != 0) {
                return Err(corrupt(out.records.len(), at));
            }
            out.torn_tail_bytes = rest.len() as u64;
            break;
        }
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

/// `O_DIRECT` alignment of file offsets, lengths and buffers: the largest logical block size
/// in use (4096; 512-byte devices accept it too).
pub const ALIGN: usize = 4096;
/// The largest block a session's frames are gathered in before they go to the disk. Each write
/// costs the kernel (and on a virtual disk the hypervisor) work per request as well as per
/// page: on a Firecracker guest here, 2 MiB writes took a quarter of the system time of 256 KiB
/// ones for the same bytes.
pub const MAX_BLOCK: usize = 2 * 1024 * 1024;
/// A transparent huge page on x86-64 (and arm64 with 4 KiB pages). Blocks of at least
/// [`SLAB_MIN_BLOCK`] whose size divides it are cut from memory aligned to it and advised
/// `MADV_HUGEPAGE`: a block then lies in physically contiguous memory, so a direct write of it
/// is one request with one segment instead of up to 254 four-KiB ones (and pinning it for the
/// write takes one page reference, not 256). On this Firecracker guest that took the writer
/// thread's CPU from 0.018–0.020 to 0.007–0.015 s per 100 MB. Where THP is off, or the kernel
/// has no huge page free, the blocks are ordinary memory. Slabs are made by the writer thread
/// ([`BlockPool::provision`]).
pub const HUGE_PAGE: usize = 2 * 1024 * 1024;
/// The smallest block cut from a huge-page slab: smaller blocks (a quiet session's) stay in
/// ordinary memory, so an idle session does not pin a huge page's worth of memory.
pub const SLAB_MIN_BLOCK: usize = 256 * 1024;
/// A session's first block. Blocks double as a session fills them, up to the pool's largest:
/// a quiet interactive session holds little memory, a stream soon writes in large blocks.
pub const FIRST_BLOCK: usize = 64 * 1024;

/// How frames reach their file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// With `O_DIRECT`, bypassing the page cache: copying a fast stream into the page cache and
    /// writing it back cost the gateway more CPU than everything else recording does. Where the
    /// file system refuses `O_DIRECT` (or reports a stricter alignment), a file is written
    /// [`WriteMode::Buffered`].
    Direct,
    /// Through the page cache (the same bytes at the same offsets).
    Buffered,
}

/// One block of a session's frame file, filled in memory by the data path and written whole by
/// the recorder's writer thread: the file is the concatenation of its blocks. Its memory is
/// aligned for direct I/O.
pub struct FrameBlock {
    /// At least `start + size` bytes: the aligned window starts at `start` (0 for a block cut
    /// from a huge-page slab, below [`ALIGN`] for one allocated alone).
    mem: BytesMut,
    start: usize,
    size: usize,
    /// Bytes of the window in use.
    len: usize,
    /// Where the window goes in the file: the end of the session's previous block (a multiple
    /// of [`ALIGN`], as every block size is).
    offset: u64,
    /// Cut from a huge-page slab (see [`BlockPool::provision`]).
    slab: bool,
}

impl FrameBlock {
    fn with_memory(mem: BytesMut, size: usize, offset: u64) -> Result<Self, StoreError> {
        let start = mem.as_ptr().align_offset(ALIGN);
        if start >= ALIGN || mem.len() < start + size {
            return Err(StoreError::Io("cannot align a frame block".into()));
        }
        Ok(FrameBlock {
            mem,
            start,
            size,
            len: 0,
            offset,
            slab: false,
        })
    }

    /// Where this block's bytes go in the file.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The bytes written into the block so far.
    pub fn filled(&self) -> &[u8] {
        &self.mem[self.start..self.start + self.len]
    }

    /// The block's capacity.
    pub fn size(&self) -> usize {
        self.size
    }

    /// What to write so that the file holds this block's filled part, when it already holds
    /// the file's bytes up to `written_to`: from the aligned start of the first page not
    /// wholly written (direct I/O writes whole pages), as (file offset, bytes).
    pub fn unwritten_since(&self, written_to: u64) -> (u64, &[u8]) {
        let written = usize::try_from(written_to.saturating_sub(self.offset))
            .unwrap_or(usize::MAX)
            .min(self.len);
        let skip = written / ALIGN * ALIGN;
        (self.offset + skip as u64, &self.filled()[skip..])
    }

    /// The length of the file once this block is written (its end).
    pub fn end(&self) -> u64 {
        self.offset + self.len as u64
    }

    fn is_full(&self) -> bool {
        self.len == self.size
    }

    fn room(&self) -> usize {
        self.size - self.len
    }

    /// Zeros from the end of the filled part to the next multiple of [`ALIGN`], which become
    /// part of it (pooled memory holds an earlier block's bytes).
    fn pad_to_page(&mut self) {
        let padded = self.len.next_multiple_of(ALIGN).min(self.size);
        self.mem[self.start + self.len..self.start + padded].fill(0);
        self.len = padded;
    }

    /// Callers put at most [`FrameBlock::room`] bytes (the builder takes `room.min(rest)`, the
    /// magic is 8 bytes of a block of at least [`ALIGN`], the padding copy is sized to its input).
    fn put(&mut self, bytes: &[u8]) {
        let at = self.start + self.len;
        self.mem[at..at + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }
}

/// Memory for frame blocks, handed back by the writer once a block is written: a block is
/// reused rather than freshly allocated (a fresh one costs a page fault per 4 KiB on first
/// touch). Sizes are the first block's doubled, up to the largest.
///
/// Blocks of the sizes cut from huge-page slabs are made by the writer thread, never on the data
/// path: making a slab may take long (the kernel may compact memory to find a huge page, both
/// on the first touch of advised memory and for `MADV_COLLAPSE`), and a stalled worker thread
/// would stall every connection it serves. Until the writer has cut one, ordinary memory stands
/// in (and is not kept).
pub struct BlockPool {
    first: usize,
    largest: usize,
    /// Free memory by block size (for slab sizes, only slab memory).
    free: Mutex<HashMap<usize, Vec<BytesMut>>>,
    /// Bytes of free memory kept at most.
    keep_bytes: usize,
    /// Slab sizes the data path found no free block of: the writer cuts a slab for each.
    wanted: Mutex<Vec<usize>>,
}

impl BlockPool {
    /// Blocks of one size: `size` rounded down to a multiple of [`ALIGN`] within
    /// `ALIGN..=MAX_BLOCK`.
    pub fn new(size: usize) -> Self {
        Self::growing(size, size)
    }

    /// Blocks of `first` bytes, doubling up to `largest` (both rounded down to a multiple of
    /// [`ALIGN`] within `ALIGN..=MAX_BLOCK`; `largest` at least `first`). Keeps free memory for
    /// reuse up to ten of the largest blocks: a stream at the default queue has up to nine in use
    /// (eight queued, one filling), and a fresh one costs a page fault per 4 KiB.
    pub fn growing(first: usize, largest: usize) -> Self {
        let round = |n: usize| n.clamp(ALIGN, MAX_BLOCK) / ALIGN * ALIGN;
        let first = round(first);
        let largest = round(largest).max(first);
        Self {
            first,
            largest,
            free: Mutex::new(HashMap::new()),
            keep_bytes: 10 * largest,
            wanted: Mutex::new(Vec::new()),
        }
    }

    /// Blocks for a session queue of `queue_bytes`: at most an eighth of it, so backpressure
    /// (from half full) and the overflow policy see the queue fill in steps, not jump.
    pub fn for_queue(queue_bytes: usize) -> Self {
        let largest = queue_bytes / 8;
        Self::growing(FIRST_BLOCK.min(largest), largest)
    }

    /// The size of a session's first block.
    pub fn first_size(&self) -> usize {
        self.first
    }

    /// The size of the block that follows a full one of `size`.
    pub fn next_size(&self, size: usize) -> usize {
        size.saturating_mul(2).clamp(self.first, self.largest)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<usize, Vec<BytesMut>>> {
        self.free
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn take(&self, size: usize, offset: u64) -> Result<FrameBlock, StoreError> {
        let reused = self.lock().get_mut(&size).and_then(Vec::pop);
        // Free memory of a slab size is slab memory (`give` keeps no other).
        let (mem, slab) = match reused {
            Some(mem) => (mem, from_slab(size)),
            None => {
                if from_slab(size) {
                    self.want(size);
                }
                (BytesMut::zeroed(size + ALIGN), false)
            }
        };
        let mut block = FrameBlock::with_memory(mem, size, offset)?;
        block.slab = slab;
        Ok(block)
    }

    fn want(&self, size: usize) {
        let mut wanted = self
            .wanted
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !wanted.contains(&size) {
            wanted.push(size);
        }
    }

    /// Cuts one huge-page slab into free blocks for each slab size a `take` found none of. For
    /// the writer thread: there the time it may take holds up writes (and so, through the
    /// queue and backpressure, at worst slows a stream), never a worker thread.
    pub fn provision(&self) {
        let wanted = std::mem::take(
            &mut *self
                .wanted
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        for size in wanted {
            for block in huge_page_slab(size) {
                self.keep(size, block);
            }
        }
    }

    /// A copy of `bytes` (what a block holds at `offset` of its file) in pooled memory, its
    /// length zero-padded to a multiple of [`ALIGN`] so it goes to the disk as it is, with no
    /// further copy (the padding is what a direct write of a partial block leaves anyway). For
    /// the writer's partial writes: no fresh allocation and page faults every interval.
    pub fn padded_copy(&self, bytes: &[u8], offset: u64) -> Result<FrameBlock, StoreError> {
        let padded = bytes.len().next_multiple_of(ALIGN);
        let mut size = self.first;
        while size < padded && size < self.largest {
            size = self.next_size(size);
        }
        if size < padded {
            return pad_for_direct_io(bytes, offset);
        }
        let mut block = self.take(size, offset)?;
        block.put(bytes);
        block.pad_to_page();
        Ok(block)
    }

    /// Hands a written block's memory back. Ordinary memory that stood in for a slab block is
    /// let go, so a stream's blocks come from huge pages once the writer has cut them.
    pub fn give(&self, block: FrameBlock) {
        if from_slab(block.size) && !block.slab {
            return;
        }
        self.keep(block.size, block.mem);
    }

    /// Keeps a free block's memory while the pool holds less than `keep_bytes` (a slab's memory
    /// goes back to the allocator once none of its blocks is kept or in use).
    fn keep(&self, size: usize, mem: BytesMut) {
        let mut free = self.lock();
        let kept: usize = free.iter().map(|(size, mems)| size * mems.len()).sum();
        if kept + size <= self.keep_bytes {
            free.entry(size).or_default().push(mem);
        }
    }
}

/// Whether blocks of `size` are cut from huge-page slabs.
fn from_slab(size: usize) -> bool {
    (SLAB_MIN_BLOCK..=HUGE_PAGE).contains(&size) && HUGE_PAGE.is_multiple_of(size)
}

/// One huge page's worth of zeroed memory, aligned to [`HUGE_PAGE`] and backed by a transparent
/// huge page where the kernel can give one, cut into blocks of `size` (which divides it). The
/// blocks share the allocation; it is freed when the last of them is dropped.
fn huge_page_slab(size: usize) -> Vec<BytesMut> {
    // Twice the size leaves room to align; we never touch the part before the aligned start
    // or after its end (fresh from mmap, it costs address space, not memory).
    let mut whole = BytesMut::with_capacity(2 * HUGE_PAGE);
    let skip = whole.as_ptr().align_offset(HUGE_PAGE).min(HUGE_PAGE);
    let mut slab = whole.split_off(skip);
    drop(whole);
    let thp = transparent_huge_pages_allowed();
    // Advised before the first touch, a fresh mapping faults in as one huge page.
    if thp {
        advise(&mut slab, libc::MADV_HUGEPAGE, "MADV_HUGEPAGE");
    }
    slab.resize(HUGE_PAGE, 0);
    // malloc may have handed out memory it had used before (its mmap threshold adapts), which is
    // already backed by small pages: MADV_COLLAPSE (Linux 6.1+) turns them into a huge page now
    // (once per slab, which the pool then reuses; quick where the range already is one).
    if thp {
        advise(&mut slab, libc::MADV_COLLAPSE, "MADV_COLLAPSE");
    }
    let mut blocks = Vec::with_capacity(HUGE_PAGE / size);
    while slab.len() >= size {
        blocks.push(slab.split_to(size));
    }
    blocks
}

/// Gives the kernel `advice` for the first [`HUGE_PAGE`] bytes of `slab`'s capacity. A failure
/// (an old kernel, no THP, no huge page free) leaves the blocks in ordinary pages: logged, no
/// more.
fn advise(slab: &mut BytesMut, advice: libc::c_int, name: &str) {
    if slab.capacity() < HUGE_PAGE {
        return;
    }
    // SAFETY: the range is within `slab`'s capacity, memory this allocation owns; both advices
    // change how the kernel backs the pages, never their contents.
    let rc = unsafe { libc::madvise(slab.as_mut_ptr().cast(), HUGE_PAGE, advice) };
    if rc != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            advice = name,
            "frame blocks may be in ordinary pages"
        );
    }
}

/// False where the administrator switched transparent huge pages off (`never`): then frame
/// blocks do not ask for them either (MADV_COLLAPSE would not care).
fn transparent_huge_pages_allowed() -> bool {
    static ALLOWED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ALLOWED.get_or_init(|| {
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .is_ok_and(|mode| !mode.contains("[never]"))
    })
}

/// Lays a session's frame records out in blocks: the file's magic, then each record's header
/// and payload, cut into blocks of the pool's size. Pure apart from taking memory from the pool.
pub struct BlockBuilder {
    block: FrameBlock,
}

impl BlockBuilder {
    /// The first block of a new file, holding the magic.
    pub fn new(pool: &BlockPool) -> Result<Self, StoreError> {
        let mut block = pool.take(pool.first_size(), 0)?;
        block.put(MAGIC);
        Ok(Self { block })
    }

    /// The bytes of the blocks a record of `payload_len` bytes would fill up (what it adds to
    /// the session's queue).
    pub fn bytes_filled_by(&self, pool: &BlockPool, payload_len: usize) -> usize {
        let mut need = HEADER + payload_len;
        let (mut size, mut room) = (self.block.size, self.block.room());
        let mut filled = 0;
        while need >= room {
            need -= room;
            filled += size;
            size = pool.next_size(size);
            room = size;
        }
        filled
    }

    fn next_block(&self, pool: &BlockPool) -> Result<FrameBlock, StoreError> {
        pool.take(
            pool.next_size(self.block.size),
            self.block.offset + self.block.size as u64,
        )
    }

    /// Appends one record (its payload is `parts` concatenated; never empty), handing each
    /// block it fills to `full`, in file order.
    pub fn push(
        &mut self,
        pool: &BlockPool,
        parts: &[&[u8]],
        mut full: impl FnMut(FrameBlock),
    ) -> Result<(), StoreError> {
        let header = record_header(parts)?;
        if header[..4] == [0; 4] {
            // A zero header is where the padding of a synced partial block begins.
            return Err(StoreError::Io("an empty frame cannot be stored".into()));
        }
        for piece in std::iter::once(&header[..]).chain(parts.iter().copied()) {
            let mut rest = piece;
            while !rest.is_empty() {
                if self.block.is_full() {
                    let next = self.next_block(pool)?;
                    full(std::mem::replace(&mut self.block, next));
                }
                let n = self.block.room().min(rest.len());
                let (now, later) = rest.split_at(n);
                self.block.put(now);
                rest = later;
            }
        }
        if self.block.is_full() {
            let next = self.next_block(pool)?;
            full(std::mem::replace(&mut self.block, next));
        }
        Ok(())
    }

    /// The block being filled.
    pub fn current(&self) -> &FrameBlock {
        &self.block
    }

    /// The last, partly filled block (the session ended).
    pub fn finish(self) -> FrameBlock {
        self.block
    }
}

/// The frame files of one store: where the writer thread puts blocks.
pub struct FrameFiles {
    dir: PathBuf,
    mode: WriteMode,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Sessions being written.
    open: HashMap<u64, OpenFile>,
    /// Files written since the last sync (handles shared with `open`, or of closed sessions).
    unsynced: HashMap<u64, File>,
    /// A file was created or moved since the last sync: the directory must be synced too.
    created: bool,
}

struct OpenFile {
    file: File,
    /// Opened with `O_DIRECT`.
    direct: bool,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io(format!("{what} {}: {e}", path.display()))
}

impl FrameFiles {
    /// The frame files under `store_dir/frames` (created on first write), written with direct
    /// I/O where the file system takes it.
    pub fn new(store_dir: &Path) -> Self {
        Self::with_mode(store_dir, WriteMode::Direct)
    }

    pub fn with_mode(store_dir: &Path, mode: WriteMode) -> Self {
        Self {
            dir: store_dir.join("frames"),
            mode,
            state: Mutex::new(State::default()),
        }
    }

    fn path(&self, session_seq: u64) -> PathBuf {
        self.dir.join(format!("{session_seq:016x}.frames"))
    }

    /// Where a file found in the way of a new session is moved.
    fn orphan_path(&self, session_seq: u64) -> PathBuf {
        self.dir.join(format!("{session_seq:016x}.frames.orphaned"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether a session's open file is written with direct I/O.
    #[cfg(test)]
    fn is_direct(&self, session_seq: u64) -> bool {
        self.lock()
            .open
            .get(&session_seq)
            .is_some_and(|open| open.direct)
    }

    /// Creates the file of a session that starts writing frames now.
    fn create(&self, session_seq: u64) -> Result<OpenFile, StoreError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| io("create", &self.dir, e))?;
        let path = self.path(session_seq);
        // A file already there is from a session whose record an unclean stop lost after its
        // frames were synced, so its number is being used again: keep those frames aside
        // rather than mixing them into this session.
        if std::fs::metadata(&path).is_ok_and(|m| m.len() > 0) {
            let aside = self.orphan_path(session_seq);
            std::fs::rename(&path, &aside).map_err(|e| io("rename", &path, e))?;
            tracing::warn!(path = %aside.display(), "frames of a session whose record was lost moved aside");
        }
        if self.mode == WriteMode::Direct {
            let direct = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .custom_flags(libc::O_DIRECT)
                .open(&path);
            match direct {
                Ok(file) if direct_io_alignment_fits(&file) != Some(false) => {
                    return Ok(OpenFile { file, direct: true });
                }
                // Some network and FUSE file systems, ramfs, tmpfs before Linux 6.6.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::debug!(path = %path.display(), "no direct I/O here; frames go through the page cache");
                }
                Err(e) => return Err(io("open", &path, e)),
                // A stricter alignment than ours: through the page cache.
                Ok(_) => {}
            }
        }
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| io("open", &path, e))?;
        Ok(OpenFile {
            file,
            direct: false,
        })
    }

    /// Writes `bytes` at `offset` of a session's file (a block of its frames, whole or the part
    /// filled so far): handed to the OS now, durable at the next [`FrameFiles::sync`]. With
    /// direct I/O, bytes not aligned in memory or length are copied into an aligned buffer and
    /// padded with zeros (a later write of the block overwrites the padding).
    pub fn write(&self, session_seq: u64, offset: u64, bytes: &[u8]) -> Result<(), StoreError> {
        if bytes.is_empty() {
            return Ok(());
        }
        let mut state = self.lock();
        if !state.open.contains_key(&session_seq) {
            let open = self.create(session_seq)?;
            state.created = true;
            state.open.insert(session_seq, open);
        }
        let State { open, unsynced, .. } = &mut *state;
        let Some(OpenFile { file, direct }) = open.get(&session_seq) else {
            return Err(StoreError::Io("frame file vanished while open".into()));
        };
        if let std::collections::hash_map::Entry::Vacant(entry) = unsynced.entry(session_seq) {
            let handle = file
                .try_clone()
                .map_err(|e| io("open", &self.path(session_seq), e))?;
            entry.insert(handle);
        }
        let aligned = |n: usize| n.is_multiple_of(ALIGN);
        let result = if !*direct || (aligned(bytes.as_ptr() as usize) && aligned(bytes.len())) {
            file.write_all_at(bytes, offset)
        } else {
            let padded = pad_for_direct_io(bytes, offset)?;
            file.write_all_at(padded.filled(), offset)
        };
        result.map_err(|e| io("write", &self.path(session_seq), e))
    }

    /// The session ended: its file is cut to `end` bytes, its exact length (durable at the next
    /// [`FrameFiles::sync`]).
    pub fn close(&self, session_seq: u64, end: u64) -> Result<(), StoreError> {
        let Some(open) = self.lock().open.remove(&session_seq) else {
            return Ok(());
        };
        open.file
            .set_len(end)
            .map_err(|e| io("truncate", &self.path(session_seq), e))
    }

    /// Makes every block written so far durable: `fdatasync` each file written since the last
    /// sync (outside the lock, so writes go on meanwhile), then the directory if a file was
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

    /// Reads a session's frames: what has been written to its file (for a session still open,
    /// the frames its writer has written so far).
    pub fn read(&self, session_seq: u64) -> Result<ReadFrames, StoreError> {
        let path = self.path(session_seq);
        let bytes = read_file(&path)?;
        if bytes.is_empty() {
            return Ok(ReadFrames::default());
        }
        parse_records(&bytes).map_err(|e| match e {
            StoreError::Io(message) => StoreError::Io(format!("{}: {message}", path.display())),
            other => other,
        })
    }

    /// Deletes a session's frames (retention), and frames moved aside under its number.
    pub fn remove(&self, session_seq: u64) -> Result<(), StoreError> {
        {
            let mut state = self.lock();
            state.open.remove(&session_seq);
            state.unsynced.remove(&session_seq);
        }
        for path in [self.path(session_seq), self.orphan_path(session_seq)] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("remove", &path, e)),
            }
        }
        Ok(())
    }
}

/// `bytes` (for `offset` of a file) in freshly allocated aligned memory, zero-padded to a
/// multiple of [`ALIGN`].
fn pad_for_direct_io(bytes: &[u8], offset: u64) -> Result<FrameBlock, StoreError> {
    let size = bytes.len().next_multiple_of(ALIGN);
    let mut block = FrameBlock::with_memory(BytesMut::zeroed(size + ALIGN), size, offset)?;
    block.put(bytes);
    block.pad_to_page();
    Ok(block)
}

/// Whether `file`'s direct I/O takes [`ALIGN`]-aligned buffers, offsets and lengths, as the
/// kernel reports it (`statx` `STATX_DIOALIGN`, Linux 6.1+); `None` when it does not say (4096
/// suits every common device then).
fn direct_io_alignment_fits(file: &File) -> Option<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: `statx` is plain data; all zeros is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: a valid open descriptor, an empty NUL-terminated path with AT_EMPTY_PATH (so the
    // descriptor itself is examined), and a buffer of the right type for the kernel to fill.
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if rc != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 {
        return None;
    }
    let fits = |align: u32| align != 0 && ALIGN.is_multiple_of(align as usize);
    Some(fits(stx.stx_dio_mem_align) && fits(stx.stx_dio_offset_align))
}

/// A file's bytes; none if there is no file (a session that never produced a frame).
fn read_file(path: &Path) -> Result<Vec<u8>, StoreError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io("read", path, e)),
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
        let bytes = file_of(&[b"one", b"2", b"three"]);
        let read = parse_records(&bytes).unwrap();
        assert_eq!(
            read.records,
            vec![b"one".to_vec(), b"2".to_vec(), b"three".to_vec()]
        );
        assert_eq!(read.torn_tail_bytes, 0);
    }

    #[test]
    fn zero_padding_after_the_frames_is_a_torn_tail_and_anything_after_it_is_damage() {
        let mut bytes = file_of(&[b"one", b"two"]);
        let frames_end = bytes.len();
        bytes.resize(ALIGN, 0);
        let read = parse_records(&bytes).unwrap();
        assert_eq!(read.records, vec![b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(read.torn_tail_bytes as usize, ALIGN - frames_end);
        // Fewer zeros than a header: cut short, also a tail.
        let read = parse_records(&bytes[..frames_end + 3]).unwrap();
        assert_eq!(read.torn_tail_bytes, 3);
        bytes[ALIGN - 1] = 1;
        let err = parse_records(&bytes).unwrap_err().to_string();
        assert!(err.contains("frame 2"), "{err}");
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

    /// Whether this directory's file system takes `O_DIRECT`.
    fn direct_io_works(dir: &Path) -> bool {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(dir.join("probe"))
            .is_ok()
    }

    #[test]
    fn the_kernel_reports_a_direct_io_alignment_ours_fits_here() {
        let dir = tempfile::tempdir().unwrap();
        if !direct_io_works(dir.path()) {
            return;
        }
        let file = File::open(dir.path().join("probe")).unwrap();
        // This kernel (6.x) reports it for ext4; older ones may not (None is allowed then).
        assert_ne!(direct_io_alignment_fits(&file), Some(false));
    }

    /// A session as the recorder writes it: records laid out by a builder, full blocks written
    /// as they fill, the partial block written (and the files synced) when `sync` says so.
    struct Session<'a> {
        files: &'a FrameFiles,
        pool: &'a BlockPool,
        seq: u64,
        builder: BlockBuilder,
        synced_to: u64,
    }

    impl<'a> Session<'a> {
        fn new(files: &'a FrameFiles, pool: &'a BlockPool, seq: u64) -> Self {
            Session {
                files,
                pool,
                seq,
                builder: BlockBuilder::new(pool).unwrap(),
                synced_to: 0,
            }
        }

        fn push(&mut self, parts: &[&[u8]]) {
            let mut full = Vec::new();
            self.builder
                .push(self.pool, parts, |block| full.push(block))
                .unwrap();
            for block in full {
                assert_eq!(block.filled().len(), block.size());
                self.files
                    .write(self.seq, block.offset(), block.filled())
                    .unwrap();
                self.pool.give(block);
            }
        }

        /// Writes the partly filled block, from the page the last sync left unfinished (as the
        /// recorder's writer does), then syncs.
        fn sync(&mut self) {
            let (offset, bytes) = self.builder.current().unwritten_since(self.synced_to);
            self.files.write(self.seq, offset, bytes).unwrap();
            self.synced_to = self.builder.current().end();
            self.files.sync().unwrap();
        }

        fn close(self) {
            let tail = self.builder.finish();
            self.files
                .write(self.seq, tail.offset(), tail.filled())
                .unwrap();
            self.files.close(self.seq, tail.end()).unwrap();
        }
    }

    #[test]
    fn sessions_write_sync_close_read_and_remove_in_both_modes() {
        for mode in [WriteMode::Direct, WriteMode::Buffered] {
            let dir = tempfile::tempdir().unwrap();
            let files = FrameFiles::with_mode(dir.path(), mode);
            let pool = BlockPool::new(MAX_BLOCK);
            let mut seven = Session::new(&files, &pool, 7);
            let mut eight = Session::new(&files, &pool, 8);
            seven.push(&[b"a"]);
            eight.push(&[b"x"]);
            seven.push(&[b"b", b"", b"b"]);
            // Nothing written yet: the frames are in the sessions' blocks.
            assert!(files.read(7).unwrap().records.is_empty(), "{mode:?}");
            seven.sync();
            let direct = mode == WriteMode::Direct && direct_io_works(dir.path());
            assert_eq!(files.is_direct(7), direct, "{mode:?}");
            // On disk after a sync, before the end: the frames, then (direct) zero padding.
            let on_disk = std::fs::read(files.path(7)).unwrap();
            let parsed = parse_records(&on_disk).unwrap();
            assert_eq!(parsed.records, vec![b"a".to_vec(), b"bb".to_vec()]);
            assert_eq!(on_disk.len().is_multiple_of(ALIGN), direct, "{mode:?}");
            seven.push(&[b"ccc"]);
            seven.close();
            files.sync().unwrap();
            // Closed: cut to its exact length.
            let on_disk = std::fs::read(files.path(7)).unwrap();
            assert_eq!(on_disk.len(), MAGIC.len() + 3 * HEADER + 6, "{mode:?}");
            let parsed = parse_records(&on_disk).unwrap();
            assert_eq!(parsed.records.len(), 3);
            assert_eq!(parsed.torn_tail_bytes, 0, "{mode:?}");
            assert_eq!(files.read(7).unwrap().records.len(), 3);

            // A new session under a number whose file is there (its record was lost): the old
            // frames are moved aside, not mixed in; retention removes both.
            let again = FrameFiles::with_mode(dir.path(), mode);
            let mut seven = Session::new(&again, &pool, 7);
            seven.push(&[b"dddd"]);
            seven.close();
            assert_eq!(again.read(7).unwrap().records, vec![b"dddd".to_vec()]);
            let aside = std::fs::read(again.orphan_path(7)).unwrap();
            assert_eq!(parse_records(&aside).unwrap().records.len(), 3);
            assert!(again.read(99).unwrap().records.is_empty());
            again.remove(7).unwrap();
            assert!(again.read(7).unwrap().records.is_empty());
            assert!(!again.orphan_path(7).exists());
            eight.close();
            assert_eq!(files.read(8).unwrap().records, vec![b"x".to_vec()]);
            let mut builder = BlockBuilder::new(&pool).unwrap();
            assert!(
                builder.push(&pool, &[b""], |_| {}).is_err(),
                "empty frames are refused"
            );
        }
    }

    #[test]
    fn the_builder_says_how_many_block_bytes_a_record_fills() {
        let pool = BlockPool::new(ALIGN);
        let mut builder = BlockBuilder::new(&pool).unwrap();
        let room = ALIGN - MAGIC.len() - HEADER;
        assert_eq!(builder.bytes_filled_by(&pool, room - 1), 0);
        assert_eq!(builder.bytes_filled_by(&pool, room), ALIGN);
        assert_eq!(builder.bytes_filled_by(&pool, room + 2 * ALIGN), 3 * ALIGN);
        let mut full = Vec::new();
        builder
            .push(&pool, &[&vec![7; room + 2 * ALIGN]], |b| {
                full.push(b.offset())
            })
            .unwrap();
        assert_eq!(full, vec![0, ALIGN as u64, 2 * ALIGN as u64]);
        assert_eq!(builder.current().offset(), 3 * ALIGN as u64);
        assert!(builder.current().filled().is_empty());
    }

    #[test]
    fn the_checksum_is_the_standard_crc32_so_files_keep_their_format() {
        // The CRC-32 check value (zlib's crc32 of "123456789"), whatever crate computes it.
        let header = record_header(&[b"1234", b"56789"]).unwrap();
        assert_eq!(header[..4], 9u32.to_le_bytes());
        assert_eq!(header[4..], 0xCBF4_3926u32.to_le_bytes());
    }

    #[test]
    fn blocks_double_as_a_session_fills_them_up_to_the_largest() {
        let pool = BlockPool::growing(ALIGN, 4 * ALIGN);
        assert_eq!(
            (
                pool.first_size(),
                pool.next_size(ALIGN),
                pool.next_size(4 * ALIGN)
            ),
            (ALIGN, 2 * ALIGN, 4 * ALIGN)
        );
        let mut builder = BlockBuilder::new(&pool).unwrap();
        let room = ALIGN - MAGIC.len() - HEADER;
        // The first block's room, then blocks of 2, 4 and 4 pages, and one byte more.
        let payload = room + 10 * ALIGN + 1;
        assert_eq!(builder.bytes_filled_by(&pool, payload), 11 * ALIGN);
        let mut full = Vec::new();
        builder
            .push(&pool, &[&vec![1; payload]], |b| {
                full.push((b.offset(), b.size()))
            })
            .unwrap();
        let page = ALIGN as u64;
        assert_eq!(
            full,
            vec![
                (0, ALIGN),
                (page, 2 * ALIGN),
                (3 * page, 4 * ALIGN),
                (7 * page, 4 * ALIGN)
            ]
        );
        assert_eq!(builder.current().offset(), 11 * page);
        assert_eq!(builder.current().filled(), &[1]);
        // A queue's largest block is an eighth of it, within the bounds.
        let eight_mib = BlockPool::for_queue(8 << 20);
        assert_eq!(
            (eight_mib.first_size(), eight_mib.next_size(1 << 20)),
            (FIRST_BLOCK, 1 << 20)
        );
        // The default queue (16 MiB) writes the largest blocks.
        let default =
            BlockPool::for_queue(super::super::RecordConfig::default().session_queue_max_bytes);
        assert_eq!(default.next_size(1 << 20), MAX_BLOCK);
        let large = BlockPool::for_queue(64 << 20);
        assert_eq!(large.next_size(MAX_BLOCK), MAX_BLOCK);
        let small = BlockPool::for_queue(64 << 10);
        assert_eq!(
            (small.first_size(), small.next_size(8 << 10)),
            (8 << 10, 8 << 10)
        );
    }

    #[test]
    fn a_padded_copy_reuses_pooled_memory_and_zeros_its_padding() {
        let pool = BlockPool::growing(ALIGN, 4 * ALIGN);
        // Memory an earlier block filled with other bytes, back in the pool.
        let mut dirty = pool.take(2 * ALIGN, 0).unwrap();
        dirty.put(&vec![0xFF; 2 * ALIGN]);
        let dirty_at = dirty.filled().as_ptr();
        pool.give(dirty);

        let copy = pool.padded_copy(&[7; 5000], 3 * ALIGN as u64).unwrap();
        assert_eq!(
            copy.filled().as_ptr(),
            dirty_at,
            "the pooled block is reused"
        );
        assert_eq!((copy.offset(), copy.size()), (3 * ALIGN as u64, 2 * ALIGN));
        assert_eq!(copy.filled().len(), 2 * ALIGN);
        assert!(copy.filled()[..5000].iter().all(|&b| b == 7));
        assert!(copy.filled()[5000..].iter().all(|&b| b == 0));
        // Larger than a block of the pool's largest size: memory of its own, still padded.
        let big = pool.padded_copy(&[1; 4 * ALIGN + 1], 0).unwrap();
        assert_eq!(big.filled().len(), 5 * ALIGN);
        assert_eq!(big.filled().as_ptr().align_offset(ALIGN), 0);
        assert!(big.filled()[4 * ALIGN + 1..].iter().all(|&b| b == 0));
        // A page-multiple copy gets no padding.
        assert_eq!(
            pool.padded_copy(&[2; ALIGN], 0).unwrap().filled().len(),
            ALIGN
        );
    }

    #[test]
    fn large_blocks_are_cut_from_huge_pages_and_small_ones_are_not() {
        assert!(!from_slab(FIRST_BLOCK) && !from_slab(SLAB_MIN_BLOCK / 2));
        assert!(from_slab(SLAB_MIN_BLOCK) && from_slab(1 << 20) && from_slab(HUGE_PAGE));
        // An eighth of a 10 MB queue does not divide a huge page: ordinary memory.
        assert!(!from_slab(10_000_000 / 8 / ALIGN * ALIGN));

        let pool = BlockPool::for_queue(8 << 20);
        let small = pool.take(FIRST_BLOCK, 0).unwrap();
        assert_eq!(small.filled().as_ptr().align_offset(ALIGN), 0);
        pool.provision();
        assert!(pool.lock().is_empty(), "no slab for small blocks");
        // The data path never cuts a slab: ordinary memory stands in, the size is wanted...
        let stand_in = pool.take(1 << 20, 0).unwrap();
        assert!(!stand_in.slab);
        assert_eq!(stand_in.filled().as_ptr().align_offset(ALIGN), 0);
        // ...and the writer thread cuts it: the two 1 MiB halves of one huge page.
        pool.provision();
        let a = pool.take(1 << 20, 0).unwrap();
        let b = pool.take(1 << 20, 1 << 20).unwrap();
        assert!(a.slab && b.slab);
        let (a_at, b_at) = (a.mem.as_ptr() as usize, b.mem.as_ptr() as usize);
        assert_eq!((a.start, b.start), (0, 0));
        assert_eq!(a_at.abs_diff(b_at), 1 << 20);
        assert_eq!(a_at.min(b_at) % HUGE_PAGE, 0);
        // The stand-in is let go, the slab blocks are kept for reuse.
        pool.give(stand_in);
        assert!(pool.lock().get(&(1 << 20)).is_none_or(Vec::is_empty));
        pool.give(b);
        assert_eq!(pool.lock().get(&(1 << 20)).map(Vec::len), Some(1));
        assert!(pool.take(1 << 20, 0).unwrap().slab);

        // The mode, for the messages; whether to ask is the pool's own decision.
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .unwrap_or_default();
        if !transparent_huge_pages_allowed() {
            println!("SKIPPED the huge page check: transparent huge pages are off here ({thp:?})");
            return;
        }
        // The kernel backs the slab with one huge page (its own mapping once advised), unless it
        // had none to give (memory too fragmented: counted in /proc/vmstat).
        let collapse_failures = || {
            std::fs::read_to_string("/proc/vmstat")
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("thp_collapse_alloc_failed "))
                .and_then(|n| n.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let failures_before = collapse_failures();
        // As in a gateway that has run a while: freeing a large, touched buffer raises malloc's
        // mmap threshold, so the next slab comes from memory malloc has used (small pages).
        for _ in 0..4 {
            drop(std::hint::black_box(vec![1u8; 8 << 20]));
        }
        assert!(!pool.take(1 << 20, 2 << 20).unwrap().slab);
        pool.provision();
        let c = pool.take(1 << 20, 2 << 20).unwrap();
        let d = pool.take(1 << 20, 3 << 20).unwrap();
        assert!(c.slab && d.slab);
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let slab = (c.mem.as_ptr() as usize).min(d.mem.as_ptr() as usize);
        let mapping = smaps
            .split_inclusive('\n')
            .fold(Vec::<String>::new(), |mut maps, line| {
                let starts_mapping = line
                    .split_whitespace()
                    .next()
                    .is_some_and(|range| range.contains('-') && !range.ends_with(':'));
                match maps.last_mut() {
                    Some(last) if !starts_mapping => last.push_str(line),
                    _ => maps.push(line.to_owned()),
                }
                maps
            })
            .into_iter()
            .find(|map| {
                let range = map.split_whitespace().next().unwrap_or_default();
                let (start, end) = range.split_once('-').unwrap_or_default();
                let parse = |hex: &str| usize::from_str_radix(hex, 16).unwrap_or_default();
                (parse(start)..parse(end)).contains(&slab)
            })
            .expect("the slab's mapping is in smaps");
        let huge_kb: u64 = mapping
            .lines()
            .find_map(|l| l.strip_prefix("AnonHugePages:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        if huge_kb == 0 && collapse_failures() > failures_before {
            println!("SKIPPED the huge page check: the kernel had no huge page free");
            return;
        }
        assert!(mapping.contains(" hg"), "advised MADV_HUGEPAGE:\n{mapping}");
        assert!(
            huge_kb >= (HUGE_PAGE / 1024) as u64,
            "the slab should be one transparent huge page (THP: {thp:?}), its mapping says:\n{mapping}"
        );
    }

    #[test]
    fn a_partial_write_starts_at_the_first_page_not_wholly_written() {
        let pool = BlockPool::new(4 * ALIGN);
        let mut builder = BlockBuilder::new(&pool).unwrap();
        builder.push(&pool, &[&vec![3; 2 * ALIGN]], |_| {}).unwrap();
        let block = builder.current();
        let end = block.end();
        assert_eq!(block.unwritten_since(0), (0, block.filled()));
        let (offset, bytes) = block.unwritten_since(ALIGN as u64 + 5);
        assert_eq!(offset, ALIGN as u64);
        assert_eq!(bytes, &block.filled()[ALIGN..]);
        assert_eq!(offset + bytes.len() as u64, end);
        // Written to its end already: only the unfinished last page again.
        let (offset, bytes) = block.unwritten_since(end);
        assert_eq!(offset, 2 * ALIGN as u64);
        assert_eq!(offset + bytes.len() as u64, end);
    }

    /// A ramfs mounted on a fresh directory, unmounted on drop.
    struct Ramfs(tempfile::TempDir);

    impl Ramfs {
        fn mount() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let target = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: NUL-terminated strings that outlive the call; no mount data.
            let rc = unsafe {
                libc::mount(
                    c"ramfs".as_ptr(),
                    target.as_ptr(),
                    c"ramfs".as_ptr(),
                    0,
                    std::ptr::null(),
                )
            };
            assert_eq!(rc, 0, "mount ramfs: {}", std::io::Error::last_os_error());
            Ramfs(dir)
        }
    }

    impl Drop for Ramfs {
        fn drop(&mut self) {
            let target =
                std::ffi::CString::new(self.0.path().as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: a NUL-terminated path that outlives the call.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }

    #[test]
    fn a_file_system_refusing_direct_io_gets_files_through_the_page_cache() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            // CI runs as root; a developer's unprivileged run cannot mount.
            eprintln!("SKIPPED: mounting a ramfs needs root");
            return;
        }
        // ramfs has no direct I/O: opening with O_DIRECT fails with EINVAL there.
        let ramfs = Ramfs::mount();
        assert!(!direct_io_works(ramfs.0.path()));
        let files = FrameFiles::new(ramfs.0.path());
        let pool = BlockPool::new(MAX_BLOCK);
        let mut session = Session::new(&files, &pool, 3);
        session.push(&[b"first"]);
        session.sync();
        assert!(!files.is_direct(3));
        session.push(&[b"sec", b"ond"]);
        session.close();
        files.sync().unwrap();
        let on_disk = std::fs::read(files.path(3)).unwrap();
        assert_eq!(on_disk.len(), MAGIC.len() + 2 * HEADER + 11);
        let read = files.read(3).unwrap();
        assert_eq!(read.records, vec![b"first".to_vec(), b"second".to_vec()]);
        assert_eq!(read.torn_tail_bytes, 0);
    }

    #[test]
    fn frames_across_many_blocks_round_trip_in_both_modes() {
        for mode in [WriteMode::Direct, WriteMode::Buffered] {
            for (first, largest) in [(ALIGN, ALIGN), (MAX_BLOCK, MAX_BLOCK), (ALIGN, 8 * ALIGN)] {
                let block_size = format!("blocks {first}..{largest}");
                let dir = tempfile::tempdir().unwrap();
                let files = FrameFiles::with_mode(dir.path(), mode);
                let pool = BlockPool::growing(first, largest);
                let mut session = Session::new(&files, &pool, 1);
                let mut expected = Vec::new();
                // Sizes around and across the block size, synced now and then mid-block.
                for (i, size) in [
                    1,
                    MAX_BLOCK - 20,
                    3,
                    MAX_BLOCK,
                    2 * MAX_BLOCK + 5,
                    4095,
                    4096,
                    70_000,
                ]
                .into_iter()
                .enumerate()
                {
                    let payload: Vec<u8> = (0..size).map(|j| ((i * 31 + j) % 251) as u8).collect();
                    let (head, tail) = payload.split_at(size / 2);
                    session.push(&[head, tail]);
                    expected.push(payload);
                    if i % 3 == 0 {
                        session.sync();
                        // What a crash now leaves: every frame pushed so far.
                        let read = files.read(1).unwrap();
                        assert_eq!(read.records, expected, "{mode:?} {block_size} frame {i}");
                    }
                }
                session.close();
                files.sync().unwrap();
                let read = files.read(1).unwrap();
                assert_eq!(read.records, expected, "{mode:?} {block_size}");
                assert_eq!(read.torn_tail_bytes, 0);
            }
        }
    }
}
