//! Prometheus metrics, rendered in the text exposition format. Labels are
//! low-cardinality by construction: the matched route template, the method
//! and the status; never a path, a value or a key.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Upper bounds of the latency buckets, in seconds.
const BOUNDS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    buckets: [u64; BOUNDS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (b, bound) in self.buckets.iter_mut().zip(BOUNDS) {
            if secs <= bound {
                *b += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }
}

/// Request counts of one route: method -> status -> count.
type ByMethod = BTreeMap<String, BTreeMap<u16, u64>>;

/// Process-wide request metrics.
#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    /// route -> method -> status -> count (nested so that counting a
    /// request allocates nothing once its route and method were seen).
    requests: Mutex<BTreeMap<String, ByMethod>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    auth_failures: AtomicU64,
    rate_limited: AtomicU64,
    /// Filled by the store's timing wrapper (`store::timed`).
    store: std::sync::Arc<StoreTimings>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::with_store_timings(std::sync::Arc::default())
    }
}

/// Latency of store operations, by operation name (a fixed set).
#[derive(Debug, Default)]
pub struct StoreTimings(Mutex<BTreeMap<&'static str, Histogram>>);

impl StoreTimings {
    pub fn observe(&self, op: &'static str, took: Duration) {
        if let Ok(mut m) = self.0.lock() {
            m.entry(op).or_default().observe(took.as_secs_f64());
        }
    }

    fn render(&self, out: &mut String) {
        let name = "secretd_store_operation_duration_seconds";
        header(
            out,
            name,
            "histogram",
            "Store operation latency by operation.",
        );
        if let Ok(m) = self.0.lock() {
            for (op, h) in m.iter() {
                histogram(out, name, "operation", op, h);
            }
        }
    }
}

/// Store figures sampled at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreGauges {
    pub secrets: i64,
    pub live_versions: i64,
    pub ready: bool,
}

impl Metrics {
    /// Metrics that also render the store operation latencies `store` collects.
    pub fn with_store_timings(store: std::sync::Arc<StoreTimings>) -> Self {
        Metrics {
            started: Instant::now(),
            requests: Mutex::default(),
            latency: Mutex::default(),
            auth_failures: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            store,
        }
    }

