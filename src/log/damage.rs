//! Damage in the log: finding it, reporting it (`shopstream log check`), and the
//! operator's explicit repair (`shopstream log salvage`).
//!
//! # What recovery may repair on its own
//! Only the **true tail**: damage in the last log file after which no intact
//! record follows (a torn or half-written last commit, a zero-filled or garbage
//! tail). Anything else, a bad record with intact records after it, a damaged
//! file that is not the last, a missing middle file, is refused at start with the
//! file, the offset and the epoch, and nothing is changed: deleting it would
//! delete acknowledged events.
//!
//! # Salvage
//! [`salvage`] keeps every intact record, in epoch order, and moves every damaged
//! byte range into `quarantine/` inside the log directory (named by file and
//! offset, never deleted). The epochs and sequence numbers that no intact record
//! holds any more are written, before any log file is changed, to the gaps file
//! ([`GAPS_FILE`]): replay accepts exactly those jumps (and reports them), and no
//! others. Every step is crash-safe: quarantine copies and the gaps file are
//! fsynced before a log file is replaced, and a file is replaced by writing a new
//! one beside it and renaming it over; a salvage interrupted half-way is run again.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::file::{self, io_err, RECORD_MAGIC};
use super::{LogError, RecordHeader, FILE_HEADER_LEN, RECORD_HEADER_LEN};

/// The file, in the log directory, that lists the gaps a salvage left.
pub const GAPS_FILE: &str = "salvaged-gaps.txt";
/// The directory, in the log directory, that holds quarantined bytes.
pub const QUARANTINE_DIR: &str = "quarantine";

/// Epochs `epochs.0..epochs.1` and sequence numbers `seqs.0..seqs.1` that a
/// salvage found no intact record for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gap {
    pub epochs: (u64, u64),
    pub seqs: (u64, u64),
}

impl Gap {
    /// Events lost in the gap.
    pub fn events(&self) -> u64 {
        self.seqs.1 - self.seqs.0
    }
}

/// The gaps a salvage recorded in `dir` (none when there is no gaps file).
pub(crate) fn read_gaps(dir: &Path) -> Result<Vec<Gap>, LogError> {
    let path = dir.join(GAPS_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("read", &path)(e)),
    };
    let mut gaps = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        let n: Vec<u64> = line
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        if n.len() != 4 {
            return Err(LogError::Damaged {
                path: path.clone(),
                offset: 0,
                epoch: None,
                reason: format!("unreadable gap line {line:?}"),
                intact_after: 0,
            });
        }
        gaps.push(Gap {
            epochs: (n[0], n[1]),
            seqs: (n[2], n[3]),
        });
    }
    Ok(gaps)
}

/// An intact record found by scanning: where it is, and its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    pub offset: u64,
    pub len: u64,
    pub header: RecordHeader,
}

/// Every intact record in `bytes` (a log file's bytes from `base` on): a record
/// magic followed by a header and payload whose checksum holds. Bytes between
/// them are damage.
pub(crate) fn intact_records(bytes: &[u8], base: u64) -> Vec<Found> {
    let magic = RECORD_MAGIC.to_le_bytes();
    let mut out = Vec::new();
    let mut at = 0usize;
    while let Some(i) = memchr::memmem::find(&bytes[at..], &magic) {
        let start = at + i;
        match record_at(bytes, start) {
            Some((header, len)) => {
                out.push(Found {
                    offset: base + start as u64,
                    len,
                    header,
                });
                at = start + len as usize;
            }
            None => at = start + 1,
        }
    }
    out
}

/// The record starting at `start`, if it is complete and its checksum holds.
fn record_at(bytes: &[u8], start: usize) -> Option<(RecordHeader, u64)> {
    let h: &[u8; RECORD_HEADER_LEN as usize] = bytes
        .get(start..start + RECORD_HEADER_LEN as usize)?
        .try_into()
        .ok()?;
    let raw = file::decode_record_header(h);
    let body = start + RECORD_HEADER_LEN as usize;
    let payload = bytes.get(body..body.checked_add(raw.len as usize)?)?;
    (file::record_crc(h, payload) == raw.crc)
        .then_some((raw.header, RECORD_HEADER_LEN + u64::from(raw.len)))
}

/// A range of a log file that holds no intact record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    pub offset: u64,
    pub len: u64,
}

