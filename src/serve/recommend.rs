//! The recommend view's host half: popular items (`GET /v1/items/popular`),
//! trending items (`GET /v1/items/trending`) and a user's recommendations
//! (`GET /v1/users/{id}/recommendations`).
//!
//! A recommendation is a *switching hybrid*: a user whose recent history holds at
//! least `recommend.min_history` items gets `personal` recommendations, anyone
//! else (unknown users too) `popular` ones. All reads of one answer are at one
//! pinned epoch ([`Engine::pinned`]): the user's items, history times, cart and
//! categories on the user's owner, in one visit; the history items' similar
//! items on their owners; popular items on every worker.
//!
//! `personal`, at epoch `E` with clock `c`, for a user `u`:
//!
//! * each history item `h` (an item of the user's `viewed` history, see
//!   `shopstream_dataflows::views::similarity`, with a live class in the last 30
//!   days, see `shopstream_dataflows::views::recommend`) weighs `w(h) = strength(h) · 2^(−(c − t_h) /
//!   half_life)`, where `strength` is the weight of the strongest live class and
//!   `t_h` the time of the latest interaction with `h`;
//! * each `h` contributes its `recommend.neighbours` most similar *eligible* items
//!   `b` (by `recommend.kind` / `recommend.measure`, among its 100 most similar):
//!   not in the cart, not bought (unless `exclude_purchased=false`), not in the
//!   history (unless `exclude_seen=false`), not blocked, and of the asked
//!   category and brand;
//! * `score(b) = boost(b) · Σ_h w(h) · sim(h, b)` (summed in item-id order of
//!   `h`), listed when above 0, by score, then name; `because` names the (at most
//!   three) history items contributing most;
//! * fewer than `k`: the rest is filled with popular items (`"source": "popular"`)
//!   of `recommend.popular_window`, eligible by the same rules.
//!
//! `popular`: the user's top category (greatest category affinity in the
//! profile, ties by name) unless a category is asked, then any category; the same
//! exclusions.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use shopstream_dataflows::types::{intern, IdSet, ItemId, Sym, DAY_MS};
use shopstream_dataflows::view::{Env, Names, Views};
use shopstream_dataflows::views::profiles::{ProfileView, FACET_CART, FACET_CATEGORY};
use shopstream_dataflows::views::recommend::{
    ItemFilter, Masks, RecommendSettings, RecommendView, Trend, Window, ALL_TIME, DAY, MONTH,
    PURCHASE, WEEK,
};
use shopstream_dataflows::views::similarity::{rank, Measure, Scored, SimilarityView, MAX_K};

use super::similarity::{only, parse_k, parse_kind};
use super::view::ServeView;
use crate::reply::{engine_error, error, read_at};
use crate::runtime::{Engine, EngineError, HostContext, ReadAt, Readable, Route, ViewHost};

/// The recommend view's registration.
#[derive(Debug)]
pub struct Recommend;

impl ViewHost for Recommend {
    fn name(&self) -> &'static str {
        "recommend"
    }

    fn provide(&self, env: &mut Env, cx: HostContext<'_>) {
        let r = &cx.config.recommend;
        env.insert(RecommendSettings {
            enabled: r.enabled,
            weights: r.weights.as_array(),
            order_horizon: cx.config.order_horizon,
        });
    }
}

impl ServeView for Recommend {
    fn routes(&self) -> Router<Arc<Engine>> {
        Router::new()
            .route("/v1/items/popular", get(get_popular))
            .route("/v1/items/trending", get(get_trending))
            .route("/v1/users/{id}/recommendations", get(get_recommendations))
    }
}

/// A window's name in the API.
pub fn window_name(w: Window) -> &'static str {
    match w {
        DAY => "1d",
        WEEK => "7d",
        MONTH => "30d",
        _ => "all",
    }
}

pub fn parse_window(s: &str) -> Option<Window> {
    [DAY, WEEK, MONTH, ALL_TIME]
        .into_iter()
        .find(|w| window_name(*w) == s)
}

