//! When the gateway's own token is used, refreshed and retried. Times are local
//! milliseconds (`now_ms` from the host); a token's lifetime is counted from the local
//! moment its answer arrived, so the IdP's clock never matters.
//!
//! The rule (Azure SDKs' own): refresh 5 minutes before expiry, or at half the
//! lifetime for tokens that live under 10 minutes. A token is used until shortly
//! before it expires (a tenth of its lifetime, at most 30 s), so that a request
//! forwarded with it does not arrive at Azure ML with an expired token. A failed
//! refresh retries with exponential backoff and jitter, never past that point
//! without trying again.

/// Refresh this long before expiry (or at half the lifetime, if sooner).
pub const REFRESH_MARGIN_MS: u64 = 5 * 60 * 1000;
/// Stop using a token this long before expiry (or a tenth of its lifetime, if less).
pub const EXPIRY_GUARD_MS: u64 = 30 * 1000;
/// Never refresh sooner than this after an acquisition (IMDS is rate-limited).
pub const MIN_REFRESH_GAP_MS: u64 = 5 * 1000;
/// First retry delay after a failure, doubling per failure up to [`MAX_BACKOFF_MS`].
pub const BASE_BACKOFF_MS: u64 = 1000;
pub const MAX_BACKOFF_MS: u64 = 60 * 1000;

/// A token's timeline on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    /// Local time the answer arrived.
    pub obtained_ms: u64,
    /// As the issuer said (`expires_in`).
    pub lifetime_ms: u64,
}

impl Lifetime {
    pub fn new(obtained_ms: u64, lifetime_secs: u64) -> Lifetime {
        Lifetime {
            obtained_ms,
            lifetime_ms: lifetime_secs.saturating_mul(1000),
        }
    }

    pub fn expires_ms(&self) -> u64 {
        self.obtained_ms.saturating_add(self.lifetime_ms)
    }

    /// When the background refresh is due.
    pub fn refresh_at_ms(&self) -> u64 {
        let margin = REFRESH_MARGIN_MS.min(self.lifetime_ms / 2);
        self.expires_ms()
            .saturating_sub(margin)
            .max(self.obtained_ms.saturating_add(MIN_REFRESH_GAP_MS))
    }

    /// The last moment the token is put on a request.
    pub fn usable_until_ms(&self) -> u64 {
        let guard = EXPIRY_GUARD_MS.min(self.lifetime_ms / 10);
        self.expires_ms().saturating_sub(guard)
    }

    /// May a request carry this token now?
    pub fn usable(&self, now_ms: u64) -> bool {
        now_ms < self.usable_until_ms()
    }

    /// Is a refresh due? A clock that went back past the acquisition leaves the real
    /// age unknown: refresh at once (the token stays usable meanwhile).
    pub fn refresh_due(&self, now_ms: u64) -> bool {
        now_ms >= self.refresh_at_ms() || now_ms < self.obtained_ms
    }
}

/// Delay before retry number `failures` (1 = the first retry): exponential with "equal
/// jitter" (half fixed, half random) so that workers and nodes spread out.
pub fn backoff_ms(failures: u32, random: u64) -> u64 {
    let exp = failures.saturating_sub(1).min(16);
    let full = BASE_BACKOFF_MS
        .saturating_mul(1u64 << exp)
        .min(MAX_BACKOFF_MS);
    let half = full / 2;
    half + random % (half + 1)
}

/// When to try again after a failure while `held` (if any) is still the token in use:
/// after the backoff, but no later than the moment it stops being usable, so a
/// held token's last seconds are spent retrying rather than waiting.
pub fn retry_at_ms(now_ms: u64, failures: u32, random: u64, held: Option<&Lifetime>) -> u64 {
    let at = now_ms.saturating_add(backoff_ms(failures, random));
    match held {
        Some(l) if l.usable(now_ms) => at.min(l.usable_until_ms().max(now_ms + BASE_BACKOFF_MS)),
        _ => at,
    }
}

