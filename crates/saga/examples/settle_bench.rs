//! The load of `bench/saga.sh`: settlements per second through a running `axle serve`, against
//! the same four participant calls made directly by this client (no orchestrator, no
//! durability of its own) as the reference measured in the same run.
//!
//! `settle_bench VEHICLE_URL ORDER_URL FINANCE_URL SAGA_URL TOKEN LOTS CONCURRENCY`

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};

struct Bench {
    http: reqwest::Client,
    token: String,
    vehicle: String,
    order: String,
    finance: String,
    saga: String,
}

type Fallible<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

impl Bench {
    async fn send(
        &self,
        method: reqwest::Method,
        url: String,
        body: Option<Value>,
    ) -> Fallible<Value> {
        let mut request = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(format!("{url}: {status} {body}").into());
        }
        Ok(body)
    }

    async fn post(&self, url: String, body: Value) -> Fallible<Value> {
        self.send(reqwest::Method::POST, url, Some(body)).await
    }

    /// A listed vehicle.
    async fn vehicle(&self, n: u32) -> Fallible<String> {
        let v = &self.vehicle;
        let created = self
            .post(format!("{v}/vehicles"), json!({"vin": vin(n), "make": "Honda", "model": "Fit", "year": 2018, "mileage_km": 60_000}))
            .await?;
        let id = created["id"].as_str().unwrap_or_default().to_string();
        self.post(format!("{v}/vehicles/{id}/inspection/start"), json!({}))
            .await?;
        self.post(
            format!("{v}/vehicles/{id}/inspection"),
            json!({"inspector": "i", "grade": "A", "completed_at": "2026-12-01T10:00:00Z", "items": [{"name": "engine", "result": "ok"}]}),
        )
        .await?;
        self.send(
            reqwest::Method::PUT,
            format!("{v}/vehicles/{id}/pricing"),
            Some(json!({"guide_price": cny(5_000_000), "reserve_suggestion": cny(4_000_000)})),
        )
        .await?;
        self.post(format!("{v}/vehicles/{id}/list"), json!({}))
            .await?;
        Ok(id)
    }

    /// The settlement's four actions, made directly, one after another.
    async fn direct(&self, lot: &str, vehicle: &str, pool: &str) -> Fallible<()> {
        let order_id = uuid::Uuid::now_v7();
        self.post(
            format!("{}/vehicles/{vehicle}/sell", self.vehicle),
            json!({"sale_id": lot, "price": cny(4_500_000)}),
        )
        .await?;
        self.post(
            format!("{}/orders", self.order),
            json!({"id": order_id, "buyer_org": "dealer", "seller_org": "seller",
                   "source": {"kind": "auction", "reference": lot},
                   "lines": [{"description": "vehicle", "vehicle_id": vehicle, "quantity": 1, "unit_price": cny(4_500_000)}]}),
        )
        .await?;
        self.send(
            reqwest::Method::PUT,
            format!("{}/pools/{pool}/deductions/{vehicle}", self.vehicle),
            None,
        )
        .await?;
        self.post(
            format!("{}/receivables", self.finance),
            json!({"order_id": order_id, "debtor_org": "dealer", "amount": cny(4_500_000)}),
        )
        .await?;
        Ok(())
    }

    async fn finished(&self) -> Fallible<(i64, i64)> {
        let stats = self
            .send(
                reqwest::Method::GET,
                format!("{}/sagas/stats", self.saga),
                None,
            )
            .await?;
        let mut finished = (0, 0);
        for s in stats["by_status"].as_array().into_iter().flatten() {
            match s["status"].as_str() {
                Some("completed") => finished.0 = s["count"].as_i64().unwrap_or(0),
                Some("compensated") => finished.1 = s["count"].as_i64().unwrap_or(0),
                _ => {}
            }
        }
        Ok(finished)
    }
}

fn cny(amount: i64) -> Value {
    json!({"amount": amount, "currency": "CNY"})
}

/// A VIN with a valid check digit for every `n` (digits only, so each character's value is
/// itself).
fn vin(n: u32) -> String {
    const WEIGHTS: [u32; 17] = [8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2];
    let mut chars: Vec<u8> = format!("51234567X{n:08}").into_bytes();
    let sum: u32 = chars
        .iter()
        .zip(WEIGHTS)
        .map(|(c, w)| {
            if c.is_ascii_digit() {
                u32::from(c - b'0') * w
            } else {
                0
            }
        })
        .sum();
    chars[8] = match sum % 11 {
        10 => b'X',
        d => b'0' + d as u8,
    };
    String::from_utf8(chars).unwrap_or_default()
}

