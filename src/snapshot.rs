//! Snapshots: every view's state, and the sequencer's, at one epoch, so that a
//! restart reads a snapshot and the log after it instead of all history.
//!
//! A snapshot at epoch `E` holds what a replay of epochs `0..=E` rebuilds: each
//! worker's part of each view ([`View::snapshot`]: accumulated inputs, feeder
//! state), the host halves' own state (the change feed and segment sizes over
//! time), the catalog, the symbol table, the deduplication horizon, the clock
//! and the next sequence number. Restoring it and replaying the log after `E`
//! gives the answers a replay of the whole log gives (`tests/snapshot.rs` checks
//! this against a full replay, at several worker counts).
//!
//! # Format
//!
//! `<data_dir>/snapshots/{epoch:020}.snap`: a 32-byte header, then the body, a
//! bincode [`Snapshot`].
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `"SSNP"` |
//! | 4 | 4 | format version (`VERSION`) |
//! | 8 | 8 | epoch |
//! | 16 | 8 | body length |
//! | 24 | 4 | CRC-32 (IEEE) of the body |
//! | 28 | 4 | CRC-32 of bytes 0..28 |
//!
//! A snapshot is written to a temporary name, fsynced, renamed into place and
//! the directory fsynced: a crash leaves the old snapshots and at most a
//! temporary file (removed at the next start). One that fails its checksums is
//! never used and never deleted: start-up falls back to an older snapshot or to
//! the whole log, and refuses (naming the file) only when the log no longer
//! holds what the damaged snapshot held.
//!
//! [`View::snapshot`]: shopstream_dataflows::view::View::snapshot

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shopstream_dataflows::types::{Millis, Time};

use crate::catalog::SavedCatalog;

/// The directory of snapshots, inside the data directory.
pub const DIR: &str = "snapshots";
const MAGIC: &[u8; 4] = b"SSNP";
/// 2: profile lifetimes carry the identity-merge mark. 3: the similarity view's
/// parts (an older snapshot has none, and would restore it empty). 4: the
/// recommend view's parts (likewise). A snapshot of another version is passed
/// over like a damaged one (the log is replayed instead).
const VERSION: u32 = 4;
const HEADER_LEN: usize = 32;
const SUFFIX: &str = ".snap";
const TEMP_SUFFIX: &str = ".snap.tmp";

/// Everything a restart needs besides the log after `epoch`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The last epoch it holds.
    pub epoch: Time,
    /// The sequence number of the first event after it.
    pub next_seq: u64,
    pub clock: Millis,
    /// Workers that wrote it (a restart may have another number).
    pub workers: u32,
    /// Wall-clock time it was taken, in milliseconds since the epoch.
    pub created_ms: i64,
    /// The deduplication horizon, oldest first: `(message id, seq)`.
    pub dedup: Vec<(u64, u64)>,
    pub catalog: SavedCatalog,
    pub symbols: Vec<(u64, String)>,
    /// Per view host (by name), its own state.
    pub hosts: Vec<(String, Vec<u8>)>,
    /// Per view (by name), each worker's part.
    pub views: Vec<(String, Vec<Vec<u8>>)>,
}

impl Snapshot {
    /// The parts of view `name` (none if it saved nothing: a view added since).
    pub fn parts(&self, name: &str) -> &[Vec<u8>] {
        self.views
            .iter()
            .find(|(n, _)| n == name)
            .map_or(&[], |(_, p)| p.as_slice())
    }

    /// What host `name` saved, if anything.
    pub fn host(&self, name: &str) -> Option<&[u8]> {
        self.hosts
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.as_slice())
    }
}

