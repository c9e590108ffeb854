//! Segment definitions: the compiler of kind `segment` (rules, see
//! [`shopstream_dataflows::rules`]), the names it accepts, and what the
//! configuration defines at start: the built-in lifecycle, tier and RFM segments
//! and the segment file, reconciled with what the log already holds.

use std::any::Any;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use shopstream_dataflows::rules::{Rule, RuleError};
use shopstream_dataflows::types::intern;
use shopstream_dataflows::views::segments::SegId;

use super::{Compiler, Control, Definition, Source, StartupError};
use crate::config::Config;

pub use shopstream_dataflows::views::segments::KIND;

/// Compiles segment rules for the engine's reporting currency.
#[derive(Clone, Copy, Debug)]
pub struct SegmentCompiler {
    /// Decimals of the reporting currency's minor unit (money literals in rules).
    pub money_scale: u32,
}

impl SegmentCompiler {
    pub fn new(config: &Config) -> Self {
        SegmentCompiler {
            money_scale: crate::event::minor_unit_decimals(&config.reporting_currency),
        }
    }
}

impl Compiler for SegmentCompiler {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn check_name(&self, name: &str) -> Result<(), String> {
        check_name(name)
    }

    fn compile(
        &self,
        body: &str,
    ) -> Result<Arc<dyn Any + Send + Sync>, Box<dyn std::error::Error + Send + Sync>> {
        let rule = compile(body, self.money_scale)?;
        Ok(Arc::new(rule))
    }
}

/// The longest segment name accepted.
pub const MAX_NAME_BYTES: usize = 128;

/// Checks a segment name: 1 to 128 bytes of letters, digits and `_-.:`.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "a segment name is 1 to {MAX_NAME_BYTES} bytes, got {}",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')))
    {
        return Err(format!(
            "a segment name holds letters, digits and _ - . : only; found {c:?}"
        ));
    }
    Ok(())
}

/// A segment's id: the hash of its name.
pub fn segment_id(name: &str) -> SegId {
    intern(name)
}

/// Compiles a rule for the engine's reporting currency.
pub fn compile(rule: &str, money_scale: u32) -> Result<Rule, RuleError> {
    Rule::compile(rule, money_scale)
}

/// A definition the configuration asks for at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub name: String,
    pub rule: String,
    pub source: Source,
}

/// The built-in segments: lifecycle stages, member tiers and RFM segments.
///
/// * `lifecycle:new`: first seen less than `new_days` ago.
/// * `lifecycle:reactivated`: not new; ordered less than `active_days` ago after a
///   gap of `churned_days` or more between the last two orders.
/// * `lifecycle:active`: not new; ordered less than `active_days` ago (and not
///   reactivated).
/// * `lifecycle:at_risk`: not new; last order `active_days` to `churned_days` ago.
/// * `lifecycle:churned`: not new; last order `churned_days` ago or more, or no
///   order and no event for `churned_days`.
/// * `tier:{name}`: the tier metric is at least the tier's `min` and below the
///   next tier's.
/// * `rfm:*`: the classic grid over recency and frequency scores (1–5):
///   champions (R ≥ 4, F ≥ 4), loyal (R ≥ 3, F ≥ 3, not champions), potential
///   (R ≥ 3, F ≤ 2), at_risk (R ≤ 2, F ≥ 3), hibernating (R = 2, F ≤ 2), lost
///   (R = 1, F ≤ 2): every user with orders is in exactly one.
pub fn builtin_definitions(config: &Config) -> Vec<Wanted> {
    let lc = &config.lifecycle;
    let (n, a, c) = (lc.new_days, lc.active_days, lc.churned_days);
    let new = format!("days_since(first_seen) < {n}");
    let recent = format!("days_since(last_order_at) < {a}");
    let gap = format!("order_gap_days >= {c}");
    let mut out = vec![
        ("lifecycle:new", new.clone()),
        ("lifecycle:reactivated", format!("not {new} and {recent} and {gap}")),
        ("lifecycle:active", format!("not {new} and {recent} and not {gap}")),
        (
            "lifecycle:at_risk",
            format!("not {new} and days_since(last_order_at) >= {a} and days_since(last_order_at) < {c}"),
        ),
        (
            "lifecycle:churned",
            format!("not {new} and (days_since(last_order_at) >= {c} or (not last_order_at exists and days_since(last_seen) >= {c}))"),
        ),
        ("rfm:champions", "rfm.r_score >= 4 and rfm.f_score >= 4".into()),
        (
            "rfm:loyal",
            "rfm.r_score >= 3 and rfm.f_score >= 3 and not (rfm.r_score >= 4 and rfm.f_score >= 4)".into(),
        ),
        ("rfm:potential", "rfm.r_score >= 3 and rfm.f_score <= 2".into()),
        ("rfm:at_risk", "rfm.r_score <= 2 and rfm.f_score >= 3".into()),
        ("rfm:hibernating", "rfm.r_score = 2 and rfm.f_score <= 2".into()),
        ("rfm:lost", "rfm.r_score = 1 and rfm.f_score <= 2".into()),
    ]
    .into_iter()
    .map(|(name, rule)| (name.to_owned(), rule))
    .collect::<Vec<_>>();
    let metric = &config.tiers.metric;
    let levels = &config.tiers.levels;
    for (i, level) in levels.iter().enumerate() {
        let mut rule = format!("{metric} >= {}", level.min);
        if let Some(next) = levels.get(i + 1) {
            rule.push_str(&format!(" and {metric} < {}", next.min));
        }
        out.push((format!("tier:{}", level.name), rule));
    }
    out.into_iter()
        .map(|(name, rule)| Wanted {
            name,
            rule,
            source: Source::Builtin,
        })
        .collect()
}

