//! A log record's payload: its events, its definition changes and its events'
//! identity links, in bincode.

use crate::catalog::Control;
use crate::event::Event;

/// Encodes chunks of events exactly as `bincode::serialize` encodes one
/// `Vec<Event>` of them all (a little-endian `u64` length, then each event), into a
/// reused buffer, followed, when there are any, by the record's definition
/// changes as a bincode `Vec<Control>`, and then, when there are any, by the
/// events' identity links as a bincode `Vec<(u32, Str)>` (the controls then
/// written even when empty). [`decode_payload`] reads all three; a version
/// before links reads the events and the controls and ignores the rest.
pub(super) fn encode_payload(
    chunks: &[Vec<Event>],
    count: usize,
    controls: &[Control],
    out: &mut Vec<u8>,
) {
    out.clear();
    out.extend_from_slice(&(count as u64).to_le_bytes());
    for ev in chunks.iter().flatten() {
        bincode::serialize_into(&mut *out, ev).expect("events serialize");
    }
    let links = crate::event::links_of(chunks.iter().flatten());
    if !controls.is_empty() || !links.is_empty() {
        bincode::serialize_into(&mut *out, controls).expect("controls serialize");
    }
    if !links.is_empty() {
        bincode::serialize_into(&mut *out, &links).expect("links serialize");
    }
}

/// Decodes a record's payload: its events (with their links) and its definition
/// changes (none in a record without them, as every record before definitions
/// existed).
pub fn decode_payload(payload: &[u8]) -> bincode::Result<(Vec<Event>, Vec<Control>)> {
    use crate::event::decode_next;
    let mut reader = payload;
    let mut events: Vec<Event> = decode_next(&mut reader)?;
    let controls = if reader.is_empty() {
        Vec::new()
    } else {
        decode_next(&mut reader)?
    };
    if !reader.is_empty() {
        let links: Vec<(u32, crate::event::Str)> = decode_next(&mut reader)?;
        crate::event::set_links(&mut events, links);
    }
    Ok((events, controls))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{parse_message, ParseContext};

    #[test]
    fn chunked_payload_decodes_as_one_vec() {
        let ctx = ParseContext::new("USD");
        let ev = |u: &str| {
            let line = format!(
                r#"{{"type":"track","event":"Product Viewed","userId":"{u}","properties":{{"product_id":"p1","price":2.5}}}}"#
            );
            parse_message(line.as_bytes(), &ctx, None).expect("valid")
        };
        let chunks = vec![vec![ev("a"), ev("b")], vec![ev("c")]];
        let mut out = Vec::new();
        encode_payload(&chunks, 3, &[], &mut out);
        let flat: Vec<Event> = chunks.concat();
        assert_eq!(out, bincode::serialize(&flat).expect("encode"));
        let back: Vec<Event> = bincode::deserialize(&out).expect("decode");
        assert_eq!(back, flat);
        assert_eq!(
            decode_payload(&out).expect("decode"),
            (flat.clone(), vec![])
        );

        // Definitions ride after the events; a record without them reads as before.
        let controls = vec![
            Control::put("segment", "s", "orders > 1", crate::catalog::Source::Api),
            Control::remove("segment", "t"),
        ];
        encode_payload(&chunks, 3, &controls, &mut out);
        assert_eq!(
            decode_payload(&out).expect("decode"),
            (flat.clone(), controls.clone())
        );
        encode_payload(&[], 0, &controls, &mut out);
        assert_eq!(
            decode_payload(&out).expect("decode"),
            (vec![], controls.clone())
        );

        // Identity links ride in a section after the controls (written empty when
        // there are none): they come back, and a version from before links (events,
        // then controls, the rest ignored) still reads the record.
        let mut linked = flat.clone();
        linked[1].link = Some("a-17".into());
        for controls in [vec![], controls] {
            encode_payload(&[linked.clone()], 3, &controls, &mut out);
            assert_eq!(
                decode_payload(&out).expect("decode"),
                (linked.clone(), controls.clone())
            );
            let mut reader = &out[..];
            let old: Vec<Event> = bincode::deserialize_from(&mut reader).expect("events");
            let old_controls: Vec<Control> =
                bincode::deserialize_from(&mut reader).expect("controls");
            assert_eq!((old, old_controls), (flat.clone(), controls));
        }
        assert!(
            decode_payload(&out[..out.len() - 1]).is_err(),
            "a torn payload is an error"
        );
    }
}
