//! Kernel boot-clock nanoseconds (`bpf_ktime_get_boot_ns`) -> wall-clock time.
//!
//! The offset between CLOCK_REALTIME and CLOCK_BOOTTIME is sampled at start and re-sampled
//! periodically, so a clock step (NTP) is followed within one resample interval.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// Now on the kernel's boot clock, the clock the eBPF programs stamp records with.
pub fn boot_now_ns() -> u64 {
    clock_ns(libc::CLOCK_BOOTTIME).max(0) as u64
}

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// realtime - boottime, ns.
    offset: i128,
}

impl Clock {
    pub fn sample() -> Self {
        // Bracket the realtime read with two boottime reads to halve the skew.
        let b1 = clock_ns(libc::CLOCK_BOOTTIME);
        let r = clock_ns(libc::CLOCK_REALTIME);
        let b2 = clock_ns(libc::CLOCK_BOOTTIME);
        Self {
            offset: r - (b1 + b2) / 2,
        }
    }

    #[cfg(test)]
    pub fn with_offset(offset: i128) -> Self {
        Self { offset }
    }

    pub fn to_system_time(self, boot_ns: u64) -> SystemTime {
        let ns = (i128::from(boot_ns) + self.offset).max(0);
        UNIX_EPOCH + Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    /// RFC 3339, UTC, nanoseconds.
    pub fn rfc3339(self, boot_ns: u64) -> String {
        humantime::format_rfc3339_nanos(self.to_system_time(boot_ns)).to_string()
    }

    /// The same text as [`rfc3339`](Self::rfc3339), with the date and time of day taken
    /// from `cache` while the second has not changed: every event gets a timestamp, and
    /// formatting the calendar date through `fmt` for each one was a visible share of the
    /// event loop's time under a storm.
    pub fn rfc3339_cached(self, boot_ns: u64, cache: &mut SecondCache) -> String {
        let since_epoch = self
            .to_system_time(boot_ns)
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let sec = since_epoch.as_secs();
        if cache.prefix.is_empty() || cache.sec != sec {
            let whole = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(sec));
            cache.prefix = whole.to_string();
            cache.prefix.pop(); // the trailing 'Z'
            cache.sec = sec;
        }
        let mut digits = [b'0'; 9];
        let mut n = since_epoch.subsec_nanos();
        for d in digits.iter_mut().rev() {
            *d = b'0' + (n % 10) as u8;
            n /= 10;
        }
        let mut out = String::with_capacity(cache.prefix.len() + 11);
        out.push_str(&cache.prefix);
        out.push('.');
        out.extend(digits.iter().map(|&d| char::from(d)));
        out.push('Z');
        out
    }
}

/// The `YYYY-MM-DDTHH:MM:SS` of the last second formatted, for
/// [`Clock::rfc3339_cached`].
#[derive(Debug, Default)]
pub struct SecondCache {
    sec: u64,
    prefix: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_nanoseconds() {
        let c = Clock::with_offset(1_700_000_000_000_000_000);
        assert_eq!(c.rfc3339(123_456_789), "2023-11-14T22:13:20.123456789Z");
    }

    #[test]
    fn the_cached_format_equals_the_plain_one_across_seconds_and_offsets() {
        let mut cache = SecondCache::default();
        for offset in [
            0i128,
            1_700_000_000_000_000_000,
            4_102_444_799_999_999_999,
            -5,
        ] {
            let c = Clock::with_offset(offset);
            // Steps of 0.37 s: nanoseconds with leading zeros, and second boundaries.
            for i in 0..200u64 {
                let boot_ns = 1_000_000_007 + i * 370_000_001;
                assert_eq!(c.rfc3339_cached(boot_ns, &mut cache), c.rfc3339(boot_ns));
            }
            assert_eq!(c.rfc3339_cached(0, &mut cache), c.rfc3339(0));
        }
    }

    #[test]
    fn sampled_clock_is_close_to_now() {
        let c = Clock::sample();
        let t = c.to_system_time(boot_now_ns());
        let skew = SystemTime::now()
            .duration_since(t)
            .unwrap_or_else(|e| e.duration());
        assert!(skew < Duration::from_secs(1), "{skew:?}");
    }
}