/// One log file as [`check`] found it.
#[derive(Clone, Debug)]
pub struct FileReport {
    pub path: PathBuf,
    pub len: u64,
    /// `(first_epoch, first_seq)` from a sound header, or why it is not sound.
    pub header: Result<(u64, u64), String>,
    pub records: Vec<Found>,
    pub damage: Vec<Damage>,
}

/// What [`check`] found in a log directory.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub files: Vec<FileReport>,
    /// Jumps between consecutive intact records (epochs and events no intact
    /// record holds), gaps a salvage recorded included.
    pub gaps: Vec<Gap>,
    /// Gaps recorded by an earlier salvage.
    pub salvaged: Vec<Gap>,
}

impl Report {
    /// Whether the log is sound: no damaged byte and no unrecorded gap.
    pub fn is_sound(&self) -> bool {
        self.files
            .iter()
            .all(|f| f.damage.is_empty() && f.header.is_ok())
            && self.gaps.iter().all(|g| self.salvaged.contains(g))
    }

    pub fn records(&self) -> usize {
        self.files.iter().map(|f| f.records.len()).sum()
    }

    /// A plain-text report, one line per finding.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.files {
            let header = match &f.header {
                Ok((e, s)) => format!("header ok (epoch {e}, seq {s})"),
                Err(reason) => format!("HEADER DAMAGED: {reason}"),
            };
            out.push_str(&format!(
                "{}: {} bytes, {} intact records, {header}\n",
                f.path.display(),
                f.len,
                f.records.len()
            ));
            for d in &f.damage {
                out.push_str(&format!(
                    "  DAMAGED bytes {}..{} ({} bytes)\n",
                    d.offset,
                    d.offset + d.len,
                    d.len
                ));
            }
        }
        for g in &self.gaps {
            let note = if self.salvaged.contains(g) {
                "recorded by a salvage"
            } else {
                "NOT RECORDED: the log does not start"
            };
            out.push_str(&format!(
                "gap: epochs {}..{}, events seq {}..{} ({} events) missing; {note}\n",
                g.epochs.0,
                g.epochs.1,
                g.seqs.0,
                g.seqs.1,
                g.events()
            ));
        }
        out.push_str(if self.is_sound() {
            "the log is sound\n"
        } else {
            "the log is damaged: `shopstream log salvage` keeps every intact record and quarantines the rest\n"
        });
        out
    }
}

/// Scans every log file of `dir` (reading them whole) and reports intact
/// records, damaged ranges and gaps. Changes nothing.
pub fn check(dir: &Path) -> Result<Report, LogError> {
    let mut report = Report {
        salvaged: read_gaps(dir)?,
        ..Report::default()
    };
    let mut next: Option<(u64, u64)> = None;
    for log_file in file::list_files(dir)? {
        let bytes = fs::read(&log_file.path).map_err(io_err("read", &log_file.path))?;
        let header = match bytes.get(..FILE_HEADER_LEN as usize) {
            None => Err("short file header".to_owned()),
            Some(h) => {
                let h: &[u8; FILE_HEADER_LEN as usize] = h.try_into().expect("32 bytes");
                file::decode_file_header(h).map_err(str::to_owned)
            }
        };
        let body = if header.is_ok() {
            FILE_HEADER_LEN as usize
        } else {
            0
        };
        let records = intact_records(&bytes[body..], body as u64);
        let mut damage = Vec::new();
        let mut at = body as u64;
        for r in &records {
            if r.offset > at {
                damage.push(Damage {
                    offset: at,
                    len: r.offset - at,
                });
            }
            at = r.offset + r.len;
        }
        if (bytes.len() as u64) > at {
            damage.push(Damage {
                offset: at,
                len: bytes.len() as u64 - at,
            });
        }
        // Continuity: from the end of the previous intact record to where this
        // file says it starts, then from record to record.
        let mut note = |from: (u64, u64), to: (u64, u64)| {
            let gap = Gap {
                epochs: (from.0, to.0),
                seqs: (from.1, to.1),
            };
            if to.0 > from.0 && to.1 >= from.1 && !report.gaps.contains(&gap) {
                report.gaps.push(gap);
            }
        };
        if let Ok(start) = &header {
            match next {
                Some(n) => note(n, *start),
                None => next = Some(*start),
            }
        }
        for r in &records {
            if let Some(n) = next {
                note(n, (r.header.epoch, r.header.first_seq));
            }
            next = Some((
                r.header.epoch + 1,
                r.header.first_seq + u64::from(r.header.count),
            ));
        }
        report.files.push(FileReport {
            path: log_file.path,
            len: bytes.len() as u64,
            header,
            records,
            damage,
        });
    }
    Ok(report)
}

