use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;

use super::*;

type Rec = (RecordHeader, Vec<u8>);

fn config(dir: &Path, file_bytes: u64, fsync: FsyncPolicy) -> LogConfig {
    LogConfig {
        dir: dir.to_path_buf(),
        file_bytes,
        fsync,
        fsync_interval: Duration::from_millis(10),
    }
}

/// Deterministic pseudo-random records: counts 0..5 (0 = clock tick), payloads of varied sizes.
fn make_records(n: usize, max_payload: usize, seed: u64) -> Vec<Rec> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        state >> 33
    };
    let mut seq = 1;
    (0..n as u64)
        .map(|epoch| {
            let count = (next() % 5) as u32;
            let len = (next() as usize) % (max_payload + 1);
            let payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let header = RecordHeader {
                epoch,
                first_seq: seq,
                count,
                clock_ms: 1_700_000_000_000 + epoch as i64 * 7 - 3,
            };
            seq += u64::from(count);
            (header, payload)
        })
        .collect()
}

fn next_seq_after(records: &[Rec]) -> u64 {
    records
        .last()
        .map_or(1, |(h, _)| h.first_seq + u64::from(h.count))
}

/// Writes `records` to a new log, committing every `commit_every` records.
fn write_log(cfg: &LogConfig, records: &[Rec], commit_every: usize) {
    let (mut writer, recovery) = open(cfg, |_, _, _| panic!("log should be empty")).unwrap();
    assert_eq!(recovery.records, 0);
    for (i, (header, payload)) in records.iter().enumerate() {
        writer.append(header, payload).unwrap();
        if (i + 1) % commit_every == 0 {
            writer.commit().unwrap();
        }
    }
    writer.commit().unwrap();
    assert_eq!(writer.next_epoch(), records.len() as u64);
    assert_eq!(writer.next_seq(), next_seq_after(records));
    writer.close().unwrap();
}

/// Opens the log and collects every replayed record, checking the progress counter.
fn read_log(cfg: &LogConfig) -> (Vec<Rec>, Recovery, LogWriter) {
    let mut out = Vec::new();
    let mut last_bytes = 0;
    let (writer, recovery) = open(cfg, |h, p, bytes| {
        assert!(bytes > last_bytes, "progress must increase");
        last_bytes = bytes;
        out.push((*h, p.to_vec()));
        Ok(())
    })
    .unwrap();
    assert_eq!(recovery.records, out.len() as u64);
    assert_eq!(
        recovery.events,
        out.iter().map(|(h, _)| u64::from(h.count)).sum::<u64>()
    );
    assert_eq!(recovery.last_epoch, out.last().map(|(h, _)| h.epoch));
    assert_eq!(recovery.next_seq, next_seq_after(&out));
    assert_eq!(recovery.bytes, size_on_disk(&cfg.dir).unwrap());
    if !out.is_empty() {
        assert!(last_bytes <= recovery.bytes);
    }
    assert_eq!(writer.next_epoch(), out.len() as u64);
    assert_eq!(writer.next_seq(), recovery.next_seq);
    (out, recovery, writer)
}

fn file_paths(dir: &Path) -> Vec<PathBuf> {
    file::list_files(dir)
        .unwrap()
        .into_iter()
        .map(|s| s.path)
        .collect()
}

/// (offset, total length) of every record in a log file.
fn record_spans(path: &Path) -> Vec<(u64, u64)> {
    let bytes = fs::read(path).unwrap();
    let mut spans = Vec::new();
    let mut at = FILE_HEADER_LEN as usize;
    while at < bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        let total = RECORD_HEADER_LEN as usize + len;
        spans.push((at as u64, total as u64));
        at += total;
    }
    assert_eq!(at, bytes.len());
    spans
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Appends `extra` after a recovered log, reopens, and checks the whole content.
fn append_and_verify(cfg: &LogConfig, mut writer: LogWriter, kept: &[Rec], extra: usize) {
    let mut expected = kept.to_vec();
    let mut seq = writer.next_seq();
    for i in 0..extra {
        let header = RecordHeader {
            epoch: writer.next_epoch(),
            first_seq: seq,
            count: 2,
            clock_ms: -5 - i as i64,
        };
        let payload = format!("appended after recovery {i}").into_bytes();
        writer.append(&header, &payload).unwrap();
        writer.commit().unwrap();
        seq += 2;
        expected.push((header, payload));
    }
    writer.close().unwrap();
    let (again, recovery, _writer) = read_log(cfg);
    assert_eq!(recovery.truncated_bytes, 0);
    assert_eq!(again, expected);
}