/// Errors of snapshots.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot I/O error: cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// A snapshot that fails its checks; it is left as it is.
    #[error("snapshot {} is damaged: {reason}", path.display())]
    Damaged { path: PathBuf, reason: String },
    /// No snapshot can be used and the log does not start at epoch 0.
    #[error(
        "the log starts at epoch {log_starts} (older files were removed after a snapshot), \
         and {why}; nothing was changed. Restore the snapshot or the removed log files \
         from a backup"
    )]
    Uncovered { log_starts: Time, why: String },
    /// A snapshot was asked for while one is being written.
    #[error("a snapshot is being written; try again when it is done")]
    Busy,
    /// Nothing is logged yet.
    #[error("nothing is logged yet: there is nothing to snapshot")]
    Empty,
    /// The log ends before the snapshot (files removed, or lost with
    /// `log.fsync = "never"`): epochs logged from here would contradict it.
    #[error(
        "the log ends at epoch {}, before the snapshot of epoch {snapshot}: the log must go on \
         from the snapshot. Nothing was changed",
        log_ends.map_or_else(|| "none (it is empty)".to_owned(), |e| e.to_string())
    )]
    LogBehind {
        log_ends: Option<Time>,
        snapshot: Time,
    },
    /// The log failed (or is being retried after a failure): a snapshot waits
    /// until it is sound.
    #[error("the log is failing (see /healthz); no snapshot is taken until it writes again")]
    LogFailed,
    /// A worker went away while saving.
    #[error("a worker stopped while the snapshot was taken")]
    WorkerGone,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SnapshotError {
    let path = path.to_owned();
    move |source| SnapshotError::Io { op, path, source }
}

/// The snapshot directory of data directory `data_dir`.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join(DIR)
}

fn file_name(epoch: Time) -> String {
    format!("{epoch:020}{SUFFIX}")
}

/// The snapshots in `dir`, newest first: `(epoch, path)`.
pub fn list(dir: &Path) -> Result<Vec<(Time, PathBuf)>, SnapshotError> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("list directory", dir))? {
        let entry = entry.map_err(io_err("list directory", dir))?;
        let name = entry.file_name();
        let Some(epoch) = name
            .to_str()
            .and_then(|n| n.strip_suffix(SUFFIX))
            .and_then(|n| n.parse::<Time>().ok())
        else {
            continue;
        };
        out.push((epoch, entry.path()));
    }
    out.sort_by_key(|s| std::cmp::Reverse(s.0));
    Ok(out)
}

/// Writes `snapshot` durably into `dir`; returns its path and size.
pub fn write(dir: &Path, snapshot: &Snapshot) -> Result<(PathBuf, u64), SnapshotError> {
    fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
    let body = bincode::serialize(snapshot).expect("snapshots serialize");
    let mut header = [0u8; HEADER_LEN];
    header[0..4].copy_from_slice(MAGIC);
    header[4..8].copy_from_slice(&VERSION.to_le_bytes());
    header[8..16].copy_from_slice(&snapshot.epoch.to_le_bytes());
    header[16..24].copy_from_slice(&(body.len() as u64).to_le_bytes());
    header[24..28].copy_from_slice(&crc32fast::hash(&body).to_le_bytes());
    let crc = crc32fast::hash(&header[0..28]);
    header[28..32].copy_from_slice(&crc.to_le_bytes());
    let path = dir.join(file_name(snapshot.epoch));
    let temp = dir.join(format!("{:020}{TEMP_SUFFIX}", snapshot.epoch));
    let written = (|| {
        let mut f = File::create(&temp).map_err(io_err("create", &temp))?;
        f.write_all(&header).map_err(io_err("write", &temp))?;
        f.write_all(&body).map_err(io_err("write", &temp))?;
        f.sync_all().map_err(io_err("fsync", &temp))?;
        fs::rename(&temp, &path).map_err(io_err("rename", &temp))
    })();
    if let Err(e) = written {
        // A half-written snapshot (a full disk, say) must not keep holding the
        // space the log needs to go on.
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    sync_dir(dir)?;
    Ok((path, (HEADER_LEN + body.len()) as u64))
}

/// Whether a snapshot file looks whole: its header is sound and its size is what
/// the header says (the body's checksum is checked when it is read at start).
fn looks_whole(path: &Path) -> bool {
    File::open(path).is_ok_and(|mut f| open_header(&mut f).is_ok())
}

fn sync_dir(dir: &Path) -> Result<(), SnapshotError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

/// Reads and checks one snapshot file.
pub fn read(path: &Path) -> Result<Snapshot, SnapshotError> {
    let damaged = |reason: String| SnapshotError::Damaged {
        path: path.to_owned(),
        reason,
    };
    let mut f = File::open(path).map_err(io_err("open", path))?;
    let header = open_header(&mut f).map_err(damaged)?;
    let mut body = Vec::with_capacity(header.len as usize);
    f.read_to_end(&mut body).map_err(io_err("read", path))?;
    if crc32fast::hash(&body) != header.body_crc {
        return Err(damaged("body checksum mismatch".into()));
    }
    let snapshot: Snapshot =
        bincode::deserialize(&body).map_err(|e| damaged(format!("undecodable: {e}")))?;
    if snapshot.epoch != header.epoch {
        return Err(damaged("body and header disagree on the epoch".into()));
    }
    Ok(snapshot)
}

/// What a sound header says.
struct Header {
    epoch: Time,
    len: u64,
    body_crc: u32,
}

/// Reads and checks a snapshot file's header (magic, checksum, version) and that
/// the file has the length it says; the error is the reason it is damaged.
fn open_header(f: &mut File) -> Result<Header, String> {
    let mut header = [0u8; HEADER_LEN];
    f.read_exact(&mut header)
        .map_err(|_| "shorter than its header".to_owned())?;
    if &header[0..4] != MAGIC {
        return Err("bad magic".into());
    }
    let word = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    let long = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().expect("8 bytes"));
    if crc32fast::hash(&header[0..28]) != word(28) {
        return Err("header checksum mismatch".into());
    }
    if word(4) != VERSION {
        return Err(format!(
            "format version {} (this build reads {VERSION})",
            word(4)
        ));
    }
    let len = long(16);
    let actual = f.metadata().map_err(|e| format!("cannot stat: {e}"))?.len();
    if actual != HEADER_LEN as u64 + len {
        return Err(format!(
            "{actual} bytes, the header says {}",
            HEADER_LEN as u64 + len
        ));
    }
    Ok(Header {
        epoch: long(8),
        len,
        body_crc: word(24),
    })
}

