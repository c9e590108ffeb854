//! Newline-delimited JSON: one message per line. A bad line is answered with its
//! line number and reason and its neighbours carry on; a line over
//! `ingest.max_line_bytes` is refused and skipped to its end.
//!
//! The framing is [`LineDecoder`], a state machine over the bytes read so far with
//! no I/O, so that how the bytes were split into reads cannot change the answer
//! (`tests/fuzz.rs` checks exactly that); `read_lines` only moves bytes and
//! batches between it and the connection.

use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::connection::{
    read_more, submit, Decoded, Origin, Pending, MAX_REJECTS_PER_BATCH, READ_CHUNK,
};
use super::{Refusal, Validator};
use crate::event::Reject;
use crate::runtime::Engine;

/// Reads NDJSON until EOF, submitting one batch per read.
pub(crate) async fn read_lines(
    rd: &mut (impl AsyncReadExt + Unpin),
    mut buf: Vec<u8>,
    engine: &Engine,
    tx: &mpsc::Sender<Pending>,
) -> std::io::Result<()> {
    let mut validator = Validator::new(&engine.config);
    let mut lines = LineDecoder::new(validator.max_line_bytes());
    let idle = engine.config.idle_timeout;
    let mut eof = false;
    let mut sniffed = !buf.is_empty();
    loop {
        // After the lines are taken, the buffer holds at most one partial line
        // (at most `max_line` bytes), so it always needs more input, except on
        // the first turn: what the listener read while it sniffed the framing
        // may already hold whole lines, and a client that sends a few events and
        // waits must have them submitted now, not on its next write.
        if !eof && !std::mem::take(&mut sniffed) {
            buf.reserve(READ_CHUNK);
            if read_more(rd, &mut buf, idle, tx).await? == 0 {
                eof = true;
            }
        }
        validator.tick();
        let mut out = Decoded::default();
        while !lines.lines(&mut buf, &validator, &mut out) {
            // Answers wait in memory until the client reads them: bound them,
            // and stop reading while the client does not.
            let full = std::mem::take(&mut out);
            submit(engine, tx, full.events, full.rejects).await?;
        }
        lines.rest(&mut buf, eof, &validator, &mut out);
        submit(engine, tx, out.events, out.rejects).await?;
        if eof {
            return Ok(());
        }
    }
}

/// The NDJSON framing of one connection: line numbers, and the skipping of a line
/// over the limit.
///
/// Invariant: whatever the split of the stream into reads, every line that is not
/// blank yields exactly one event or one refusal naming its line number, and valid
/// lines next to bad ones are kept. The buffer never holds more than one partial
/// line of at most `max_line` bytes after [`LineDecoder::rest`].
#[derive(Debug)]
pub struct LineDecoder {
    max_line: usize,
    /// Lines seen so far (blank ones included): the number of the last one.
    line_no: u64,
    /// Set while discarding the rest of an over-long line.
    skipping: bool,
    /// Bytes at the front of the buffer (a partial line) already searched for a
    /// newline: the next search starts after them. Rescanning the partial line on
    /// every read made a client that sends a long line a byte at a time cost time
    /// quadratic in its length (found by tests/fuzz.rs).
    scanned: usize,
}

impl LineDecoder {
    pub fn new(max_line: usize) -> Self {
        LineDecoder {
            max_line,
            line_no: 0,
            skipping: false,
            scanned: 0,
        }
    }

    /// Takes the complete lines at the front of `buf` (removing them from it) into
    /// `out`. Returns `false` when it stopped early because `out` holds
    /// [`MAX_REJECTS_PER_BATCH`] refusals: submit `out` and call again.
    pub fn lines(&mut self, buf: &mut Vec<u8>, validator: &Validator, out: &mut Decoded) -> bool {
        let mut start = 0;
        let mut done = true;
        let mut from = std::mem::take(&mut self.scanned).min(buf.len());
        while let Some(nl) = memchr::memchr(b'\n', &buf[from..]) {
            let line = &buf[start..from + nl];
            start = from + nl + 1;
            from = start;
            if std::mem::take(&mut self.skipping) {
                continue;
            }
            self.take_line(line, validator, out);
            if out.rejects.len() >= MAX_REJECTS_PER_BATCH {
                done = false;
                break;
            }
        }
        buf.drain(..start);
        if done {
            // What is left is one partial line, with no newline in it.
            self.scanned = buf.len();
        }
        done
    }

    /// After [`LineDecoder::lines`]: a partial line already over the limit is
    /// refused now and skipped to its end; at EOF, a last line without a newline
    /// is taken.
    pub fn rest(&mut self, buf: &mut Vec<u8>, eof: bool, validator: &Validator, out: &mut Decoded) {
        // A trailing `\r` belongs to the line ending, not to the line.
        let partial = buf.len() - usize::from(buf.last() == Some(&b'\r'));
        if !self.skipping && partial > self.max_line {
            // No newline within the limit: refuse the line now, drop bytes until its end.
            self.line_no += 1;
            out.rejects.push((
                Origin::Line(self.line_no),
                Refusal::LineOverLimit { max: self.max_line },
            ));
            self.skipping = true;
        }
        if self.skipping {
            buf.clear();
            self.scanned = 0;
        }
        if eof && !buf.is_empty() {
            self.scanned = 0;
            let line = std::mem::take(buf);
            self.take_line(&line, validator, out);
        }
    }

    fn take_line(&mut self, line: &[u8], validator: &Validator, out: &mut Decoded) {
        self.line_no += 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        // The limit is on the line as sent, blanks and a byte order mark included,
        // as `rest` applies it to a line still arriving: whether a line is refused
        // must not depend on how the stream was split into reads (tests/fuzz.rs
        // found a blank or BOM-led line over the limit refused in pieces only).
        if line.len() > self.max_line {
            let r = Reject::LineTooLong {
                len: line.len(),
                max: self.max_line,
            };
            out.rejects.push((Origin::Line(self.line_no), r.into()));
            return;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        match validator.parse(line, None) {
            Ok(ev) => out.events.push(ev),
            Err(r) => out.rejects.push((Origin::Line(self.line_no), r)),
        }
    }
}
