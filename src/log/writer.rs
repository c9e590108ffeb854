//! The appending side of the log: [`LogWriter`].

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::fault::Faults;
use super::file::{self, encode_record, io_err, FILE_HEADER_LEN, RECORD_HEADER_LEN};
use super::{FsyncPolicy, LogConfig, LogError, RecordHeader};

/// Initial capacity of the write buffer.
const BUF_CAPACITY: usize = 1 << 20;
/// `append` writes the buffer out (without syncing) once it holds this much.
const FLUSH_AT: usize = 8 << 20;
/// Above this capacity the buffer is given back to the allocator after a write.
const MAX_RETAINED: usize = 4 * FLUSH_AT;

/// A point in the write buffer where a new log file begins.
#[derive(Clone, Copy, Debug)]
struct Split {
    at: usize,
    epoch: u64,
    seq: u64,
}

/// The end of the last successful [`LogWriter::commit`]: the log is trusted up to
/// here, and [`LogWriter::recover`] cuts it back to here.
#[derive(Clone, Debug)]
struct Committed {
    path: PathBuf,
    /// The file's length up to the end of the last committed record.
    len: u64,
    epoch: u64,
    seq: u64,
}

/// Appends records to the log. Obtained from [`super::open`].
///
/// Records are encoded into an in-memory buffer by [`append`](Self::append)
/// and written and synced by [`commit`](Self::commit) (one `fdatasync` per
/// commit, however many records it holds). After an I/O error the writer
/// refuses further work ([`LogError::Poisoned`]) until [`recover`](Self::recover)
/// cuts the log back to the end of the last successful commit: after a failed
/// write or fsync the state of what followed it is unknown.
///
/// A failed **write** (a full disk) leaves earlier writes sound: recovery is
/// always possible. A failed **fsync** is another matter: Linux reports a
/// writeback error once and may then drop the dirty pages and mark them clean
/// (PostgreSQL's "fsyncgate"), so a retried fsync can succeed over lost data.
/// Under `fsync = "always"` the only pages not yet synced belong to the failed
/// commit, which nobody was told is durable: cutting them off (truncate, then
/// fsync) is safe. Under `interval` and `never` earlier, already acknowledged
/// records may be among them: the writer then stays poisoned
/// ([`recoverable`](Self::recoverable) is false), and only a restart, which
/// replays what the disk really holds, goes on.
#[derive(Debug)]
pub struct LogWriter {
    dir: PathBuf,
    file_bytes: u64,
    fsync: FsyncPolicy,
    fsync_interval: Duration,
    /// The tail file, opened for writing at its end.
    file: File,
    path: PathBuf,
    /// Length of the tail file counting records still in `buf`.
    tail_len: u64,
    /// Encoded records not yet written to a file.
    buf: Vec<u8>,
    /// File boundaries inside `buf`, in order.
    splits: Vec<Split>,
    next_epoch: u64,
    next_seq: u64,
    /// Every record before this (epoch, seq) has been written to a file.
    written: (u64, u64),
    /// Every record before this (epoch, seq) has been fsynced.
    durable: (u64, u64),
    /// The tail file holds written data that was not fsynced yet.
    dirty: bool,
    last_sync: Instant,
    /// Fsync time accumulated since the last `commit`/`sync` returned.
    fsync_time: Duration,
    poisoned: bool,
    /// False after an fsync failure that may have lost acknowledged records.
    recoverable: bool,
    committed: Committed,
    faults: Arc<Faults>,
}

impl LogWriter {
    /// A writer continuing the tail file `file` (of length `len`), whose
    /// next record is (`next_epoch`, `next_seq`); everything before it is durable.
    pub(crate) fn new(
        cfg: &LogConfig,
        file: File,
        path: PathBuf,
        len: u64,
        next_epoch: u64,
        next_seq: u64,
    ) -> Self {
        let committed = Committed {
            path: path.clone(),
            len,
            epoch: next_epoch,
            seq: next_seq,
        };
        LogWriter {
            dir: cfg.dir.clone(),
            file_bytes: cfg.file_bytes,
            fsync: cfg.fsync,
            fsync_interval: cfg.fsync_interval,
            file,
            path,
            tail_len: len,
            buf: Vec::with_capacity(BUF_CAPACITY),
            splits: Vec::new(),
            next_epoch,
            next_seq,
            written: (next_epoch, next_seq),
            durable: (next_epoch, next_seq),
            dirty: false,
            last_sync: Instant::now(),
            fsync_time: Duration::ZERO,
            poisoned: false,
            recoverable: true,
            committed,
            faults: Arc::default(),
        }
    }

    /// Makes writes or fsyncs fail on demand (tests of disk faults).
    pub fn set_faults(&mut self, faults: Arc<Faults>) {
        self.faults = faults;
    }

    /// Whether [`recover`](Self::recover) may be tried after a failure: false once
    /// an fsync failed under a policy that acknowledges before syncing.
    pub fn recoverable(&self) -> bool {
        self.recoverable
    }