/// Per step, the p50 and p99 of the calls that succeeded, from the orchestrator's histogram.
fn step_latencies(metrics: &str) -> Vec<(String, f64, f64)> {
    let mut steps: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("axle_saga_step_duration_seconds_bucket{") else {
            continue;
        };
        if !rest.contains("phase=\"action\"") || !rest.contains("outcome=\"done\"") {
            continue;
        }
        let label = |name: &str| {
            rest.split(&format!("{name}=\""))
                .nth(1)
                .and_then(|v| v.split('"').next())
                .unwrap_or_default()
                .to_string()
        };
        let le = label("le");
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap_or(0.0)
        };
        let count: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|c| c.parse().ok())
            .unwrap_or(0.0);
        let step = label("step");
        match steps.iter_mut().find(|(s, _)| *s == step) {
            Some((_, buckets)) => buckets.push((le, count)),
            None => steps.push((step, vec![(le, count)])),
        }
    }
    steps
        .into_iter()
        .map(|(step, mut buckets)| {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            let total = buckets.last().map_or(0.0, |b| b.1);
            let at = |q: f64| {
                let mut lower = (0.0, 0.0);
                for &(le, count) in &buckets {
                    if count >= q * total {
                        if le.is_infinite() {
                            return lower.0;
                        }
                        let span = (count - lower.1).max(1.0);
                        return lower.0 + (le - lower.0) * ((q * total - lower.1) / span);
                    }
                    lower = (le, count);
                }
                lower.0
            };
            (step, at(0.5) * 1000.0, at(0.99) * 1000.0)
        })
        .collect()
}

#[tokio::main]
async fn main() -> Fallible<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, vehicle, order, finance, saga, token, lots, concurrency] = args.as_slice() else {
        return Err(
            "usage: settle_bench VEHICLE_URL ORDER_URL FINANCE_URL SAGA_URL TOKEN LOTS CONCURRENCY"
                .into(),
        );
    };
    let lots: u32 = lots.parse()?;
    let concurrency: usize = concurrency.parse()?;
    let bench = Bench {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()?,
        token: token.clone(),
        vehicle: vehicle.clone(),
        order: order.clone(),
        finance: finance.clone(),
        saga: saga.clone(),
    };
    let pool = bench
        .post(
            format!("{vehicle}/pools"),
            json!({"name": "bench", "capacity": 10 * lots}),
        )
        .await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let vehicles: Vec<String> = futures::stream::iter(0..2 * lots)
        .map(|n| bench.vehicle(n))
        .buffered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Fallible<_>>()?;
    let (direct_vehicles, saga_vehicles) = vehicles.split_at(lots as usize);

    // The reference: the four calls, made by the client.
    let start = Instant::now();
    let direct: Vec<Fallible<()>> = futures::stream::iter(direct_vehicles.iter().enumerate())
        .map(|(n, v)| {
            let bench = &bench;
            let pool = &pool;
            async move { bench.direct(&format!("direct-{n}"), v, pool).await }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let direct_secs = start.elapsed().as_secs_f64();
    direct.into_iter().collect::<Fallible<Vec<()>>>()?;
    println!(
        "reference  {:>7.0} settlements/s  (the four calls made directly by the client, {concurrency} at a time)",
        f64::from(lots) / direct_secs
    );

    // The settlements: started, then run to their end by the orchestrator.
    let start = Instant::now();
    let started: Vec<Fallible<Value>> = futures::stream::iter(saga_vehicles.iter().enumerate())
        .map(|(n, v)| {
            bench.post(
                format!("{saga}/settlements"),
                json!({"lot_id": format!("lot-{n}"), "vehicle_id": v, "pool_id": pool,
                       "buyer_org": "dealer", "seller_org": "seller", "price": cny(4_500_000)}),
            )
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let started_secs = start.elapsed().as_secs_f64();
    started.into_iter().collect::<Fallible<Vec<Value>>>()?;
    let (completed, compensated) = loop {
        let (completed, compensated) = bench.finished().await?;
        if completed + compensated >= i64::from(lots) {
            break (completed, compensated);
        }
        if start.elapsed() > Duration::from_secs(600) {
            return Err(format!(
                "only {completed} + {compensated} of {lots} finished in 10 minutes"
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let saga_secs = start.elapsed().as_secs_f64();
    let metrics = bench
        .http
        .get(format!("{saga}/metrics"))
        .send()
        .await?
        .text()
        .await?;

    let lots = f64::from(lots);
    println!(
        "saga       {:>7.0} settlements/s  ({completed} completed, {compensated} compensated; all {lots} started in {started_secs:.1} s)",
        lots / saga_secs
    );
    println!("ratio      {:>7.2}", direct_secs / saga_secs);
    for (step, p50, p99) in step_latencies(&metrics) {
        println!("step {step:<18} p50 {p50:>6.1} ms  p99 {p99:>6.1} ms");
    }
    Ok(())
}
