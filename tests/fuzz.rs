//! Fuzzing on stable Rust: four targets, each a property checked on inputs made by
//! mutating a committed seed corpus with a seeded random generator.
//!
//! | target    | code under test                                   | property |
//! |-----------|---------------------------------------------------|----------|
//! | `ndjson`  | `ingest::ndjson::LineDecoder` + `Validator::parse` | every line that is not blank is one event or one refusal naming its line, as a line-by-line oracle says; the answer does not depend on how the stream is split into reads; the buffer stays within one line |
//! | `binary`  | `ingest::binary::FrameDecoder` + `Validator::check` | every frame is its events and refusals, or one refusal, as a frame-by-frame oracle says; independent of the split into reads; a length prefix never buffers more than `max_batch_bytes` |
//! | `http`    | `ingest::http::batch_messages` + `validate`        | a body is an object with one `batch` array or a 400; accepted + rejected = the batch length |
//! | `rules`   | `rules::Rule::compile`, `eval`, `next_change`      | a rule compiles or its error points inside the text; a compiled rule evaluates on any profile |
//!
//! None of them may panic. The decoders are the ones the connections run (the
//! socket loops only move bytes and batches around them), and
//! [`fuzzed_inputs_through_the_real_server`] sends a sample of the same inputs to a
//! real server over real sockets and checks its answers against the same oracles.
//!
//! # Running
//! * `cargo test --test fuzz`: every corpus file as it is, then 2,000 mutated
//!   inputs per target (seconds in a debug build).
//! * `FUZZ_INPUTS=1000000 cargo test --release --test fuzz fuzz_ -- --test-threads 1`:
//!   the soak, 1M inputs per target, one target at a time; each prints its
//!   inputs/s.
//! * `FUZZ_SEED=S` repeats a run (the seed is printed); `FUZZ_TARGET=ndjson`
//!   picks one target by its corpus name.
//!
//! # The corpus
//! `tests/fuzz-corpus/<target>/` holds valid inputs and known tricky ones (a byte
//! order mark, duplicate keys, huge numbers, deep nesting, invalid UTF-8, truncated
//! frames). The binary seeds are made by code (`the_binary_seed_corpus_is_current`
//! fails when they go stale; `FUZZ_WRITE_SEEDS=1` rewrites them). A failing input is
//! shrunk and written next to them as `crash-<hash>`, so it is replayed first on
//! every later run: commit it as the regression.
//!
//! # Memory
//! The binary runs under a 512 MiB allocation cap ([`cap::Cap`]): a length prefix
//! trusted into an allocation would otherwise pass unnoticed, since Linux grants
//! untouched memory freely; with the cap the run aborts with "memory allocation of
//! N bytes failed".

mod util;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{Once, OnceLock};
use std::time::Instant;

use serde_json::{json, Value};
use shopstream::config::Config;
use shopstream::event::{Event, Str};
use shopstream::ingest::binary::{encode_frame, FrameDecoder, MAGIC};
use shopstream::ingest::connection::{Decoded, Origin, MAX_REJECTS_PER_BATCH};
use shopstream::ingest::http::{batch_messages, validate};
use shopstream::ingest::ndjson::LineDecoder;
use shopstream::ingest::{Refusal, Validator};
use shopstream_dataflows::rules::{Rule, Subject};
use shopstream_dataflows::views::profiles::{Lifetime, UserProfile, WindowCounts, Windowed};
use util::*;

#[global_allocator]
static ALLOC: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);
const ALLOC_CAP: usize = 512 << 20;

/// Small limits, so that the mutations reach them often.
const MAX_LINE: usize = 1024;
const MAX_BATCH: usize = 4096;
/// Inputs per target in the default suite.
const DEFAULT_INPUTS: u64 = 2_000;
/// Mutated inputs do not grow past this.
const MAX_INPUT: usize = 64 * 1024;

fn fuzz_config() -> Config {
    let mut c = Config::defaults();
    c.max_line_bytes = MAX_LINE;
    c.max_batch_bytes = MAX_BATCH;
    c
}

/// One validator for every input: its clock is read once, so the outcome of an
/// input depends on its bytes alone.
fn validator() -> &'static Validator {
    static V: OnceLock<Validator> = OnceLock::new();
    V.get_or_init(|| Validator::new(&fuzz_config()))
}

// ---------------------------------------------------------------------------
// The driver

/// SplitMix64: a seeded generator, so that every input is reproducible from the
/// run's seed and its index.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
}

/// A seed from the clock, for runs that do not name one.
fn clock_seed() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    hash_of(&now.as_nanos().to_le_bytes())
}

fn hash_of(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

struct Target {
    /// The corpus folder's name.
    name: &'static str,
    /// Panics when the property fails.
    check: fn(&[u8]),
    /// Seeds made in code, besides the corpus files.
    seeds: fn() -> Vec<Vec<u8>>,
    /// Tokens worth inserting, besides [`COMMON_TOKENS`].
    tokens: &'static [&'static [u8]],
}

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-corpus")
        .join(target)
}