/// The segment file: `[[segment]]` tables with `name` and `rule`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SegmentFile {
    #[serde(default)]
    segment: Vec<FileSegment>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSegment {
    name: String,
    rule: String,
}

/// Reads the segment file.
pub fn file_definitions(path: &Path) -> Result<Vec<Wanted>, StartupError> {
    let text = std::fs::read_to_string(path).map_err(|e| StartupError::File {
        kind: KIND,
        path: path.into(),
        source: e.into(),
    })?;
    let file: SegmentFile = toml::from_str(&text).map_err(|e| StartupError::File {
        kind: KIND,
        path: path.into(),
        source: e.into(),
    })?;
    Ok(file
        .segment
        .into_iter()
        .map(|s| Wanted {
            name: s.name,
            rule: s.rule,
            source: Source::Config,
        })
        .collect())
}

/// What the configuration wants defined, checked: names valid and unique, rules
/// compiling (errors name the origin, the segment and the rule position).
pub fn wanted(config: &Config) -> Result<Vec<Wanted>, StartupError> {
    let mut all = Vec::new();
    if config.builtin_segments {
        all.extend(builtin_definitions(config));
    }
    if let Some(path) = &config.segments_file {
        all.extend(file_definitions(path)?);
    }
    let scale = crate::event::minor_unit_decimals(&config.reporting_currency);
    let mut seen = std::collections::HashSet::new();
    for w in &all {
        let origin = match w.source {
            Source::Builtin => "config key segments (built-in segments)".to_owned(),
            _ => format!(
                "segment file {}",
                config
                    .segments_file
                    .as_deref()
                    .unwrap_or(Path::new(""))
                    .display()
            ),
        };
        let invalid = |reason: String| StartupError::Invalid {
            kind: KIND,
            origin: origin.clone(),
            name: w.name.clone(),
            reason,
        };
        check_name(&w.name).map_err(invalid)?;
        compile(&w.rule, scale).map_err(|e| invalid(format!("rule {:?}: {e}", w.rule)))?;
        if !seen.insert(w.name.clone()) {
            return Err(invalid("defined twice".into()));
        }
    }
    Ok(all)
}

