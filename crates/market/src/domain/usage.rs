//! Usage: what the gateway reports of each request to the market's routes (its `http-logger`
//! entries), counted per minute, application, product and status class, and summed up for
//! pages — requests, error rate, p50 and p99 latency, bytes — over time.

use std::collections::BTreeMap;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The fields of an `http-logger` entry the market counts (the rest are ignored).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Entry {
    #[serde(default)]
    pub route_id: String,
    pub consumer: Option<Consumer>,
    #[serde(default)]
    pub request: Sized,
    #[serde(default)]
    pub response: Answer,
    /// Milliseconds.
    #[serde(default)]
    pub latency: f64,
    /// When the request came, in milliseconds since the epoch.
    pub start_time: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Consumer {
    pub username: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Sized {
    #[serde(default)]
    pub size: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Answer {
    #[serde(default)]
    pub status: u16,
    #[serde(default)]
    pub size: u64,
}

/// Upper bounds (ms) of the latency histogram's buckets; the last bucket takes the rest.
pub const BOUNDS_MS: [u64; 11] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000];
pub const BUCKETS: usize = BOUNDS_MS.len() + 1;

/// One row: what happened in a minute for an application, a product and a status class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub minute: DateTime<Utc>,
    /// None for requests of no market application (no key, an unknown key).
    pub application: Option<Uuid>,
    pub product: Uuid,
    /// 2 for 2xx … 5; 0 for the row of dropped entries.
    pub status: u8,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub bytes: u64,
    pub latency_ms: u64,
    pub dropped: u64,
    pub latency: [u64; BUCKETS],
}

impl Counts {
    pub fn add(&mut self, other: &Counts) {
        self.requests += other.requests;
        self.bytes += other.bytes;
        self.latency_ms += other.latency_ms;
        self.dropped += other.dropped;
        for (mine, theirs) in self.latency.iter_mut().zip(other.latency) {
            *mine += theirs;
        }
    }

    /// The latency (ms) under which `share` of the requests were: the upper bound of the
    /// bucket it falls in (the last bound for the last bucket); none without requests.
    pub fn percentile(&self, share: f64) -> Option<u64> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (share * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.latency.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(BOUNDS_MS.get(i).copied().unwrap_or(BOUNDS_MS[BUCKETS - 2]));
            }
        }
        None
    }
}

/// Which bucket a latency falls in.
fn bucket(ms: f64) -> usize {
    BOUNDS_MS
        .iter()
        .position(|bound| ms <= *bound as f64)
        .unwrap_or(BUCKETS - 1)
}

/// The application a consumer name stands for (`market_<id>`).
pub fn application_of(consumer: &str) -> Option<Uuid> {
    Uuid::parse_str(consumer.strip_prefix("market_")?).ok()
}

/// The product a market route id stands for (`market-<id>-v<major>`).
pub fn product_of(route: &str) -> Option<Uuid> {
    let rest = route.strip_prefix("market-")?;
    Uuid::parse_str(rest.split_once("-v")?.0).ok()
}

/// Counts a batch of http-logger entries (entries of other routes are left out), with the
/// `dropped` entries the gateway reports counted on the batch's product in this minute.
pub fn count(entries: &[Entry], dropped: u64, now: DateTime<Utc>) -> BTreeMap<Key, Counts> {
    let mut counted: BTreeMap<Key, Counts> = BTreeMap::new();
    let minute_of = |at: DateTime<Utc>| at.duration_trunc(TimeDelta::minutes(1)).unwrap_or(at);
    let mut batch_product = None;
    for entry in entries {
        let Some(product) = product_of(&entry.route_id) else {
            continue;
        };
        batch_product = Some(product);
        let at = entry
            .start_time
            .and_then(DateTime::from_timestamp_millis)
            .unwrap_or(now);
        let key = Key {
            minute: minute_of(at),
            application: entry
                .consumer
                .as_ref()
                .and_then(|c| application_of(&c.username)),
            product,
            status: u8::try_from(entry.response.status / 100)
                .unwrap_or(5)
                .clamp(1, 5),
        };
        let latency = entry.latency.max(0.0);
        let counts = counted.entry(key).or_default();
        counts.requests += 1;
        counts.bytes += entry.response.size + entry.request.size;
        counts.latency_ms += latency.round() as u64;
        counts.latency[bucket(latency)] += 1;
    }
    if let (Some(product), true) = (batch_product, dropped > 0) {
        let key = Key {
            minute: minute_of(now),
            application: None,
            product,
            status: 0,
        };
        counted.entry(key).or_default().dropped += dropped;
    }
    counted
}

