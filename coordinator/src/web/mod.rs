//! The public status page: `/status` (HTML, no JavaScript), `/status.json`
//! (the Statuspage summary shape) and `/badge/{check}.svg`, for checks
//! configured with `public = true` and a `display_name`.
//!
//! Served on the admin listener or on `[status] listen`, outside `/api/v1`
//! and without a token: everything here is public by construction. Only
//! a check's name (the badge URL and the JSON id), its display name, its
//! regions' names and counts of verdicts are read into [`view`]; hosts,
//! users, mailboxes, reply texts, agents and the judge's own summaries
//! never are.
//!
//! Everything is built at once into a [`Snapshot`] (page, JSON, badges,
//! their ETags) and served from memory: rebuilt when the checks change, or
//! once the fastest public check's round has passed (at most once a
//! minute), however many visitors arrive. Storage reads: one
//! `status_snapshot`, one `verdict_day_counts` (90 days), one
//! `verdict_counts` (24 hours), one `incidents_in_span`, and
//! one `incidents_by_id` (the open incidents and the feed's entries, at
//! most 50, with their timelines).

pub mod chart;
pub mod console;
pub mod feed;
pub mod json;
pub mod model;
pub mod page;
pub mod view;

use crate::cluster::hub::Hub;
use crate::config::status::StatusPageSettings;
use crate::metrics::Metrics;
use crate::storage::{
    AggregateSpanQuery, DayCountQuery, HourAggregate, IncidentSpanQuery, Storage, StorageError, VerdictCountQuery,
};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use chrono::Datelike;
use model::{HOUR_MS, History, PublicState, Tally, Window};
#[cfg(test)]
use model::DAY_MS;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use view::{CheckView, IncidentView, PageData};

/// Most entries in the Atom feed (newest incidents of the last 90 days).
const FEED_ENTRIES: usize = 50;
/// Most months of history kept rendered at once.
const HISTORY_CACHED: usize = 24;

/// Longest a snapshot is served (the windows move even without rounds).
const MAX_AGE: Duration = Duration::from_secs(60);
/// Shortest: a test-mode check may run every second.
const MIN_AGE: Duration = Duration::from_secs(1);

/// The page's state: where its data comes from and the current snapshot.
pub struct StatusPage {
    hub: Arc<Hub>,
    /// Where the time of each answer served from memory is observed.
    metrics: Arc<Metrics>,
    storage: Arc<Storage>,
    settings: StatusPageSettings,
    current: Mutex<Option<Arc<Snapshot>>>,
    /// Held while building, so a flood of visitors causes one build.
    building: tokio::sync::Mutex<()>,
    /// Rendered history months, each kept as long as a snapshot.
    history: Mutex<HashMap<String, Arc<HistoryPage>>>,
    /// Rendered check pages (response times) by check name, the same.
    check_pages: Mutex<HashMap<String, Arc<HistoryPage>>>,
}

/// One rendered page under the page (a month of history, a check's
/// response times).
struct HistoryPage {
    revision: u64,
    expires_ms: i64,
    /// `Cache-Control`, made once per rendering (never per request).
    cache_control: HeaderValue,
    csp: HeaderValue,
    html: Body,
}

/// One body with its ETag, and its gzip and brotli forms, compressed
/// once when built (never per request) and each with its own ETag.
struct Body {
    identity: Encoded,
    gzip: Option<Encoded>,
    br: Option<Encoded>,
}

/// One encoding of a body.
struct Encoded {
    bytes: axum::body::Bytes,
    etag: HeaderValue,
}

/// Below this a body is served as it is (a badge): compressing saves
/// little and costs a build per check.
const COMPRESS_MIN_BYTES: usize = 1024;

/// Brotli's quality and window, and gzip's level: the levels usual for
/// dynamic content. The bodies are rebuilt once a round, and on the
/// page's repetitive HTML brotli 9 and gzip 9 took several times as long
/// for a few percent fewer bytes (brotli 5 still beats gzip 9).
const BROTLI_QUALITY: u32 = 5;
const BROTLI_WINDOW: u32 = 22;
const GZIP_LEVEL: u32 = 6;

impl Body {
    fn new(bytes: Vec<u8>) -> Body {
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
        let tag = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest.as_ref()[..16]);
        let encoded = |bytes: Vec<u8>, suffix: &str| Encoded {
            bytes: bytes.into(),
            etag: HeaderValue::from_str(&format!("\"{tag}{suffix}\"")).expect("base64 is a valid header"),
        };
        let (gzip, br) = if bytes.len() >= COMPRESS_MIN_BYTES {
            (Some(encoded(gzip(&bytes), "-gz")), Some(encoded(brotli(&bytes), "-br")))
        } else {
            (None, None)
        };
        Body { identity: encoded(bytes, ""), gzip, br }
    }

    /// The form `accept` (an `Accept-Encoding` value) prefers, and its
    /// `Content-Encoding` (None: identity).
    fn pick(&self, accept: Option<&str>) -> (&Encoded, Option<&'static str>) {
        let offered = [("br", self.br.as_ref()), ("gzip", self.gzip.as_ref())];
        match negotiate(accept, &offered.map(|(name, e)| (name, e.is_some()))) {
            Some("br") => (self.br.as_ref().expect("offered"), Some("br")),
            Some("gzip") => (self.gzip.as_ref().expect("offered"), Some("gzip")),
            _ => (&self.identity, None),
        }
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut z = flate2::write::GzEncoder::new(Vec::with_capacity(bytes.len() / 4), flate2::Compression::new(GZIP_LEVEL));
    z.write_all(bytes).expect("writing to memory");
    z.finish().expect("writing to memory")
}

