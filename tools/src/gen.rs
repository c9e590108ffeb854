//! `shopstream gen`: a deterministic, seeded shop workload.
//!
//! The same seed and settings give byte-identical output. The shape follows
//! `../shared/peers/gen.py` (skewed users and items, sessions that browse one
//! category, add to cart, sometimes remove, buy, refund; promotions shown and
//! clicked) and adds what a shop's stream also has: experiments, identify calls
//! with traits, and a fraction of late and duplicate deliveries.
//!
//! It is fast because it never builds a JSON tree: each message is written
//! straight into one output buffer with integer formatting (≥ 2M events/s to a
//! file on one core). Binary output builds [`Event`]s and writes bincode frames.

use std::io::Write;

use compact_str::CompactString;

use shopstream::event::{Event, Kind, Product};
use shopstream::ingest::binary::{encode_frame, MAGIC};

/// Settings of a workload.
#[derive(Clone, Debug, clap::Args)]
pub struct GenOptions {
    /// Events to write.
    #[arg(long, short = 'n', default_value_t = 1_000_000)]
    pub events: u64,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    #[arg(long, default_value_t = 200_000)]
    pub users: u64,
    #[arg(long, default_value_t = 50_000)]
    pub items: u64,
    #[arg(long, default_value_t = 200)]
    pub categories: u64,
    #[arg(long, default_value_t = 40)]
    pub brands: u64,
    #[arg(long, default_value_t = 20)]
    pub campaigns: u64,
    #[arg(long, default_value_t = 4)]
    pub experiments: u64,
    /// Share of events stamped up to three days before the current time.
    #[arg(long, default_value_t = 0.01)]
    pub late: f64,
    /// Share of events delivered twice (the same messageId again).
    #[arg(long, default_value_t = 0.005)]
    pub duplicates: f64,
    /// Time of the first event, epoch milliseconds.
    #[arg(long, default_value_t = 1_700_000_000_000)]
    pub start_ms: i64,
    /// Share of sessions browsed anonymously: sent with `anonymousId` `v{user}`
    /// (the user's device) and no `userId`.
    #[arg(long, default_value_t = 0.0)]
    pub anonymous: f64,
    /// Share of the anonymous visitors who sign in: at the end of one of their
    /// anonymous sessions (each, with probability 1/2), an identify with both ids
    /// links the device to the user.
    #[arg(long, default_value_t = 0.5)]
    pub sign_in: f64,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            events: 1_000_000,
            seed: 7,
            users: 200_000,
            items: 50_000,
            categories: 200,
            brands: 40,
            campaigns: 20,
            experiments: 4,
            late: 0.01,
            duplicates: 0.005,
            start_ms: 1_700_000_000_000,
            anonymous: 0.0,
            sign_in: 0.5,
        }
    }
}

/// SplitMix64: tiny, fast, and good enough for a workload.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, 1)`.
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
    /// Skewed pick in `[0, n)`: a few hot, many cold.
    pub fn skewed(&mut self, n: u64, power: f64) -> u64 {
        ((n as f64 * self.f64().powf(power)) as u64).min(n.saturating_sub(1))
    }
}

/// One generated message, before it is written in either format.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub id: u64,
    pub user: u64,
    pub ts: i64,
    pub kind: Kind,
    pub lines: Vec<(u64, u64, u64, i64, i64)>,
    pub order: u64,
    pub revenue: i64,
    pub promotion: u64,
    pub experiment: Option<(u64, u64)>,
    pub traits: Option<(&'static str, &'static str)>,
    /// Sent by the device of the user, anonymously (`anonymousId` `v{user}`).
    pub anonymous: bool,
    /// An identify with both ids: links the user's device to the user.
    pub link: bool,
}

/// The workload as an iterator of messages.
pub struct Workload {
    o: GenOptions,
    rng: Rng,
    now: i64,
    next_id: u64,
    order: u64,
    queue: std::collections::VecDeque<Message>,
    recent: Vec<Message>,
    emitted: u64,
}