#[test]
fn round_trip_across_rotations() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 4096, FsyncPolicy::Always);
    let records = make_records(1000, 300, 1);
    write_log(&cfg, &records, 7);

    let files = file_paths(tmp.path());
    assert!(
        files.len() >= 5,
        "expected several rotations, got {}",
        files.len()
    );
    // Names are the first epoch of each file; no file is much larger than the limit.
    let mut epoch = 0;
    for path in &files {
        let name_epoch: u64 = path.file_stem().unwrap().to_str().unwrap().parse().unwrap();
        assert_eq!(name_epoch, epoch);
        let spans = record_spans(path);
        assert!(!spans.is_empty());
        epoch += spans.len() as u64;
        let len = fs::metadata(path).unwrap().len();
        assert!(len < 4096 + RECORD_HEADER_LEN + 300, "file of {len} bytes");
    }
    assert_eq!(files[0].file_name().unwrap(), "00000000000000000000.log");

    let (read, recovery, writer) = read_log(&cfg);
    assert_eq!(read, records);
    assert_eq!(recovery.truncated_bytes, 0);
    assert_eq!(writer.durable_next_seq(), next_seq_after(&records));
    // Reopening keeps appending into the last file, then rotates as usual.
    append_and_verify(&cfg, writer, &records, 50);
}

#[test]
fn many_records_in_one_commit_rotate_at_record_boundaries() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 1000, FsyncPolicy::Never);
    let records = make_records(500, 200, 2);
    write_log(&cfg, &records, usize::MAX);
    let files = file_paths(tmp.path());
    assert!(files.len() > 10);
    let mut epoch = 0;
    for path in &files {
        let name_epoch: u64 = path.file_stem().unwrap().to_str().unwrap().parse().unwrap();
        assert_eq!(name_epoch, epoch);
        epoch += record_spans(path).len() as u64;
    }
    let (read, _, _) = read_log(&cfg);
    assert_eq!(read, records);
}

#[test]
fn tiny_file_limit_gives_one_record_per_file() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 1, FsyncPolicy::Always);
    let records = make_records(20, 10, 3);
    write_log(&cfg, &records, 3);
    assert_eq!(file_paths(tmp.path()).len(), 20);
    let (read, _, writer) = read_log(&cfg);
    assert_eq!(read, records);
    append_and_verify(&cfg, writer, &records, 3);
}

#[test]
fn torn_last_record_at_every_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("source");
    let records = make_records(60, 120, 4);
    write_log(&config(&source, 1500, FsyncPolicy::Always), &records, 5);
    let files = file_paths(&source);
    assert!(files.len() >= 3);
    let last = files.last().unwrap();
    let last_name = last.file_name().unwrap().to_owned();
    let (start, len) = *record_spans(last).last().unwrap();
    assert!(
        len > RECORD_HEADER_LEN + 10,
        "the last record should have a payload"
    );

    for cut in start..start + len {
        let dir = tmp.path().join(format!("cut-{cut}"));
        copy_dir(&source, &dir);
        let file = fs::OpenOptions::new()
            .write(true)
            .open(dir.join(&last_name))
            .unwrap();
        file.set_len(cut).unwrap();
        drop(file);

        let cfg = config(&dir, 1500, FsyncPolicy::Always);
        let (read, recovery, writer) = read_log(&cfg);
        assert_eq!(read, records[..records.len() - 1], "cut at {cut}");
        assert_eq!(recovery.truncated_bytes, cut - start, "cut at {cut}");
        assert_eq!(fs::metadata(dir.join(&last_name)).unwrap().len(), start);
        append_and_verify(&cfg, writer, &read, 2);
        fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn torn_file_header_is_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 800, FsyncPolicy::Always);
    let records = make_records(40, 100, 5);
    write_log(&cfg, &records, 4);
    let next_epoch = records.len() as u64;
    // A crash while creating the next file leaves a partial header.
    let header = file::encode_file_header(next_epoch, next_seq_after(&records));
    let torn = tmp.path().join(file::file_name(next_epoch));
    for cut in 0..FILE_HEADER_LEN as usize {
        fs::write(&torn, &header[..cut]).unwrap();
        let (read, recovery, writer) = read_log(&cfg);
        assert_eq!(read, records);
        assert_eq!(recovery.truncated_bytes, cut as u64);
        assert!(!torn.exists());
        drop(writer);
    }
    // A complete but empty next file is valid.
    fs::write(&torn, header).unwrap();
    let (read, recovery, writer) = read_log(&cfg);
    assert_eq!(read, records);
    assert_eq!(recovery.truncated_bytes, 0);
    assert_eq!(writer.current_file(), torn);
    append_and_verify(&cfg, writer, &records, 3);
}