fn brotli(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() / 4);
    let params = brotli::enc::BrotliEncoderParams {
        quality: BROTLI_QUALITY as i32,
        lgwin: BROTLI_WINDOW as i32,
        ..Default::default()
    };
    brotli::BrotliCompress(&mut &bytes[..], &mut out, &params).expect("writing to memory");
    out
}

/// The coding of `offered` (in the server's order of preference, with
/// whether it is available) that `accept` allows with the highest q
/// (ties: the server's order); None for identity. A coding with `q=0` is
/// refused, `*` stands for every coding not named, and no header means
/// identity (RFC 9110, 12.5.3).
fn negotiate(accept: Option<&str>, offered: &[(&'static str, bool)]) -> Option<&'static str> {
    let accept = accept?;
    // Each request's header is read in place (no allocation): this runs
    // for every answer served from the snapshot.
    let items = || {
        accept.split(',').filter_map(|item| {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or_default().trim();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q=").or_else(|| p.trim().strip_prefix("Q=")))
                .find_map(|v| v.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            (!coding.is_empty()).then_some((coding, q))
        })
    };
    let q_of = |coding: &str| {
        items()
            .find(|(c, _)| c.eq_ignore_ascii_case(coding) || (coding == "gzip" && c.eq_ignore_ascii_case("x-gzip")))
            .or_else(|| items().find(|(c, _)| *c == "*"))
            .map(|(_, q)| q)
    };
    let mut best: Option<(&'static str, f32)> = None;
    for &(coding, available) in offered {
        if let Some(q) = q_of(coding).filter(|q| available && *q > 0.0)
            && best.is_none_or(|(_, b)| q > b)
        {
            best = Some((coding, q));
        }
    }
    best.map(|(c, _)| c)
}

/// Everything the public routes serve, built at one moment.
struct Snapshot {
    /// The hub's revision when built (a change to checks rebuilds).
    revision: u64,
    /// The Content-Security-Policy (it names the stylesheet's hash).
    csp: HeaderValue,
    expires_ms: i64,
    /// `Cache-Control`, made once per snapshot (never per request).
    cache_control: HeaderValue,
    html: Body,
    json: Body,
    atom: Body,
    /// Badge per public check name.
    badges: HashMap<String, Body>,
}

impl StatusPage {
    pub fn new(
        hub: Arc<Hub>,
        storage: Arc<Storage>,
        settings: StatusPageSettings,
        metrics: Arc<Metrics>,
    ) -> Arc<StatusPage> {
        Arc::new(StatusPage {
            hub,
            metrics,
            storage,
            settings,
            current: Mutex::new(None),
            building: tokio::sync::Mutex::new(()),
            history: Mutex::new(HashMap::new()),
            check_pages: Mutex::new(HashMap::new()),
        })
    }

    /// Drops the current snapshot: the next visitor gets a fresh one (a
    /// public note was added on this replica; other replicas show it
    /// after their next rebuild, within a round).
    pub fn invalidate(&self) {
        *self.current.lock().expect("not poisoned") = None;
        self.history.lock().expect("not poisoned").clear();
        self.check_pages.lock().expect("not poisoned").clear();
    }

    /// The response-time page of public check `id` (None: no such public
    /// check), from memory while fresh. Storage reads: one
    /// `status_snapshot`, one `aggregates_of` (7 days of one check).
    async fn check_page(&self, id: &str) -> Result<Option<Arc<HistoryPage>>, StorageError> {
        let now = crate::clock::now_ms();
        let fresh = |p: &Arc<HistoryPage>| p.revision == self.hub.revision() && now < p.expires_ms;
        if let Some(p) = self.check_pages.lock().expect("not poisoned").get(id).filter(|p| fresh(p)) {
            return Ok(Some(p.clone()));
        }
        let _building = self.building.lock().await;
        if let Some(p) = self.check_pages.lock().expect("not poisoned").get(id).filter(|p| fresh(p)) {
            return Ok(Some(p.clone()));
        }
        let revision = self.hub.revision();
        let public = self.public_checks();
        let Some((_, display_name, _)) = public.iter().find(|p| p.0 == id) else {
            return Ok(None);
        };
        let (latest, _) = self.storage.status_snapshot(vec![id.to_string()]).await?;
        let week = Window::Hours(7 * 24).since_ms(now);
        let hours = self
            .storage
            .aggregates_of(AggregateSpanQuery { check_ids: vec![id.to_string()], since_ms: week })
            .await?;
        let refs: Vec<&HourAggregate> = hours.iter().collect();
        let windows = [("Last 24 hours", "24h", Window::Hours(24).since_ms(now)), ("Last 7 days", "7d", week)]
            .into_iter()
            .map(|(heading, key, since_ms)| view::TimesWindow {
                heading,
                key,
                since_ms,
                regions: chart::per_region(&refs, since_ms),
            })
            .collect();
        let data = view::CheckPageData {
            title: self.settings.title.clone(),
            path: self.settings.path.clone(),
            now_ms: now,
            id: id.to_string(),
            display_name: display_name.clone(),
            state: PublicState::of(latest.get(id)),
            windows,
        };
        let css = page::stylesheet_of_charts();
        let max_age = self.max_age(&public);
        let built = Arc::new(HistoryPage {
            revision,
            expires_ms: now + max_age.as_millis() as i64,
            cache_control: cache_control(max_age),
            csp: csp(&css),
            html: Body::new(page::check_times(&data, &css).into_string().into_bytes()),
        });
        // Bounded: only public checks' names get here.
        self.check_pages.lock().expect("not poisoned").insert(id.to_string(), built.clone());
        Ok(Some(built))
    }

    /// The history page of `month` (`2026-11`), from memory while fresh.
    async fn history_page(&self, month: &str, first_ms: i64) -> Result<Arc<HistoryPage>, StorageError> {
        let now = crate::clock::now_ms();
        let fresh = |p: &Arc<HistoryPage>| p.revision == self.hub.revision() && now < p.expires_ms;
        if let Some(p) = self.history.lock().expect("not poisoned").get(month).filter(|p| fresh(p)) {
            return Ok(p.clone());
        }
        let _building = self.building.lock().await;
        if let Some(p) = self.history.lock().expect("not poisoned").get(month).filter(|p| fresh(p)) {
            return Ok(p.clone());
        }
        let revision = self.hub.revision();
        let public = self.public_checks();
        let names: HashMap<&str, &str> =
            public.iter().map(|(id, name, _)| (id.as_str(), name.as_str())).collect();
        let next_ms = month_start(first_ms, 1);
        let found = self
            .storage
            .incidents_in_span(IncidentSpanQuery {
                check_ids: public.iter().map(|p| p.0.clone()).collect(),
                since_ms: first_ms,
                until_ms: next_ms.min(now + 1),
                timelines: true,
            })
            .await?;
        let mut incidents: Vec<IncidentView> = found
            .iter()
            .filter_map(|i| IncidentView::of(i, names.get(i.check_id.as_str())?))
            .collect();
        incidents.sort_by(|a, b| b.opened_ms.cmp(&a.opened_ms).then(b.id.cmp(&a.id)));
        let data = view::HistoryData {
            title: self.settings.title.clone(),
            path: self.settings.path.clone(),
            now_ms: now,
            month_name: view::fmt_month_name(first_ms),
            previous: view::fmt_month(month_start(first_ms, -1)),
            next: (next_ms <= now).then(|| view::fmt_month(next_ms)),
            incidents,
        };
        let css = page::stylesheet([]);
        let max_age = self.max_age(&public);
        let built = Arc::new(HistoryPage {
            revision,
            expires_ms: now + max_age.as_millis() as i64,
            cache_control: cache_control(max_age),
            csp: csp(&css),
            html: Body::new(page::history(&data, &css).into_string().into_bytes()),
        });
        let mut cache = self.history.lock().expect("not poisoned");
        if cache.len() >= HISTORY_CACHED {
            cache.clear();
        }
        cache.insert(month.to_string(), built.clone());
        Ok(built)
    }

    /// How long a rendering is served: the fastest public check's round,
    /// within [`MIN_AGE`]..[`MAX_AGE`].
    fn max_age(&self, public: &[(String, String, Duration)]) -> Duration {
        public
            .iter()
            .map(|p| p.2)
            .min()
            .unwrap_or(MAX_AGE)
            .clamp(MIN_AGE, MAX_AGE)
    }

    fn fresh(&self) -> Option<Arc<Snapshot>> {
        let cur = self.current.lock().expect("not poisoned").clone()?;
        (cur.revision == self.hub.revision() && crate::clock::now_ms() < cur.expires_ms)
            .then_some(cur)
    }

    async fn snapshot(&self) -> Result<Arc<Snapshot>, StorageError> {
        if let Some(s) = self.fresh() {
            return Ok(s);
        }
        let _building = self.building.lock().await;
        if let Some(s) = self.fresh() {
            return Ok(s);
        }
        let s = Arc::new(self.build().await?);
        *self.current.lock().expect("not poisoned") = Some(s.clone());
        Ok(s)
    }

    /// (check name, display name, interval) of every public check, in the
    /// page's order (by display name).
    fn public_checks(&self) -> Vec<(String, String, Duration)> {
        let mut public: Vec<(String, String, Duration)> = self
            .hub
            .checks()
            .into_iter()
            .filter_map(|c| {
                let listing = c.spec.public?;
                Some((c.spec.name, listing.display_name, c.spec.interval))
            })
            .collect();
        public.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
        public
    }

    /// Reads storage and renders everything.
    async fn build(&self) -> Result<Snapshot, StorageError> {
        let started = std::time::Instant::now();
        let revision = self.hub.revision();
        let now = crate::clock::now_ms();
        let public = self.public_checks();
        let ids: Vec<String> = public.iter().map(|p| p.0.clone()).collect();
        let (latest, active) = self.storage.status_snapshot(ids.clone()).await?;
        // Days from the counts kept as verdicts are stored (exact: each
        // verdict is added in its own transaction, today's too); the last
        // 24 hours counted from the verdicts themselves (24 rounds of an
        // hourly check, a few thousand rows of 100).
        let days = self
            .storage
            .verdict_day_counts(DayCountQuery {
                check_ids: ids.clone(),
                since_ms: Window::Days(model::BAR_DAYS as u32).since_ms(now),
            })
            .await?;
        let hours = self
            .storage
            .verdict_counts(VerdictCountQuery {
                check_ids: ids.clone(),
                since_ms: Window::Hours(24).since_ms(now),
                bucket_ms: HOUR_MS,
            })
            .await?;
        let mut histories: HashMap<String, History> = HashMap::new();
        for (counts, is_days) in [(days, true), (hours, false)] {
            let mut grouped: HashMap<(String, i64), Tally> = HashMap::new();
            for c in counts {
                grouped
                    .entry((c.check_id, c.bucket_start_ms))
                    .or_default()
                    .add(c.verdict, c.rounds);
            }
            for ((check, start), tally) in grouped {
                let h = histories.entry(check).or_default();
                if is_days {
                    h.days.push((start, tally));
                } else {
                    h.hours.push((start, tally));
                }
            }
        }
        let mut spans: HashMap<String, Vec<view::IncidentSpan>> = HashMap::new();
        let recent = self
            .storage
            .incidents_in_span(IncidentSpanQuery {
                check_ids: ids.clone(),
                since_ms: Window::Days(model::BAR_DAYS as u32).since_ms(now),
                until_ms: now + 1,
                timelines: false,
            })
            .await?;
        // The feed's entries: the newest, each with its timeline.
        let mut feed_ids: Vec<u64> = recent
            .iter()
            .filter(|i| view::is_public_kind(i.kind))
            .map(|i| i.id)
            .collect();
        feed_ids.sort_unstable_by(|a, b| b.cmp(a));
        feed_ids.truncate(FEED_ENTRIES);
        for i in recent {
            if view::is_public_kind(i.kind) {
                spans
                    .entry(i.check_id)
                    .or_default()
                    .push((i.id, i.opened_at_ms, i.resolved_at_ms));
            }
        }
        let empty = History::default();
        let checks: Vec<CheckView> = public
            .iter()
            .map(|(id, name, _)| {
                let v = latest.get(id);
                CheckView::new(
                    id.clone(),
                    name.clone(),
                    PublicState::of(v),
                    v.map(|v| v.decided_at_ms),
                    histories.get(id).unwrap_or(&empty),
                    spans.get(id).map(Vec::as_slice).unwrap_or_default(),
                    now,
                )
            })
            .collect();
        let names: HashMap<&str, &str> = public
            .iter()
            .map(|(id, name, _)| (id.as_str(), name.as_str()))
            .collect();
        // The open ones with their timelines (the snapshot has none; there
        // are few open incidents at any time).
        // Both read at once, with their timelines: one storage call.
        let open: Vec<&crate::judge::Incident> = active
            .iter()
            .filter(|i| names.contains_key(i.check_id.as_str()) && view::is_public_kind(i.kind))
            .collect();
        let wanted: Vec<u64> = open.iter().map(|i| i.id).chain(feed_ids.iter().copied()).collect();
        let full: HashMap<u64, crate::judge::Incident> = self
            .storage
            .incidents_by_id(wanted)
            .await?
            .into_iter()
            .map(|i| (i.id, i))
            .collect();
        let view_of = |i: &crate::judge::Incident| IncidentView::of(i, names.get(i.check_id.as_str())?);
        let mut incidents: Vec<IncidentView> = open
            .iter()
            .filter_map(|i| view_of(full.get(&i.id).unwrap_or(i)))
            .collect();
        incidents.sort_by(|a, b| b.opened_ms.cmp(&a.opened_ms).then(b.id.cmp(&a.id)));
        let feed_entries: Vec<IncidentView> =
            feed_ids.iter().filter_map(|id| view_of(full.get(id)?)).collect();
        let stored_ms = started.elapsed().as_secs_f64() * 1000.0;
        let atom = feed::atom(&self.settings.title, &self.settings.path, now, &feed_entries);
        let data = PageData {
            title: self.settings.title.clone(),
            path: self.settings.path.clone(),
            now_ms: now,
            checks,
            incidents,
        };
        let css = page::stylesheet_of(&data);
        let csp = csp(&css);
        let badges = data
            .checks
            .iter()
            .map(|c| {
                let (message, colour) = badge_text(&c.state);
                let svg = page::badge(&c.display_name, message, colour).into_string();
                (c.id.clone(), Body::new(svg.into_bytes()))
            })
            .collect();
        let max_age = self.max_age(&public);
        let html = page::page(&data, &css).into_string().into_bytes();
        let json = serde_json::to_vec(&json::summary(&data)).expect("JSON serializes");
        let rendered_ms = started.elapsed().as_secs_f64() * 1000.0;
        let (html, json, atom) = (Body::new(html), Body::new(json), Body::new(atom.into_bytes()));
        let total_ms = started.elapsed().as_secs_f64() * 1000.0;
        tracing::debug!(
            checks = public.len(),
            storage_ms = stored_ms,
            render_ms = rendered_ms - stored_ms,
            compress_ms = total_ms - rendered_ms,
            total_ms,
            "status page built"
        );
        Ok(Snapshot {
            revision,
            csp,
            expires_ms: now + max_age.as_millis() as i64,
            cache_control: cache_control(max_age),
            html,
            json,
            atom,
            badges,
        })
    }
}

/// The badge's words and colour (white text on each passes WCAG AA).
fn badge_text(s: &PublicState) -> (&'static str, &'static str) {
    match s {
        PublicState::Operational => ("operational", "#1a7f37"),
        PublicState::Degraded => ("degraded", "#8a5c00"),
        PublicState::Regional(_) => ("regional delays", "#a64200"),
        PublicState::Outage => ("outage", "#c8202b"),
        PublicState::NoData => ("no data", "#59636e"),
    }
}

/// The routes: the page at `[status] path`, its JSON beside it, badges.
pub fn router(page: Arc<StatusPage>) -> axum::Router {
    let path = page.settings.path.clone();
    axum::Router::new()
        .route(&path, get(html))
        .route(&format!("{path}.json"), get(summary))
        .route(&format!("{path}.atom"), get(atom))
        .route(&format!("{path}/history"), get(history_now))
        .route(&format!("{path}/history/{{month}}"), get(history))
        .route(&format!("{path}/check/{{id}}"), get(check_times))
        .route("/badge/{file}", get(badge))
        .with_state(page)
}

/// `style-src` allows exactly the page's stylesheet (by hash); no script
/// runs, nothing is fetched, nothing may frame the page.
fn csp(css: &str) -> HeaderValue {
    let digest = ring::digest::digest(&ring::digest::SHA256, css.as_bytes());
    let hash = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
    HeaderValue::from_str(&format!(
        "default-src 'none'; style-src 'sha256-{hash}'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ))
    .expect("ascii")
}

/// `public, max-age=N`.
fn cache_control(max_age: Duration) -> HeaderValue {
    HeaderValue::from_str(&format!("public, max-age={}", max_age.as_secs())).expect("ascii")
}

fn respond(
    body: &Body,
    content_type: &'static str,
    s: &Snapshot,
    req: &HeaderMap,
) -> Response {
    respond_with(body, content_type, &s.cache_control, &s.csp, req)
}

fn respond_with(
    body: &Body,
    content_type: &'static str,
    cache_control: &HeaderValue,
    csp: &HeaderValue,
    req: &HeaderMap,
) -> Response {
    let accept = req.get(header::ACCEPT_ENCODING).and_then(|v| v.to_str().ok());
    let (body, encoding) = body.pick(accept);
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Every answer varies by Accept-Encoding, the identity one too: a
    // shared cache must not hand it to a client that asked for br.
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if let Some(e) = encoding {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(e));
    }
    headers.insert(header::CACHE_CONTROL, cache_control.clone());
    headers.insert(header::ETAG, body.etag.clone());
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        csp.clone(),
    );
    let matches = req
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim() == body.etag.to_str().unwrap_or(""))
        });
    if matches {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    (StatusCode::OK, headers, body.bytes.clone()).into_response()
}

fn unavailable(e: StorageError) -> Response {
    // The reason goes to the log, not to the public.
    tracing::error!(error = %e, "status page: cannot read storage");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::RETRY_AFTER, "30"),
        ],
        "The status page is temporarily unavailable.\n",
    )
        .into_response()
}

