//! On-disk format of log files: encoding and decoding of the file header
//! and of record headers, plus the small filesystem helpers (listing log
//! files, durable creation, directory fsync). See the parent module's
//! documentation for the byte layout.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{LogError, RecordHeader};

/// Magic number at the start of every log file (`"SSEG"` little-endian: the
/// bytes predate the name "log file" and stay, as they are the format).
pub(crate) const FILE_MAGIC: u32 = u32::from_le_bytes(*b"SSEG");
/// Version of the log file format.
pub(crate) const FILE_VERSION: u32 = 1;
/// Magic number at the start of every record (`"SREC"` little-endian).
pub(crate) const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"SREC");

/// Length of the header at the start of every log file.
pub const FILE_HEADER_LEN: u64 = 32;
/// Length of the fixed header in front of every record's payload.
pub const RECORD_HEADER_LEN: u64 = 40;

/// Builds the error-mapping closure for an I/O operation on `path`.
pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> LogError + 'a {
    move |source| LogError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Name of the log file whose first record has epoch `first_epoch`.
pub(crate) fn file_name(first_epoch: u64) -> String {
    format!("{first_epoch:020}.log")
}

/// Parses a log file name (`{epoch:020}.log`) back into its first epoch.
pub(crate) fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A log file found in the log directory.
#[derive(Clone, Debug)]
pub(crate) struct LogFile {
    /// The first epoch, from the file name.
    pub epoch: u64,
    pub path: PathBuf,
}

/// Lists the log files of `dir`, in epoch order. Other files are ignored.
pub(crate) fn list_files(dir: &Path) -> Result<Vec<LogFile>, LogError> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("list directory", dir))? {
        let entry = entry.map_err(io_err("list directory", dir))?;
        let name = entry.file_name();
        let Some(epoch) = name.to_str().and_then(parse_file_name) else {
            continue;
        };
        let path = entry.path();
        let file_type = entry.file_type().map_err(io_err("stat", &path))?;
        if file_type.is_file() {
            files.push(LogFile { epoch, path });
        }
    }
    files.sort_by_key(|f| f.epoch);
    Ok(files)
}

/// Encodes the header of a log file whose first record is (`first_epoch`, `first_seq`).
pub(crate) fn encode_file_header(
    first_epoch: u64,
    first_seq: u64,
) -> [u8; FILE_HEADER_LEN as usize] {
    let mut h = [0u8; FILE_HEADER_LEN as usize];
    h[0..4].copy_from_slice(&FILE_MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&FILE_VERSION.to_le_bytes());
    h[8..16].copy_from_slice(&first_epoch.to_le_bytes());
    h[16..24].copy_from_slice(&first_seq.to_le_bytes());
    let crc = crc32fast::hash(&h[0..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    // 28..32 reserved, zero.
    h
}

/// Decodes a file header into (first_epoch, first_seq), or says what is wrong with it.
pub(crate) fn decode_file_header(
    h: &[u8; FILE_HEADER_LEN as usize],
) -> Result<(u64, u64), &'static str> {
    if u32_at(h, 0) != FILE_MAGIC {
        return Err("bad file magic");
    }
    if crc32fast::hash(&h[0..24]) != u32_at(h, 24) {
        return Err("file header checksum mismatch");
    }
    if u32_at(h, 4) != FILE_VERSION {
        return Err("unsupported file format version");
    }
    Ok((u64_at(h, 8), u64_at(h, 16)))
}

/// Appends the encoding of one record (header and payload) to `buf`.
/// The caller has checked that the payload length fits in a `u32`.
pub(crate) fn encode_record(buf: &mut Vec<u8>, header: &RecordHeader, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("payload length checked by the caller");
    let mut h = [0u8; RECORD_HEADER_LEN as usize];
    h[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&len.to_le_bytes());
    h[12..20].copy_from_slice(&header.epoch.to_le_bytes());
    h[20..28].copy_from_slice(&header.first_seq.to_le_bytes());
    h[28..32].copy_from_slice(&header.count.to_le_bytes());
    h[32..40].copy_from_slice(&header.clock_ms.to_le_bytes());
    let crc = record_crc(&h, payload);
    h[8..12].copy_from_slice(&crc.to_le_bytes());
    buf.reserve(h.len() + payload.len());
    buf.extend_from_slice(&h);
    buf.extend_from_slice(payload);
}

/// CRC-32 over the record header (without the checksum field itself) and the payload.
pub(crate) fn record_crc(h: &[u8; RECORD_HEADER_LEN as usize], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&h[0..8]);
    hasher.update(&h[12..40]);
    hasher.update(payload);
    hasher.finalize()
}

/// The fields of a record header as read from disk, before the checksum is verified.
pub(crate) struct RawRecordHeader {
    pub magic: u32,
    pub len: u32,
    pub crc: u32,
    pub header: RecordHeader,
}

pub(crate) fn decode_record_header(h: &[u8; RECORD_HEADER_LEN as usize]) -> RawRecordHeader {
    RawRecordHeader {
        magic: u32_at(h, 0),
        len: u32_at(h, 4),
        crc: u32_at(h, 8),
        header: RecordHeader {
            epoch: u64_at(h, 12),
            first_seq: u64_at(h, 20),
            count: u32_at(h, 28),
            clock_ms: i64::from_le_bytes(h[32..40].try_into().expect("8 bytes")),
        },
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Reads until `buf` is full or the reader is at its end; returns the bytes read.
pub(crate) fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Makes the directory entry changes in `dir` (created, deleted files) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), LogError> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("fsync directory", dir))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Durably creates a new, empty log file starting at (`first_epoch`, `first_seq`):
/// writes its header, fsyncs the file and the directory. Returns the open file
/// (positioned after the header), its path, and the time spent in fsync.
pub(crate) fn create_file(
    dir: &Path,
    first_epoch: u64,
    first_seq: u64,
) -> Result<(File, PathBuf, Duration), LogError> {
    let path = dir.join(file_name(first_epoch));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io_err("create log file", &path))?;
    file.write_all(&encode_file_header(first_epoch, first_seq))
        .map_err(io_err("write file header", &path))?;
    let started = Instant::now();
    file.sync_all()
        .map_err(io_err("fsync new log file", &path))?;
    sync_dir(dir)?;
    let fsync_time = started.elapsed();
    tracing::debug!(path = %path.display(), first_epoch, first_seq, "log: created file");
    Ok((file, path, fsync_time))
}