/// Every file of `dir` (recursively named) with its bytes, to show nothing changed.
fn dir_bytes(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    out.sort();
    out
}

/// Opening must fail with `Damaged` at `file` and `offset`, changing nothing.
fn assert_refused(cfg: &LogConfig, file: &Path, offset: u64) -> LogError {
    let before = dir_bytes(&cfg.dir);
    let err = match open(cfg, |_, _, _| Ok(())) {
        Ok(_) => panic!("a damaged log must not open"),
        Err(e) => e,
    };
    match &err {
        LogError::Damaged {
            path, offset: at, ..
        } => {
            assert_eq!(path, file, "{err}");
            assert_eq!(*at, offset, "{err}");
        }
        other => panic!("expected Damaged, got {other}"),
    }
    assert_eq!(dir_bytes(&cfg.dir), before, "nothing may change: {err}");
    let text = err.to_string();
    assert!(
        text.contains("shopstream log salvage") && text.contains("Nothing was changed"),
        "{text}"
    );
    err
}

/// Offsets into a record that cover every part: magic, length, checksum, fields, payload.
fn record_parts(len: u64) -> [u64; 9] {
    [0, 5, 9, 13, 21, 29, 35, RECORD_HEADER_LEN, len - 1]
}

/// A copy of the log in `source` under `tmp`, with byte `at` of its file `name`
/// flipped; returns the copy's directory and the flipped file.
fn flipped_copy(tmp: &Path, source: &Path, name: &std::ffi::OsStr, at: u64) -> (PathBuf, PathBuf) {
    let dir = tmp.join(format!("flip-{at}"));
    copy_dir(source, &dir);
    let path = dir.join(name);
    let mut bytes = fs::read(&path).unwrap();
    bytes[at as usize] ^= 0x40;
    fs::write(&path, bytes).unwrap();
    (dir, path)
}

/// A log of 80 records in files of 2,000 bytes, in `source` under a temporary
/// directory; and its last file.
fn eighty_records() -> (tempfile::TempDir, PathBuf, Vec<Rec>, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("source");
    let records = make_records(80, 100, 6);
    write_log(&config(&source, 2000, FsyncPolicy::Always), &records, 3);
    let last = file_paths(&source).pop().unwrap();
    (tmp, source, records, last)
}

#[test]
fn a_flipped_byte_in_the_last_record_is_a_torn_tail() {
    let (tmp, source, records, last) = eighty_records();
    let last_name = last.file_name().unwrap().to_owned();
    let (start, len) = *record_spans(&last).last().unwrap();
    let file_len = fs::metadata(&last).unwrap().len();
    for at in record_parts(len) {
        let (dir, _) = flipped_copy(tmp.path(), &source, &last_name, start + at);
        let cfg = config(&dir, 2000, FsyncPolicy::Always);
        let (read, recovery, writer) = read_log(&cfg);
        assert_eq!(read, records[..records.len() - 1], "flip at {at}");
        assert_eq!(recovery.truncated_bytes, file_len - start, "flip at {at}");
        append_and_verify(&cfg, writer, &read, 4);
    }
}

#[test]
fn a_flipped_byte_before_intact_records_refuses_to_start_and_changes_nothing() {
    let (tmp, source, _, last) = eighty_records();
    let last_name = last.file_name().unwrap().to_owned();
    let spans = record_spans(&last);
    assert!(spans.len() >= 3, "last file holds {} records", spans.len());
    let (start, len) = spans[spans.len() / 2];
    for at in record_parts(len) {
        let (dir, path) = flipped_copy(tmp.path(), &source, &last_name, start + at);
        assert_refused(&config(&dir, 2000, FsyncPolicy::Always), &path, start);
    }
}

