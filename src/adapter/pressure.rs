//! Limit state lost to a full shared-data zone: a counter per kind and one warn line per
//! streak, so an operator learns that the zone is too small without a line per request.

use super::host::Host;
use super::metrics::Metrics;

/// A streak ends after this long without a loss; the next loss logs again.
const QUIET_MS: u64 = 60_000;

pub struct Streak {
    /// What was lost, for the log line.
    what: &'static str,
    metric: &'static str,
    /// Until when the current streak lasts (`None`: none yet).
    until_ms: Option<u64>,
}

impl Streak {
    pub const fn new(what: &'static str, metric: &'static str) -> Streak {
        Streak {
            what,
            metric,
            until_ms: None,
        }
    }

    /// `lost` entries were found gone at `now_ms`.
    pub fn note<H: Host>(&mut self, host: &H, metrics: &mut Metrics, lost: u64, now_ms: u64) {
        if lost == 0 {
            return;
        }
        metrics.add(host, self.metric, lost);
        if self.until_ms.is_none_or(|t| now_ms >= t) {
            log::warn!(
                "azure_ml_kong: {} were evicted from shared data (the shm_kv zone is full); \
                 counting goes on from this worker's view of them; raise nginx_wasm_shm_kv \
                 (docs/LIMITS.md)",
                self.what
            );
        }
        self.until_ms = Some(now_ms.saturating_add(QUIET_MS));
    }
}
