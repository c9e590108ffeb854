//! The durable event log.
//!
//! The log is payload-agnostic: it stores *records*, and the caller encodes
//! its events into each record's payload. One record is the unit of one group
//! commit and is one logical **epoch** of the engine: epoch `e` holds the
//! events with sequence numbers `first_seq .. first_seq + count`. Making the
//! record and the epoch the same thing means that the dataflow timestamp, the
//! unit of durability and the unit of replay coincide: replaying the log
//! reproduces exactly the batches (and the clock readings, `clock_ms`) the
//! live engine saw, so a replay reaches the same answers, and an epoch is
//! never half on disk. Records with `count == 0` are allowed; they carry clock
//! ticks (a new `clock_ms`) without events.
//!
//! # Numbering
//!
//! Epochs start at 0 and are consecutive. Sequence numbers start at 1; the
//! `first_seq` of a record is the previous record's `first_seq + count`.
//! [`LogWriter::append`] refuses anything else ([`LogError::OutOfOrder`]) and
//! recovery treats a record that does not follow its predecessor as corrupt.
//!
//! # Guarantees
//!
//! - [`FsyncPolicy::Always`] (the default): when [`LogWriter::commit`]
//!   returns `Ok`, every record appended before it is on stable storage
//!   (written and `fdatasync`ed; new log files also have their directory
//!   entry fsynced). *Acknowledged = durable*: acknowledge events only after
//!   the commit that holds them. Group commit: one `fdatasync` per `commit`,
//!   however many records (epochs) were appended since the last one.
//! - [`FsyncPolicy::Interval`]: `commit` writes to the OS on every call but
//!   only fsyncs when `fsync_interval` has passed since the last fsync. A
//!   process crash loses nothing that was committed; an OS crash or power
//!   loss may lose the records committed since the last fsync (at most about
//!   one interval, as long as commits keep coming; call [`LogWriter::sync`]
//!   from a timer or at shutdown otherwise). [`LogWriter::durable_next_seq`]
//!   says what is known to be durable.
//! - [`FsyncPolicy::Never`]: `commit` only writes; the OS decides when data
//!   reaches the disk (log files are still fsynced when they are closed at a
//!   rotation). Survives a process crash, not a power loss.
//!
//! In every case what survives is a *prefix* of the appended records: the
//! log never has a hole, and recovery never returns a record that was not
//! completely and correctly written.
//!
//! # Format
//!
//! The log is a directory of log files named `{first_epoch:020}.log`
//! (zero-padded so that names sort in epoch order). Other files in the
//! directory are ignored. All integers are little-endian.
//!
//! A log file starts with a 32-byte **file header**:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `"SSEG"` |
//! | 4 | 4 | format version, 1 |
//! | 8 | 8 | `first_epoch` of the file (equals the file name) |
//! | 16 | 8 | `first_seq` of the file |
//! | 24 | 4 | CRC-32 (IEEE) of bytes 0..24 |
//! | 28 | 4 | reserved, 0 |
//!
//! followed by records, each a 40-byte **record header** and the payload:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `"SREC"` |
//! | 4 | 4 | payload length `len` |
//! | 8 | 4 | CRC-32 (IEEE) of header bytes 0..8 and 12..40, then the payload |
//! | 12 | 8 | `epoch` |
//! | 20 | 8 | `first_seq` |
//! | 28 | 4 | `count` (events in the record) |
//! | 32 | 8 | `clock_ms` (the engine clock, i64) |
//! | 40 | `len` | payload |
//!
//! The file header (rather than a bare sequence of records) makes every file
//! self-describing: a file that holds no record yet still says which epoch
//! and sequence number come next, so continuity across file boundaries is
//! checked, and a log whose oldest files were removed (retention) still
//! knows where it starts.
//!
//! A file is closed once it holds at least [`LogConfig::file_bytes`]
//! bytes; the next record goes to a new file. Rotation happens at record
//! boundaries (a record never spans two files) and lazily, when the first
//! record for the new file is committed, so no empty log files pile up. Before the
//! new file is created the old one is fsynced; the new one is created with
//! its header, fsynced, and the directory is fsynced.
//!
//! # Recovery
//!
//! [`open`] reads the log files in order and passes every valid record to the
//! caller's callback. It stops at the first sign of damage:
//!
//! - a file header that is short, has a bad magic, checksum or version,
//!   or whose `first_epoch`/`first_seq` does not continue the previous
//!   file (or whose epoch differs from its file name);
//! - a short record header or short payload (a torn write);
//! - a bad record magic (e.g. a zero-filled tail after a crash);
//! - a checksum mismatch;
//! - a record whose `epoch`/`first_seq` does not follow the previous record.
//!
//! Only the **true tail** is repaired on its own: torn-looking damage (short,
//! unreadable or failing its checksum) in the last file with no intact record
//! after it, which is what a crash during a write leaves. That file is then cut
//! right after the last good record (or removed, if its own header is torn), the
//! directory is fsynced, and a `tracing::warn!` names the file, the offset and
//! the bytes dropped.
//!
//! Any other damage (a flipped byte with intact records after it, a damaged
//! file that is not the last, a missing middle file, sound data that does not
//! continue) is refused with [`LogError::Damaged`], naming the file, the offset
//! and the epoch, and **nothing is changed**: cutting there would delete
//! acknowledged events. The operator chooses: [`check`] (`shopstream log
//! check`) reports every damaged range and gap; [`salvage`] (`shopstream log
//! salvage`) keeps every intact record, moves the damaged bytes to
//! `quarantine/` and records the lost epochs in [`GAPS_FILE`], which replay then
//! steps over (and reports in [`Recovery::gaps`]).
//!
//! Corruption is never a panic. I/O errors while reading (and callback errors)
//! are errors and leave the log untouched.
//!
//! Only one writer may use a directory at a time; nothing here locks it.