/// The 404 of every endpoint of this view when it is switched off.
fn switched_off(engine: &Engine, what: &str) -> Option<Response> {
    crate::reply::switched_off(engine.config.recommend.enabled, what, "recommend.enabled")
}

/// The first `k` popular items of `window` passing `filter` and not in
/// `exclude`, over every worker, at the pinned epoch.
async fn popular_at(
    engine: &Engine,
    pinned: &crate::runtime::PinnedRead<'_>,
    window: Window,
    filter: ItemFilter,
    k: usize,
    exclude: Arc<IdSet>,
) -> Result<Vec<Scored>, EngineError> {
    let parts = pinned
        .ask(Route::All, move |views, cx| {
            views
                .get::<RecommendView>()
                .map(|v| v.popular(window, filter, k, &exclude, cx))
                .unwrap_or_default()
        })
        .await?;
    Ok(rank(
        parts.into_iter().flatten().collect(),
        k,
        &engine.names(),
    ))
}

/// What `popular` answers.
#[derive(Clone, Debug)]
pub struct PopularRead {
    pub as_of: Readable,
    /// `(item, popularity, popularity)`, ranked.
    pub items: Vec<Scored>,
}

/// The `k` most popular items of `window` (of `category` and `brand` when not
/// empty) at one epoch.
pub async fn popular(
    engine: &Engine,
    window: Window,
    category: &str,
    brand: &str,
    k: usize,
    at: impl Into<ReadAt>,
) -> Result<PopularRead, EngineError> {
    let pinned = engine.pinned(at).await?;
    let filter = ItemFilter {
        category: sym(category),
        brand: sym(brand),
    };
    let items = popular_at(engine, &pinned, window, filter, k, Arc::default()).await?;
    Ok(PopularRead {
        as_of: pinned.as_of,
        items,
    })
}

fn sym(s: &str) -> Sym {
    if s.is_empty() {
        0
    } else {
        intern(s)
    }
}

/// What `trending` answers.
#[derive(Clone, Debug)]
pub struct TrendingRead {
    pub as_of: Readable,
    pub items: Vec<Trend>,
}

/// The `k` items growing fastest (see [`Trend`]) among those with a 1-day
/// popularity of at least `recommend.trending_min`, at one epoch.
pub async fn trending(
    engine: &Engine,
    k: usize,
    at: impl Into<ReadAt>,
) -> Result<TrendingRead, EngineError> {
    let pinned = engine.pinned(at).await?;
    let min = engine.config.recommend.trending_min;
    let parts = pinned
        .ask(Route::All, move |views, cx| {
            views
                .get::<RecommendView>()
                .map(|v| v.trending(k, min, cx))
                .unwrap_or_default()
        })
        .await?;
    let all: Vec<Trend> = parts.into_iter().flatten().collect();
    let by_item: HashMap<ItemId, Trend> = all.iter().map(|t| (t.item, *t)).collect();
    let scored = all.iter().map(|t| (t.item, t.growth, t.day)).collect();
    let items = rank(scored, k, &engine.names())
        .into_iter()
        .map(|(i, _, _)| by_item[&i])
        .collect();
    Ok(TrendingRead {
        as_of: pinned.as_of,
        items,
    })
}

/// The questions of a recommendation.
#[derive(Clone, Debug)]
pub struct RecommendQuery {
    pub k: usize,
    pub category: String,
    pub brand: String,
    pub exclude_purchased: bool,
    /// Leave out the user's history items (what they interacted with lately).
    pub exclude_seen: bool,
}

/// One recommended item.
#[derive(Clone, Debug, PartialEq)]
pub struct Recommended {
    pub item: ItemId,
    pub score: f64,
    /// The history items contributing most (personal), empty for popular ones.
    pub because: Vec<ItemId>,
    /// Filled in from popular items.
    pub popular: bool,
}