/// The corpus files, by name (so `crash-*` regressions are replayed with the rest).
fn corpus(target: &Target) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target.name);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    files.sort();
    let mut out: Vec<_> = files
        .into_iter()
        .map(|p| {
            let name = p.file_name().expect("name").to_string_lossy().into_owned();
            (name, std::fs::read(&p).expect("read corpus file"))
        })
        .collect();
    out.extend(
        (target.seeds)()
            .into_iter()
            .enumerate()
            .map(|(i, s)| (format!("<seed {i}>"), s)),
    );
    assert!(!out.is_empty(), "{}: empty corpus", dir.display());
    out
}

thread_local! {
    /// Set while the driver expects panics (running and shrinking inputs): they
    /// are caught and reported once, not printed for every try.
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn quiet_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get()) {
                default(info)
            }
        }));
        ALLOC.set_limit(ALLOC_CAP).expect("allocation cap");
    });
}

/// Runs one input; the panic message if the property failed.
fn run_one(check: fn(&[u8]), input: &[u8]) -> Result<(), String> {
    QUIET.with(|q| q.set(true));
    let r = catch_unwind(AssertUnwindSafe(|| check(input)));
    QUIET.with(|q| q.set(false));
    r.map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic with a non-string payload".into())
    })
}

/// Shrinks a failing input: drops ever smaller chunks while it still fails.
fn shrink(check: fn(&[u8]), mut input: Vec<u8>) -> Vec<u8> {
    let mut tries = 0;
    let mut chunk = input.len().div_ceil(2).max(1);
    while chunk >= 1 && tries < 5_000 {
        let mut at = 0;
        while at < input.len() && tries < 5_000 {
            let mut smaller = input.clone();
            smaller.drain(at..(at + chunk).min(input.len()));
            tries += 1;
            if run_one(check, &smaller).is_err() {
                input = smaller;
            } else {
                at += chunk;
            }
        }
        if chunk == 1 {
            break;
        }
        chunk /= 2;
    }
    input
}