mod damage;
mod fault;
mod file;
mod writer;

#[cfg(test)]
mod tests;

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use damage::{check, salvage, Damage, FileReport, Found, Gap, Report, Salvaged};
pub use damage::{GAPS_FILE, QUARANTINE_DIR};
pub use fault::Faults;
use file::{io_err, read_full, RECORD_MAGIC};
pub use file::{FILE_HEADER_LEN, RECORD_HEADER_LEN};
pub use writer::LogWriter;

/// Default size after which a log file is closed: 128 MiB.
pub const DEFAULT_FILE_BYTES: u64 = 128 << 20;
/// Default interval for [`FsyncPolicy::Interval`].
pub const DEFAULT_FSYNC_INTERVAL: Duration = Duration::from_millis(10);

/// When [`LogWriter::commit`] makes records durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// `fdatasync` on every commit: acknowledged means durable.
    #[default]
    Always,
    /// `fdatasync` when [`LogConfig::fsync_interval`] has passed since the last one.
    Interval,
    /// Never fsync on commit; leave it to the OS.
    Never,
}

/// Where and how the log is kept.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// Directory of the log files (created if missing).
    pub dir: PathBuf,
    /// Rotate to a new log file after this many bytes (default 128 MiB).
    pub file_bytes: u64,
    /// When commits fsync.
    pub fsync: FsyncPolicy,
    /// For [`FsyncPolicy::Interval`]: the longest time between fsyncs (while commits come).
    pub fsync_interval: Duration,
}

impl LogConfig {
    /// The default configuration for a log in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LogConfig {
            dir: dir.into(),
            file_bytes: DEFAULT_FILE_BYTES,
            fsync: FsyncPolicy::Always,
            fsync_interval: DEFAULT_FSYNC_INTERVAL,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig::new("data/log")
    }
}

/// The header of one record (one epoch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// The epoch: 0 for the first record, then consecutive.
    pub epoch: u64,
    /// Sequence number of the first event in the record (1 for the first record).
    pub first_seq: u64,
    /// Number of events in the record (0 for a clock tick).
    pub count: u32,
    /// The engine clock when the record was cut, in milliseconds.
    pub clock_ms: i64,
}

/// What [`open`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Valid records replayed.
    pub records: u64,
    /// Events in them (sum of `count`).
    pub events: u64,
    /// Epoch of the last valid record, `None` for an empty log.
    pub last_epoch: Option<u64>,
    /// `first_seq + count` of the last record, or 1 for an empty log.
    pub next_seq: u64,
    /// Bytes dropped from a torn or corrupt tail (truncated and deleted files).
    pub truncated_bytes: u64,
    /// Size of the log after recovery (what [`size_on_disk`] reports now).
    pub bytes: u64,
    /// Gaps recorded by a salvage that replay stepped over.
    pub gaps: Vec<Gap>,
    /// The epoch of the snapshot the start began from (set by the engine; the
    /// records counted here are those read after it).
    pub snapshot_epoch: Option<u64>,
}

