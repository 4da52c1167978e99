//! Metric names, built so Kong 3.9's `label_patterns` (kong/azure_ml_kong.meta.json) turn
//! them into labelled Prometheus series: `decisions_total_route=R_caller=C_decision=D_reason=X`
//! becomes `pw_azure_ml_kong_decisions_total{route,caller,decision,reason}`. Kong adds the filter
//! prefix itself; Envoy shows them as `wasmcustom.<name>`. Labels must appear in the order
//! of the patterns, and values must fit them (`[a-z0-9-]` for names, last label anchored).

use crate::audit::{AuditRecord, Outcome};
use crate::credential::cache::{CredEvent, CredFailure};
use crate::keycache::{Event, FailReason};
use crate::reason::Reason;

/// A label value: lower-case `[a-z0-9-]`, at most 64 bytes (what the label pattern accepts).
pub fn label(value: &str) -> String {
    let v: String = value
        .chars()
        .take(64)
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if v.is_empty() {
        "unnamed".into()
    } else {
        v
    }
}

/// The decision counter for an audit record.
pub fn decision_counter(audit: &AuditRecord) -> String {
    let (decision, reason) = decision_labels(audit);
    decision_counter_for(
        audit.route.as_deref(),
        caller_label(audit),
        decision,
        reason,
    )
}

/// The decision counter's `decision` and `reason` labels: together with the route they
/// name the counter, so a host adapter can key its metric ids on them without building
/// the name on every request.
pub fn decision_labels(audit: &AuditRecord) -> (&'static str, &'static str) {
    match audit.decision {
        Outcome::Allow if audit.provider.is_some() => ("allow", "authenticated"),
        Outcome::Allow => ("allow", "anonymous"),
        Outcome::Deny => ("deny", audit.reason.map_or("unknown", Reason::code)),
    }
}

/// The decision counter's `caller` label: a registered caller's name (already label-safe)
/// or `unregistered`, so the label set is bounded by the registry.
pub fn caller_label(audit: &AuditRecord) -> &str {
    audit
        .caller
        .as_deref()
        .unwrap_or(crate::callers::UNREGISTERED)
}

/// The decision counter for a route (its configured name), a caller label and
/// [`decision_labels`].
pub fn decision_counter_for(
    route: Option<&str>,
    caller: &str,
    decision: &str,
    reason: &str,
) -> String {
    let route = route.map(label);
    let route = route.as_deref().unwrap_or("unmatched");
    format!("decisions_total_route={route}_caller={caller}_decision={decision}_reason={reason}")
}

/// Tokens that went through verification (signature work, unless refused before it).
pub const VERIFICATIONS: &str = "verifications_total";
/// Verifications taken from another worker through shared data.
pub const SHARED_HITS: &str = "verified_cache_total_result=shared_hit";
/// Recently failed tokens refused again without verification.
pub const REJECTED_HITS: &str = "verified_cache_total_result=rejected_hit";

/// Rate-limit windows found evicted from shared data while still counting.
pub const LOST_WINDOWS: &str = "limit_state_lost_total_result=window";
/// Concurrency slot lists (or a worker's heartbeat) found evicted while slots were held.
pub const LOST_SLOTS: &str = "limit_state_lost_total_result=slots";

/// The JWKS counter for a key-cache event, if it counts as a fetch outcome.
pub fn jwks_counter(provider: &str, ev: &Event) -> Option<String> {
    let result = match ev {
        Event::FetchOk { .. } => "ok",
        Event::AdoptedFromShared { .. } => "adopted_shared",
        Event::FetchFailed { reason, .. } => match reason {
            FailReason::Timeout => "timeout",
            FailReason::DispatchFailed => "dispatch_error",
            FailReason::Http(_) => "http_error",
            FailReason::Garbage
            | FailReason::Empty
            | FailReason::TooLarge
            | FailReason::BadJwksUri => "parse_error",
            FailReason::IssuerMismatch => "issuer_mismatch",
        },
        _ => return None,
    };
    Some(format!(
        "jwks_fetches_total_provider={}_result={result}",
        label(provider)
    ))
}

/// Counted once per fetched key set whose caps cut keys (`jwks::MAX_KEYS`).
pub fn jwks_cut_counter(provider: &str, ev: &Event) -> Option<String> {
    match ev {
        Event::FetchOk { cut, .. } if *cut > 0 => Some(format!(
            "jwks_key_sets_cut_total_provider={}",
            label(provider)
        )),
        _ => None,
    }
}