impl Workload {
    pub fn new(o: GenOptions) -> Self {
        Workload {
            rng: Rng::new(o.seed),
            now: o.start_ms,
            next_id: 0,
            order: 0,
            queue: Default::default(),
            recent: Vec::with_capacity(64),
            emitted: 0,
            o,
        }
    }

    fn message(&mut self, user: u64, kind: Kind) -> Message {
        self.next_id += 1;
        let mut ts = self.now;
        if self.rng.f64() < self.o.late {
            ts -= self.rng.below(3 * 86_400_000) as i64;
        }
        Message {
            id: self.next_id,
            user,
            ts,
            kind,
            lines: Vec::new(),
            order: 0,
            revenue: 0,
            promotion: 0,
            experiment: None,
            traits: None,
            anonymous: false,
            link: false,
        }
    }

    fn price(item: u64) -> i64 {
        500 + (item % 97) as i64 * 150
    }

    /// Queues one session of one user (browsed anonymously, with
    /// `GenOptions::anonymous`).
    fn session(&mut self) {
        let first = self.queue.len();
        let o = self.o.clone();
        let user = self.rng.skewed(o.users, 2.0);
        // No draw when off: the default workload stays byte-identical.
        let anonymous = o.anonymous > 0.0 && self.rng.f64() < o.anonymous;
        self.session_of(user);
        if !anonymous {
            return;
        }
        for m in self.queue.iter_mut().skip(first) {
            m.anonymous = true;
        }
        // Whether this device's visitor ever signs in is a property of the user.
        let unit = (user.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11) as f64 / ((1u64 << 53) as f64);
        let signs_in = unit < o.sign_in;
        if signs_in && self.rng.f64() < 0.5 {
            let mut m = self.message(user, Kind::Identify);
            m.link = true;
            m.traits = Some(("free", "DE"));
            self.queue.push_back(m);
        }
    }

    fn session_of(&mut self, user: u64) {
        let o = self.o.clone();
        let cat = self.rng.skewed(o.categories, 1.5);
        if o.campaigns > 0 && self.rng.f64() < 0.3 {
            let camp = self.rng.below(o.campaigns);
            let mut m = self.message(user, Kind::PromotionViewed);
            m.promotion = camp;
            self.queue.push_back(m);
            if self.rng.f64() < 0.04 {
                let mut m = self.message(user, Kind::PromotionClicked);
                m.promotion = camp;
                self.queue.push_back(m);
            }
        }
        if o.experiments > 0 && self.rng.f64() < 0.05 {
            let e = self.rng.below(o.experiments);
            let v = self.rng.below(2);
            let mut m = self.message(user, Kind::ExperimentViewed);
            m.experiment = Some((e, v));
            self.queue.push_back(m);
        }
        let per_cat = (o.items / o.categories.max(1)).max(1);
        let views = 1 + (-(1.0 - self.rng.f64()).ln() / 0.4) as u64;
        let mut cart = Vec::new();
        for _ in 0..views {
            let item = (self.rng.skewed(per_cat, 3.0) * o.categories.max(1) + cat) % o.items.max(1);
            let line = (
                item,
                item % o.categories.max(1),
                (item / o.categories.max(1)) % o.brands.max(1),
                Self::price(item),
                1,
            );
            let mut m = self.message(user, Kind::ProductViewed);
            m.lines.push(line);
            self.queue.push_back(m);
            self.now += 1 + self.rng.below(2000) as i64;
            if self.rng.f64() < 0.2 {
                let mut m = self.message(user, Kind::ProductAdded);
                m.lines.push(line);
                self.queue.push_back(m);
                cart.push(line);
            }
        }
        if !cart.is_empty() && self.rng.f64() < 0.1 {
            let line = cart.swap_remove(self.rng.below(cart.len() as u64) as usize);
            let mut m = self.message(user, Kind::ProductRemoved);
            m.lines.push(line);
            self.queue.push_back(m);
        }
        if !cart.is_empty() && self.rng.f64() < 0.35 {
            self.order += 1;
            let mut m = self.message(user, Kind::OrderCompleted);
            m.order = self.order;
            m.revenue = cart.iter().map(|l| l.3 * l.4).sum();
            m.lines = cart;
            let revenue = m.revenue;
            self.queue.push_back(m);
            if self.rng.f64() < 0.03 {
                let mut m = self.message(user, Kind::OrderRefunded);
                m.order = self.order;
                m.revenue = revenue;
                self.queue.push_back(m);
            }
        }
        if self.rng.f64() < 0.02 {
            let mut m = self.message(user, Kind::Identify);
            let plans = ["free", "plus", "pro"];
            let countries = ["DE", "FR", "GB", "US", "NL"];
            m.traits = Some((
                plans[self.rng.below(3) as usize],
                countries[self.rng.below(5) as usize],
            ));
            self.queue.push_back(m);
        }
        self.now += 1 + self.rng.below(50) as i64;
    }
}