/// The definition changes that bring `current` to `wanted`: new and changed
/// configured segments, and configured segments no longer wanted dropped.
/// Segments defined through the API stay, unless the configuration now names them.
///
/// With `keep_file_segments` (the default file was not found), segments from a
/// file are neither changed nor dropped.
pub fn startup_controls(
    current: &[Definition],
    wanted: &[Wanted],
    keep_file_segments: bool,
) -> Vec<Control> {
    let mut out = Vec::new();
    for w in wanted {
        let same = current
            .iter()
            .any(|d| d.name == w.name && d.body == w.rule && d.source == w.source);
        if !same {
            out.push(Control::put(KIND, &w.name, &w.rule, w.source));
        }
    }
    for d in current {
        let kept = keep_file_segments && d.source == Source::Config;
        if d.source != Source::Api && !kept && !wanted.iter().any(|w| w.name == d.name) {
            out.push(Control::remove(KIND, &d.name));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use shopstream_dataflows::rules::Subject;
    use shopstream_dataflows::types::DAY_MS;
    use shopstream_dataflows::views::profiles::{Lifetime, UserProfile};

    fn compiled(config: &Config) -> Vec<(String, Rule)> {
        wanted(config)
            .expect("valid")
            .into_iter()
            .map(|w| (w.name, compile(&w.rule, 2).expect("compiles")))
            .collect()
    }

    #[test]
    fn the_example_segment_file_is_valid() {
        let mut config = Config::defaults();
        config.segments_file =
            Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/segments.toml"));
        let all = wanted(&config).expect("the example file is valid");
        assert!(all
            .iter()
            .any(|w| w.name == "repeat_buyers" && w.source == Source::Config));
        config.segments_file = Some("/nonexistent/segments.toml".into());
        let e = wanted(&config).expect_err("missing file").to_string();
        assert!(e.contains("/nonexistent/segments.toml"), "{e}");
    }

    #[test]
    fn a_bad_configured_rule_names_its_origin_and_position() {
        let mut config = Config::defaults();
        config.tiers.metric = "windows.30d.revnue".into();
        let e = wanted(&config).expect_err("bad metric").to_string();
        assert!(
            e.contains("tier:bronze") && e.contains("unknown window field"),
            "{e}"
        );
    }

    #[test]
    fn every_buyer_is_in_exactly_one_rfm_segment_and_at_most_one_stage() {
        let rules = compiled(&Config::defaults());
        let no_names = |a: u64, b: u64| a.cmp(&b);
        let day = DAY_MS;
        for r in 1..=5u8 {
            for f in 1..=5u8 {
                let p = UserProfile {
                    lifetime: Some(Lifetime {
                        orders: 1,
                        events: 1,
                        first_seen: 0,
                        last_seen: 0,
                        last_order_at: 0,
                        ..Lifetime::default()
                    }),
                    ..UserProfile::default()
                };
                let s = Subject {
                    profile: &p,
                    scores: Some([r, f, 3]),
                    clock: 0,
                    name_order: &no_names,
                };
                let rfm: Vec<&String> = rules
                    .iter()
                    .filter(|(n, rule)| n.starts_with("rfm:") && rule.eval(&s))
                    .map(|(n, _)| n)
                    .collect();
                assert_eq!(rfm.len(), 1, "R{r} F{f}: {rfm:?}");
            }
        }
        // Lifecycle over first-seen, last and previous order, and clock.
        for first in [0, 100] {
            for last in [None, Some(120), Some(300), Some(390)] {
                for prev in [None, Some(110)] {
                    for clock in [10, 200, 320, 400, 700] {
                        let at = |d: i64| d * day;
                        let l = Lifetime {
                            events: 1,
                            first_seen: at(first),
                            last_seen: at(last.unwrap_or(first)),
                            orders: i64::from(last.is_some()),
                            last_order_at: last.map_or(i64::MIN, at),
                            prev_order_at: prev.filter(|_| last.is_some()).map_or(i64::MIN, at),
                            ..Lifetime::default()
                        };
                        let p = UserProfile {
                            lifetime: Some(l),
                            ..UserProfile::default()
                        };
                        let s = Subject {
                            profile: &p,
                            scores: None,
                            clock: at(clock).max(l.last_seen),
                            name_order: &no_names,
                        };
                        let stages: Vec<&String> = rules
                            .iter()
                            .filter(|(n, rule)| n.starts_with("lifecycle:") && rule.eval(&s))
                            .map(|(n, _)| n)
                            .collect();
                        assert!(stages.len() <= 1, "{l:?} at {clock}: {stages:?}");
                        if last.is_some() && clock >= first + 30 {
                            assert_eq!(stages.len(), 1, "a buyer has a stage: {l:?} at {clock}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn start_up_changes_only_what_the_configuration_changed() {
        let def = |name: &str, rule: &str, source| Definition {
            kind: KIND,
            name: name.into(),
            body: rule.into(),
            source,
            epoch: 0,
            seq: 0,
            clock: 0,
            created_epoch: 0,
        };
        let want = |name: &str, rule: &str, source| Wanted {
            name: name.into(),
            rule: rule.into(),
            source,
        };
        let current = [
            def("same", "orders > 1", Source::Config),
            def("changed", "orders > 1", Source::Config),
            def("gone", "orders > 1", Source::Config),
            def("mine", "orders > 1", Source::Api),
        ];
        let wanted = [
            want("same", "orders > 1", Source::Config),
            want("changed", "orders > 2", Source::Config),
            want("new", "orders > 3", Source::Builtin),
        ];
        let controls = startup_controls(&current, &wanted, false);
        assert_eq!(
            startup_controls(&current, &wanted, true).len(),
            2,
            "without the default file, file segments stay"
        );
        assert_eq!(
            controls,
            [
                Control::put(KIND, "changed", "orders > 2", Source::Config),
                Control::put(KIND, "new", "orders > 3", Source::Builtin),
                Control::remove(KIND, "gone"),
            ]
        );
    }
}