/// What `recommendations` answers.
#[derive(Clone, Debug)]
pub struct RecommendRead {
    pub as_of: Readable,
    /// `"personal"` or `"popular"`.
    pub strategy: &'static str,
    pub items: Vec<Recommended>,
    /// The history items and their weights (personal), in item order.
    pub history: Vec<(ItemId, f64)>,
}

/// What the user's owner answers in one visit.
#[derive(Default)]
struct UserSide {
    items: Vec<(ItemId, Masks)>,
    /// The user's `viewed` history (capped, empty for a busy user).
    history: Vec<ItemId>,
    latest: Vec<(ItemId, i64)>,
    cart: Vec<ItemId>,
    categories: Vec<(Sym, i64)>,
    /// The view's settings (the weights of a strength).
    settings: RecommendSettings,
}

fn user_side(
    views: &mut shopstream_dataflows::view::Views,
    user: u64,
    cx: shopstream_dataflows::view::ReadCtx,
) -> UserSide {
    let mut side = UserSide::default();
    if let Some(v) = views.get::<RecommendView>() {
        side.items = v.user_items(user, cx.at);
        side.settings = v.settings;
    }
    if let Some(v) = views.get::<SimilarityView>() {
        side.history = v.history_of(user, cx.at).0;
        side.latest = v.latest(user, cx.at);
    }
    if let Some(v) = views.get::<ProfileView>() {
        for ((kind, id), n) in v.facets(user, cx.at) {
            match kind {
                FACET_CART if n > 0 => side.cart.push(id),
                FACET_CATEGORY if n > 0 => side.categories.push((id, n)),
                _ => {}
            }
        }
    }
    side
}

/// A user's recommendations at one epoch (see the module doc).
pub async fn recommendations(
    engine: &Engine,
    id: &str,
    q: &RecommendQuery,
    at: impl Into<ReadAt>,
) -> Result<RecommendRead, EngineError> {
    let cfg = &engine.config.recommend;
    let pinned = engine.pinned(at).await?;
    let (user, _identity) = pinned.user(id);
    let side = pinned
        .ask(Route::Owner(user), move |views, cx| {
            user_side(views, user, cx)
        })
        .await?
        .into_iter()
        .next()
        .unwrap_or_default();
    let names = engine.names();
    let clock = pinned.as_of.clock;
    let half_life = cfg.half_life_days * DAY_MS as f64;
    let latest: HashMap<ItemId, i64> = side.latest.iter().copied().collect();
    let in_history: HashSet<ItemId> = side.history.iter().copied().collect();
    let history: Vec<(ItemId, f64)> = side
        .items
        .iter()
        .filter(|(item, _)| in_history.contains(item))
        .filter_map(|(item, masks)| {
            let strength = side.settings.strength(masks[MONTH as usize]);
            let t = latest.get(item)?;
            (strength > 0).then(|| {
                // Not negative: with the wall clock an event may be a little ahead.
                let age = (clock - t).max(0) as f64;
                (*item, strength as f64 * 0.5f64.powf(age / half_life))
            })
        })
        .collect();
    let mut exclude: IdSet = side.cart.iter().copied().collect();
    if q.exclude_purchased {
        exclude.extend(
            side.items
                .iter()
                .filter(|(_, m)| m[ALL_TIME as usize] & (1 << PURCHASE) != 0)
                .map(|(i, _)| *i),
        );
    }
    if q.exclude_seen {
        exclude.extend(history.iter().map(|(h, _)| *h));
    }
    exclude.extend(cfg.block.iter().map(|b| intern(b)));
    let exclude = Arc::new(exclude);
    let filter = ItemFilter {
        category: sym(&q.category),
        brand: sym(&q.brand),
    };
    let k = q.k;
    let mut items: Vec<Recommended> = Vec::new();
    let strategy = if history.len() >= cfg.min_history {
        items = personal(engine, &pinned, &history, exclude.clone(), filter).await?;
        items.truncate(k);
        "personal"
    } else {
        // New users: popular items of their top category (unless one was asked).
        if filter.category == 0 {
            let mut cats: Vec<(String, Sym, i64)> = side
                .categories
                .iter()
                .map(|(c, n)| (names(*c).unwrap_or_default(), *c, *n))
                .collect();
            cats.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
            if let Some((_, top, _)) = cats.first() {
                let in_top = ItemFilter {
                    category: *top,
                    ..filter
                };
                fill(engine, &pinned, &mut items, &exclude, in_top, k).await?;
            }
        }
        "popular"
    };
    if items.len() < k {
        fill(engine, &pinned, &mut items, &exclude, filter, k).await?;
    }
    Ok(RecommendRead {
        as_of: pinned.as_of,
        strategy,
        items,
        history,
    })
}

