//! Prometheus metrics (`GET /metrics` on the admin listener).
//!
//! Counters and histograms are recorded through the `metrics` facade where
//! things happen; gauges of pools and the breaker are sampled when scraped,
//! those of the refresh queue by the sweeper every retry interval.
//! Names:
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `connstatus_http_requests_total` | `route`, `method`, `status` | requests answered |
//! | `connstatus_http_request_duration_seconds` | `route` | latency histogram |
//! | `connstatus_http_shed_total` | | requests refused with 429 (in-flight cap) |
//! | `connstatus_http_inflight` | | requests in flight now |
//! | `connstatus_cache_lookups_total` | `result` = hit, miss, error | request-path cache reads, per entry asked |
//! | `connstatus_cache_fills_total` | `result` = written, refused, error | leased fills (refused: the lease was taken over by a later refresh, or lost) and the warm job's writes (refused: the same or newer was there) |
//! | `connstatus_cache_single_flight_joined_total` | | misses that shared another request's MySQL read |
//! | `connstatus_cache_refresh_queued_total` | | refreshes queued because Redis did not answer |
//! | `connstatus_refresh_queue_depth` | | refreshes pending in the queue (all instances'; sampled by the sweeper) |
//! | `connstatus_refresh_queue_oldest_seconds` | | age of the oldest pending refresh (0: none; sampled by the sweeper) |
//! | `connstatus_redis_breaker_open` | | 1 while the request path skips Redis |
//! | `connstatus_redis_errors_total` | | failed or timed-out request-path Redis calls |
//! | `connstatus_mysql_errors_total` | | failed or timed-out MySQL calls |
//! | `connstatus_mysql_pool_connections` | `state` = open, idle, waiting, max | the MySQL pool |
//! | `connstatus_mysql_pool_wait_seconds` | | time to check a connection out (histogram) |
//! | `connstatus_redis_pool_connections` | `state` = open, idle, waiting, max | the batch (warm) Redis pool |
//! | `connstatus_metrics_upkeep_total` | | runs of the histogram upkeep (see [`upkeep_forever`]) |
//! | `connstatus_follower_active` | | 1 while this instance's binlog follower holds the lock and follows |
//! | `connstatus_follower_lag_seconds` | | how far behind the log's end the applied position is, in time (0: caught up) |
//! | `connstatus_follower_lag_bytes` | | ... in bytes of log |
//! | `connstatus_follower_lag_events` | | ... in events (counted up to 10 000, in the applied position's file) |
//! | `connstatus_follower_position_file`, `connstatus_follower_position_offset` | | the applied position (the file name's number, the byte offset) |
//! | `connstatus_follower_rows_total` | | changed rows of `users`/`user_connections` read from the log |
//! | `connstatus_follower_refreshed_total` | | cache entries the follower refreshed (distinct per chunk) |
//! | `connstatus_follower_transactions_total` | | transactions (and statements outside one) read past |
//! | `connstatus_follower_errors_total` | | follower sessions that ended on an error (then it reconnects) |
//! | `connstatus_follower_rewarms_total` | | re-warms because the stored position was no longer in the log |
//! | `connstatus_follower_statement_events_total` | | statement-format changes in the followed database (their rows cannot be refreshed) |

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Latency buckets, in seconds: 50 µs to 5 s.
const BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

/// Installs the process-wide recorder once and returns its handle (`None`
/// if another recorder was installed first, e.g. by an embedding program).
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)
                .ok()?
                .install_recorder()
                .ok()
        })
        .as_ref()
}

/// Folds recorded histogram samples into their buckets every `every`, until
/// the process ends. The recorder keeps every sample until then: without
/// this (and without a scraper calling `/metrics`), memory grows with every
/// request — the load benchmark's soak measured +48% RSS in 60 s.
pub async fn upkeep_forever(every: std::time::Duration) {
    let Some(handle) = handle() else { return };
    let mut ticker = tokio::time::interval(every);
    loop {
        ticker.tick().await;
        handle.run_upkeep();
        metrics::counter!("connstatus_metrics_upkeep_total").increment(1);
    }
}

/// The outcome of a request-path cache read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The cache answered.
    Hit = 0,
    /// MySQL was needed.
    Miss = 1,
    /// Redis failed or was skipped.
    Error = 2,
}