#[test]
fn damage_in_an_earlier_file_refuses_to_start_and_deletes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 1000, FsyncPolicy::Always);
    let records = make_records(100, 100, 7);
    write_log(&cfg, &records, 2);
    let files = file_paths(tmp.path());
    assert!(files.len() >= 4);
    // A record in the middle of the second file.
    let victim = &files[1];
    let (start, _) = record_spans(victim)[1];
    let mut bytes = fs::read(victim).unwrap();
    bytes[start as usize + 45] ^= 1;
    fs::write(victim, &bytes).unwrap();
    let err = assert_refused(&cfg, victim, start);
    let LogError::Damaged {
        intact_after,
        epoch,
        ..
    } = err
    else {
        unreachable!()
    };
    let before = record_spans(&files[0]).len() + 1;
    assert_eq!(epoch, Some(before as u64));
    assert_eq!(
        intact_after,
        records.len() - before - 1,
        "every later record is intact"
    );
    // The header of an earlier file, too.
    let mut bytes = fs::read(victim).unwrap();
    bytes[start as usize + 45] ^= 1;
    bytes[3] ^= 1;
    fs::write(victim, &bytes).unwrap();
    assert_refused(&cfg, victim, 0);
}

#[test]
fn a_missing_middle_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 1000, FsyncPolicy::Always);
    let records = make_records(100, 100, 10);
    write_log(&cfg, &records, 2);
    let files = file_paths(tmp.path());
    assert!(files.len() >= 4);
    fs::remove_file(&files[1]).unwrap();
    assert_refused(&cfg, &files[2], 0);
}

#[test]
fn a_file_that_does_not_continue_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 1000, FsyncPolicy::Always);
    let records = make_records(30, 50, 8);
    write_log(&cfg, &records, 2);
    // A well-formed log file that leaves a gap of epochs: not a torn write.
    let gap = tmp.path().join(file::file_name(100));
    fs::write(&gap, file::encode_file_header(100, 1000)).unwrap();
    // And a file that is not a log file at all, which is ignored.
    fs::write(tmp.path().join("notes.txt"), b"hello").unwrap();
    assert_refused(&cfg, &gap, 0);
    assert!(tmp.path().join("notes.txt").exists());
}

#[test]
fn salvage_keeps_every_intact_record_quarantines_the_damage_and_records_the_gap() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 1000, FsyncPolicy::Always);
    let records = make_records(100, 100, 11);
    write_log(&cfg, &records, 2);
    let files = file_paths(tmp.path());
    let in_first = record_spans(&files[0]).len() as u64;
    let in_second = record_spans(&files[1]).len() as u64;
    // Damage one record in the oldest file, and lose a middle file.
    let (start, len) = record_spans(&files[0])[1];
    let mut bytes = fs::read(&files[0]).unwrap();
    bytes[start as usize + 50] ^= 0x10;
    fs::write(&files[0], &bytes).unwrap();
    let lost_file: Vec<u64> = record_spans(&files[2]).iter().map(|_| 0).collect();
    let lost_in_file = lost_file.len();
    fs::remove_file(&files[2]).unwrap();

    let report = check(tmp.path()).unwrap();
    assert!(!report.is_sound());
    assert_eq!(report.records(), records.len() - 1 - lost_in_file);
    assert_eq!(report.files[0].damage, [Damage { offset: start, len }]);
    assert_eq!(report.gaps.len(), 2, "{}", report.render());

    let done = salvage(tmp.path()).unwrap();
    assert_eq!(done.records, records.len() - 1 - lost_in_file);
    assert_eq!(done.quarantined.len(), 1);
    assert_eq!(
        fs::read(&done.quarantined[0].0).unwrap(),
        bytes[start as usize..(start + len) as usize]
    );
    assert!(
        check(tmp.path()).unwrap().is_sound(),
        "{}",
        check(tmp.path()).unwrap().render()
    );

    // The log opens, replays every intact record in order, and reports the gaps.
    let mut read = Vec::new();
    let (mut writer, recovery) = open(&cfg, |h, p, _| {
        read.push((*h, p.to_vec()));
        Ok(())
    })
    .unwrap();
    let lost_epochs: Vec<u64> = {
        let at = in_first + in_second;
        let mut v = vec![1];
        v.extend(at..at + lost_in_file as u64);
        v
    };
    let want: Vec<Rec> = records
        .iter()
        .filter(|(h, _)| !lost_epochs.contains(&h.epoch))
        .cloned()
        .collect();
    assert_eq!(read, want);
    assert_eq!(recovery.gaps, done.gaps);
    assert_eq!(
        recovery.gaps.iter().map(Gap::events).sum::<u64>(),
        records
            .iter()
            .filter(|(h, _)| lost_epochs.contains(&h.epoch))
            .map(|(h, _)| u64::from(h.count))
            .sum::<u64>()
    );
    // And it takes new records after the last one.
    let next = RecordHeader {
        epoch: records.len() as u64,
        first_seq: next_seq_after(&records),
        count: 1,
        clock_ms: 0,
    };
    writer.append(&next, b"after salvage").unwrap();
    writer.commit().unwrap();
    drop(writer);
    let mut n = 0;
    open(&cfg, |_, _, _| {
        n += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(n, want.len() + 1);
}

#[test]
fn zero_filled_tail_is_truncated() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 1 << 20, FsyncPolicy::Always);
    let records = make_records(10, 100, 9);
    write_log(&cfg, &records, 1);
    let path = file_paths(tmp.path()).pop().unwrap();
    let len = fs::metadata(&path).unwrap().len();
    let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(len + 4096).unwrap();
    drop(file);
    let (read, recovery, writer) = read_log(&cfg);
    assert_eq!(read, records);
    assert_eq!(recovery.truncated_bytes, 4096);
    append_and_verify(&cfg, writer, &records, 1);
}