/// Errors of the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// An I/O operation failed.
    #[error("log I/O error: cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done ("write", "fsync log file", ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// An appended record does not follow the previous one.
    #[error(
        "out-of-order log append: expected epoch {expected_epoch} with first_seq {expected_seq}, \
         got epoch {epoch} with first_seq {first_seq}"
    )]
    OutOfOrder {
        expected_epoch: u64,
        expected_seq: u64,
        epoch: u64,
        first_seq: u64,
    },
    /// The payload does not fit the format's 32-bit length.
    #[error("log record payload of {len} bytes is larger than 4 GiB")]
    RecordTooLarge { len: usize },
    /// Epoch or sequence numbers would overflow `u64`.
    #[error("log epoch or sequence number overflow")]
    Overflow,
    /// An earlier write or fsync failed; the writer must not be used any more.
    #[error("the log writer failed earlier and cannot be used; reopen the log to recover")]
    Poisoned,
    /// The replay callback of [`open`] failed.
    #[error("log replay failed: {0}")]
    Callback(String),
    /// Damage that is not a torn tail: the log is refused as it is, and nothing
    /// is changed (see [`damage`](self#recovery)).
    #[error(
        "log file {} is damaged at offset {offset}{}: {reason}; {intact_after} intact records follow it. \
         Nothing was changed. `shopstream log check` reports every damaged range; \
         `shopstream log salvage` keeps every intact record, moves the damaged bytes to {QUARANTINE_DIR}/ \
         and records the lost epochs",
        path.display(),
        epoch.map(|e| format!(" (where epoch {e} should be)")).unwrap_or_default()
    )]
    Damaged {
        path: PathBuf,
        offset: u64,
        /// The epoch expected there, when known.
        epoch: Option<u64>,
        reason: String,
        /// Intact records after the damage (in this file and the later ones).
        intact_after: usize,
    },
}

/// Total bytes of all log files in `dir`, without reading them (0 when
/// the directory does not exist). For a replay progress bar: the last
/// argument of [`open`]'s callback counts up to this.
pub fn size_on_disk(dir: &Path) -> Result<u64, LogError> {
    let files = match file::list_files(dir) {
        Ok(files) => files,
        Err(LogError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(0)
        }
        Err(e) => return Err(e),
    };
    let mut total = 0;
    for log_file in files {
        total += fs::metadata(&log_file.path)
            .map_err(io_err("stat", &log_file.path))?
            .len();
    }
    Ok(total)
}

/// Where replay stopped early.
struct Corruption {
    /// Index of the file in the listing.
    file: usize,
    /// Its length.
    len: u64,
    /// Offset of the first bad byte in it (0: its header is bad).
    offset: u64,
    reason: String,
    /// Whether it looks like a torn write (short, unreadable or failing its
    /// checksum) rather than sound data in the wrong place.
    torn: bool,
}

/// Running state of the replay.
struct Replay {
    /// (epoch, seq) the next record must have, once known.
    next: Option<(u64, u64)>,
    /// Bytes of valid log read so far (file headers included).
    bytes: u64,
    records: u64,
    events: u64,
    last_epoch: Option<u64>,
    /// Gaps a salvage recorded, and those replay has stepped over.
    gaps: Vec<Gap>,
    stepped: Vec<Gap>,
}

impl Replay {
    /// Whether moving from the expected `(epoch, seq)` to `to` is a gap a salvage
    /// recorded (then it is stepped over and reported).
    fn salvaged_gap(&mut self, to: (u64, u64)) -> bool {
        let Some(from) = self.next else {
            return false;
        };
        let gap = Gap {
            epochs: (from.0, to.0),
            seqs: (from.1, to.1),
        };
        if !self.gaps.contains(&gap) {
            return false;
        }
        if !self.stepped.contains(&gap) {
            tracing::warn!(
                epochs = ?gap.epochs,
                seqs = ?gap.seqs,
                events = gap.events(),
                "log: stepping over a gap a salvage recorded; these events are lost"
            );
            self.stepped.push(gap);
        }
        true
    }
}

/// Opens the log in `cfg.dir` (creating the directory if needed), replays
/// every valid record in order through `on_record(header, payload,
/// bytes_read_so_far)`, cuts off a torn or corrupt tail (see the module
/// docs), and returns a writer positioned at the end.
///
/// An error from `on_record` stops the replay and is returned as is; the log
/// is left untouched.
pub fn open(
    cfg: &LogConfig,
    on_record: impl FnMut(&RecordHeader, &[u8], u64) -> Result<(), LogError>,
) -> Result<(LogWriter, Recovery), LogError> {
    open_after(cfg, None, on_record)
}