    /// After a failed write or fsync: cuts the log back to the end of the last
    /// successful commit (log files begun since are removed, the tail file is
    /// truncated and fsynced, and so is the directory) and makes the writer usable
    /// again, expecting the record after that commit. What was appended since is
    /// gone; nothing of it was reported committed. Fails (and may be tried again)
    /// while the disk still fails; refused when not [`recoverable`](Self::recoverable).
    pub fn recover(&mut self) -> Result<(), LogError> {
        if !self.recoverable {
            return Err(LogError::Poisoned);
        }
        let c = self.committed.clone();
        let first_epoch = |p: &Path| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(file::parse_file_name)
        };
        let keep = first_epoch(&c.path);
        for f in file::list_files(&self.dir)? {
            if keep.is_some_and(|k| f.epoch > k) {
                std::fs::remove_file(&f.path).map_err(io_err("remove log file", &f.path))?;
            }
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&c.path)
            .map_err(io_err("reopen log file", &c.path))?;
        file.set_len(c.len)
            .map_err(io_err("truncate log file", &c.path))?;
        if let Some(source) = self.faults.sync_error() {
            return Err(LogError::Io {
                op: "fsync log file",
                path: c.path,
                source,
            });
        }
        file.sync_all().map_err(io_err("fsync log file", &c.path))?;
        file::sync_dir(&self.dir)?;
        use std::io::Seek;
        file.seek(std::io::SeekFrom::End(0))
            .map_err(io_err("seek log file", &c.path))?;
        self.file = file;
        self.path = c.path;
        self.tail_len = c.len;
        self.buf.clear();
        self.splits.clear();
        self.next_epoch = c.epoch;
        self.next_seq = c.seq;
        self.written = (c.epoch, c.seq);
        self.durable = (c.epoch, c.seq);
        self.dirty = false;
        self.poisoned = false;
        tracing::info!(path = %self.path.display(), len = c.len, next_seq = c.seq, "log: cut back to the last commit after a failure");
        Ok(())
    }

    /// Appends one record to the write buffer; no system call unless the
    /// buffer has grown large (then it is written out, not synced).
    ///
    /// `header.epoch` must be [`next_epoch`](Self::next_epoch) and
    /// `header.first_seq` [`next_seq`](Self::next_seq), else
    /// [`LogError::OutOfOrder`] (and nothing changes).
    pub fn append(&mut self, header: &RecordHeader, payload: &[u8]) -> Result<(), LogError> {
        if self.poisoned {
            return Err(LogError::Poisoned);
        }
        if header.epoch != self.next_epoch || header.first_seq != self.next_seq {
            return Err(LogError::OutOfOrder {
                expected_epoch: self.next_epoch,
                expected_seq: self.next_seq,
                epoch: header.epoch,
                first_seq: header.first_seq,
            });
        }
        let len = u32::try_from(payload.len())
            .map_err(|_| LogError::RecordTooLarge { len: payload.len() })?;
        let next_seq = self
            .next_seq
            .checked_add(u64::from(header.count))
            .ok_or(LogError::Overflow)?;
        let next_epoch = self.next_epoch.checked_add(1).ok_or(LogError::Overflow)?;

        // Rotate at a record boundary: a file that already reached its size
        // (and holds at least one record) takes no more records.
        if self.tail_len >= self.file_bytes && self.tail_len > FILE_HEADER_LEN {
            self.splits.push(Split {
                at: self.buf.len(),
                epoch: header.epoch,
                seq: header.first_seq,
            });
            self.tail_len = FILE_HEADER_LEN;
        }
        encode_record(&mut self.buf, header, payload);
        self.tail_len += RECORD_HEADER_LEN + u64::from(len);
        self.next_epoch = next_epoch;
        self.next_seq = next_seq;

        if self.buf.len() >= FLUSH_AT {
            self.write_out()?;
        }
        Ok(())
    }

    /// Writes the buffered records to the log files and makes them durable
    /// according to the policy: `Always` fdatasyncs on every call, `Interval`
    /// when `fsync_interval` has passed since the last fsync, `Never` only
    /// writes. Returns the time spent in fsync (including that of file
    /// rotations since the last call), `Duration::ZERO` if none.
    ///
    /// A file that reached [`LogConfig::file_bytes`] is closed durably (its
    /// data fsynced) and the next one is created durably (file and directory
    /// fsynced) before the first record that goes into it is written.
    pub fn commit(&mut self) -> Result<Duration, LogError> {
        if self.poisoned {
            return Err(LogError::Poisoned);
        }
        self.write_out()?;
        let sync = match self.fsync {
            FsyncPolicy::Always => true,
            FsyncPolicy::Interval => self.last_sync.elapsed() >= self.fsync_interval,
            FsyncPolicy::Never => false,
        };
        if sync {
            self.sync_tail()?;
        }
        self.mark_committed();
        Ok(std::mem::take(&mut self.fsync_time))
    }

    fn mark_committed(&mut self) {
        self.committed = Committed {
            path: self.path.clone(),
            len: self.tail_len,
            epoch: self.next_epoch,
            seq: self.next_seq,
        };
    }

    /// Writes and fdatasyncs everything appended so far, whatever the policy
    /// (for `Interval`/`Never` at shutdown, or from a timer). Returns the time
    /// spent in fsync.
    pub fn sync(&mut self) -> Result<Duration, LogError> {
        if self.poisoned {
            return Err(LogError::Poisoned);
        }
        self.write_out()?;
        self.sync_tail()?;
        self.mark_committed();
        Ok(std::mem::take(&mut self.fsync_time))
    }

    /// Syncs everything appended so far and closes the log, reporting errors
    /// that dropping the writer would only log.
    pub fn close(mut self) -> Result<(), LogError> {
        self.sync().map(drop)
    }

    /// The sequence number the next record must start at.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The epoch the next record must have.
    pub fn next_epoch(&self) -> u64 {
        self.next_epoch
    }

    /// Every event with a sequence number below this is known to be on disk
    /// (fsynced). Equals [`next_seq`](Self::next_seq) after a `commit` under
    /// `Always`; may lag behind under `Interval` and `Never`.
    pub fn durable_next_seq(&self) -> u64 {
        self.durable.1
    }

    /// Every record with an epoch below this is known to be on disk (fsynced).
    pub fn durable_next_epoch(&self) -> u64 {
        self.durable.0
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The log file records are currently written to.
    pub fn current_file(&self) -> &Path {
        &self.path
    }

    /// Writes the buffer out (rotating at its split points), without syncing
    /// the tail. Poisons the writer on failure.
    fn write_out(&mut self) -> Result<(), LogError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let result = self.write_out_inner();
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    fn write_out_inner(&mut self) -> Result<(), LogError> {
        let mut buf = std::mem::take(&mut self.buf);
        let splits = std::mem::take(&mut self.splits);
        let mut start = 0;
        for split in splits {
            self.write_file(&buf[start..split.at])?;
            self.rotate(split.epoch, split.seq)?;
            start = split.at;
        }
        self.write_file(&buf[start..])?;
        self.written = (self.next_epoch, self.next_seq);
        if buf.capacity() > MAX_RETAINED {
            buf = Vec::with_capacity(BUF_CAPACITY);
        } else {
            buf.clear();
        }
        self.buf = buf;
        Ok(())
    }

    fn write_file(&mut self, data: &[u8]) -> Result<(), LogError> {
        if !data.is_empty() {
            if let Some(source) = self.faults.write_error() {
                // As a disk that fills up mid-write: part lands, then the error.
                self.dirty = true;
                let _ = self.file.write_all(&data[..data.len() / 2]);
                return Err(LogError::Io {
                    op: "write",
                    path: self.path.clone(),
                    source,
                });
            }
            self.dirty = true;
            self.file
                .write_all(data)
                .map_err(io_err("write", &self.path))?;
        }
        Ok(())
    }

    /// Closes the tail file durably and starts a new one at (`epoch`, `seq`).
    fn rotate(&mut self, epoch: u64, seq: u64) -> Result<(), LogError> {
        if self.dirty {
            self.sync_data()?;
        }
        self.durable = (epoch, seq);
        let (file, path, fsync_time) = file::create_file(&self.dir, epoch, seq)?;
        self.fsync_time += fsync_time;
        tracing::debug!(closed = %self.path.display(), opened = %path.display(), "log: rotated file");
        self.file = file;
        self.path = path;
        Ok(())
    }

    /// Fdatasyncs the tail file (everything written is then durable).
    fn sync_tail(&mut self) -> Result<(), LogError> {
        if self.dirty {
            self.sync_data()?;
            self.last_sync = Instant::now();
        }
        self.durable = self.written;
        Ok(())
    }

    /// Fdatasyncs the current file. A failure poisons the writer, and under a
    /// policy that acknowledges before syncing, for good (see the type's docs).
    fn sync_data(&mut self) -> Result<(), LogError> {
        let started = Instant::now();
        let result = match self.faults.sync_error() {
            Some(e) => Err(e),
            None => self.file.sync_data(),
        };
        if let Err(source) = result {
            self.poisoned = true;
            if self.fsync != FsyncPolicy::Always {
                self.recoverable = false;
            }
            return Err(LogError::Io {
                op: "fsync log file",
                path: self.path.clone(),
                source,
            });
        }
        self.fsync_time += started.elapsed();
        self.dirty = false;
        Ok(())
    }
}

impl Drop for LogWriter {
    /// Best effort: writes out what was appended but not committed, and syncs
    /// unless the policy is `Never`. Errors are logged; use
    /// [`LogWriter::close`] to see them.
    fn drop(&mut self) {
        if self.poisoned || (self.buf.is_empty() && !self.dirty) {
            return;
        }
        let result = match self.fsync {
            FsyncPolicy::Never => self.write_out(),
            FsyncPolicy::Always | FsyncPolicy::Interval => self.sync().map(drop),
        };
        if let Err(error) = result {
            tracing::warn!(%error, "log: could not flush the log when closing it");
        }
    }
}