#[test]
fn out_of_order_appends_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 1 << 20, FsyncPolicy::Always);
    let (mut writer, _) = open(&cfg, |_, _, _| Ok(())).unwrap();
    let h = |epoch, first_seq, count| RecordHeader {
        epoch,
        first_seq,
        count,
        clock_ms: 0,
    };
    // The first record is epoch 0 with first_seq 1.
    assert!(matches!(
        writer.append(&h(1, 1, 1), b"x"),
        Err(LogError::OutOfOrder { .. })
    ));
    assert!(matches!(
        writer.append(&h(0, 0, 1), b"x"),
        Err(LogError::OutOfOrder { .. })
    ));
    writer.append(&h(0, 1, 3), b"a").unwrap();
    // Epoch repeated, epoch skipped, seq not following.
    let err = writer.append(&h(0, 4, 1), b"b").unwrap_err();
    assert!(matches!(
        err,
        LogError::OutOfOrder {
            expected_epoch: 1,
            expected_seq: 4,
            epoch: 0,
            first_seq: 4
        }
    ));
    assert!(err.to_string().contains("expected epoch 1"));
    assert!(matches!(
        writer.append(&h(2, 4, 1), b"b"),
        Err(LogError::OutOfOrder { .. })
    ));
    assert!(matches!(
        writer.append(&h(1, 3, 1), b"b"),
        Err(LogError::OutOfOrder { .. })
    ));
    assert!(matches!(
        writer.append(&h(1, 5, 1), b"b"),
        Err(LogError::OutOfOrder { .. })
    ));
    // Errors change nothing: the writer goes on.
    assert_eq!((writer.next_epoch(), writer.next_seq()), (1, 4));
    writer.append(&h(1, 4, 0), b"tick").unwrap();
    writer.append(&h(2, 4, 2), b"c").unwrap();
    writer.commit().unwrap();
    assert!(matches!(
        writer
            .append(&h(3, 6, 1), &[])
            .and(writer.append(&h(4, 6, 1), &[])),
        Err(LogError::OutOfOrder { .. })
    ));
    assert!(matches!(writer.append(&h(4, 7, u32::MAX), b""), Ok(())));
    drop(writer);
    let (read, recovery, _) = read_log(&cfg);
    assert_eq!(read.len(), 5);
    assert_eq!(recovery.next_seq, 7 + u64::from(u32::MAX));
}