/// As [`open`], for a start from a snapshot that holds every epoch through
/// `covered.0` (and whose next sequence number is `covered.1`): files whose
/// records all precede `covered.0 + 1` (the next file starts at or before it) are
/// not read at all, so a restart reads only the log's tail. Records of the first
/// file read may still be at or before `covered.0`; the callback skips them. The
/// last file is always read (the writer appends to it). With no log file at all,
/// the log starts again right after the snapshot.
pub fn open_after(
    cfg: &LogConfig,
    covered: Option<(u64, u64)>,
    mut on_record: impl FnMut(&RecordHeader, &[u8], u64) -> Result<(), LogError>,
) -> Result<(LogWriter, Recovery), LogError> {
    fs::create_dir_all(&cfg.dir).map_err(io_err("create directory", &cfg.dir))?;
    let mut files = file::list_files(&cfg.dir)?;
    let mut skipped_bytes = 0;
    if let Some((covered, _)) = covered {
        let skip = covered_files(&files, covered);
        for f in files.drain(..skip) {
            skipped_bytes += fs::metadata(&f.path)
                .map_err(io_err("stat", &f.path))?
                .len();
        }
    }

    let mut replay = Replay {
        next: None,
        bytes: 0,
        records: 0,
        events: 0,
        last_epoch: None,
        gaps: damage::read_gaps(&cfg.dir)?,
        stepped: Vec::new(),
    };
    let mut corruption = None;
    let mut payload = Vec::new();
    for (index, log_file) in files.iter().enumerate() {
        let (len, bad) = replay_file(log_file, &mut replay, &mut payload, &mut on_record)?;
        if let Some((offset, reason, torn)) = bad {
            corruption = Some(Corruption {
                file: index,
                len,
                offset,
                reason,
                torn,
            });
            break;
        }
    }

    // Cut a torn tail after the last good record; refuse any other damage.
    let (kept, truncated_bytes) = match corruption {
        None => (files.len(), 0),
        Some(c) => {
            refuse_unless_tail(&files, &c, replay.next.map(|n| n.0))?;
            cut_tail(&cfg.dir, &files, &c)?
        }
    };

    let after_snapshot = covered.map(|(epoch, next_seq)| (epoch + 1, next_seq));
    let (next_epoch, next_seq) = replay.next.or(after_snapshot).unwrap_or((0, 1));
    let mut bytes = replay.bytes + skipped_bytes;
    let writer = if kept == 0 {
        let (file, path, _) = file::create_file(&cfg.dir, next_epoch, next_seq)?;
        bytes += FILE_HEADER_LEN;
        LogWriter::new(cfg, file, path, FILE_HEADER_LEN, next_epoch, next_seq)
    } else {
        let tail = &files[kept - 1];
        let file = OpenOptions::new()
            .append(true)
            .open(&tail.path)
            .map_err(io_err("open log file for append", &tail.path))?;
        // What is on disk may still sit in the page cache after a process
        // crash; make it durable before the writer calls it durable.
        file.sync_data()
            .map_err(io_err("fsync log file", &tail.path))?;
        let len = file.metadata().map_err(io_err("stat", &tail.path))?.len();
        LogWriter::new(cfg, file, tail.path.clone(), len, next_epoch, next_seq)
    };

    let recovery = Recovery {
        records: replay.records,
        events: replay.events,
        last_epoch: replay.last_epoch,
        next_seq,
        truncated_bytes,
        bytes,
        gaps: replay.stepped,
        snapshot_epoch: None,
    };
    tracing::info!(
        dir = %cfg.dir.display(),
        records = recovery.records,
        events = recovery.events,
        next_epoch,
        next_seq,
        truncated_bytes,
        "log: opened"
    );
    Ok((writer, recovery))
}

/// How many of `files` (in epoch order) hold only epochs through `covered`: each
/// one whose successor starts at or before `covered + 1`. Never the last.
fn covered_files(files: &[file::LogFile], covered: u64) -> usize {
    files
        .windows(2)
        .take_while(|pair| pair[1].epoch <= covered.saturating_add(1))
        .count()
}

/// How many of `files` may be removed after a snapshot of epoch `covered`: those
/// whose records are all *before* it (the successor starts at or before
/// `covered`). The file holding `covered` itself stays: after a failed write the
/// writer cuts back to its last commit, which may be in that file.
fn removable_files(files: &[file::LogFile], covered: u64) -> usize {
    files
        .windows(2)
        .take_while(|pair| pair[1].epoch <= covered)
        .count()
}