/// One key's counts as the gateway's `usage-counter` posts them.
#[derive(Debug, Clone, Deserialize)]
pub struct Counted {
    pub route_id: String,
    pub consumer: Option<String>,
    pub status_class: u8,
    /// The minute's start, in seconds since the epoch.
    pub minute: i64,
    pub requests: u64,
    pub bytes: u64,
    pub latency_ms: u64,
    /// Over [`BOUNDS_MS`] and one more bucket.
    pub latency_buckets: Vec<u64>,
}

/// Adds up the gateway's counts (those of other routes left out, and those whose histogram is
/// not the market's), with the `dropped` requests the gateway reports on the first product
/// counted, in this minute.
pub fn add_counted(counted: &[Counted], dropped: u64, now: DateTime<Utc>) -> BTreeMap<Key, Counts> {
    let mut added: BTreeMap<Key, Counts> = BTreeMap::new();
    let mut first_product = None;
    for c in counted {
        let Some(product) = product_of(&c.route_id) else {
            continue;
        };
        first_product.get_or_insert(product);
        let Ok(latency) = <[u64; BUCKETS]>::try_from(c.latency_buckets.as_slice()) else {
            continue;
        };
        let key = Key {
            minute: DateTime::from_timestamp(c.minute, 0).unwrap_or(now),
            application: c.consumer.as_deref().and_then(application_of),
            product,
            status: c.status_class.clamp(1, 5),
        };
        added.entry(key).or_default().add(&Counts {
            requests: c.requests,
            bytes: c.bytes,
            latency_ms: c.latency_ms,
            dropped: 0,
            latency,
        });
    }
    if let (Some(product), true) = (first_product, dropped > 0) {
        let minute = now.duration_trunc(TimeDelta::minutes(1)).unwrap_or(now);
        let key = Key {
            minute,
            application: None,
            product,
            status: 0,
        };
        added.entry(key).or_default().dropped += dropped;
    }
    added
}

/// Usage over a time span, summed up.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Summary {
    pub requests: u64,
    /// Requests answered 4xx or 5xx.
    pub errors: u64,
    pub error_rate: f64,
    /// By status class: `2xx`, `3xx`, `4xx`, `5xx`.
    pub statuses: BTreeMap<String, u64>,
    /// Latency under which half (and 99 %) of the requests were, as the histogram's bucket
    /// bound: ≤ 1, 2, 5, 10, 20, 50 … 2000 ms.
    pub p50_ms: Option<u64>,
    pub p99_ms: Option<u64>,
    pub bytes: u64,
    /// Entries the gateway could not report (its buffer was full or the market unreachable).
    pub dropped: u64,
    /// Requests and errors per minute, oldest first.
    pub series: Vec<Point>,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Point {
    pub minute: DateTime<Utc>,
    pub requests: u64,
    pub errors: u64,
}