/// The snapshot to start from: the newest sound one that the log continues
/// (the log's oldest file starts at or before its epoch + 1), or `None` to
/// replay the whole log. Damaged snapshots are reported and skipped, never
/// removed; when the log cannot make up for them, start-up is refused.
pub fn choose(dir: &Path, log_starts: Option<Time>) -> Result<Option<Snapshot>, SnapshotError> {
    remove_temporaries(dir)?;
    let log_starts = log_starts.unwrap_or(0);
    let mut skipped = Vec::new();
    for (epoch, path) in list(dir)? {
        if epoch.saturating_add(1) < log_starts {
            skipped.push(format!(
                "snapshot {} ends at epoch {epoch}, before the log resumes",
                path.display()
            ));
            continue;
        }
        match read(&path) {
            Ok(s) => return Ok(Some(s)),
            Err(e @ SnapshotError::Damaged { .. }) => {
                tracing::error!(error = %e, "snapshot: damaged, not used (left in place); trying an older one");
                skipped.push(e.to_string());
            }
            Err(e) => return Err(e),
        }
    }
    if log_starts == 0 {
        if !skipped.is_empty() {
            tracing::warn!(
                "snapshot: none usable; replaying the whole log ({})",
                skipped.join("; ")
            );
        }
        return Ok(None);
    }
    Err(SnapshotError::Uncovered {
        log_starts,
        why: if skipped.is_empty() {
            "there is no snapshot".into()
        } else {
            format!("no snapshot can be used: {}", skipped.join("; "))
        },
    })
}

/// Removes what an interrupted write left (never a finished snapshot).
fn remove_temporaries(dir: &Path) -> Result<(), SnapshotError> {
    if !dir.exists() {
        return Ok(());
    }
    for entry in fs::read_dir(dir).map_err(io_err("list directory", dir))? {
        let entry = entry.map_err(io_err("list directory", dir))?;
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.ends_with(TEMP_SUFFIX))
        {
            let path = entry.path();
            fs::remove_file(&path).map_err(io_err("remove", &path))?;
        }
    }
    Ok(())
}

