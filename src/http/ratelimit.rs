//! Per-client-address limit on failed authentications.
//!
//! A client that fails `max_failures` times within `window` is refused with
//! 429 (before its credentials are even checked) until the window that
//! started with its first failure ends. The table holds at most `capacity`
//! addresses: expired entries go first, then the oldest.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct FailLimiter {
    max_failures: u32,
    window: Duration,
    capacity: usize,
    table: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

/// IPv6 clients usually hold a whole /64: count them per /64.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            o[8..].fill(0);
            IpAddr::from(o)
        }
    }
}

impl FailLimiter {
    /// `max_failures = 0` disables the limiter.
    pub fn new(max_failures: u32, window: Duration, capacity: usize) -> Self {
        FailLimiter {
            max_failures,
            window,
            capacity: capacity.max(1),
            table: Mutex::new(HashMap::new()),
        }
    }

    /// Admits one authentication attempt from `ip`, counting it as a failure
    /// up front (so a burst of concurrent attempts cannot exceed the limit);
    /// call [`FailLimiter::succeeded`] if it authenticates. `Err(seconds to
    /// wait)` if `ip` is over its limit.
    pub fn attempt(&self, ip: IpAddr) -> Result<(), u64> {
        if self.max_failures == 0 {
            return Ok(());
        }
        let Ok(mut t) = self.table.lock() else {
            return Ok(());
        };
        let now = Instant::now();
        let key = client_key(ip);
        if let Some((start, n)) = t.get(&key)
            && *n >= self.max_failures
            && now.duration_since(*start) < self.window
        {
            return Err((self.window - now.duration_since(*start)).as_secs().max(1));
        }
        let e = t.entry(key).or_insert((now, 0));
        if now.duration_since(e.0) >= self.window {
            *e = (now, 0);
        }
        e.1 = e.1.saturating_add(1);
        if t.len() > self.capacity {
            self.shrink(&mut t, now);
        }
        Ok(())
    }

    /// Counts one failed authentication from `ip` that was not pre-counted
    /// by [`FailLimiter::attempt`] (a token rejected after a store lookup).
    pub fn fail(&self, ip: IpAddr) {
        if self.max_failures == 0 {
            return;
        }
        let Ok(mut t) = self.table.lock() else { return };
        let now = Instant::now();
        let e = t.entry(client_key(ip)).or_insert((now, 0));
        if now.duration_since(e.0) >= self.window {
            *e = (now, 0);
        }
        e.1 = e.1.saturating_add(1);
        if t.len() > self.capacity {
            self.shrink(&mut t, now);
        }
    }

    /// The attempt authenticated: it was not a failure after all.
    pub fn succeeded(&self, ip: IpAddr) {
        if self.max_failures == 0 {
            return;
        }
        let Ok(mut t) = self.table.lock() else { return };
        let key = client_key(ip);
        if let Some(e) = t.get_mut(&key) {
            e.1 = e.1.saturating_sub(1);
            if e.1 == 0 {
                t.remove(&key);
            }
        }
    }

    /// Brings the table to 90% of capacity: expired entries first, then
    /// entries that are not locked out, then the oldest. Runs once per 10%
    /// of capacity new addresses, so its cost is amortised.
    fn shrink(&self, t: &mut HashMap<IpAddr, (Instant, u32)>, now: Instant) {
        let target = self.capacity - self.capacity / 10;
        let window = self.window;
        t.retain(|_, (start, _)| now.duration_since(*start) < window);
        if t.len() > target {
            let max = self.max_failures;
            let mut excess = t.len() - target;
            t.retain(|_, (_, n)| {
                if excess > 0 && *n < max {
                    excess -= 1;
                    false
                } else {
                    true
                }
            });
        }
        if t.len() > target {
            let mut by_age: Vec<(Instant, IpAddr)> = t.iter().map(|(k, (s, _))| (*s, *k)).collect();
            by_age.sort_unstable();
            for (_, k) in by_age.into_iter().take(t.len() - target) {
                t.remove(&k);
            }
        }
    }

    /// Addresses currently tracked (for tests).
    pub fn tracked(&self) -> usize {
        self.table.lock().map(|t| t.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(l: &FailLimiter, ip: IpAddr) -> Result<(), u64> {
        l.attempt(ip)
    }

    #[test]
    fn limits_then_forgets() {
        let l = FailLimiter::new(3, Duration::from_millis(200), 100);
        let ip: IpAddr = [10, 0, 0, 1].into();
        for _ in 0..3 {
            assert!(fail(&l, ip).is_ok());
        }
        assert!(l.attempt(ip).is_err());
        assert!(
            l.attempt([10, 0, 0, 2].into()).is_ok(),
            "other clients unaffected"
        );
        std::thread::sleep(Duration::from_millis(250));
        assert!(l.attempt(ip).is_ok(), "the window passed");
    }

    #[test]
    fn successes_do_not_count() {
        let l = FailLimiter::new(3, Duration::from_secs(60), 100);
        let ip: IpAddr = [10, 0, 0, 1].into();
        for _ in 0..100 {
            assert!(l.attempt(ip).is_ok());
            l.succeeded(ip);
        }
    }

    #[test]
    fn table_is_bounded_and_keeps_lockouts() {
        let l = FailLimiter::new(3, Duration::from_secs(60), 1000);
        let locked: IpAddr = [192, 168, 0, 1].into();
        for _ in 0..3 {
            let _ = l.attempt(locked);
        }
        for i in 0..100_000u32 {
            let _ = l.attempt(IpAddr::from(i.to_be_bytes()));
        }
        assert!(l.tracked() <= 1000);
        assert!(
            l.attempt(locked).is_err(),
            "eviction must not lift a lockout"
        );
    }

    #[test]
    fn ipv6_counts_per_64() {
        let l = FailLimiter::new(3, Duration::from_secs(60), 100);
        for i in 0..3u16 {
            let ip: IpAddr = format!("2001:db8::{i:x}")
                .parse()
                .unwrap_or(IpAddr::from([0u8; 16]));
            let _ = l.attempt(ip);
        }
        let other_host: IpAddr = "2001:db8::ffff".parse().unwrap_or(IpAddr::from([0u8; 16]));
        assert!(l.attempt(other_host).is_err());
    }

    #[test]
    fn zero_disables() {
        let l = FailLimiter::new(0, Duration::from_secs(60), 10);
        let ip: IpAddr = [10, 0, 0, 1].into();
        for _ in 0..100 {
            assert!(l.attempt(ip).is_ok());
        }
    }
}