impl Iterator for Workload {
    type Item = Message;

    fn next(&mut self) -> Option<Message> {
        if self.emitted >= self.o.events {
            return None;
        }
        self.emitted += 1;
        if !self.recent.is_empty() && self.rng.f64() < self.o.duplicates {
            let i = self.rng.below(self.recent.len() as u64) as usize;
            return Some(self.recent[i].clone());
        }
        while self.queue.is_empty() {
            self.session();
        }
        let m = self.queue.pop_front().expect("non-empty");
        if self.o.duplicates > 0.0 {
            if self.recent.len() < 64 {
                self.recent.push(m.clone());
            } else {
                let i = (m.id % 64) as usize;
                self.recent[i] = m.clone();
            }
        }
        Some(m)
    }
}

fn push_int(out: &mut Vec<u8>, v: i64) {
    let mut b = itoa::Buffer::new();
    out.extend_from_slice(b.format(v).as_bytes());
}

/// Minor units as a decimal with two places.
fn push_money(out: &mut Vec<u8>, cents: i64) {
    push_int(out, cents / 100);
    let c = (cents % 100).unsigned_abs();
    out.push(b'.');
    out.push(b'0' + (c / 10) as u8);
    out.push(b'0' + (c % 10) as u8);
}

fn push_line(out: &mut Vec<u8>, l: &(u64, u64, u64, i64, i64)) {
    out.extend_from_slice(b"\"product_id\":\"i");
    push_int(out, l.0 as i64);
    out.extend_from_slice(b"\",\"category\":\"c");
    push_int(out, l.1 as i64);
    out.extend_from_slice(b"\",\"brand\":\"b");
    push_int(out, l.2 as i64);
    out.extend_from_slice(b"\",\"price\":");
    push_money(out, l.3);
    out.extend_from_slice(b",\"quantity\":");
    push_int(out, l.4);
}