/// Keeps the newest `keep` sound snapshots and removes older sound ones; returns
/// the epoch of the oldest kept (what the log must still continue from). A
/// snapshot that does not look whole counts for nothing and is never removed
/// (the operator looks at it).
pub fn retain(dir: &Path, keep: usize) -> Result<Option<Time>, SnapshotError> {
    let sound: Vec<_> = list(dir)?
        .into_iter()
        .filter(|(_, p)| looks_whole(p))
        .collect();
    let keep = keep.max(1);
    for (_, path) in sound.iter().skip(keep) {
        fs::remove_file(path).map_err(io_err("remove", path))?;
    }
    if sound.len() > keep {
        sync_dir(dir)?;
    }
    Ok(sound
        .get(keep.min(sound.len()).saturating_sub(1))
        .map(|(e, _)| *e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(epoch: Time) -> Snapshot {
        Snapshot {
            epoch,
            next_seq: 10 * epoch + 1,
            views: vec![("profiles".into(), vec![vec![1, 2, 3], vec![4]])],
            ..Snapshot::default()
        }
    }

    #[test]
    fn a_written_snapshot_reads_back_and_damage_is_refused_not_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, _) = write(dir.path(), &sample(7)).expect("write");
        assert_eq!(read(&path).expect("read"), sample(7));
        let mut bytes = fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, &bytes).expect("write");
        assert!(matches!(read(&path), Err(SnapshotError::Damaged { .. })));
        // With the whole log there, a damaged snapshot falls back to a replay.
        assert_eq!(choose(dir.path(), Some(0)).expect("choose"), None);
        assert!(path.exists(), "a damaged snapshot is left in place");
        // Without it, start-up is refused.
        assert!(matches!(
            choose(dir.path(), Some(5)),
            Err(SnapshotError::Uncovered { log_starts: 5, .. })
        ));
    }

    /// Review findings: a failed write left its temporary file behind (holding the
    /// space a full disk needs back), and retention counted damaged snapshots
    /// and removed sound ones behind them.
    #[test]
    fn a_failed_write_leaves_nothing_and_damaged_snapshots_count_for_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The final name is taken by a non-empty directory: the rename fails.
        let blocked = dir.path().join(file_name(4));
        fs::create_dir_all(blocked.join("x")).expect("mkdir");
        assert!(write(dir.path(), &sample(4)).is_err());
        let temps = fs::read_dir(dir.path())
            .expect("list")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(TEMP_SUFFIX))
            })
            .count();
        assert_eq!(temps, 0, "no temporary file is left");
        fs::remove_dir_all(&blocked).expect("rm");

        for e in [1, 2, 3] {
            write(dir.path(), &sample(e)).expect("write");
        }
        // The newest is cut short: with keep = 2, snapshots 1 and 2 stay.
        let newest = dir.path().join(file_name(3));
        let len = fs::metadata(&newest).expect("stat").len();
        File::options()
            .write(true)
            .open(&newest)
            .and_then(|f| f.set_len(len - 1))
            .expect("truncate");
        assert_eq!(retain(dir.path(), 2).expect("retain"), Some(1));
        let left: Vec<Time> = list(dir.path())
            .expect("list")
            .iter()
            .map(|s| s.0)
            .collect();
        assert_eq!(left, [3, 2, 1], "the damaged one is left for the operator");
    }

    #[test]
    fn the_newest_sound_snapshot_the_log_continues_is_chosen() {
        let dir = tempfile::tempdir().expect("tempdir");
        for e in [3, 9, 20] {
            write(dir.path(), &sample(e)).expect("write");
        }
        assert_eq!(
            choose(dir.path(), None).expect("choose").map(|s| s.epoch),
            Some(20)
        );
        // A log starting at 10 cannot follow snapshot 3, but 9 and 20 are fine.
        assert_eq!(retain(dir.path(), 2).expect("retain"), Some(9));
        assert_eq!(list(dir.path()).expect("list").len(), 2);
        assert!(matches!(
            choose(dir.path(), Some(22)),
            Err(SnapshotError::Uncovered { .. })
        ));
        fs::write(dir.path().join("00000000000000000030.snap.tmp"), b"torn").expect("write");
        assert_eq!(
            choose(dir.path(), Some(10))
                .expect("choose")
                .map(|s| s.epoch),
            Some(20)
        );
        assert!(!dir.path().join("00000000000000000030.snap.tmp").exists());
    }
}