/// Adds popular items of the configured window (passing `filter`, not excluded,
/// not listed already) until `items` holds `k`.
async fn fill(
    engine: &Engine,
    pinned: &crate::runtime::PinnedRead<'_>,
    items: &mut Vec<Recommended>,
    exclude: &IdSet,
    filter: ItemFilter,
    k: usize,
) -> Result<(), EngineError> {
    if items.len() >= k {
        return Ok(());
    }
    let window = parse_window(&engine.config.recommend.popular_window).unwrap_or(WEEK);
    let mut skip = exclude.clone();
    skip.extend(items.iter().map(|r| r.item));
    let want = k - items.len();
    let found = popular_at(engine, pinned, window, filter, want, Arc::new(skip)).await?;
    items.extend(found.into_iter().map(|(item, score, _)| Recommended {
        item,
        score,
        because: Vec::new(),
        popular: true,
    }));
    Ok(())
}

/// Keeps of each list its first `neighbours` eligible items: not excluded, and
/// passing `filter` (read on this worker in one pass for all the lists).
fn eligible(
    rec: &mut RecommendView,
    lists: &mut [(ItemId, Vec<Scored>)],
    excluded: &IdSet,
    filter: ItemFilter,
    neighbours: usize,
    at: shopstream_dataflows::types::Time,
) {
    let candidates: Vec<ItemId> = lists
        .iter()
        .flat_map(|(_, l)| l.iter().map(|s| s.0))
        .filter(|b| !excluded.contains(b))
        .collect();
    let pass = rec.passing(&candidates, filter, at);
    for (_, list) in lists.iter_mut() {
        list.retain(|(b, _, _)| pass.contains(b));
        list.truncate(neighbours);
    }
}