/// Answers from the current snapshot: at once (timed into
/// `mailloop_status_page_served_seconds`) while it is fresh, else after
/// the one build every waiting visitor shares.
async fn from_snapshot(page: &StatusPage, req: &HeaderMap, answer: impl Fn(&Snapshot, &HeaderMap) -> Response) -> Response {
    let started = std::time::Instant::now();
    if let Some(s) = page.fresh() {
        let r = answer(&s, req);
        page.metrics.status_served(started.elapsed());
        return r;
    }
    match page.snapshot().await {
        Ok(s) => answer(&s, req),
        Err(e) => unavailable(e),
    }
}

async fn html(State(page): State<Arc<StatusPage>>, req: HeaderMap) -> Response {
    from_snapshot(&page, &req, |s, req| respond(&s.html, "text/html; charset=utf-8", s, req)).await
}

async fn summary(State(page): State<Arc<StatusPage>>, req: HeaderMap) -> Response {
    from_snapshot(&page, &req, |s, req| respond(&s.json, "application/json", s, req)).await
}

async fn atom(State(page): State<Arc<StatusPage>>, req: HeaderMap) -> Response {
    from_snapshot(&page, &req, |s, req| respond(&s.atom, "application/atom+xml; charset=utf-8", s, req)).await
}

/// `{path}/history`: the current month's page.
async fn history_now(State(page): State<Arc<StatusPage>>) -> Response {
    let month = view::fmt_month(crate::clock::now_ms());
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, format!("{}/history/{month}", page.settings.path))],
    )
        .into_response()
}