/// The epoch the oldest log file starts at (`None`: no log file). A log whose
/// oldest files were removed after a snapshot starts past 0.
pub fn first_epoch(dir: &Path) -> Result<Option<u64>, LogError> {
    if !dir.exists() {
        return Ok(None);
    }
    Ok(file::list_files(dir)?.first().map(|f| f.epoch))
}

/// Removes the log files whose records all are at or before epoch `covered` (a
/// snapshot holds them), never the last file, and syncs the directory. Returns
/// the files removed.
pub fn remove_covered(dir: &Path, covered: u64) -> Result<Vec<PathBuf>, LogError> {
    let files = file::list_files(dir)?;
    let n = removable_files(&files, covered);
    let mut removed = Vec::with_capacity(n);
    for f in &files[..n] {
        fs::remove_file(&f.path).map_err(io_err("remove log file", &f.path))?;
        removed.push(f.path.clone());
    }
    if !removed.is_empty() {
        file::sync_dir(dir)?;
    }
    Ok(removed)
}

/// Refuses damage `c` unless it is the true tail: torn, in the last file, with no
/// intact record after it. `epoch` is the epoch expected where it is.
fn refuse_unless_tail(
    files: &[file::LogFile],
    c: &Corruption,
    epoch: Option<u64>,
) -> Result<(), LogError> {
    let path = &files[c.file].path;
    let later = files.len() - 1 - c.file;
    // Only the bytes after the damage: after a crash that is the short torn tail
    // of a file that may be large.
    let mut after = Vec::new();
    let mut file = File::open(path).map_err(io_err("open log file", path))?;
    io::Seek::seek(&mut file, io::SeekFrom::Start(c.offset)).map_err(io_err("seek", path))?;
    file.read_to_end(&mut after).map_err(io_err("read", path))?;
    let intact = damage::intact_records(&after, c.offset).len();
    if c.torn && later == 0 && intact == 0 {
        return Ok(());
    }
    let mut intact_after = intact;
    for f in &files[c.file + 1..] {
        let bytes = fs::read(&f.path).map_err(io_err("read", &f.path))?;
        intact_after += damage::intact_records(&bytes, 0).len();
    }
    tracing::error!(file = %path.display(), offset = c.offset, reason = %c.reason, intact_after,
        later_files = later, "log: damaged before its tail; refusing to start, nothing changed");
    Err(LogError::Damaged {
        path: path.clone(),
        offset: c.offset,
        epoch,
        reason: c.reason.clone(),
        intact_after,
    })
}

/// Cuts the log at `c`: truncates (or, if its header is bad, removes) the
/// corrupt file and deletes every later one. `len` is the corrupt file's
/// length. Returns how many files remain and the bytes dropped.
fn cut_tail(dir: &Path, files: &[file::LogFile], c: &Corruption) -> Result<(usize, u64), LogError> {
    let corrupt = &files[c.file];
    let later = &files[c.file + 1..];
    let mut later_lens = Vec::with_capacity(later.len());
    for s in later {
        later_lens.push(
            fs::metadata(&s.path)
                .map_err(io_err("stat", &s.path))?
                .len(),
        );
    }
    let dropped = c.len - c.offset + later_lens.iter().sum::<u64>();
    tracing::warn!(
        file = %corrupt.path.display(),
        offset = c.offset,
        dropped_bytes = dropped,
        later_files_deleted = later.len(),
        reason = %c.reason,
        "log: torn or corrupt tail; truncating the log after the last good record"
    );
    // Newest first, so that a crash half-way leaves a log that recovery
    // cuts at the same place.
    for (s, len) in later.iter().zip(&later_lens).rev() {
        tracing::warn!(file = %s.path.display(), bytes = len, "log: deleting log file after the corrupt one");
        fs::remove_file(&s.path).map_err(io_err("remove later log file", &s.path))?;
    }
    let kept = if c.offset == 0 {
        fs::remove_file(&corrupt.path).map_err(io_err("remove corrupt log file", &corrupt.path))?;
        c.file
    } else {
        let file = OpenOptions::new()
            .write(true)
            .open(&corrupt.path)
            .map_err(io_err("open for truncation", &corrupt.path))?;
        file.set_len(c.offset)
            .map_err(io_err("truncate", &corrupt.path))?;
        file.sync_all()
            .map_err(io_err("fsync truncated log file", &corrupt.path))?;
        c.file + 1
    };
    file::sync_dir(dir)?;
    Ok((kept, dropped))
}