/// What [`salvage`] did.
#[derive(Clone, Debug, Default)]
pub struct Salvaged {
    /// Intact records kept.
    pub records: usize,
    /// Files rewritten, and files removed (no intact record was left in them).
    pub rewritten: Vec<PathBuf>,
    pub removed: Vec<PathBuf>,
    /// Where the damaged bytes went.
    pub quarantined: Vec<(PathBuf, u64)>,
    /// Every gap the log now records.
    pub gaps: Vec<Gap>,
}

/// Keeps every intact record of the log in `dir`, moves every damaged byte range
/// into `quarantine/`, and records the epochs and events no intact record holds
/// in the gaps file, so that the log opens again. See the module docs.
pub fn salvage(dir: &Path) -> Result<Salvaged, LogError> {
    let report = check(dir)?;
    let mut out = Salvaged::default();
    // 1. The damaged bytes, copied to quarantine first (never lost).
    let quarantine = dir.join(QUARANTINE_DIR);
    for f in report.files.iter().filter(|f| !f.damage.is_empty()) {
        fs::create_dir_all(&quarantine).map_err(io_err("create directory", &quarantine))?;
        let bytes = fs::read(&f.path).map_err(io_err("read", &f.path))?;
        let name = f.path.file_name().and_then(|n| n.to_str()).unwrap_or("log");
        for d in &f.damage {
            let q = quarantine.join(format!("{name}.{}.damaged", d.offset));
            let range = d.offset as usize..(d.offset + d.len) as usize;
            write_durably(&q, &bytes[range])?;
            out.quarantined.push((q, d.len));
        }
        file::sync_dir(&quarantine)?;
    }
    // 2. The gaps, before any log file changes.
    let mut gaps = report.salvaged.clone();
    for g in &report.gaps {
        if !gaps.contains(g) {
            gaps.push(*g);
        }
    }
    if gaps != report.salvaged {
        let mut text = String::from(
            "# epochs_from epochs_to seq_from seq_to: ranges a salvage found no intact record for\n",
        );
        for g in &gaps {
            text.push_str(&format!(
                "{} {} {} {}\n",
                g.epochs.0, g.epochs.1, g.seqs.0, g.seqs.1
            ));
        }
        write_durably(&dir.join(GAPS_FILE), text.as_bytes())?;
        file::sync_dir(dir)?;
    }
    out.gaps = gaps;
    // 3. Each damaged file replaced by its intact records (or removed).
    for f in report
        .files
        .iter()
        .filter(|f| !f.damage.is_empty() || f.header.is_err())
    {
        let bytes = fs::read(&f.path).map_err(io_err("read", &f.path))?;
        let Some(first) = f.records.first() else {
            fs::remove_file(&f.path).map_err(io_err("remove damaged log file", &f.path))?;
            out.removed.push(f.path.clone());
            continue;
        };
        let mut content =
            file::encode_file_header(first.header.epoch, first.header.first_seq).to_vec();
        for r in &f.records {
            content.extend_from_slice(&bytes[r.offset as usize..(r.offset + r.len) as usize]);
        }
        let path = dir.join(file::file_name(first.header.epoch));
        let tmp = dir.join(format!(
            "{}.salvage-tmp",
            file::file_name(first.header.epoch)
        ));
        write_durably(&tmp, &content)?;
        fs::rename(&tmp, &path).map_err(io_err("rename salvaged log file", &path))?;
        if path != f.path {
            fs::remove_file(&f.path).map_err(io_err("remove damaged log file", &f.path))?;
        }
        file::sync_dir(dir)?;
        out.rewritten.push(path);
    }
    out.records = report.records();
    tracing::warn!(
        records = out.records,
        quarantined = out.quarantined.len(),
        gaps = out.gaps.len(),
        "log: salvaged"
    );
    Ok(out)
}

fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), LogError> {
    let mut f = fs::File::create(path).map_err(io_err("create", path))?;
    f.write_all(bytes).map_err(io_err("write", path))?;
    f.sync_all().map_err(io_err("fsync", path))
}