/// `{path}/history/2026-11`: months from 2000 to the current one.
async fn history(
    State(page): State<Arc<StatusPage>>,
    Path(month): Path<String>,
    req: HeaderMap,
) -> Response {
    let first = chrono::NaiveDate::parse_from_str(&format!("{month}-01"), "%Y-%m-%d")
        .ok()
        .filter(|d| month.len() == 7 && d.year() >= 2000)
        .map(|d| d.and_time(chrono::NaiveTime::MIN).and_utc().timestamp_millis())
        .filter(|ms| *ms <= crate::clock::now_ms());
    let Some(first) = first else {
        return not_found_text("no such month (YYYY-MM, up to the current one)\n");
    };
    match page.history_page(&month, first).await {
        Ok(h) => respond_with(&h.html, "text/html; charset=utf-8", &h.cache_control, &h.csp, &req),
        Err(e) => unavailable(e),
    }
}

/// `{path}/check/{id}`: a public check's response times.
async fn check_times(State(page): State<Arc<StatusPage>>, Path(id): Path<String>, req: HeaderMap) -> Response {
    match page.check_page(&id).await {
        Ok(Some(p)) => respond_with(&p.html, "text/html; charset=utf-8", &p.cache_control, &p.csp, &req),
        Ok(None) => not_found_text("no such public check\n"),
        Err(e) => unavailable(e),
    }
}

