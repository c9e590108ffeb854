//! A seam for the tests of disk faults: [`Faults`] makes the writer's next writes
//! or fsyncs fail with a chosen OS error, inside the real writer of a real server.
//!
//! A full disk can be made for real (a small tmpfs), but a failing fsync cannot, so
//! both go through here too. Inert unless a test arms it: every check is one
//! relaxed atomic load.

use std::io;
use std::sync::atomic::{AtomicI32, Ordering};

/// Errors to inject into the log writer, as raw OS error numbers (0: none).
#[derive(Debug, Default)]
pub struct Faults {
    write: AtomicI32,
    sync: AtomicI32,
}

impl Faults {
    /// Every write fails with `errno` (after writing half its bytes, as a disk
    /// that fills up mid-write does) until [`clear`](Self::clear).
    pub fn fail_writes(&self, errno: i32) {
        self.write.store(errno, Ordering::SeqCst);
    }

    /// Every fsync of a log file fails with `errno` (the data stays written)
    /// until [`clear`](Self::clear).
    pub fn fail_syncs(&self, errno: i32) {
        self.sync.store(errno, Ordering::SeqCst);
    }

    pub fn clear(&self) {
        self.write.store(0, Ordering::SeqCst);
        self.sync.store(0, Ordering::SeqCst);
    }

    pub(crate) fn write_error(&self) -> Option<io::Error> {
        Self::error(&self.write)
    }

    pub(crate) fn sync_error(&self) -> Option<io::Error> {
        Self::error(&self.sync)
    }

    fn error(slot: &AtomicI32) -> Option<io::Error> {
        match slot.load(Ordering::Relaxed) {
            0 => None,
            errno => Some(io::Error::from_raw_os_error(errno)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::{open, FsyncPolicy, LogConfig, LogError, RecordHeader};
    use super::Faults;

    const ENOSPC: i32 = 28;
    const EIO: i32 = 5;

    fn header(epoch: u64) -> RecordHeader {
        RecordHeader {
            epoch,
            first_seq: 1 + epoch * 2,
            count: 2,
            clock_ms: 0,
        }
    }

    /// The epochs a reopened log holds.
    fn epochs(cfg: &LogConfig) -> Vec<u64> {
        let mut seen = Vec::new();
        let (w, _) = open(cfg, |h, _, _| {
            seen.push(h.epoch);
            Ok(())
        })
        .expect("reopen");
        drop(w);
        seen
    }

    /// A failed write or fsync (files rotating every record, so a new file is cut
    /// away too) is cut back to the last commit; the record can then be written
    /// again, and a reopened log holds each record once.
    #[test]
    fn a_failed_write_or_fsync_is_cut_back_to_the_last_commit() {
        for (fail_syncs, errno) in [(false, ENOSPC), (true, EIO)] {
            let dir = tempfile::tempdir().expect("temp dir");
            let mut cfg = LogConfig::new(dir.path());
            cfg.file_bytes = 64;
            let (mut w, _) = open(&cfg, |_, _, _| Ok(())).expect("open");
            let faults = Arc::new(Faults::default());
            w.set_faults(faults.clone());
            w.append(&header(0), &[7; 100]).expect("append");
            w.commit().expect("commit");
            if fail_syncs {
                faults.fail_syncs(errno);
            } else {
                faults.fail_writes(errno);
            }
            w.append(&header(1), &[8; 100]).expect("append");
            let e = w.commit().expect_err("the fault fails the commit");
            assert!(
                matches!(&e, LogError::Io { source, .. } if source.raw_os_error() == Some(errno)),
                "{e}"
            );
            assert!(matches!(w.commit(), Err(LogError::Poisoned)));
            if fail_syncs {
                assert!(w.recover().is_err(), "the disk still fails its fsyncs");
            }
            faults.clear();
            w.recover().expect("recovers");
            assert_eq!((w.next_epoch(), w.next_seq()), (1, 3));
            w.append(&header(1), &[8; 100]).expect("append again");
            w.commit().expect("commit again");
            drop(w);
            assert_eq!(epochs(&cfg), vec![0, 1], "fsync failure: {fail_syncs}");
        }
    }

    /// Under a policy that acknowledges before syncing, a failed fsync may have
    /// lost acknowledged records: no cutting back, the log stays failed.
    #[test]
    fn a_failed_fsync_without_sync_on_commit_is_not_recoverable() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cfg = LogConfig::new(dir.path());
        cfg.fsync = FsyncPolicy::Never;
        let (mut w, _) = open(&cfg, |_, _, _| Ok(())).expect("open");
        let faults = Arc::new(Faults::default());
        w.set_faults(faults.clone());
        w.append(&header(0), &[7; 10]).expect("append");
        w.commit().expect("commit");
        faults.fail_syncs(EIO);
        assert!(w.sync().is_err());
        assert!(!w.recoverable());
        faults.clear();
        assert!(matches!(w.recover(), Err(LogError::Poisoned)));
    }
}
