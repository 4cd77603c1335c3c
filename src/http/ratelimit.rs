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

    /// `Err(seconds to wait)` if `ip` is over its limit now.
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        if self.max_failures == 0 {
            return Ok(());
        }
        let Ok(t) = self.table.lock() else {
            return Ok(());
        };
        match t.get(&ip) {
            Some((start, n)) if *n >= self.max_failures && start.elapsed() < self.window => {
                Err((self.window - start.elapsed()).as_secs().max(1))
            }
            _ => Ok(()),
        }
    }

    /// Counts one failed authentication from `ip`.
    pub fn fail(&self, ip: IpAddr) {
        if self.max_failures == 0 {
            return;
        }
        let Ok(mut t) = self.table.lock() else { return };
        let now = Instant::now();
        let e = t.entry(ip).or_insert((now, 0));
        if now.duration_since(e.0) >= self.window {
            *e = (now, 0);
        }
        e.1 = e.1.saturating_add(1);
        if t.len() > self.capacity {
            let window = self.window;
            t.retain(|_, (start, _)| now.duration_since(*start) < window);
            while t.len() > self.capacity {
                let oldest = t.iter().min_by_key(|(_, (s, _))| *s).map(|(k, _)| *k);
                match oldest {
                    Some(k) => t.remove(&k),
                    None => break,
                };
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

    #[test]
    fn limits_then_forgets() {
        let l = FailLimiter::new(3, Duration::from_millis(200), 100);
        let ip: IpAddr = [10, 0, 0, 1].into();
        for _ in 0..3 {
            assert!(l.check(ip).is_ok());
            l.fail(ip);
        }
        assert!(l.check(ip).is_err());
        assert!(
            l.check([10, 0, 0, 2].into()).is_ok(),
            "other clients unaffected"
        );
        std::thread::sleep(Duration::from_millis(250));
        assert!(l.check(ip).is_ok(), "the window passed");
    }

    #[test]
    fn table_is_bounded() {
        let l = FailLimiter::new(3, Duration::from_secs(60), 50);
        for i in 0..1000u32 {
            l.fail(IpAddr::from(i.to_be_bytes()));
        }
        assert!(l.tracked() <= 50);
    }

    #[test]
    fn zero_disables() {
        let l = FailLimiter::new(0, Duration::from_secs(60), 10);
        let ip: IpAddr = [10, 0, 0, 1].into();
        for _ in 0..100 {
            l.fail(ip);
        }
        assert!(l.check(ip).is_ok());
    }
}