/// A 404 whose body says, in plain text, what was not found.
fn not_found_text(what: &'static str) -> Response {
    (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], what).into_response()
}

/// The first millisecond of the month `delta` months from the one
/// starting at `first_ms`.
fn month_start(first_ms: i64, delta: i32) -> i64 {
    let d = chrono::DateTime::from_timestamp_millis(first_ms)
        .unwrap_or_default()
        .date_naive();
    let months = d.year() * 12 + d.month0() as i32 + delta;
    chrono::NaiveDate::from_ymd_opt(months.div_euclid(12), months.rem_euclid(12) as u32 + 1, 1)
        .unwrap_or(d)
        .and_time(chrono::NaiveTime::MIN)
        .and_utc()
        .timestamp_millis()
}

async fn badge(
    State(page): State<Arc<StatusPage>>,
    Path(file): Path<String>,
    req: HeaderMap,
) -> Response {
    let not_found = || not_found_text("no such badge\n");
    let Some(check) = file.strip_suffix(".svg") else {
        return not_found();
    };
    from_snapshot(&page, &req, |s, req| match s.badges.get(check) {
        Some(b) => respond(b, "image/svg+xml", s, req),
        None => not_found(),
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(accept: Option<&str>) -> Option<&'static str> {
        negotiate(accept, &[("br", true), ("gzip", true)])
    }

    #[test]
    fn accept_encoding_picks_br_then_gzip_by_q_and_honours_refusals() {
        assert_eq!(pick(None), None, "no header: identity");
        assert_eq!(pick(Some("")), None);
        assert_eq!(pick(Some("gzip, deflate, br, zstd")), Some("br"));
        assert_eq!(pick(Some("gzip")), Some("gzip"));
        assert_eq!(pick(Some("x-gzip")), Some("gzip"));
        assert_eq!(pick(Some("br;q=0.5, gzip;q=0.8")), Some("gzip"));
        assert_eq!(pick(Some("br;q=0, gzip;q=0")), None);
        assert_eq!(pick(Some("*")), Some("br"));
        assert_eq!(pick(Some("*;q=0.1, br;q=0")), Some("gzip"));
        assert_eq!(pick(Some("identity")), None);
        assert_eq!(pick(Some("deflate")), None);
        // Not offered (a small body): identity.
        assert_eq!(negotiate(Some("br, gzip"), &[("br", false), ("gzip", false)]), None);
    }

    #[test]
    fn a_body_is_compressed_once_and_each_form_has_its_own_etag() {
        let html = "<p>status</p>".repeat(500).into_bytes();
        let b = Body::new(html.clone());
        let (e, enc) = b.pick(Some("gzip"));
        assert_eq!(enc, Some("gzip"));
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&e.bytes[..]), &mut back).unwrap();
        assert_eq!(back, html);
        let (e, enc) = b.pick(Some("br"));
        assert_eq!(enc, Some("br"));
        let mut back = Vec::new();
        brotli::BrotliDecompress(&mut &e.bytes[..], &mut back).unwrap();
        assert_eq!(back, html);
        let tags: Vec<&HeaderValue> = [None, Some("gzip"), Some("br")].map(|a| &b.pick(a).0.etag).into();
        assert!(tags[0] != tags[1] && tags[1] != tags[2] && tags[0] != tags[2], "{tags:?}");
        // A badge-sized body is served as it is.
        assert_eq!(Body::new(b"<svg/>".to_vec()).pick(Some("br")).1, None);
    }
}