/// Replays the corpus, then checks `FUZZ_INPUTS` mutated inputs (default
/// [`DEFAULT_INPUTS`]); on a failure, writes the shrunk input as a `crash-*`
/// corpus file and fails with the seed and the input's index.
fn fuzz(target: &Target) {
    if std::env::var("FUZZ_TARGET").is_ok_and(|t| t != target.name) {
        return;
    }
    quiet_panics();
    let corpus = corpus(target);
    for (name, input) in &corpus {
        if let Err(e) = run_one(target.check, input) {
            panic!("fuzz {}: corpus file {name} fails: {e}", target.name);
        }
    }
    let inputs: u64 = std::env::var("FUZZ_INPUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_INPUTS);
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(clock_seed);
    eprintln!(
        "fuzz {}: {} corpus entries, {inputs} inputs, seed {seed} (repeat with FUZZ_SEED={seed})",
        target.name,
        corpus.len()
    );
    let start = Instant::now();
    let mut bytes = 0u64;
    for i in 0..inputs {
        let mut rng = Rng(seed ^ i.wrapping_mul(0xA24B_AED4_963E_E407));
        let input = mutate(&corpus, target.tokens, &mut rng);
        bytes += input.len() as u64;
        if let Err(e) = run_one(target.check, &input) {
            let small = shrink(target.check, input);
            let path = corpus_dir(target.name).join(format!("crash-{:016x}", hash_of(&small)));
            std::fs::write(&path, &small).expect("write the crash input");
            let why = run_one(target.check, &small).err().unwrap_or(e);
            panic!(
                "fuzz {}: input {i} of seed {seed} fails: {why}\nshrunk to {} bytes, written to {} (commit it as a regression): {:?}",
                target.name,
                small.len(),
                path.display(),
                String::from_utf8_lossy(&small[..small.len().min(512)])
            );
        }
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "fuzz {}: {inputs} inputs ({:.1} MB) in {secs:.1} s: {:.0} inputs/s, no failure",
        target.name,
        bytes as f64 / 1e6,
        inputs as f64 / secs.max(1e-9)
    );
}

// ---------------------------------------------------------------------------
// Mutations

/// Tokens that break parsers: numbers at the edges, non-numbers, escapes, marks.
const COMMON_TOKENS: &[&[u8]] = &[
    b"0",
    b"-1",
    b"-0",
    b"9223372036854775807",
    b"-9223372036854775808",
    b"18446744073709551616",
    b"1e400",
    b"-1e-400",
    b"0.0000000000000000001",
    b"NaN",
    b"Infinity",
    b"null",
    b"true",
    b"\"\"",
    b"[]",
    b"{}",
    b"\"\\ud800\"",
    b"\"\\u0000\"",
    b"\\",
    b"\xEF\xBB\xBF",
    b"\xFF\xFE",
    b"\xC3\x28",
    b"\r\n",
    b"\n",
];

fn mutate(corpus: &[(String, Vec<u8>)], tokens: &[&[u8]], rng: &mut Rng) -> Vec<u8> {
    if rng.one_in(32) {
        let n = rng.below(256);
        return (0..n).map(|_| rng.next() as u8).collect();
    }
    let mut b = corpus[rng.below(corpus.len())].1.clone();
    let ops = 1 + if rng.one_in(4) {
        rng.below(16)
    } else {
        rng.below(3)
    };
    for _ in 0..ops {
        mutate_once(&mut b, corpus, tokens, rng);
        b.truncate(MAX_INPUT);
    }
    b
}

fn mutate_once(b: &mut Vec<u8>, corpus: &[(String, Vec<u8>)], tokens: &[&[u8]], rng: &mut Rng) {
    let pos = |rng: &mut Rng, b: &[u8]| rng.below(b.len() + 1);
    match rng.below(11) {
        // Flip a bit.
        0 if !b.is_empty() => {
            let i = rng.below(b.len());
            b[i] ^= 1 << rng.below(8);
        }
        // Overwrite a byte with one that means something to a parser.
        1 if !b.is_empty() => {
            const BYTES: &[u8] = b"\0\xFF\x80\xC3\"{}[],:\n\r\\ -.e0";
            let i = rng.below(b.len());
            b[i] = BYTES[rng.below(BYTES.len())];
        }
        // Insert random bytes.
        2 => {
            let at = pos(rng, b);
            let n = 1 + rng.below(8);
            let r: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            b.splice(at..at, r);
        }
        // Delete a range.
        3 if !b.is_empty() => {
            let at = rng.below(b.len());
            let n = 1 + rng.below(16.min(b.len() - at));
            b.drain(at..at + n);
        }
        // Repeat a range, up to hundreds of times (many lines, many frames).
        4 if !b.is_empty() => {
            let at = rng.below(b.len());
            let n = 1 + rng.below((b.len() - at).min(256));
            let times = if rng.one_in(8) { 1 + rng.below(300) } else { 1 };
            let piece = b[at..at + n].repeat(times);
            let to = pos(rng, b);
            b.splice(to..to, piece);
        }
        // Splice in a piece of another corpus entry.
        5 => {
            let other = &corpus[rng.below(corpus.len())].1;
            if !other.is_empty() {
                let at = rng.below(other.len());
                let n = 1 + rng.below(other.len() - at);
                let to = pos(rng, b);
                if rng.one_in(2) {
                    b.splice(to..to, other[at..at + n].iter().copied());
                } else {
                    b.truncate(to);
                    b.extend_from_slice(&other[at..]);
                }
            }
        }
        // Insert a token.
        6 => {
            let all = COMMON_TOKENS.len() + tokens.len();
            let i = rng.below(all);
            let t = if i < COMMON_TOKENS.len() {
                COMMON_TOKENS[i]
            } else {
                tokens[i - COMMON_TOKENS.len()]
            };
            let to = pos(rng, b);
            b.splice(to..to, t.iter().copied());
        }
        // Replace a run of digits with a number at an edge.
        7 if !b.is_empty() => {
            let from = rng.below(b.len());
            if let Some(s) = b[from..].iter().position(u8::is_ascii_digit) {
                let s = from + s;
                let e = s + b[s..].iter().take_while(|c| c.is_ascii_digit()).count();
                const NUMBERS: &[&[u8]] = &[
                    b"0",
                    b"9223372036854775807",
                    b"99999999999999999999999",
                    b"1e308",
                    b"4294967295",
                    b"1000000000000000",
                ];
                b.splice(s..e, NUMBERS[rng.below(NUMBERS.len())].iter().copied());
            }
        }
        // Truncate.
        8 => {
            let at = pos(rng, b);
            b.truncate(at);
        }
        // Deep nesting.
        9 => {
            let depth = 1 + rng.below(300);
            let open: &[u8] = match rng.below(3) {
                0 => b"[",
                1 => b"{\"a\":",
                _ => b"(",
            };
            let to = pos(rng, b);
            b.splice(to..to, open.repeat(depth));
        }
        // Overwrite 4 or 8 bytes with an integer at an edge (length prefixes).
        _ => {
            const INTS: &[u64] = &[
                0,
                1,
                u32::MAX as u64,
                (u32::MAX as u64) + 1,
                MAX_BATCH as u64,
                MAX_BATCH as u64 + 1,
                i64::MAX as u64,
                u64::MAX,
            ];
            let v = INTS[rng.below(INTS.len())];
            let width = if rng.one_in(2) { 4 } else { 8 };
            let bytes = &v.to_le_bytes()[..width];
            let at = pos(rng, b);
            let end = (at + width).min(b.len());
            b.splice(at..end, bytes.iter().copied());
        }
    }
}

/// Splits `input` into reads as a TCP stream might, at points fixed by its hash
/// (so a crash input reproduces alone): mostly small pieces, sometimes one byte.
fn reads(input: &[u8]) -> Vec<&[u8]> {
    let mut rng = Rng(hash_of(input));
    let mut out = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        let n = match rng.below(4) {
            0 => 1,
            1 => 1 + rng.below(8),
            _ => 1 + rng.below(rest.len().min(2 * MAX_LINE)),
        }
        .min(rest.len());
        let (a, b) = rest.split_at(n);
        out.push(a);
        rest = b;
    }
    out
}