/// Where a log file stops being readable: offset, reason, and whether it looks
/// torn (see [`Corruption::torn`]).
type Bad = Option<(u64, String, bool)>;

/// Replays one log file. Returns its length and, if it is torn or corrupt,
/// the offset of the first bad byte and why.
fn replay_file(
    log_file: &file::LogFile,
    replay: &mut Replay,
    payload: &mut Vec<u8>,
    on_record: &mut impl FnMut(&RecordHeader, &[u8], u64) -> Result<(), LogError>,
) -> Result<(u64, Bad), LogError> {
    let path = &log_file.path;
    let file = File::open(path).map_err(io_err("open log file", path))?;
    let len = file.metadata().map_err(io_err("stat", path))?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let corrupt = |offset: u64, reason: String| Ok((len, Some((offset, reason, true))));
    let misplaced = |offset: u64, reason: String| Ok((len, Some((offset, reason, false))));

    let mut fh = [0u8; FILE_HEADER_LEN as usize];
    if read_full(&mut reader, &mut fh).map_err(io_err("read", path))? < fh.len() {
        return corrupt(0, "short file header".into());
    }
    let (first_epoch, first_seq) = match file::decode_file_header(&fh) {
        Ok(start) => start,
        Err(reason) => return corrupt(0, reason.into()),
    };
    if first_epoch != log_file.epoch {
        return misplaced(
            0,
            format!(
                "file header says epoch {first_epoch}, file name says {}",
                log_file.epoch
            ),
        );
    }
    let expected = replay.next;
    match expected {
        Some(next)
            if next != (first_epoch, first_seq)
                && !replay.salvaged_gap((first_epoch, first_seq)) =>
        {
            return misplaced(
                0,
                format!(
                    "file starts at epoch {first_epoch} seq {first_seq}, expected epoch {} seq {}",
                    next.0, next.1
                ),
            );
        }
        _ => replay.next = Some((first_epoch, first_seq)),
    }
    replay.bytes += FILE_HEADER_LEN;
    let mut offset = FILE_HEADER_LEN;

    loop {
        let mut rh = [0u8; RECORD_HEADER_LEN as usize];
        let n = read_full(&mut reader, &mut rh).map_err(io_err("read", path))?;
        if n == 0 {
            return Ok((len, None));
        }
        if n < rh.len() {
            return corrupt(
                offset,
                format!("short record header ({n} of {RECORD_HEADER_LEN} bytes)"),
            );
        }
        let raw = file::decode_record_header(&rh);
        if raw.magic != RECORD_MAGIC {
            return corrupt(offset, format!("bad record magic {:#010x}", raw.magic));
        }
        let available = len - offset - RECORD_HEADER_LEN;
        if u64::from(raw.len) > available {
            return corrupt(
                offset,
                format!("short payload ({available} of {} bytes)", raw.len),
            );
        }
        payload.resize(raw.len as usize, 0);
        if let Err(e) = reader.read_exact(payload) {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                return corrupt(offset, "short payload (file shrank while reading)".into());
            }
            return Err(io_err("read", path)(e));
        }
        if file::record_crc(&rh, payload) != raw.crc {
            return corrupt(offset, "record checksum mismatch".into());
        }
        let header = raw.header;
        let (next_epoch, next_seq) = replay.next.expect("set from the file header");
        if (header.epoch != next_epoch || header.first_seq != next_seq)
            && !replay.salvaged_gap((header.epoch, header.first_seq))
        {
            return misplaced(
                offset,
                format!(
                    "record epoch {} first_seq {} does not follow (expected epoch {next_epoch} first_seq {next_seq})",
                    header.epoch, header.first_seq
                ),
            );
        }
        let (Some(after_epoch), Some(after_seq)) = (
            header.epoch.checked_add(1),
            header.first_seq.checked_add(u64::from(header.count)),
        ) else {
            return corrupt(offset, "record overflows epoch or sequence numbers".into());
        };
        let record_len = RECORD_HEADER_LEN + u64::from(raw.len);
        offset += record_len;
        replay.bytes += record_len;
        on_record(&header, payload, replay.bytes)?;
        replay.next = Some((after_epoch, after_seq));
        replay.records += 1;
        replay.events += u64::from(header.count);
        replay.last_epoch = Some(header.epoch);
    }
}