#[test]
fn empty_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("does/not/exist/yet");
    assert_eq!(size_on_disk(&dir).unwrap(), 0);
    let cfg = config(&dir, 1 << 20, FsyncPolicy::Always);
    let (read, recovery, mut writer) = read_log(&cfg);
    assert!(read.is_empty());
    assert_eq!(
        recovery,
        Recovery {
            records: 0,
            events: 0,
            last_epoch: None,
            next_seq: 1,
            truncated_bytes: 0,
            bytes: FILE_HEADER_LEN,
            gaps: Vec::new(),
            snapshot_epoch: None,
        }
    );
    assert_eq!((writer.next_epoch(), writer.next_seq()), (0, 1));
    assert_eq!(writer.commit().unwrap(), Duration::ZERO, "nothing to sync");
    drop(writer);
    // Reopening the empty log is still empty.
    let (read, recovery, writer) = read_log(&cfg);
    assert!(read.is_empty());
    assert_eq!(recovery.next_seq, 1);
    append_and_verify(&cfg, writer, &[], 2);
}

#[test]
fn size_on_disk_counts_all_files() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 600, FsyncPolicy::Never);
    let records = make_records(50, 80, 10);
    write_log(&cfg, &records, 5);
    let expected: u64 = file_paths(tmp.path())
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    let payloads: u64 = records.iter().map(|(_, p)| p.len() as u64).sum();
    let files = file_paths(tmp.path()).len() as u64;
    assert_eq!(
        expected,
        payloads + 50 * RECORD_HEADER_LEN + files * FILE_HEADER_LEN
    );
    fs::write(tmp.path().join("other.bin"), vec![0u8; 1000]).unwrap();
    assert_eq!(size_on_disk(tmp.path()).unwrap(), expected);
    // The last progress value of the replay reaches the size on disk.
    let mut last = 0;
    open(&cfg, |_, _, bytes| {
        last = bytes;
        Ok(())
    })
    .unwrap();
    assert_eq!(last, expected);
}

#[test]
fn callback_error_stops_replay_and_keeps_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 500, FsyncPolicy::Always);
    let records = make_records(30, 50, 11);
    write_log(&cfg, &records, 3);
    let before = size_on_disk(tmp.path()).unwrap();
    let mut seen = 0;
    let err = open(&cfg, |_, _, _| {
        seen += 1;
        if seen == 10 {
            Err(LogError::Callback("bad payload".into()))
        } else {
            Ok(())
        }
    })
    .unwrap_err();
    assert!(matches!(err, LogError::Callback(ref m) if m == "bad payload"));
    assert_eq!(seen, 10);
    assert_eq!(size_on_disk(tmp.path()).unwrap(), before);
    let (read, _, _) = read_log(&cfg);
    assert_eq!(read, records);
}

#[test]
fn fsync_policies() {
    let tmp = tempfile::tempdir().unwrap();
    let h = |epoch| RecordHeader {
        epoch,
        first_seq: 1 + epoch,
        count: 1,
        clock_ms: 0,
    };

    let mut cfg = config(&tmp.path().join("never"), 1 << 20, FsyncPolicy::Never);
    let (mut writer, _) = open(&cfg, |_, _, _| Ok(())).unwrap();
    writer.append(&h(0), b"x").unwrap();
    assert_eq!(writer.commit().unwrap(), Duration::ZERO);
    assert_eq!(writer.durable_next_seq(), 1);
    writer.sync().unwrap();
    assert_eq!(writer.durable_next_seq(), 2);

    cfg = config(&tmp.path().join("interval"), 1 << 20, FsyncPolicy::Interval);
    cfg.fsync_interval = Duration::from_secs(3600);
    let (mut writer, _) = open(&cfg, |_, _, _| Ok(())).unwrap();
    writer.append(&h(0), b"x").unwrap();
    assert_eq!(writer.commit().unwrap(), Duration::ZERO);
    assert_eq!(
        (writer.durable_next_epoch(), writer.durable_next_seq()),
        (0, 1)
    );
    cfg.fsync_interval = Duration::ZERO;
    let (mut writer, recovery) = open(&cfg, |_, _, _| Ok(())).unwrap();
    assert_eq!(recovery.records, 1, "written data survives the writer");
    writer.append(&h(1), b"y").unwrap();
    writer.commit().unwrap();
    assert_eq!(
        (writer.durable_next_epoch(), writer.durable_next_seq()),
        (2, 3)
    );

    cfg = config(&tmp.path().join("always"), 1 << 20, FsyncPolicy::Always);
    let (mut writer, _) = open(&cfg, |_, _, _| Ok(())).unwrap();
    writer.append(&h(0), b"x").unwrap();
    writer.append(&h(1), b"y").unwrap();
    assert_eq!(writer.durable_next_seq(), 1);
    assert!(writer.commit().unwrap() > Duration::ZERO);
    assert_eq!(writer.durable_next_seq(), 3);
    assert_eq!(
        writer.commit().unwrap(),
        Duration::ZERO,
        "nothing new to sync"
    );
}

