//! Length-prefixed bincode frames, for clients that want the last bit of throughput.
//!
//! A connection that opens with [`MAGIC`] sends frames: a little-endian `u32`
//! length, then `bincode` (1.x, default options) of `Vec<Event>` — events already
//! in the engine's own model, so the server skips JSON parsing but still checks
//! every event. Answers are the same NDJSON lines as the text protocol, with errors
//! naming `frame` (1-based) and `index` within it. A frame over
//! `ingest.max_batch_bytes` is refused and skipped; the framing stays in step.
//! With access control on, the first frame carries the token instead
//! ([`encode_auth_frame`]); the listener reads it before any event frame.

use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::connection::{read_more, submit, Origin, Pending};
use super::{Refusal, Validator};
use crate::event::Event;
use crate::runtime::Engine;

/// The bytes that select the binary protocol.
pub const MAGIC: &[u8] = b"SSB1";

/// Encodes one frame (length prefix included).
pub fn encode_frame(events: &[Event]) -> Vec<u8> {
    length_prefixed(&bincode::serialize(events).expect("events serialize"))
}

fn length_prefixed(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// The frame a client sends first when access control is on: its body is the
/// auth line's JSON, `{"auth": TOKEN}` (see [`crate::auth::first_line`]).
pub fn encode_auth_frame(token: &str) -> Vec<u8> {
    length_prefixed(&crate::auth::first_line(token))
}

pub(crate) async fn read_frames(
    rd: &mut (impl AsyncReadExt + Unpin),
    mut buf: Vec<u8>,
    engine: &Engine,
    tx: &mpsc::Sender<Pending>,
) -> std::io::Result<()> {
    let max = engine.config.max_batch_bytes;
    let mut validator = Validator::new(&engine.config);
    let mut frame_no = 0u64;
    // Bytes of an oversized frame still to discard.
    let mut skip = 0usize;
    let mut eof = false;
    // What the listener read while it sniffed the framing may hold whole frames:
    // take them before waiting for more input.
    let mut sniffed = !buf.is_empty();
    loop {
        if !eof
            && !std::mem::take(&mut sniffed)
            && read_more(rd, &mut buf, engine.config.idle_timeout, tx).await? == 0
        {
            eof = true;
        }
        validator.tick();
        let mut events = Vec::new();
        let mut rejects = Vec::new();
        let mut pos = 0;
        loop {
            if skip > 0 {
                let n = skip.min(buf.len() - pos);
                skip -= n;
                pos += n;
                if skip > 0 {
                    break;
                }
            }
            if buf.len() - pos < 4 {
                break;
            }
            let len = u32::from_le_bytes(buf[pos..pos + 4].try_into().expect("4 bytes")) as usize;
            if len > max {
                frame_no += 1;
                rejects.push((
                    Origin::Frame(frame_no),
                    Refusal::FrameTooLarge {
                        frame: frame_no,
                        len,
                        max,
                    },
                ));
                pos += 4;
                skip = len;
                continue;
            }
            if buf.len() - pos < 4 + len {
                break;
            }
            frame_no += 1;
            let body = &buf[pos + 4..pos + 4 + len];
            pos += 4 + len;
            match bincode::deserialize::<Vec<Event>>(body) {
                Ok(batch) => {
                    for (i, ev) in batch.into_iter().enumerate() {
                        match validator.check(&ev) {
                            Ok(()) => events.push(ev),
                            Err(r) => rejects.push((Origin::FrameEvent(frame_no, i), r)),
                        }
                    }
                }
                Err(e) => rejects.push((
                    Origin::Frame(frame_no),
                    Refusal::BadFrame {
                        frame: frame_no,
                        reason: e.to_string(),
                    },
                )),
            }
        }
        buf.drain(..pos);
        if eof && (!buf.is_empty() || skip > 0) {
            // Inside an oversized frame being skipped, the frame is already counted.
            if skip == 0 {
                frame_no += 1;
            }
            rejects.push((
                Origin::Frame(frame_no),
                Refusal::TruncatedFrame { frame: frame_no },
            ));
            buf.clear();
        }
        submit(engine, tx, events, rejects).await?;
        if eof {
            return Ok(());
        }
    }
}
