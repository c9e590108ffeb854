//! The profile view's host half: `GET /v1/users/{id}/profile[?min_seq=N][?as_of=N]`,
//! the user's profile, read by cursor from the profile arrangements on the worker
//! that owns the user at one epoch, rendered with names and major units.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use shopstream_dataflows::types::DAY_MS;
use shopstream_dataflows::view::Env;
use shopstream_dataflows::views::profiles::{
    Lifetime, ProfileSettings, ProfileView, Rank, UserProfile, WindowCounts, FACET_BRAND,
    FACET_CART, FACET_CATEGORY, FACET_EVENT,
};

use super::view::ServeView;
use crate::identity::Identity;
use crate::reply::{engine_error, identify, money, not_found_at, read_at, rfc3339};
use crate::runtime::{Engine, EngineError, HostContext, ReadAt, Readable, ViewHost};
use crate::symbols::Symbols;

/// The profile view's registration.
#[derive(Debug)]
pub struct Profiles;

impl ViewHost for Profiles {
    fn name(&self) -> &'static str {
        "profiles"
    }

    fn provide(&self, env: &mut Env, cx: HostContext<'_>) {
        env.insert(ProfileSettings {
            order_horizon: cx.config.order_horizon,
        });
    }
}

impl ServeView for Profiles {
    fn routes(&self) -> Router<Arc<Engine>> {
        Router::new().route("/v1/users/{id}/profile", get(get_profile))
    }
}

/// A user's profile, read from the worker that owns the user, at one epoch.
#[derive(Clone, Debug)]
pub struct ProfileRead {
    pub as_of: Readable,
    /// The identity of the id read (`None`: no link names it); the profile is of
    /// its canonical user.
    pub identity: Option<Identity>,
    pub profile: UserProfile,
    /// Per RFM dimension (recency, frequency, monetary): this user's standing.
    pub rfm_ranks: Option<[Rank; 3]>,
}

/// Reads the profile of the user `user` names at one complete epoch (an empty
/// profile for a user with no events there): any id of an identity reads its
/// canonical user's.
pub async fn read(
    engine: &Engine,
    user: &str,
    at: impl Into<ReadAt>,
) -> Result<ProfileRead, EngineError> {
    let (as_of, identity, answer) = engine
        .read_user(at, None, user, move |v: &mut ProfileView, user, cx| {
            v.read(user, cx)
        })
        .await?;
    let answer = answer.unwrap_or_default();
    Ok(ProfileRead {
        as_of,
        identity,
        profile: answer.profile,
        rfm_ranks: answer.rfm_ranks,
    })
}

/// How many categories and brands a profile lists.
pub const TOP_K: usize = 5;

async fn get_profile(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let started = Instant::now();
    let at = match read_at(&params) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let read = match read(&engine, &id, at).await {
        Ok(r) => r,
        Err(e) => return engine_error(e),
    };
    let response = match render(
        &read,
        &engine.symbols,
        crate::event::minor_unit_decimals(&engine.config.reporting_currency),
    ) {
        Some(profile) => {
            let mut body = json!({
                "as_of": read.as_of.seq,
                "clock": rfc3339(read.as_of.clock),
                "profile": profile,
            });
            identify(&mut body, &id, read.identity.as_ref());
            Json(body).into_response()
        }
        None => not_found_at(format!("unknown user {id:?}"), read.as_of.seq),
    };
    metrics::histogram!("shopstream_query_seconds", "kind" => "profile")
        .record(started.elapsed().as_secs_f64());
    response
}

fn window(w: &WindowCounts, digits: u32) -> Value {
    json!({"views": w.views, "cart_adds": w.cart_adds, "orders": w.orders, "revenue": money(w.revenue, digits)})
}

fn name(symbols: &Symbols, id: u64) -> String {
    symbols.resolve(id).unwrap_or_else(|| format!("#{id:016x}"))
}

/// The profile document; `None` when the user has no events at this epoch.
pub fn render(read: &ProfileRead, symbols: &Symbols, digits: u32) -> Option<Value> {
    let p = &read.profile;
    let l: &Lifetime = p.lifetime.as_ref()?;
    let mut events = Map::new();
    let mut cart = Vec::new();
    let mut categories = Vec::new();
    let mut brands = Vec::new();
    for ((kind, id), n) in &p.facets {
        match *kind {
            FACET_EVENT => {
                events.insert(name(symbols, *id), json!(n));
            }
            FACET_CART if *n > 0 => cart.push((name(symbols, *id), *n)),
            FACET_CATEGORY if *n > 0 => categories.push((*n, name(symbols, *id))),
            FACET_BRAND if *n > 0 => brands.push((*n, name(symbols, *id))),
            _ => {}
        }
    }
    let top = |mut v: Vec<(i64, String)>, field: &str| {
        v.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        v.into_iter()
            .take(TOP_K)
            .map(|(score, n)| json!({field: n, "score": score}))
            .collect::<Vec<_>>()
    };
    let mut traits = Map::new();
    for (key, latest) in &p.traits {
        let text = name(symbols, latest.value);
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        traits.insert(name(symbols, *key), value);
    }
    let avg = if l.orders > 0 {
        money((l.revenue as f64 / l.orders as f64).round() as i64, digits)
    } else {
        Value::Null
    };
    let rfm = match read.rfm_ranks {
        Some([r, f, m]) => json!({
            "recency_days": read.as_of.clock.saturating_sub(l.last_order_at).max(0) / DAY_MS,
            "frequency": l.orders,
            "monetary": money(l.revenue, digits),
            "r_score": r.score(),
            "f_score": f.score(),
            "m_score": m.score(),
        }),
        None => Value::Null,
    };
    Some(json!({
        "events": events,
        "events_total": l.events,
        "first_seen": rfc3339(l.first_seen),
        "last_seen": rfc3339(l.last_seen),
        "orders": l.orders,
        "items_purchased": l.items,
        "revenue": money(l.revenue, digits),
        "refunds": l.refunds,
        "refunded": money(l.refunded, digits),
        "cancellations": l.cancellations,
        "avg_order_value": avg,
        "last_order_at": rfc3339(l.last_order_at),
        "windows": {"7d": window(&p.windows.d7, digits), "30d": window(&p.windows.d30, digits)},
        "cart": cart.into_iter().map(|(id, q)| json!({"product_id": id, "quantity": q})).collect::<Vec<_>>(),
        "top_categories": top(categories, "category"),
        "top_brands": top(brands, "brand"),
        "rfm": rfm,
        "traits": traits,
    }))
}