/// Sums `rows` up.
pub fn summarize<'a>(rows: impl IntoIterator<Item = &'a (Key, Counts)>) -> Summary {
    let mut total = Counts::default();
    let mut summary = Summary::default();
    let mut series: BTreeMap<DateTime<Utc>, Point> = BTreeMap::new();
    for (key, counts) in rows {
        total.add(counts);
        if key.status == 0 {
            continue;
        }
        *summary
            .statuses
            .entry(format!("{}xx", key.status))
            .or_default() += counts.requests;
        let point = series.entry(key.minute).or_insert(Point {
            minute: key.minute,
            requests: 0,
            errors: 0,
        });
        point.requests += counts.requests;
        if key.status >= 4 {
            point.errors += counts.requests;
            summary.errors += counts.requests;
        }
    }
    summary.requests = total.requests;
    summary.error_rate = match total.requests {
        0 => 0.0,
        n => summary.errors as f64 / n as f64,
    };
    summary.p50_ms = total.percentile(0.5);
    summary.p99_ms = total.percentile(0.99);
    summary.bytes = total.bytes;
    summary.dropped = total.dropped;
    summary.series = series.into_values().collect();
    summary
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn entries_are_counted_per_minute_application_product_and_status() {
        let app = Uuid::now_v7();
        let product = Uuid::now_v7();
        let route = format!("market-{}-v1", product.simple());
        let consumer = format!("market_{}", app.simple());
        let at = 1_796_083_200_000_i64; // 2026-12-01T00:00:00Z
        let entry = |status: u16, latency: f64, offset: i64| {
            json!({"route_id": route, "consumer": {"username": consumer},
                   "response": {"status": status, "size": 100}, "request": {"size": 50},
                   "latency": latency, "start_time": at + offset})
        };
        let entries: Vec<Entry> = serde_json::from_value(json!([
            entry(200, 0.5, 0),
            entry(200, 3.0, 1_000),
            entry(429, 0.2, 2_000),
            entry(200, 40.0, 61_000),
            {"route_id": "other", "response": {"status": 200}},
            {"route_id": route, "response": {"status": 401, "size": 10}, "latency": 1.0,
             "start_time": at},
        ]))
        .unwrap();
        let now = DateTime::from_timestamp_millis(at + 120_000).unwrap();
        let counted = count(&entries, 7, now);
        let minute = DateTime::from_timestamp_millis(at).unwrap();
        let ok = &counted[&Key {
            minute,
            application: Some(app),
            product,
            status: 2,
        }];
        assert_eq!((ok.requests, ok.bytes, ok.latency_ms), (2, 300, 4));
        assert_eq!(ok.latency[0] + ok.latency[2], 2);
        let anonymous = Key {
            minute,
            application: None,
            product,
            status: 4,
        };
        assert_eq!(counted[&anonymous].requests, 1);
        let rows: Vec<(Key, Counts)> = counted.into_iter().collect();
        let summary = summarize(&rows);
        assert_eq!(summary.requests, 5, "the other route's entry is left out");
        assert_eq!(summary.errors, 2);
        assert_eq!(summary.statuses["2xx"], 3);
        assert_eq!(summary.dropped, 7);
        assert_eq!(summary.series.len(), 2);
        assert_eq!(summary.series[0].requests, 4);
        assert_eq!(summary.p50_ms, Some(1));
        assert_eq!(summary.p99_ms, Some(50));
    }

    #[test]
    fn the_gateways_counts_add_up_per_key() {
        let app = Uuid::now_v7();
        let product = Uuid::now_v7();
        let route = format!("market-{}-v1", product.simple());
        let consumer = format!("market_{}", app.simple());
        let mut buckets = vec![0; BUCKETS];
        buckets[0] = 3;
        let counted: Vec<Counted> = serde_json::from_value(json!([
            {"route_id": route, "consumer": consumer, "status_class": 2, "minute": 1_796_083_200,
             "requests": 3, "bytes": 900, "latency_ms": 2, "latency_buckets": buckets},
            {"route_id": route, "consumer": consumer, "status_class": 2, "minute": 1_796_083_200,
             "requests": 3, "bytes": 900, "latency_ms": 2, "latency_buckets": buckets},
            {"route_id": route, "status_class": 4, "minute": 1_796_083_200,
             "requests": 1, "bytes": 10, "latency_ms": 0, "latency_buckets": [1]},
            {"route_id": "elsewhere", "status_class": 2, "minute": 1_796_083_200,
             "requests": 9, "bytes": 0, "latency_ms": 0, "latency_buckets": buckets},
        ]))
        .unwrap();
        let now = DateTime::from_timestamp(1_796_083_300, 0).unwrap();
        let rows: Vec<(Key, Counts)> = add_counted(&counted, 2, now).into_iter().collect();
        let summary = summarize(&rows);
        assert_eq!(
            summary.requests, 6,
            "the odd histogram and the other route left out"
        );
        assert_eq!(summary.bytes, 1800);
        assert_eq!(summary.dropped, 2);
        assert_eq!(summary.p99_ms, Some(1));
    }

    #[test]
    fn names_map_back_to_ids() {
        let id = Uuid::now_v7();
        assert_eq!(application_of(&format!("market_{}", id.simple())), Some(id));
        assert_eq!(product_of(&format!("market-{}-v12", id.simple())), Some(id));
        assert_eq!(application_of("jack"), None);
        assert_eq!(product_of("axle-vehicle"), None);
    }
}