/// The personal candidates of a history, scored and ranked (all of them).
async fn personal(
    engine: &Engine,
    pinned: &crate::runtime::PinnedRead<'_>,
    history: &[(ItemId, f64)],
    excluded: Arc<IdSet>,
    filter: ItemFilter,
) -> Result<Vec<Recommended>, EngineError> {
    let cfg = &engine.config.recommend;
    let kind = parse_kind(&cfg.kind).unwrap_or_default();
    let measure = Measure::parse(&cfg.measure).unwrap_or(Measure::Cosine);
    let neighbours = cfg.neighbours;
    let asked: Arc<Vec<ItemId>> = Arc::new(history.iter().map(|(h, _)| *h).collect());
    // Each history item's list is read for twice the neighbours first, and
    // again whole (MAX_K) only when too few of those are eligible: the same
    // answer as reading every list whole, from fewer partners.
    let first = (2 * neighbours).clamp(1, MAX_K);
    let parts = pinned
        .ask(Route::All, move |views, cx| {
            // The eligible neighbours of `items` by their first `k` similar items,
            // each with whether that list was cut at `k` (there may be more).
            let read = |views: &mut Views, items: &[ItemId], k: usize| {
                let mut lists: Vec<(ItemId, Vec<Scored>)> = Vec::new();
                if let Some(sim) = views.get::<SimilarityView>() {
                    for h in items {
                        if sim.owns(*h) {
                            lists.push((
                                *h,
                                sim.similar_kept(*h, kind, measure, k, cx, true).similar,
                            ));
                        }
                    }
                }
                let cut: Vec<bool> = lists.iter().map(|(_, l)| l.len() == k).collect();
                if let Some(rec) = views.get::<RecommendView>() {
                    eligible(rec, &mut lists, &excluded, filter, neighbours, cx.at);
                }
                (lists, cut)
            };
            let (mut lists, cut) = read(views, &asked, first);
            let again: Vec<ItemId> = lists
                .iter()
                .zip(cut)
                .filter(|((_, list), cut)| *cut && first < MAX_K && list.len() < neighbours)
                .map(|((h, _), _)| *h)
                .collect();
            if !again.is_empty() {
                lists.retain(|(h, _)| !again.contains(h));
                lists.extend(read(views, &again, MAX_K).0);
            }
            lists
        })
        .await?;
    let weights: HashMap<ItemId, f64> = history.iter().copied().collect();
    // Contributions per candidate, in the order of the history items' ids.
    let mut lists: Vec<(ItemId, Vec<Scored>)> = parts.into_iter().flatten().collect();
    lists.sort_unstable_by_key(|(h, _)| *h);
    let mut by_item: BTreeMap<ItemId, Vec<(ItemId, f64)>> = BTreeMap::new();
    for (h, list) in &lists {
        let w = weights[h];
        for (b, sim, _) in list {
            by_item.entry(*b).or_default().push((*h, w * sim));
        }
    }
    let names = engine.names();
    let mut scored: Vec<Scored> = Vec::new();
    let mut because: HashMap<ItemId, Vec<ItemId>> = HashMap::new();
    for (b, contributions) in by_item {
        let sum: f64 = contributions.iter().map(|(_, c)| c).sum();
        let score = sum * cfg.boost_of(&names, b);
        if score > 0.0 {
            let mut top = contributions;
            top.sort_by(|x, y| {
                y.1.total_cmp(&x.1)
                    .then_with(|| names(x.0).cmp(&names(y.0)))
            });
            because.insert(b, top.into_iter().take(3).map(|(h, _)| h).collect());
            scored.push((b, score, 0));
        }
    }
    let n = scored.len();
    Ok(rank(scored, n, &names)
        .into_iter()
        .map(|(item, score, _)| Recommended {
            item,
            score,
            because: because.remove(&item).unwrap_or_default(),
            popular: false,
        })
        .collect())
}

impl crate::config::RawRecommend {
    /// The boost factor of `item` (1 when not boosted).
    pub fn boost_of(&self, names: &Names, item: ItemId) -> f64 {
        if self.boost.is_empty() {
            return 1.0;
        }
        names(item)
            .and_then(|n| self.boost.get(&n).copied())
            .unwrap_or(1.0)
    }
}

fn parse_flag(
    params: &HashMap<String, String>,
    key: &str,
    default: bool,
) -> Result<bool, Response> {
    match params.get(key).map(String::as_str) {
        None => Ok(default),
        Some("true") | Some("1") => Ok(true),
        Some("false") | Some("0") => Ok(false),
        Some(v) => Err(error(
            StatusCode::BAD_REQUEST,
            format!("{key}: expected true or false, got {v:?}"),
        )),
    }
}

fn render(engine: &Engine, item: ItemId) -> String {
    engine
        .symbols
        .resolve(item)
        .unwrap_or_else(|| format!("#{item:016x}"))
}