/// The counter for a credential event, if it counts as a token-request outcome.
pub fn credential_counter(credential: &str, ev: &CredEvent) -> Option<String> {
    let result = match ev {
        CredEvent::Acquired { fetched: true, .. } => "ok",
        CredEvent::Acquired { fetched: false, .. } => "adopted_shared",
        CredEvent::Failed { why, .. } => match why {
            CredFailure::Timeout => "timeout",
            CredFailure::DispatchFailed => "dispatch_error",
            CredFailure::Http(_) => "http_error",
            CredFailure::TooLarge | CredFailure::BadAnswer(_) => "parse_error",
        },
        CredEvent::Recovered { .. } => return None,
    };
    Some(format!(
        "credential_fetches_total_credential={}_result={result}",
        label(credential)
    ))
}

/// Seconds the gateway's current token for `credential` stays in use (0: none).
pub fn credential_gauge(credential: &str) -> String {
    format!("credential_valid_seconds_credential={}", label(credential))
}

/// Seconds since the gateway's current token for `credential` arrived.
pub fn credential_age_gauge(credential: &str) -> String {
    format!("credential_age_seconds_credential={}", label(credential))
}

/// JWKS health gauges for one provider: usable keys, and age of the key set in seconds.
pub fn jwks_gauges(provider: &str) -> (String, String) {
    let p = label(provider);
    (
        format!("jwks_keys_provider={p}"),
        format!("jwks_age_seconds_provider={p}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reason::Reason;
    use crate::request::RequestView;

    #[test]
    fn cut_key_sets_are_counted() {
        let ok = |cut| Event::FetchOk {
            uri: String::new(),
            keys: 100,
            cut,
            bytes: 1,
            changed: true,
            generation: 1,
            ttl_ms: 1,
        };
        assert_eq!(
            jwks_cut_counter("Entra", &ok(7)).as_deref(),
            Some("jwks_key_sets_cut_total_provider=entra")
        );
        assert_eq!(jwks_cut_counter("entra", &ok(0)), None);
    }

    #[test]
    fn credential_counters_name_the_credential_and_the_result() {
        let failed = |why| CredEvent::Failed {
            why,
            detail: String::new(),
            streak: 1,
            first: true,
        };
        let cases = [
            (failed(CredFailure::Timeout), Some("timeout")),
            (failed(CredFailure::DispatchFailed), Some("dispatch_error")),
            (failed(CredFailure::Http(401)), Some("http_error")),
            (
                failed(CredFailure::BadAnswer("credential_garbage")),
                Some("parse_error"),
            ),
            (
                CredEvent::Acquired {
                    lifetime_secs: 60,
                    fetched: true,
                },
                Some("ok"),
            ),
            (
                CredEvent::Acquired {
                    lifetime_secs: 60,
                    fetched: false,
                },
                Some("adopted_shared"),
            ),
            (CredEvent::Recovered { after_failures: 2 }, None),
        ];
        for (ev, want) in cases {
            assert_eq!(
                credential_counter("aml_sp", &ev),
                want.map(|r| format!("credential_fetches_total_credential=aml-sp_result={r}")),
                "{ev:?}"
            );
        }
    }

    #[test]
    fn labels_fit_kong_patterns() {
        assert_eq!(label("Team_Score v2"), "team-score-v2");
        assert_eq!(label(""), "unnamed");
        assert_eq!(label(&"x".repeat(100)).len(), 64);
    }

    #[test]
    fn decision_names() {
        let h = vec![];
        let req = RequestView {
            method: "POST",
            path: "/a",
            authority: "h",
            headers: &h,
        };
        let mut a = AuditRecord::new(0, "rid", &req);
        a.route = Some("Team-Score".into());
        a.deny(Reason::InsufficientScope, 403);
        assert_eq!(
            decision_counter(&a),
            "decisions_total_route=team-score_caller=unregistered_decision=deny_reason=insufficient_scope"
        );
        let mut b = AuditRecord::new(0, "rid", &req);
        b.allow();
        assert_eq!(
            decision_counter(&b),
            "decisions_total_route=unmatched_caller=unregistered_decision=allow_reason=anonymous"
        );
        b.provider = Some("entra".into());
        assert!(decision_counter(&b).ends_with("_reason=authenticated"));
        // Kong traps on names over 239 bytes: the longest possible name stays far below.
        b.route = Some("r".repeat(500));
        assert!(decision_counter(&b).len() < 160);
    }

    #[test]
    fn jwks_names() {
        let ok = Event::Recovered {
            failures: 1,
            outage_ms: 1,
        };
        assert_eq!(jwks_counter("entra", &ok), None);
        let (keys, age) = jwks_gauges("Entra");
        assert_eq!(keys, "jwks_keys_provider=entra");
        assert_eq!(age, "jwks_age_seconds_provider=entra");
    }
}
