//! Newline-delimited JSON: one message per line. A bad line is answered with its
//! line number and reason and its neighbours carry on; a line over
//! `ingest.max_line_bytes` is refused and skipped to its end.

use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::connection::{read_more, submit, Origin, Pending, MAX_REJECTS_PER_BATCH, READ_CHUNK};
use super::{Refusal, Validator};
use crate::event::Event;
use crate::runtime::Engine;

/// Reads NDJSON until EOF, submitting one batch per read.
pub(crate) async fn read_lines(
    rd: &mut (impl AsyncReadExt + Unpin),
    mut buf: Vec<u8>,
    engine: &Engine,
    tx: &mpsc::Sender<Pending>,
) -> std::io::Result<()> {
    let mut validator = Validator::new(&engine.config);
    let max_line = validator.max_line_bytes();
    let idle = engine.config.idle_timeout;
    let mut line_no: u64 = 0;
    // Set while discarding the rest of an over-long line.
    let mut skipping = false;
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
        let mut events = Vec::new();
        let mut rejects = Vec::new();
        let mut start = 0;
        while let Some(nl) = memchr(&buf[start..]) {
            let line = &buf[start..start + nl];
            start += nl + 1;
            if skipping {
                skipping = false;
                continue;
            }
            take_line(line, &mut line_no, &validator, &mut events, &mut rejects);
            if rejects.len() >= MAX_REJECTS_PER_BATCH {
                // Answers wait in memory until the client reads them: bound them,
                // and stop reading while the client does not.
                submit(
                    engine,
                    tx,
                    std::mem::take(&mut events),
                    std::mem::take(&mut rejects),
                )
                .await?;
            }
        }
        buf.drain(..start);
        // A trailing `\r` belongs to the line ending, not to the line.
        let partial = buf.len() - usize::from(buf.last() == Some(&b'\r'));
        if !skipping && partial > max_line {
            // No newline within the limit: refuse the line now, drop bytes until its end.
            line_no += 1;
            rejects.push((
                Origin::Line(line_no),
                Refusal::LineOverLimit { max: max_line },
            ));
            skipping = true;
        }
        if skipping {
            buf.clear();
        }
        if eof && !buf.is_empty() {
            let line = std::mem::take(&mut buf);
            take_line(&line, &mut line_no, &validator, &mut events, &mut rejects);
        }
        submit(engine, tx, events, rejects).await?;
        if eof {
            return Ok(());
        }
    }
}

fn take_line(
    line: &[u8],
    line_no: &mut u64,
    validator: &Validator,
    events: &mut Vec<Event>,
    rejects: &mut Vec<(Origin, Refusal)>,
) {
    *line_no += 1;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    match validator.parse(line, None) {
        Ok(ev) => events.push(ev),
        Err(r) => rejects.push((Origin::Line(*line_no), r)),
    }
}

fn memchr(s: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', s)
}