/// Writes one message as a Segment NDJSON line.
pub fn write_json(out: &mut Vec<u8>, m: &Message) {
    if m.kind == Kind::Identify {
        out.extend_from_slice(b"{\"type\":\"identify\"");
    } else {
        out.extend_from_slice(b"{\"type\":\"track\",\"event\":\"");
        out.extend_from_slice(m.kind.name().as_bytes());
        out.push(b'"');
    }
    if m.anonymous {
        out.extend_from_slice(b",\"anonymousId\":\"v");
    } else {
        out.extend_from_slice(b",\"userId\":\"u");
    }
    push_int(out, m.user as i64);
    if m.link {
        out.extend_from_slice(b"\",\"anonymousId\":\"v");
        push_int(out, m.user as i64);
    }
    out.extend_from_slice(b"\",\"messageId\":\"m");
    push_int(out, m.id as i64);
    out.extend_from_slice(b"\",\"timestamp\":");
    push_int(out, m.ts);
    match m.kind {
        Kind::Identify => {
            let (plan, country) = m.traits.unwrap_or(("free", "DE"));
            out.extend_from_slice(b",\"traits\":{\"plan\":\"");
            out.extend_from_slice(plan.as_bytes());
            out.extend_from_slice(b"\",\"country\":\"");
            out.extend_from_slice(country.as_bytes());
            out.extend_from_slice(b"\"}}\n");
            return;
        }
        Kind::PromotionViewed | Kind::PromotionClicked => {
            out.extend_from_slice(b",\"properties\":{\"promotion_id\":\"cmp");
            push_int(out, m.promotion as i64);
            out.extend_from_slice(b"\",\"creative\":\"banner\"}");
        }
        Kind::ExperimentViewed => {
            let (e, v) = m.experiment.unwrap_or((0, 0));
            out.extend_from_slice(b",\"properties\":{\"experiment_id\":\"exp");
            push_int(out, e as i64);
            out.extend_from_slice(b"\",\"variation_id\":\"");
            out.push(if v == 0 { b'A' } else { b'B' });
            out.extend_from_slice(b"\"}");
        }
        Kind::OrderCompleted | Kind::OrderRefunded => {
            out.extend_from_slice(b",\"properties\":{\"order_id\":\"o");
            push_int(out, m.order as i64);
            out.extend_from_slice(b"\",\"revenue\":");
            push_money(out, m.revenue);
            out.extend_from_slice(b",\"currency\":\"USD\"");
            if !m.lines.is_empty() {
                out.extend_from_slice(b",\"products\":[");
                for (i, l) in m.lines.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.push(b'{');
                    push_line(out, l);
                    out.push(b'}');
                }
                out.push(b']');
            }
            out.push(b'}');
        }
        _ => {
            out.extend_from_slice(b",\"properties\":{");
            if let Some(l) = m.lines.first() {
                push_line(out, l);
            }
            out.push(b'}');
        }
    }
    out.extend_from_slice(b"}\n");
}

/// The same message in the engine's own model (for binary frames).
pub fn to_event(m: &Message) -> Event {
    let s = |prefix: &str, v: u64| CompactString::from(format!("{prefix}{v}"));
    let products = m
        .lines
        .iter()
        .map(|l| Product {
            id: s("i", l.0),
            category: Some(s("c", l.1)),
            brand: Some(s("b", l.2)),
            price: l.3,
            quantity: l.4,
        })
        .collect();
    let is_order = m.kind.is_order();
    Event {
        message_id: Some(shopstream::event::message_id_hash(&format!("m{}", m.id))),
        user: s(if m.anonymous { "v" } else { "u" }, m.user),
        anonymous: m.anonymous,
        ts: m.ts,
        kind: m.kind,
        name: m.kind.name().into(),
        products,
        revenue: m.revenue,
        order_id: is_order.then(|| s("o", m.order)),
        promotion_id: matches!(m.kind, Kind::PromotionViewed | Kind::PromotionClicked)
            .then(|| s("cmp", m.promotion)),
        creative: matches!(m.kind, Kind::PromotionViewed | Kind::PromotionClicked)
            .then(|| "banner".into()),
        experiment_id: m.experiment.map(|(e, _)| s("exp", e)),
        variation_id: m
            .experiment
            .map(|(_, v)| if v == 0 { "A".into() } else { "B".into() }),
        query: None,
        traits: m
            .traits
            .map(|(plan, country)| {
                vec![
                    ("country".into(), format!("\"{country}\"")),
                    ("plan".into(), format!("\"{plan}\"")),
                ]
            })
            .unwrap_or_default(),
        link: m.link.then(|| s("v", m.user)),
    }
}

/// Writes the whole workload to `out`, as NDJSON or (with `binary`) as frames of
/// 1024 events after the binary magic. Returns the number of events written.
pub fn write_all(o: &GenOptions, binary: bool, out: &mut impl Write) -> std::io::Result<u64> {
    write_stream(o, binary, None, out)
}