/// Where a build's time goes, with the bench's data set written straight
/// into SQLite (100 public checks, 24 rounds a day for 90 days, five
/// regions of evidence each, three outage incidents per check). Ignored:
/// a measurement, not a test (timing goals live in `make bench`). Run:
/// `cargo test -p mailloop-coordinator --release --lib web::timing -- --ignored --nocapture`.
#[cfg(test)]
mod timing {
    use super::*;
    use crate::config::{CheckSpec, PublicListing};
    use crate::storage::{Source, StoredCheck};
    use std::time::Instant;

    fn ms(t: Instant) -> f64 {
        t.elapsed().as_secs_f64() * 1000.0
    }

    #[tokio::test(flavor = "multi_thread")]
    #[ignore]
    async fn where_a_status_page_build_spends_its_time() {
        let dir = tempfile::tempdir().unwrap();
        Storage::open(dir.path()).unwrap().close().await;
        let now = crate::clock::now_ms();
        let today = now - now.rem_euclid(DAY_MS);
        {
            let conn = rusqlite::Connection::open(dir.path().join("coordinator.db")).unwrap();
            let region = r#"{"region":"region-0","state":"ok","probe_id":"p0123456789abcdef0123456789abcdef","agent":"a","outcome":"ok","step":null,"class":null,"code":null,"enhanced":null,"text":null,"slow":[],"reasons":[],"rtt_ms":40.0,"detail":null}"#;
            let regions = [region; 5].join(",");
            conn.execute_batch("BEGIN").unwrap();
            conn.execute(
                "WITH RECURSIVE c(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM c WHERE n < 99),
                 r(k) AS (SELECT 0 UNION ALL SELECT k + 1 FROM r WHERE k < 90 * 24 - 1)
                 INSERT INTO verdicts SELECT printf('pub-%03d', n), 1000000000 + n * 1000000 + k,
                   ?1 - (90 * 24 - 1 - k) * 3600000, ?1 - (90 * 24 - 1 - k) * 3600000 + 1000,
                   CASE WHEN (k / 24 + n) % 30 = 7 AND k % 24 = 1 THEN 'down'
                        WHEN (k / 24 + n) % 30 = 19 AND k % 3 = 0 THEN 'degraded' ELSE 'up' END,
                   '{\"check_id\":\"' || printf('pub-%03d', n) || '\",\"round\":' || (1000000000 + n * 1000000 + k)
                   || ',\"round_start_ms\":0,\"decided_at_ms\":1000,\"verdict\":\"up\",\"quorum\":3,\"regions\":[' || ?2 || '],\"note\":\"\"}'
                 FROM c, r",
                rusqlite::params![today, regions],
            )
            .unwrap();
            // The last 7 days of hourly aggregates, one report per region and
            // hour (what the check pages chart), as the bench stores them.
            let this_hour = now - now.rem_euclid(HOUR_MS);
            conn.execute(
                "WITH RECURSIVE c(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM c WHERE n < 99),
                 g(r) AS (SELECT 0 UNION ALL SELECT r + 1 FROM g WHERE r < 4),
                 h(k) AS (SELECT 0 UNION ALL SELECT k + 1 FROM h WHERE k < 7 * 24 - 1)
                 INSERT INTO report_hours SELECT printf('pub-%03d', n), 'region-' || r, ?1 - k * 3600000,
                   1, 0, 0, 1, 40.0 + r, 40.0 + r, 40.0 + r, '0,0,1,0,0,0,0,0,0,0,0,0', 1, 10.0, 10.0, 10.0
                 FROM c, g, h",
                rusqlite::params![this_hour],
            )
            .unwrap();
            // What `store_round` keeps as it goes (and migration 9 backfills).
            conn.execute_batch(
                "INSERT INTO verdict_days (check_id, day_ms, up, degraded, deferred, transit, down, unknown)
                 SELECT check_id, (round_start_ms / 86400000) * 86400000,
                   SUM(verdict = 'up'), SUM(verdict = 'degraded'), SUM(verdict = 'deferred'),
                   SUM(verdict = 'transit'), SUM(verdict = 'down'), SUM(verdict = 'unknown')
                 FROM verdicts GROUP BY 1, 2",
            )
            .unwrap();
            for n in 0..100i64 {
                for day in (0..90i64).filter(|d| (d + n) % 30 == 7) {
                    let at = today - (89 - day) * DAY_MS + HOUR_MS;
                    conn.execute(
                        "INSERT INTO incidents (check_id, kind, key, severity, state, opened_at_ms, resolved_at_ms,
                         first_round, last_round, summary, regions, step, class)
                         VALUES (printf('pub-%03d', ?1), 'outage', '', 'critical', 'resolved', ?2, ?3, 1, 2,
                         'bench outage', '[\"region-0\"]', 'smtp.connect', 'transit')",
                        rusqlite::params![n, at, at + HOUR_MS],
                    )
                    .unwrap();
                    let id = conn.last_insert_rowid();
                    for (k, event) in ["opened", "round", "resolved"].iter().enumerate() {
                        conn.execute(
                            "INSERT INTO incident_events (incident_id, at_ms, round, event, verdict, note)
                             VALUES (?1, ?2, 1, ?3, 'down', 'bench')",
                            rusqlite::params![id, at + k as i64 * 60_000, event],
                        )
                        .unwrap();
                    }
                }
            }
            conn.execute_batch("COMMIT").unwrap();
        }
        let storage = Arc::new(Storage::open(dir.path()).unwrap());
        let checks: Vec<StoredCheck> = (0..100)
            .map(|n| StoredCheck {
                spec: CheckSpec {
                    name: format!("pub-{n:03}"),
                    table: serde_json::json!({}),
                    interval: Duration::from_secs(3600),
                    regions: (0..5).map(|r| format!("region-{r}")).collect(),
                    quorum: None,
                    public: Some(PublicListing { display_name: format!("Mail service number {n}") }),
                },
                revision: 1,
                source: Source::Api,
                deleted: false,
                updated_at_ms: 0,
            })
            .collect();
        let ids: Vec<String> = checks.iter().map(|c| c.spec.name.clone()).collect();
        let page = StatusPage::new(Hub::new(checks, vec![]), storage.clone(), StatusPageSettings::default(), Metrics::off());
        for round in 0..3 {
            let t = Instant::now();
            let (latest, _) = storage.status_snapshot(ids.clone()).await.unwrap();
            let snap = ms(t);
            let t = Instant::now();
            let days = storage
                .verdict_counts(VerdictCountQuery { check_ids: ids.clone(), since_ms: now - 90 * DAY_MS, bucket_ms: DAY_MS })
                .await
                .unwrap();
            let day_counts = ms(t);
            let t = Instant::now();
            let kept = storage
                .verdict_day_counts(DayCountQuery { check_ids: ids.clone(), since_ms: now - 90 * DAY_MS })
                .await
                .unwrap();
            let day_table = ms(t);
            let t = Instant::now();
            storage
                .verdict_counts(VerdictCountQuery { check_ids: ids.clone(), since_ms: now - DAY_MS, bucket_ms: HOUR_MS })
                .await
                .unwrap();
            let hour_counts = ms(t);
            let t = Instant::now();
            let span = storage
                .incidents_in_span(IncidentSpanQuery {
                    check_ids: ids.clone(),
                    since_ms: now - 90 * DAY_MS,
                    until_ms: now + 1,
                    timelines: false,
                })
                .await
                .unwrap();
            let span_ms = ms(t);
            let feed: Vec<u64> = span.iter().rev().take(50).map(|i| i.id).collect();
            let t = Instant::now();
            for id in &feed {
                storage.incident(*id).await.unwrap();
            }
            let one_by_one = ms(t);
            let t = Instant::now();
            storage.incidents_by_id(feed.clone()).await.unwrap();
            let batched = ms(t);
            let t = Instant::now();
            let built = page.build().await.unwrap();
            let build = ms(t);
            let t = Instant::now();
            let hours = storage
                .aggregates_of(AggregateSpanQuery { check_ids: vec!["pub-001".into()], since_ms: now - 7 * DAY_MS })
                .await
                .unwrap();
            let aggregates = ms(t);
            page.invalidate();
            let t = Instant::now();
            let check_page = page.check_page("pub-001").await.unwrap().unwrap();
            let check_build = ms(t);
            let refs: Vec<&HourAggregate> = hours.iter().collect();
            let t = Instant::now();
            let charts = chart::per_region(&refs, now - 7 * DAY_MS);
            let per_region = ms(t);
            println!(
                "  check page: aggregates_of(1 check, 7 d) {aggregates:.1} ms ({} rows), per_region {per_region:.1} ms ({} regions), \
                 whole check page {check_build:.1} ms ({} bytes)",
                hours.len(),
                charts.len(),
                check_page.html.identity.bytes.len()
            );
            let html = built.html.identity.bytes.to_vec();
            let t = Instant::now();
            let g9 = {
                use std::io::Write;
                let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
                z.write_all(&html).unwrap();
                z.finish().unwrap().len()
            };
            let gzip9 = ms(t);
            let t = Instant::now();
            let g6 = gzip(&html).len();
            let gzip6 = ms(t);
            let t = Instant::now();
            let b9 = {
                let mut out = Vec::new();
                let params = brotli::enc::BrotliEncoderParams { quality: 9, lgwin: 22, ..Default::default() };
                brotli::BrotliCompress(&mut &html[..], &mut out, &params).unwrap();
                out.len()
            };
            let br9 = ms(t);
            let t = Instant::now();
            let b5 = brotli(&html).len();
            let br5 = ms(t);
            println!(
                "round {round}: latest {} of 100; {} day counts; {} incidents\n  \
                 status_snapshot {snap:.1} ms, verdict_counts 90 d {day_counts:.1} ms, verdict_day_counts 90 d {day_table:.1} ms ({} rows), 24 h {hour_counts:.1} ms, \
                 incidents_in_span {span_ms:.1} ms, 50 x incident {one_by_one:.1} ms, incidents_by_id(50) {batched:.1} ms\n  \
                 whole build {build:.1} ms; html {} bytes: gzip 9 {gzip9:.1} ms ({g9} B), gzip 6 {gzip6:.1} ms ({g6} B), \
                 br 9 {br9:.1} ms ({b9} B), br 5 {br5:.1} ms ({b5} B)",
                latest.len(),
                days.len(),
                kept.len(),
                span.len(),
                html.len()
            );
            assert_eq!(latest.len(), 100);
        }
        // The same counts as SQLite's GROUP BY, with and without the index.
        let conn = rusqlite::Connection::open(dir.path().join("coordinator.db")).unwrap();
        let group_by = |since: i64, bucket: i64| {
            let t = Instant::now();
            let n = conn
                .prepare(
                    "SELECT check_id, (round_start_ms / ?3) * ?3 AS bucket, verdict, COUNT(*) FROM verdicts
                     WHERE check_id IN (SELECT value FROM json_each(?1)) AND round_start_ms >= ?2
                     GROUP BY check_id, bucket, verdict ORDER BY check_id, bucket",
                )
                .unwrap()
                .query_map(rusqlite::params![serde_json::to_string(&ids).unwrap(), since, bucket], |r| {
                    r.get::<_, i64>(3)
                })
                .unwrap()
                .count();
            (n, ms(t))
        };
        println!("GROUP BY with the index: 90 d {:?}, 24 h {:?}", group_by(now - 90 * DAY_MS, DAY_MS), group_by(now - DAY_MS, HOUR_MS));
        conn.execute_batch("DROP INDEX verdicts_by_check_time").unwrap();
        for _ in 0..2 {
            println!("GROUP BY without (before): 90 d {:?}, 24 h {:?}", group_by(now - 90 * DAY_MS, DAY_MS), group_by(now - DAY_MS, HOUR_MS));
        }
    }
}
