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
//!
//! The framing is [`FrameDecoder`], with no I/O, so that the split of the stream
//! into reads cannot change the answer (`tests/fuzz.rs` checks it); `read_frames`
//! only moves bytes and batches between it and the connection.

use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::connection::{read_more, submit, Decoded, Origin, Pending};
use super::{Refusal, Validator};
use crate::event::Event;
use crate::runtime::Engine;

/// The bytes that select the binary protocol.
pub const MAGIC: &[u8] = b"SSB1";

/// Encodes one frame (length prefix included): the events, then, when any has
/// an identity link, the links as `Vec<(u32, Str)>` (as in the log's records;
/// a server from before links reads the events and ignores the rest).
pub fn encode_frame(events: &[Event]) -> Vec<u8> {
    let mut body = bincode::serialize(events).expect("events serialize");
    let links = crate::event::links_of(events);
    if !links.is_empty() {
        bincode::serialize_into(&mut body, &links).expect("links serialize");
    }
    length_prefixed(&body)
}

/// Decodes a frame's body: its events, with the links after them if any.
fn decode_body(body: &[u8]) -> bincode::Result<Vec<Event>> {
    use crate::event::decode_next;
    let mut reader = body;
    let mut events: Vec<Event> = decode_next(&mut reader)?;
    if !reader.is_empty() {
        let links: Vec<(u32, crate::event::Str)> = decode_next(&mut reader)?;
        crate::event::set_links(&mut events, links);
    }
    Ok(events)
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
    let mut validator = Validator::new(&engine.config);
    let mut frames = FrameDecoder::new(engine.config.max_batch_bytes);
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
        let mut out = Decoded::default();
        frames.frames(&mut buf, &validator, &mut out);
        if eof {
            frames.end(&mut buf, &mut out);
        }
        submit(engine, tx, out.events, out.rejects).await?;
        if eof {
            return Ok(());
        }
    }
}

/// The binary framing of one connection: frame numbers, and the skipping of a
/// frame over the limit.
///
/// Invariant: whatever the split of the stream into reads, every frame yields its
/// valid events and one refusal per bad event, or one refusal for the whole frame;
/// a length prefix is never trusted beyond `max` (an oversized frame is skipped as
/// it arrives, never buffered), so the buffer holds at most one frame of at most
/// `max` bytes plus what one read added.
#[derive(Debug)]
pub struct FrameDecoder {
    max: usize,
    /// Frames seen so far: the number of the last one.
    frame_no: u64,
    /// Bytes of an oversized frame still to discard.
    skip: usize,
}

impl FrameDecoder {
    pub fn new(max: usize) -> Self {
        FrameDecoder {
            max,
            frame_no: 0,
            skip: 0,
        }
    }

    /// Takes the complete frames at the front of `buf` (removing them from it)
    /// into `out`.
    pub fn frames(&mut self, buf: &mut Vec<u8>, validator: &Validator, out: &mut Decoded) {
        let mut pos = 0;
        loop {
            if self.skip > 0 {
                let n = self.skip.min(buf.len() - pos);
                self.skip -= n;
                pos += n;
                if self.skip > 0 {
                    break;
                }
            }
            if buf.len() - pos < 4 {
                break;
            }
            let len = u32::from_le_bytes(buf[pos..pos + 4].try_into().expect("4 bytes")) as usize;
            if len > self.max {
                self.frame_no += 1;
                out.rejects.push((
                    Origin::Frame(self.frame_no),
                    Refusal::FrameTooLarge {
                        frame: self.frame_no,
                        len,
                        max: self.max,
                    },
                ));
                pos += 4;
                self.skip = len;
                continue;
            }
            if buf.len() - pos < 4 + len {
                break;
            }
            self.frame_no += 1;
            let frame = self.frame_no;
            let body = &buf[pos + 4..pos + 4 + len];
            pos += 4 + len;
            match decode_body(body) {
                Ok(batch) => {
                    for (i, ev) in batch.into_iter().enumerate() {
                        match validator.check(&ev) {
                            Ok(()) => out.events.push(ev),
                            Err(r) => out.rejects.push((Origin::FrameEvent(frame, i), r)),
                        }
                    }
                }
                Err(e) => out.rejects.push((
                    Origin::Frame(frame),
                    Refusal::BadFrame {
                        frame,
                        reason: e.to_string(),
                    },
                )),
            }
        }
        buf.drain(..pos);
    }

    /// At EOF, after [`FrameDecoder::frames`]: a frame left incomplete is refused.
    pub fn end(&mut self, buf: &mut Vec<u8>, out: &mut Decoded) {
        if buf.is_empty() && self.skip == 0 {
            return;
        }
        // Inside an oversized frame being skipped, the frame is already counted.
        if self.skip == 0 {
            self.frame_no += 1;
        }
        out.rejects.push((
            Origin::Frame(self.frame_no),
            Refusal::TruncatedFrame {
                frame: self.frame_no,
            },
        ));
        buf.clear();
        self.skip = 0;
    }
}
