//! Metric names, built so Kong 3.9's `label_patterns` (kong/azure_ml_kong.meta.json) turn
//! them into labelled Prometheus series: `decisions_total_route=R_caller=C_decision=D_reason=X`
//! becomes `pw_azure_ml_kong_decisions_total{route,caller,decision,reason}`. Kong adds the filter
//! prefix itself; Envoy shows them as `wasmcustom.<name>`. Labels must appear in the order
//! of the patterns, and values must fit them (`[a-z0-9-]` for names, last label anchored).

use crate::audit::{AuditRecord, Outcome};
use crate::credential::cache::{CredEvent, CredFailure};
use crate::engine::Filter;
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
    jwks_result(ev).map(|result| jwks_counter_for(provider, result))
}

/// Every `result` label of `jwks_fetches_total` ([`jwks_result`] gives no other).
pub const JWKS_RESULTS: &[&str] = &[
    "ok",
    "adopted_shared",
    "timeout",
    "dispatch_error",
    "http_error",
    "parse_error",
    "issuer_mismatch",
];

fn jwks_result(ev: &Event) -> Option<&'static str> {
    Some(match ev {
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
    })
}

fn jwks_counter_for(provider: &str, result: &str) -> String {
    format!(
        "jwks_fetches_total_provider={}_result={result}",
        label(provider)
    )
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
    credential_result(ev).map(|result| credential_counter_for(credential, result))
}

/// Every `result` label of `credential_fetches_total` ([`credential_result`] gives no other).
pub const CREDENTIAL_RESULTS: &[&str] = &[
    "ok",
    "adopted_shared",
    "timeout",
    "dispatch_error",
    "http_error",
    "parse_error",
];

fn credential_result(ev: &CredEvent) -> Option<&'static str> {
    Some(match ev {
        CredEvent::Acquired { fetched: true, .. } => "ok",
        CredEvent::Acquired { fetched: false, .. } => "adopted_shared",
        CredEvent::Failed { why, .. } => match why {
            CredFailure::Timeout => "timeout",
            CredFailure::DispatchFailed => "dispatch_error",
            CredFailure::Http(_) => "http_error",
            CredFailure::TooLarge | CredFailure::BadAnswer(_) => "parse_error",
        },
        CredEvent::Recovered { .. } => return None,
    })
}

fn credential_counter_for(credential: &str, result: &str) -> String {
    format!(
        "credential_fetches_total_credential={}_result={result}",
        label(credential)
    )
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

/// Counts updates to a series the catalog did not hold (which would be a bug): the update is
/// dropped rather than defined late (see [`catalog`]).
pub const DROPPED: &str = "metric_updates_dropped_total";

/// Most series one configuration defines per worker: decisions grow as routes × callers,
/// and a full metrics memory makes Kong trap.
pub const MAX_SERIES: usize = 4096;

/// A host metric's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// A decision counter's labels: the configured route name (`None`: no route matched), the
/// caller label, and [`decision_labels`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionKey {
    pub route: Option<String>,
    pub caller: String,
    pub decision: &'static str,
    pub reason: &'static str,
}

/// One series of the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    pub kind: Kind,
    pub name: String,
    /// For a decision counter, its labels (the adapter finds it by them per request).
    pub decision: Option<DecisionKey>,
}

/// Every series a worker may update under this configuration (`None`: no valid
/// configuration, every request is denied `config_invalid`), most useful first, at most
/// [`MAX_SERIES`]; and how many were left out by that cap.
///
/// The adapter defines them all when the configuration loads and never defines one later:
/// in Kong 3.9 a `/metrics` scrape holds the metrics memory's lock while it yields
/// (`wasmx.lua` `metrics_data`, `ngx.sleep(0)` per page of keys), so a definition in the
/// same worker during that yield waits on its own worker forever.
pub fn catalog(filter: Option<&Filter>) -> (Vec<Series>, usize) {
    let mut out = Vec::new();
    let mut cut = 0;
    // Names may repeat (labels of two route names can be equal): the host gives a
    // repeated name the same id.
    let mut push = |kind, name: String, decision| {
        if out.len() < MAX_SERIES {
            out.push(Series {
                kind,
                name,
                decision,
            });
        } else {
            cut += 1;
        }
    };
    for name in [
        DROPPED,
        VERIFICATIONS,
        SHARED_HITS,
        REJECTED_HITS,
        LOST_WINDOWS,
        LOST_SLOTS,
    ] {
        push(Kind::Counter, name.to_string(), None);
    }
    let Some(f) = filter else {
        for (decision, reason) in outcomes(false) {
            let key = decision_key(None, crate::callers::UNREGISTERED, decision, reason);
            push(Kind::Counter, key.0, Some(key.1));
        }
        return (out, cut);
    };
    for provider in f.jwks_sources.iter().flatten().map(|s| s.provider.as_str()) {
        for result in JWKS_RESULTS {
            push(Kind::Counter, jwks_counter_for(provider, result), None);
        }
        push(
            Kind::Counter,
            format!("jwks_key_sets_cut_total_provider={}", label(provider)),
            None,
        );
        let (keys, age) = jwks_gauges(provider);
        push(Kind::Gauge, keys, None);
        push(Kind::Gauge, age, None);
    }
    for credential in f.credentials.specs.iter().map(|c| c.name.as_str()) {
        for result in CREDENTIAL_RESULTS {
            push(
                Kind::Counter,
                credential_counter_for(credential, result),
                None,
            );
        }
        push(Kind::Gauge, credential_gauge(credential), None);
        push(Kind::Gauge, credential_age_gauge(credential), None);
    }
    let routes: Vec<Option<&str>> = std::iter::once(None)
        .chain(f.config.routes.iter().map(|r| Some(r.name.as_str())))
        .collect();
    // Every caller may be unregistered; a registered one only after its token verified.
    let callers = std::iter::once((crate::callers::UNREGISTERED, false))
        .chain(f.callers.names().map(|c| (c, true)));
    for (caller, registered) in callers {
        for route in &routes {
            for (decision, reason) in outcomes(registered) {
                let key = decision_key(*route, caller, decision, reason);
                push(Kind::Counter, key.0, Some(key.1));
            }
        }
    }
    (out, cut)
}

/// The `decision`/`reason` pairs of an unregistered or a registered caller.
fn outcomes(registered: bool) -> impl Iterator<Item = (&'static str, &'static str)> {
    let allowed: &[_] = if registered {
        &[("allow", "authenticated")]
    } else {
        &[("allow", "authenticated"), ("allow", "anonymous")]
    };
    allowed.iter().copied().chain(
        Reason::ALL
            .iter()
            .filter(move |r| !registered || r.after_identity())
            .map(|r| ("deny", r.code())),
    )
}

fn decision_key(
    route: Option<&str>,
    caller: &str,
    decision: &'static str,
    reason: &'static str,
) -> (String, DecisionKey) {
    (
        decision_counter_for(route, caller, decision, reason),
        DecisionKey {
            route: route.map(str::to_string),
            caller: caller.to_string(),
            decision,
            reason,
        },
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