/// A refusal as compared between the decoders and the oracles.
fn refusal(o: &Origin, r: &Refusal) -> (Origin, &'static str, String) {
    let reason = r.to_string();
    assert!(!reason.is_empty(), "a refusal without a reason: {r:?}");
    (*o, r.code(), reason)
}

// ---------------------------------------------------------------------------
// Target 1: NDJSON lines

/// What the connection's loop (`ndjson::read_lines`) does with these reads, then EOF.
fn decode_lines(reads: &[&[u8]]) -> Decoded {
    let v = validator();
    let mut dec = LineDecoder::new(MAX_LINE);
    let mut buf = Vec::new();
    let mut all = Decoded::default();
    let mut turn = |buf: &mut Vec<u8>, eof: bool, all: &mut Decoded| {
        let mut out = Decoded::default();
        while !dec.lines(buf, v, &mut out) {
            assert_eq!(out.rejects.len(), MAX_REJECTS_PER_BATCH);
            all.events.append(&mut out.events);
            all.rejects.append(&mut out.rejects);
        }
        dec.rest(buf, eof, v, &mut out);
        assert!(out.rejects.len() <= MAX_REJECTS_PER_BATCH + 1);
        // One partial line at most (a trailing `\r` aside) stays buffered.
        assert!(buf.len() <= MAX_LINE + 1, "{} bytes buffered", buf.len());
        all.events.append(&mut out.events);
        all.rejects.append(&mut out.rejects);
    };
    for r in reads {
        buf.extend_from_slice(r);
        turn(&mut buf, false, &mut all);
    }
    turn(&mut buf, true, &mut all);
    assert!(buf.is_empty());
    all
}