/// `Retry-After` for a request refused because no token is usable: until the next
/// attempt, at least 1 s.
pub fn retry_after_secs(now_ms: u64, next_attempt_ms: u64) -> u64 {
    next_attempt_ms.saturating_sub(now_ms).div_ceil(1000).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    #[test]
    fn an_hour_token_refreshes_five_minutes_early_and_is_used_until_30s_before_expiry() {
        let l = Lifetime::new(1_000_000, 3600);
        assert_eq!(l.expires_ms(), 1_000_000 + 60 * MIN);
        assert_eq!(l.refresh_at_ms(), 1_000_000 + 55 * MIN);
        assert_eq!(l.usable_until_ms(), 1_000_000 + 60 * MIN - 30_000);
        assert!(!l.refresh_due(1_000_000 + 55 * MIN - 1));
        assert!(l.refresh_due(1_000_000 + 55 * MIN));
        assert!(l.usable(l.usable_until_ms() - 1));
        assert!(!l.usable(l.usable_until_ms()));
    }

    #[test]
    fn a_day_token_from_imds_refreshes_five_minutes_early() {
        let l = Lifetime::new(0, 86_399);
        assert_eq!(l.refresh_at_ms(), 86_399_000 - 5 * MIN);
    }

    #[test]
    fn short_tokens_refresh_at_half_life_and_keep_a_tenth_as_guard() {
        let l = Lifetime::new(10_000, 120);
        assert_eq!(l.refresh_at_ms(), 10_000 + 60_000);
        assert_eq!(l.usable_until_ms(), 10_000 + 120_000 - 12_000);
        // Exactly ten minutes: half life (300 s) equals the 5 min margin.
        let l = Lifetime::new(0, 600);
        assert_eq!(l.refresh_at_ms(), 300_000);
    }

    #[test]
    fn odd_lifetimes_never_refresh_sooner_than_the_minimum_gap() {
        // 10 s token: half life 5 s, equal to the gap.
        let l = Lifetime::new(0, 10);
        assert_eq!(l.refresh_at_ms(), MIN_REFRESH_GAP_MS);
        assert_eq!(l.usable_until_ms(), 9_000);
        // Zero and absurd lifetimes do not overflow or refresh in a loop.
        let l = Lifetime::new(u64::MAX - 5, u64::MAX);
        assert_eq!(l.expires_ms(), u64::MAX);
        assert!(l.refresh_at_ms() >= l.obtained_ms);
        let l = Lifetime::new(50, 0);
        assert_eq!(l.refresh_at_ms(), 50 + MIN_REFRESH_GAP_MS);
        assert!(!l.usable(50));
    }

    #[test]
    fn clock_jumps_refresh_early_and_never_extend_use() {
        let l = Lifetime::new(1_000_000, 3600);
        // Back past the acquisition: refresh now, still usable.
        assert!(l.refresh_due(999_999));
        assert!(l.usable(999_999));
        // Forward past expiry: unusable and due.
        let later = l.expires_ms() + 10 * MIN;
        assert!(l.refresh_due(later));
        assert!(!l.usable(later));
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        assert_eq!(backoff_ms(1, 0), 500);
        assert_eq!(backoff_ms(1, 500), 1000);
        assert_eq!(backoff_ms(1, 501), 500);
        assert_eq!(backoff_ms(2, 0), 1000);
        assert_eq!(backoff_ms(3, 0), 2000);
        assert_eq!(backoff_ms(7, 0), 30_000);
        assert_eq!(backoff_ms(8, 0), 30_000);
        assert_eq!(backoff_ms(u32::MAX, u64::MAX), 30_000 + u64::MAX % 30_001);
        for r in [0, 1, 7, 12345, u64::MAX] {
            for f in 0..40 {
                let d = backoff_ms(f, r);
                assert!((500..=MAX_BACKOFF_MS).contains(&d), "{f} {r} {d}");
            }
        }
    }

    #[test]
    fn retries_while_a_token_is_held_never_wait_past_its_use() {
        let l = Lifetime::new(0, 600); // usable until 570 s
        assert_eq!(retry_at_ms(560_000, 10, 0, Some(&l)), 570_000);
        assert_eq!(retry_at_ms(500_000, 1, 0, Some(&l)), 500_500);
        // Once past use, plain backoff.
        assert_eq!(retry_at_ms(571_000, 10, 0, Some(&l)), 571_000 + 30_000);
        assert_eq!(retry_at_ms(100, 1, 0, None), 600);
    }

    #[test]
    fn retry_after_is_whole_seconds_at_least_one() {
        assert_eq!(retry_after_secs(1000, 1000), 1);
        assert_eq!(retry_after_secs(1000, 1001), 1);
        assert_eq!(retry_after_secs(1000, 3500), 3);
        assert_eq!(retry_after_secs(5000, 1000), 1);
    }
}