/// [`write_all`] for a connection: with `token`, opened with the auth line (or,
/// binary, the auth frame after the magic).
pub fn write_stream(
    o: &GenOptions,
    binary: bool,
    token: Option<&str>,
    out: &mut impl Write,
) -> std::io::Result<u64> {
    let mut n = 0;
    let mut buf = Vec::with_capacity(1 << 20);
    if let Some(token) = token {
        out.write_all(&crate::client::auth_preamble(token, binary))?;
    }
    if binary {
        if token.is_none() {
            out.write_all(MAGIC)?;
        }
        let mut batch = Vec::with_capacity(1024);
        for m in Workload::new(o.clone()) {
            batch.push(to_event(&m));
            n += 1;
            if batch.len() == 1024 {
                out.write_all(&encode_frame(&batch))?;
                batch.clear();
            }
        }
        if !batch.is_empty() {
            out.write_all(&encode_frame(&batch))?;
        }
    } else {
        for m in Workload::new(o.clone()) {
            write_json(&mut buf, &m);
            n += 1;
            if buf.len() >= (1 << 20) - 4096 {
                out.write_all(&buf)?;
                buf.clear();
            }
        }
        out.write_all(&buf)?;
    }
    out.flush()?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shopstream::event::{parse_message, ParseContext};

    fn small() -> GenOptions {
        GenOptions {
            events: 5_000,
            users: 300,
            items: 400,
            categories: 20,
            ..GenOptions::default()
        }
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let run = |o: &GenOptions| {
            let mut v = Vec::new();
            write_all(o, false, &mut v).expect("write");
            v
        };
        let a = run(&small());
        assert_eq!(a, run(&small()));
        assert_ne!(a, run(&GenOptions { seed: 8, ..small() }));
        assert_eq!(a.iter().filter(|b| **b == b'\n').count(), 5_000);
    }

    /// With `anonymous`, that share of the events comes from devices, and the
    /// sign-ins carry both ids: JSON and binary agree on the links too.
    #[test]
    fn anonymous_sessions_and_their_sign_ins_parse_with_their_links() {
        let ctx = ParseContext::new("USD");
        let o = GenOptions {
            anonymous: 0.3,
            duplicates: 0.0,
            ..small()
        };
        let (mut anonymous, mut links) = (0, 0);
        for m in Workload::new(o) {
            let mut line = Vec::new();
            write_json(&mut line, &m);
            let ev = parse_message(&line[..line.len() - 1], &ctx, None).expect("parses");
            assert_eq!(ev, to_event(&m), "{}", String::from_utf8_lossy(&line));
            assert_eq!(ev.link, to_event(&m).link, "links are not compared by ==");
            anonymous += usize::from(ev.anonymous);
            links += usize::from(ev.link.is_some());
        }
        assert!((1_000..2_000).contains(&anonymous), "{anonymous} of 5000");
        assert!(links > 20, "{links} sign-ins");
    }

    /// Every line parses, and JSON and binary carry the same events.
    #[test]
    fn every_line_is_a_valid_message_equal_to_its_binary_form() {
        let ctx = ParseContext::new("USD");
        let mut kinds = std::collections::HashSet::new();
        let (mut late, mut dups, mut seen) = (0, 0, std::collections::HashSet::new());
        let mut max_ts = i64::MIN;
        for m in Workload::new(small()) {
            let mut line = Vec::new();
            write_json(&mut line, &m);
            let ev = parse_message(&line[..line.len() - 1], &ctx, None)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&line)));
            assert_eq!(ev, to_event(&m), "{}", String::from_utf8_lossy(&line));
            kinds.insert(ev.kind);
            if ev.ts < max_ts {
                late += 1;
            }
            max_ts = max_ts.max(ev.ts);
            if !seen.insert(m.id) {
                dups += 1;
            }
        }
        assert!(kinds.len() >= 9, "{kinds:?}");
        assert!(late > 0 && dups > 0, "late {late} dups {dups}");
    }
}