/// The oracle: the stream split at every `\n`, each line judged on its own.
fn oracle_lines(input: &[u8]) -> (Vec<Event>, Vec<(u64, &'static str, String)>) {
    let mut events = Vec::new();
    let mut rejects = Vec::new();
    let lines: Vec<&[u8]> = input.split(|b| *b == b'\n').collect();
    for (i, line) in lines.iter().enumerate() {
        if i + 1 == lines.len() && line.is_empty() {
            break;
        }
        let n = i as u64 + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > MAX_LINE {
            rejects.push((n, "line_too_long", String::new()));
        } else if !line.iter().all(u8::is_ascii_whitespace) {
            match validator().parse(line, None) {
                Ok(ev) => events.push(ev),
                Err(r) => rejects.push((n, r.code(), r.to_string())),
            }
        }
    }
    (events, rejects)
}

fn check_lines_against_oracle(decoded: &Decoded, oracle: &(Vec<Event>, Vec<(u64, &str, String)>)) {
    assert_eq!(decoded.events, oracle.0, "events differ from the oracle's");
    let got: Vec<_> = decoded
        .rejects
        .iter()
        .map(|(o, r)| refusal(o, r))
        .map(|(o, code, reason)| match o {
            Origin::Line(n) => (n, code, reason),
            o => panic!("a line refusal with origin {o:?}"),
        })
        .collect();
    assert_eq!(
        got.len(),
        oracle.1.len(),
        "refusals: {got:?}\noracle: {:?}",
        oracle.1
    );
    for (g, want) in got.iter().zip(&oracle.1) {
        assert_eq!(
            (g.0, g.1),
            (want.0, want.1),
            "refusals: {got:?}\noracle: {:?}",
            oracle.1
        );
        // The wording of "too long" depends on whether the line was whole in memory.
        if want.1 != "line_too_long" {
            assert_eq!(g.2, want.2);
        }
    }
}

fn check_ndjson(input: &[u8]) {
    let oracle = oracle_lines(input);
    check_lines_against_oracle(&decode_lines(&[input]), &oracle);
    check_lines_against_oracle(&decode_lines(&reads(input)), &oracle);
}

const NDJSON: Target = Target {
    name: "ndjson",
    check: check_ndjson,
    seeds: Vec::new,
    tokens: &[
        b"\"type\":\"track\",",
        b"\"type\":\"identify\",",
        b"\"userId\":\"u1\",",
        b"\"anonymousId\":\"a1\",",
        b"\"messageId\":\"m1\",",
        b"\"timestamp\":\"2023-11-14T22:13:20Z\",",
        b"\"timestamp\":1700000000000,",
        b"\"event\":\"Order Completed\",",
        b"\"event\":\"purchase\",",
        b"\"currency\":\"EUR\",",
        b"\"currency\":\"XXX\",",
        b"\"price\":",
        b"\"quantity\":",
        b"\"revenue\":",
        b"\"products\":[{\"product_id\":\"p1\",\"price\":1.5,\"quantity\":2}],",
        b"\"traits\":{\"plan\":\"pro\"},",
        b"\"properties\":",
    ],
};

#[test]
fn fuzz_ndjson_lines() {
    fuzz(&NDJSON);
}

// ---------------------------------------------------------------------------
// Target 2: binary frames

/// What the connection's loop (`binary::read_frames`) does with these reads, then EOF.
fn decode_frames(reads: &[&[u8]]) -> Decoded {
    let v = validator();
    let mut dec = FrameDecoder::new(MAX_BATCH);
    let mut buf = Vec::new();
    let mut all = Decoded::default();
    for r in reads.iter().copied().chain([&[][..]]) {
        buf.extend_from_slice(r);
        dec.frames(&mut buf, v, &mut all);
        // At most one incomplete frame of at most `max_batch_bytes` is buffered.
        assert!(buf.len() < 4 + MAX_BATCH, "{} bytes buffered", buf.len());
    }
    dec.end(&mut buf, &mut all);
    assert!(buf.is_empty());
    all
}

/// The oracle: the stream walked frame by frame.
fn oracle_frames(input: &[u8]) -> (Vec<Event>, Vec<(Origin, &'static str, String)>) {
    let mut events = Vec::new();
    let mut rejects = Vec::new();
    let mut reject = |o: Origin, r: Refusal| rejects.push(refusal(&o, &r));
    let (mut pos, mut frame) = (0usize, 0u64);
    while pos < input.len() {
        frame += 1;
        let Some(prefix) = input.get(pos..pos + 4) else {
            reject(Origin::Frame(frame), Refusal::TruncatedFrame { frame });
            break;
        };
        let len = u32::from_le_bytes(prefix.try_into().expect("4 bytes")) as usize;
        let body = input.get(pos + 4..pos + 4 + len);
        if len > MAX_BATCH {
            let max = MAX_BATCH;
            reject(
                Origin::Frame(frame),
                Refusal::FrameTooLarge { frame, len, max },
            );
        }
        let Some(body) = body else {
            reject(Origin::Frame(frame), Refusal::TruncatedFrame { frame });
            break;
        };
        pos += 4 + len;
        if len > MAX_BATCH {
            continue;
        }
        // The frame's body: `Vec<Event>`, then, if anything follows, the events'
        // identity links as `Vec<(u32, Str)>` (an index past the events is ignored).
        let decoded = (|| -> bincode::Result<Vec<Event>> {
            let mut reader = body;
            let mut batch: Vec<Event> = shopstream::event::decode_next(&mut reader)?;
            if !reader.is_empty() {
                let links: Vec<(u32, shopstream::event::Str)> =
                    shopstream::event::decode_next(&mut reader)?;
                for (i, link) in links {
                    if let Some(e) = batch.get_mut(i as usize) {
                        e.link = Some(link);
                    }
                }
            }
            Ok(batch)
        })();
        match decoded {
            Ok(batch) => {
                for (i, ev) in batch.into_iter().enumerate() {
                    match validator().check(&ev) {
                        Ok(()) => events.push(ev),
                        Err(r) => reject(Origin::FrameEvent(frame, i), r),
                    }
                }
            }
            Err(e) => {
                let reason = e.to_string();
                reject(Origin::Frame(frame), Refusal::BadFrame { frame, reason });
            }
        }
    }
    (events, rejects)
}

fn check_binary(input: &[u8]) {
    let (events, rejects) = oracle_frames(input);
    for decoded in [decode_frames(&[input]), decode_frames(&reads(input))] {
        assert_eq!(decoded.events, events, "events differ from the oracle's");
        let got: Vec<_> = decoded.rejects.iter().map(|(o, r)| refusal(o, r)).collect();
        assert_eq!(got, rejects, "refusals differ from the oracle's");
    }
}

/// An event of each shape the engine knows, valid.
fn sample_events() -> Vec<Event> {
    let product = json!({"product_id": "p1", "category": "shoes", "price": 19.99});
    vec![
        event(&track("u1", "Product Viewed", T0, product.clone())),
        event(&with_id(
            track(
                "u1",
                "Order Completed",
                T0,
                json!({"order_id": "o1", "revenue": 39.98, "products": [product]}),
            ),
            "m1",
        )),
        event(&identify("u1", T0, json!({"plan": "pro"}))),
    ]
}

fn binary_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let events = sample_events();
    let good = encode_frame(&events);
    let mut bad_event = events[0].clone();
    bad_event.user = Str::new("");
    let mut negative = events[1].clone();
    negative.revenue = -1;
    let mut huge_vec = 8u32.to_le_bytes().to_vec();
    huge_vec.extend_from_slice(&u64::MAX.to_le_bytes());
    // A Vec of one event whose first field (`message_id`: Some) is followed by a
    // user string claiming u64::MAX bytes.
    let mut huge_string = vec![1, 0, 0, 0, 0, 0, 0, 0, 1];
    huge_string.extend_from_slice(&42u64.to_le_bytes());
    huge_string.extend_from_slice(&u64::MAX.to_le_bytes());
    let mut huge_string_frame = (huge_string.len() as u32).to_le_bytes().to_vec();
    huge_string_frame.extend_from_slice(&huge_string);
    let mut bad_utf8 = encode_frame(&events[..1]);
    let at = bad_utf8
        .windows(2)
        .position(|w| w == b"u1")
        .expect("the user id in the frame");
    bad_utf8[at] = 0xFF;
    vec![
        ("valid", [good.clone(), encode_frame(&events[2..])].concat()),
        ("empty-frame", encode_frame(&[])),
        ("zero-length", 0u32.to_le_bytes().to_vec()),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("truncated-prefix", good[..2].to_vec()),
        (
            "over-limit",
            [u32::MAX.to_le_bytes().to_vec(), good.clone()].concat(),
        ),
        ("invalid-events", encode_frame(&[bad_event, negative])),
        ("huge-vec-length", huge_vec),
        ("huge-string-length", huge_string_frame),
        ("invalid-utf8", bad_utf8),
        ("bad-then-good", [vec![3, 0, 0, 0, 1, 2, 3], good].concat()),
        ("huge-link-length", huge_link_frame()),
    ]
}

/// No events, then a links section whose one id claims 2^58 bytes: read from a
/// `Read`, bincode trusted it and aborted on the allocation.
fn huge_link_frame() -> Vec<u8> {
    let mut body = 0u64.to_le_bytes().to_vec();
    body.extend_from_slice(&1u64.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    body.extend_from_slice(&(1u64 << 58).to_le_bytes());
    body.extend_from_slice(b"abc");
    [(body.len() as u32).to_le_bytes().to_vec(), body].concat()
}

/// The binary seed corpus is what [`binary_seeds`] makes: frames depend on the
/// event model, so they are made by code and committed, and a change of the
/// model that leaves them stale fails here. `FUZZ_WRITE_SEEDS=1` writes them anew.
#[test]
fn the_binary_seed_corpus_is_current() {
    let dir = corpus_dir("binary");
    let write = std::env::var("FUZZ_WRITE_SEEDS").is_ok_and(|v| v == "1");
    for (name, bytes) in binary_seeds() {
        let path = dir.join(format!("{name}.bin"));
        if write {
            std::fs::create_dir_all(&dir).expect("corpus dir");
            std::fs::write(&path, &bytes).expect("write seed");
        }
        let committed = std::fs::read(&path).unwrap_or_default();
        assert!(
            committed == bytes,
            "{} is stale: run FUZZ_WRITE_SEEDS=1 cargo test --test fuzz the_binary_seed_corpus_is_current",
            path.display()
        );
    }
}

const BINARY: Target = Target {
    name: "binary",
    check: check_binary,
    seeds: Vec::new,
    tokens: &[b"\x01\0\0\0\0\0\0\0", b"\0\0\0\0", b"\x02\0\0\0\0\0\0\0u1"],
};

#[test]
fn fuzz_binary_frames() {
    fuzz(&BINARY);
}

// ---------------------------------------------------------------------------
// Target 3: HTTP batch bodies

fn check_http(body: &[u8]) {
    let value: Option<Value> = serde_json::from_slice(body).ok();
    let batch = value.as_ref().and_then(|v| v.get("batch")?.as_array());
    match batch_messages(body) {
        Ok(messages) => {
            // Each message is one JSON value; serde_json's own reading of the body,
            // where it has one (it refuses numbers out of range and deep nesting,
            // which a raw message may hold), agrees on the shape and the length.
            if let Some(v) = &value {
                assert!(v.is_object(), "a batch body that is not an object: {v}");
                assert_eq!(batch.map(Vec::len), Some(messages.len()));
            }
            let (events, rejected) = validate(validator(), &messages, None);
            assert_eq!(events.len() + rejected.len(), messages.len());
            assert!(rejected.windows(2).all(|w| w[0].0 < w[1].0));
            for (i, r) in &rejected {
                assert!(*i < messages.len());
                refusal(&Origin::Line(*i as u64), r);
            }
        }
        Err(e) => {
            if value.as_ref().is_some_and(Value::is_object) && batch.is_some() {
                assert!(
                    e.to_string().contains("duplicate field"),
                    "a body with a batch array refused: {e}"
                );
            }
            assert!(!e.to_string().is_empty());
        }
    }
    // The same bytes as the body of `/v1/track`: one message, one answer.
    let (events, rejected) = validate(
        validator(),
        &[body],
        Some(shopstream::event::MessageType::Track),
    );
    assert_eq!(events.len() + rejected.len(), 1);
}

const HTTP: Target = Target {
    name: "http",
    check: check_http,
    seeds: Vec::new,
    tokens: &[
        b"{\"batch\":[",
        b"\"batch\":",
        b"\"batch\":[],",
        b"{\"type\":\"track\",\"userId\":\"u\",\"event\":\"e\"},",
        b"\"writeKey\":\"k\",",
        b"\"context\":{\"library\":{\"name\":\"analytics.js\"}},",
    ],
};

#[test]
fn fuzz_http_batch_bodies() {
    fuzz(&HTTP);
}

// ---------------------------------------------------------------------------
// Target 4: segment rules

/// Profiles to evaluate fuzzed rules on: empty, ordinary, and every number at an
/// edge the engine can reach (sums wrap, times are validated epoch milliseconds).
fn profiles() -> Vec<(UserProfile, Option<[u8; 3]>, i64)> {
    let ordinary = Lifetime {
        events: 12,
        orders: 3,
        items: 5,
        revenue: 12_345,
        first_seen: T0,
        last_seen: T0 + 40 * DAY,
        last_order_at: T0 + 30 * DAY,
        prev_order_at: T0 + 2 * DAY,
        ..Lifetime::default()
    };
    let edge = Lifetime {
        events: i64::MAX,
        orders: i64::MAX,
        items: i64::MIN,
        revenue: i64::MIN,
        refunds: i64::MAX,
        refunded: i64::MAX,
        cancellations: -1,
        first_seen: 0,
        last_seen: T0 * 2,
        last_order_at: T0 * 2,
        prev_order_at: 0,
        merged: false,
    };
    let window = |x: i64| WindowCounts {
        views: x,
        cart_adds: x,
        orders: x,
        revenue: x,
    };
    let with = |l: Lifetime, w: i64| UserProfile {
        lifetime: Some(l),
        windows: Windowed {
            d7: window(w),
            d30: window(w),
        },
        ..UserProfile::default()
    };
    vec![
        (UserProfile::default(), None, T0),
        (with(ordinary, 2), Some([3, 2, 5]), T0 + 45 * DAY),
        (with(edge, i64::MAX), Some([5, 5, 5]), T0 * 2),
        (with(edge, i64::MIN), Some([1, 1, 1]), 0),
    ]
}

fn check_rule(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    for scale in [0, 2, 3] {
        match Rule::compile(&text, scale) {
            Ok(rule) => {
                let order = |a: u64, b: u64| a.cmp(&b);
                for (profile, scores, clock) in profiles() {
                    let s = Subject {
                        profile: &profile,
                        scores,
                        clock,
                        name_order: &order,
                    };
                    rule.eval(&s);
                    rule.next_change(&s);
                }
            }
            Err(e) => {
                assert!(
                    e.at <= text.len(),
                    "error at {} in {} bytes: {e}",
                    e.at,
                    text.len()
                );
                assert!(text.is_char_boundary(e.at), "error inside a character: {e}");
                assert!(!e.message.is_empty());
            }
        }
    }
}

/// The built-in segments' rules and those of `config/segments.toml`.
fn rule_seeds() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> =
        shopstream::catalog::segments::builtin_definitions(&Config::defaults())
            .into_iter()
            .map(|w| w.rule.into_bytes())
            .collect();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/segments.toml");
    let file: toml::Value = toml::from_str(&std::fs::read_to_string(path).expect("segments.toml"))
        .expect("segments.toml is TOML");
    for s in file["segment"].as_array().expect("[[segment]]") {
        out.push(s["rule"].as_str().expect("rule").as_bytes().to_vec());
    }
    out
}

const RULES: Target = Target {
    name: "rules",
    check: check_rule,
    seeds: rule_seeds,
    tokens: &[
        b" and ",
        b" or ",
        b"not ",
        b" in [",
        b" contains ",
        b" exists",
        b"days_since(",
        b"windows.7d.",
        b"traits.",
        b"events.\"",
        b"rfm.",
        b" >= ",
        b" != ",
        b"0.000000000001",
        b"999999999999999999999999999999",
        b"\xC3\xA9",
        b"\xE2\x80\x8B",
    ],
};

#[test]
fn fuzz_segment_rules() {
    fuzz(&RULES);
}

// ---------------------------------------------------------------------------
// The same inputs through a real server

/// Events the connection accepted: none when it answered nothing (no batch).
fn accepted(answers: &Answers) -> u64 {
    if answers.acks().is_empty() {
        0
    } else {
        answers.accepted()
    }
}

/// Mutated inputs of each target sent to a real server over real sockets (NDJSON
/// and binary on the TCP port, bodies to `/v1/batch`, rules to `/v1/segments`):
/// every answer is what the target's oracle says, and the server goes on taking
/// valid events afterwards. `FUZZ_SERVER_INPUTS` per target (default 25).
#[test]
fn fuzzed_inputs_through_the_real_server() {
    quiet_panics();
    let n: u64 = std::env::var("FUZZ_SERVER_INPUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25);
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(clock_seed);
    eprintln!("fuzz server: {n} inputs per target, seed {seed} (repeat with FUZZ_SEED={seed})");
    let server = TestServer::start_with(|c| {
        c.max_line_bytes = MAX_LINE;
        c.max_batch_bytes = MAX_BATCH;
    });
    let inputs = |t: &Target| {
        let corpus = corpus(t);
        (0..n)
            .map(|i| mutate(&corpus, t.tokens, &mut Rng(seed ^ i)))
            .collect::<Vec<_>>()
    };

    for (i, mut input) in inputs(&NDJSON).into_iter().enumerate() {
        if MAGIC.starts_with(&input[..input.len().min(MAGIC.len())]) {
            // Would select the binary framing (or be nothing at all).
            input.insert(0, b'\n');
        }
        let (events, rejects) = oracle_lines(&input);
        let answers = send_tcp(server.tcp, &input);
        let ctx = || format!("ndjson input {i}: {:?}", String::from_utf8_lossy(&input));
        assert_eq!(accepted(&answers), events.len() as u64, "{}", ctx());
        let lines: Vec<u64> = answers
            .errors()
            .iter()
            .map(|e| e["line"].as_u64().expect("line"))
            .collect();
        let want: Vec<u64> = rejects.iter().map(|r| r.0).collect();
        assert_eq!(lines, want, "{}", ctx());
    }

    for (i, input) in inputs(&BINARY).into_iter().enumerate() {
        let (events, rejects) = oracle_frames(&input);
        let answers = send_binary(server.tcp, std::slice::from_ref(&input));
        assert_eq!(
            accepted(&answers),
            events.len() as u64,
            "binary input {i}: {input:?}"
        );
        let errors: Vec<String> = answers
            .errors()
            .iter()
            .map(|e| e["error"].as_str().expect("error").to_owned())
            .collect();
        let want: Vec<String> = rejects.into_iter().map(|r| r.2).collect();
        assert_eq!(errors, want, "binary input {i}: {input:?}");
    }

    for (i, body) in inputs(&HTTP).into_iter().enumerate() {
        let (status, answer) = post(server.http, "/v1/batch", &body);
        let ctx = format!(
            "http input {i}: {:?} answered {status} {answer}",
            String::from_utf8_lossy(&body)
        );
        if body.len() > MAX_BATCH {
            assert_eq!(status, 413, "{ctx}");
            continue;
        }
        match batch_messages(&body) {
            Err(_) => assert_eq!(status, 400, "{ctx}"),
            Ok(messages) => {
                let (events, rejected) = validate(validator(), &messages, None);
                assert_eq!(status, 200, "{ctx}");
                assert_eq!(answer["accepted"], json!(events.len()), "{ctx}");
                let got: Vec<u64> = answer["rejected"]
                    .as_array()
                    .expect("rejected")
                    .iter()
                    .map(|r| r["index"].as_u64().expect("index"))
                    .collect();
                let want: Vec<u64> = rejected.iter().map(|r| r.0 as u64).collect();
                assert_eq!(got, want, "{ctx}");
            }
        }
    }

    for (i, rule) in inputs(&RULES).into_iter().enumerate() {
        let rule = String::from_utf8_lossy(&rule).into_owned();
        let body = json!({"name": format!("fuzz_{i}"), "rule": rule});
        let (status, answer) = request(server.http, "POST", "/v1/segments", Some(&body));
        match Rule::compile(&rule, 2) {
            Ok(_) => assert_eq!(status, 201, "rule {rule:?}: {answer}"),
            Err(e) => {
                assert_eq!(status, 400, "rule {rule:?}: {answer}");
                assert_eq!(
                    answer["rule_error"]["at"],
                    json!(e.at),
                    "rule {rule:?}: {answer}"
                );
            }
        }
    }

    let answers = send_messages(server.tcp, &[valid("after-the-fuzz")]);
    assert_eq!(answers.accepted(), 1, "{:?}", answers.lines);
    server.shutdown();
}