async fn get_recommendations(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let started = Instant::now();
    if let Some(off) = switched_off(&engine, "recommendations") {
        return off;
    }
    let q = match (|| {
        only(
            &params,
            &[
                "k",
                "category",
                "brand",
                "exclude_purchased",
                "exclude_seen",
                "min_seq",
                "as_of",
            ],
        )?;
        Ok::<_, Response>((
            RecommendQuery {
                k: parse_k(&params)?,
                category: params.get("category").cloned().unwrap_or_default(),
                brand: params.get("brand").cloned().unwrap_or_default(),
                exclude_purchased: parse_flag(&params, "exclude_purchased", true)?,
                exclude_seen: parse_flag(&params, "exclude_seen", true)?,
            },
            read_at(&params)?,
        ))
    })() {
        Ok(q) => q,
        Err(r) => return r,
    };
    let read = match recommendations(&engine, &id, &q.0, q.1).await {
        Ok(r) => r,
        Err(e) => return engine_error(e),
    };
    let items: Vec<serde_json::Value> = read
        .items
        .iter()
        .map(|r| {
            json!({
                "item_id": render(&engine, r.item),
                "score": r.score,
                "because": r.because.iter().map(|h| render(&engine, *h)).collect::<Vec<_>>(),
                "source": if r.popular { "popular" } else { "personal" },
            })
        })
        .collect();
    let response = Json(json!({
        "user_id": id,
        "as_of": read.as_of.seq,
        "strategy": read.strategy,
        "history_items": read.history.len(),
        "items": items,
    }))
    .into_response();
    metrics::histogram!("shopstream_query_seconds", "kind" => "recommendations")
        .record(started.elapsed().as_secs_f64());
    response
}

async fn get_popular(
    State(engine): State<Arc<Engine>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let started = Instant::now();
    if let Some(off) = switched_off(&engine, "popular items") {
        return off;
    }
    let parsed = (|| {
        only(
            &params,
            &["k", "category", "brand", "window", "min_seq", "as_of"],
        )?;
        let window = match params.get("window") {
            None => WEEK,
            Some(w) => parse_window(w).ok_or_else(|| {
                error(
                    StatusCode::BAD_REQUEST,
                    format!("window: expected 1d, 7d, 30d or all, got {w:?}"),
                )
            })?,
        };
        Ok::<_, Response>((parse_k(&params)?, window, read_at(&params)?))
    })();
    let (k, window, at) = match parsed {
        Ok(p) => p,
        Err(r) => return r,
    };
    let category = params.get("category").cloned().unwrap_or_default();
    let brand = params.get("brand").cloned().unwrap_or_default();
    let read = match popular(&engine, window, &category, &brand, k, at).await {
        Ok(r) => r,
        Err(e) => return engine_error(e),
    };
    let items: Vec<serde_json::Value> = read
        .items
        .iter()
        .map(|(item, _, score)| json!({"item_id": render(&engine, *item), "score": score}))
        .collect();
    let response = Json(json!({
        "window": window_name(window),
        "category": (!category.is_empty()).then_some(category),
        "brand": (!brand.is_empty()).then_some(brand),
        "as_of": read.as_of.seq,
        "items": items,
    }))
    .into_response();
    metrics::histogram!("shopstream_query_seconds", "kind" => "popular")
        .record(started.elapsed().as_secs_f64());
    response
}

async fn get_trending(
    State(engine): State<Arc<Engine>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let started = Instant::now();
    if let Some(off) = switched_off(&engine, "trending items") {
        return off;
    }
    let parsed = (|| {
        only(&params, &["k", "min_seq", "as_of"])?;
        Ok::<_, Response>((parse_k(&params)?, read_at(&params)?))
    })();
    let (k, at) = match parsed {
        Ok(p) => p,
        Err(r) => return r,
    };
    let read = match trending(&engine, k, at).await {
        Ok(r) => r,
        Err(e) => return engine_error(e),
    };
    let items: Vec<serde_json::Value> = read
        .items
        .iter()
        .map(|t| {
            json!({
                "item_id": render(&engine, t.item),
                "growth": t.growth,
                "day": t.day,
                "week": t.week,
            })
        })
        .collect();
    let response = Json(json!({
        "as_of": read.as_of.seq,
        "min_day": engine.config.recommend.trending_min,
        "items": items,
    }))
    .into_response();
    metrics::histogram!("shopstream_query_seconds", "kind" => "trending")
        .record(started.elapsed().as_secs_f64());
    response
}