    /// Records one finished request.
    pub fn observe(&self, route: &str, method: &str, status: u16, took: Duration) {
        if let Ok(mut m) = self.requests.lock() {
            let by_method = match m.get_mut(route) {
                Some(v) => v,
                None => m.entry(route.to_owned()).or_default(),
            };
            let by_status = match by_method.get_mut(method) {
                Some(v) => v,
                None => by_method.entry(method.to_owned()).or_default(),
            };
            *by_status.entry(status).or_default() += 1;
        }
        if let Ok(mut m) = self.latency.lock() {
            // Allocate the key only the first time a route is seen.
            match m.get_mut(route) {
                Some(h) => h.observe(took.as_secs_f64()),
                None => m
                    .entry(route.to_owned())
                    .or_default()
                    .observe(took.as_secs_f64()),
            }
        }
        match status {
            401 => {
                self.auth_failures.fetch_add(1, Ordering::Relaxed);
            }
            429 => {
                self.rate_limited.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// The text exposition.
    pub fn render(&self, store: StoreGauges) -> String {
        let mut out = String::with_capacity(4096);
        header(
            &mut out,
            "secretd_build_info",
            "gauge",
            "Build information.",
        );
        let _ = writeln!(
            out,
            "secretd_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        let uptime = format!("{:.3}", self.started.elapsed().as_secs_f64());
        scalar(
            &mut out,
            "secretd_uptime_seconds",
            "gauge",
            "Seconds since the process started.",
            &uptime,
        );
        header(
            &mut out,
            "secretd_http_requests_total",
            "counter",
            "Requests by route template, method and status.",
        );
        if let Ok(m) = self.requests.lock() {
            for (route, by_method) in m.iter() {
                for (method, by_status) in by_method {
                    for (status, n) in by_status {
                        let _ = writeln!(
                            out,
                            "secretd_http_requests_total{{route=\"{}\",method=\"{}\",status=\"{status}\"}} {n}",
                            escape(route),
                            escape(method)
                        );
                    }
                }
            }
        }
        let name = "secretd_http_request_duration_seconds";
        header(
            &mut out,
            name,
            "histogram",
            "Request latency by route template.",
        );
        if let Ok(m) = self.latency.lock() {
            for (route, h) in m.iter() {
                histogram(&mut out, name, "route", &escape(route), h);
            }
        }
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed).to_string();
        for (name, kind, help, value) in [
            (
                "secretd_auth_failures_total",
                "counter",
                "Requests refused for a missing or invalid credential.",
                load(&self.auth_failures),
            ),
            (
                "secretd_auth_rate_limited_total",
                "counter",
                "Requests refused by the failed-auth limiter.",
                load(&self.rate_limited),
            ),
            (
                "secretd_secrets",
                "gauge",
                "Secrets with a live version.",
                store.secrets.to_string(),
            ),
            (
                "secretd_secret_versions",
                "gauge",
                "Live secret versions.",
                store.live_versions.to_string(),
            ),
            (
                "secretd_store_up",
                "gauge",
                "Whether the store answered the scrape's queries.",
                u8::from(store.ready).to_string(),
            ),
        ] {
            scalar(&mut out, name, kind, help, &value);
        }
        self.store.render(&mut out);
        out
    }
}

/// The samples of one labelled histogram (`label` already escaped).
fn histogram(out: &mut String, name: &str, key: &str, label: &str, h: &Histogram) {
    for (b, bound) in h.buckets.iter().zip(BOUNDS) {
        let _ = writeln!(out, "{name}_bucket{{{key}=\"{label}\",le=\"{bound}\"}} {b}");
    }
    let _ = writeln!(
        out,
        "{name}_bucket{{{key}=\"{label}\",le=\"+Inf\"}} {}",
        h.count
    );
    let _ = writeln!(out, "{name}_sum{{{key}=\"{label}\"}} {}", h.sum);
    let _ = writeln!(out, "{name}_count{{{key}=\"{label}\"}} {}", h.count);
}

/// The `# HELP` and `# TYPE` lines of a metric.
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A metric with one unlabelled sample.
fn scalar(out: &mut String, name: &str, kind: &str, help: &str, value: &str) {
    header(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let timings = std::sync::Arc::new(StoreTimings::default());
        let m = Metrics::with_store_timings(std::sync::Arc::clone(&timings));
        m.observe("/secrets", "GET", 200, Duration::from_micros(700));
        m.observe("/secrets", "GET", 200, Duration::from_millis(30));
        m.observe("/secrets", "PUT", 401, Duration::from_micros(100));
        timings.observe("get", Duration::from_micros(300));
        let text = m.render(StoreGauges {
            secrets: 3,
            live_versions: 5,
            ready: true,
        });
        assert!(text.contains(
            "secretd_store_operation_duration_seconds_bucket{operation=\"get\",le=\"0.0005\"} 1"
        ));
        assert!(text.contains(
            "secretd_http_requests_total{route=\"/secrets\",method=\"GET\",status=\"200\"} 2"
        ));
        assert!(text.contains(
            "secretd_http_request_duration_seconds_bucket{route=\"/secrets\",le=\"0.001\"} 2"
        ));
        assert!(text.contains(
            "secretd_http_request_duration_seconds_bucket{route=\"/secrets\",le=\"0.025\"} 2"
        ));
        assert!(text.contains(
            "secretd_http_request_duration_seconds_bucket{route=\"/secrets\",le=\"0.05\"} 3"
        ));
        assert!(text.contains("secretd_http_request_duration_seconds_count{route=\"/secrets\"} 3"));
        assert!(text.contains("secretd_auth_failures_total 1"));
        assert!(text.contains("secretd_secrets 3"));
        assert!(text.contains("secretd_store_up 1"));
    }
}