thread_local! {
    /// This thread's handles of `connstatus_cache_lookups_total`, by
    /// [`Lookup`]: counted on every request, and a handle from the registry
    /// costs a hash and a label comparison each time.
    static LOOKUPS: [metrics::Counter; 3] = ["hit", "miss", "error"]
        .map(|result| metrics::counter!("connstatus_cache_lookups_total", "result" => result));
}

/// Counts a request-path cache read of `n` entries.
pub fn cache_lookups(result: Lookup, n: u64) {
    LOOKUPS.with(|counters| counters[result as usize].increment(n));
}

thread_local! {
    /// This thread's handles of `connstatus_cache_l1_lookups_total`
    /// (`hit`, `miss`), counted per entry looked up in the near cache.
    static NEAR_LOOKUPS: [metrics::Counter; 2] = ["hit", "miss"]
        .map(|result| metrics::counter!("connstatus_cache_l1_lookups_total", "result" => result));
}

/// Counts a near-cache lookup of one entry.
pub fn near_lookup(hit: bool) {
    NEAR_LOOKUPS.with(|counters| counters[usize::from(!hit)].increment(1));
}

/// Counts keys the near cache dropped on Redis's invalidation.
pub fn near_invalidations(n: u64) {
    metrics::counter!("connstatus_cache_l1_invalidations_total").increment(n);
}

/// Counts times the near cache dropped everything (a tracked connection
/// opened or lost, a flushed Redis database).
pub fn near_flush() {
    metrics::counter!("connstatus_cache_l1_flushes_total").increment(1);
}

/// Counts fills: `written` of `total` landed, the rest were refused.
pub fn cache_fills(written: u64, total: u64) {
    metrics::counter!("connstatus_cache_fills_total", "result" => "written").increment(written);
    metrics::counter!("connstatus_cache_fills_total", "result" => "refused")
        .increment(total.saturating_sub(written));
}

/// Counts fills that failed.
pub fn cache_fill_errors(total: u64) {
    metrics::counter!("connstatus_cache_fills_total", "result" => "error").increment(total);
}

/// Counts a miss that shared another request's MySQL read (single-flight).
pub fn single_flight_joined() {
    metrics::counter!("connstatus_cache_single_flight_joined_total").increment(1);
}

/// Counts refreshes queued because Redis did not answer.
pub fn refresh_queued(n: u64) {
    metrics::counter!("connstatus_cache_refresh_queued_total").increment(n);
}

/// The refresh queue as last sampled: pending rows and the oldest's age.
pub fn refresh_queue(depth: u64, oldest_seconds: f64) {
    metrics::gauge!("connstatus_refresh_queue_depth").set(depth as f64);
    metrics::gauge!("connstatus_refresh_queue_oldest_seconds").set(oldest_seconds);
}

/// Counts a failed or timed-out MySQL call.
pub fn mysql_error() {
    metrics::counter!("connstatus_mysql_errors_total").increment(1);
}

/// The binlog follower's state and lag, as last sampled.
pub fn follower_lag(active: bool, seconds: f64, bytes: u64, events: u64) {
    metrics::gauge!("connstatus_follower_active").set(if active { 1.0 } else { 0.0 });
    metrics::gauge!("connstatus_follower_lag_seconds").set(seconds);
    metrics::gauge!("connstatus_follower_lag_bytes").set(bytes as f64);
    metrics::gauge!("connstatus_follower_lag_events").set(events as f64);
}

/// The follower's applied position.
pub fn follower_position(file_number: u64, offset: u64) {
    metrics::gauge!("connstatus_follower_position_file").set(file_number as f64);
    metrics::gauge!("connstatus_follower_position_offset").set(offset as f64);
}

/// Counts what the follower applied: changed rows read, entries refreshed.
pub fn follower_applied(rows: u64, refreshed: u64) {
    metrics::counter!("connstatus_follower_rows_total").increment(rows);
    metrics::counter!("connstatus_follower_refreshed_total").increment(refreshed);
}

/// Counts transactions the follower read past.
pub fn follower_transactions(n: u64) {
    metrics::counter!("connstatus_follower_transactions_total").increment(n);
}

/// Counts a follower session that ended on an error.
pub fn follower_error() {
    metrics::counter!("connstatus_follower_errors_total").increment(1);
}

/// Counts a re-warm after the stored position was purged.
pub fn follower_rewarm() {
    metrics::counter!("connstatus_follower_rewarms_total").increment(1);
}

/// Counts a statement-format change in the followed database.
pub fn follower_statement_events() {
    metrics::counter!("connstatus_follower_statement_events_total").increment(1);
}