#[test]
fn dropping_the_writer_keeps_appended_records() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 1 << 20, FsyncPolicy::Never);
    let records = make_records(10, 40, 12);
    let (mut writer, _) = open(&cfg, |_, _, _| Ok(())).unwrap();
    for (h, p) in &records {
        writer.append(h, p).unwrap();
    }
    drop(writer);
    let (read, _, _) = read_log(&cfg);
    assert_eq!(read, records);
}

#[test]
fn large_records() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 16 << 20, FsyncPolicy::Never);
    let (mut writer, _) = open(&cfg, |_, _, _| Ok(())).unwrap();
    let mut records = Vec::new();
    let mut seq = 1;
    for (epoch, len) in [(0u64, 9 << 20), (1, 3), (2, 12 << 20), (3, 0), (4, 1 << 20)] {
        let header = RecordHeader {
            epoch,
            first_seq: seq,
            count: 1000,
            clock_ms: epoch as i64,
        };
        let payload: Vec<u8> = (0..len).map(|i| (i * 31 + epoch as usize) as u8).collect();
        writer.append(&header, &payload).unwrap();
        seq += 1000;
        records.push((header, payload));
    }
    writer.commit().unwrap();
    drop(writer);
    let (read, _, _) = read_log(&cfg);
    assert_eq!(read, records);
    assert_eq!(file_paths(tmp.path()).len(), 2);
}

proptest! {
    // No failure persistence: it would write files outside the module.
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Cutting the last log file anywhere keeps exactly the records that lie
    /// wholly before the cut, and the log stays appendable; cutting an earlier
    /// one is refused and changes nothing.
    #[test]
    fn truncation_anywhere_keeps_a_prefix(
        n in 1usize..60,
        max_payload in 0usize..150,
        file_bytes in 100u64..1500,
        commit_every in 1usize..8,
        seed in any::<u64>(),
        file_pick in any::<prop::sample::Index>(),
        cut_pick in any::<prop::sample::Index>(),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path(), file_bytes, FsyncPolicy::Never);
        let records = make_records(n, max_payload, seed);
        write_log(&cfg, &records, commit_every);
        let files = file_paths(tmp.path());
        let victim = file_pick.index(files.len());
        let len = fs::metadata(&files[victim]).unwrap().len();
        let cut = cut_pick.index(len as usize) as u64;
        let before: usize = files[..victim].iter().map(|p| record_spans(p).len()).sum();
        let within = if cut < FILE_HEADER_LEN {
            0
        } else {
            record_spans(&files[victim]).iter().filter(|(o, l)| o + l <= cut).count()
        };
        let total = size_on_disk(tmp.path()).unwrap();
        let file = fs::OpenOptions::new().write(true).open(&files[victim]).unwrap();
        file.set_len(cut).unwrap();
        drop(file);

        if victim + 1 < files.len() {
            // Not the tail: refused, and nothing changed.
            let before = dir_bytes(tmp.path());
            let refused = matches!(open(&cfg, |_, _, _| Ok(())), Err(LogError::Damaged { .. }));
            prop_assert!(refused, "a cut in file {} of {} must be refused", victim, files.len());
            prop_assert_eq!(dir_bytes(tmp.path()), before);
            return Ok(());
        }
        let (read, recovery, writer) = read_log(&cfg);
        prop_assert_eq!(&read[..], &records[..before + within]);
        let kept_files = if cut < FILE_HEADER_LEN { victim } else { victim + 1 };
        prop_assert_eq!(file_paths(tmp.path()).len(), kept_files.max(1));
        let created = if kept_files == 0 { FILE_HEADER_LEN } else { 0 };
        prop_assert_eq!(
            recovery.truncated_bytes + recovery.bytes,
            total - (len - cut) + created
        );
        append_and_verify(&cfg, writer, &read, 2);
    }
}
