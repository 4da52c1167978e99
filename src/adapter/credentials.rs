//! Bridges the sans-IO credential caches (`crate::credential`) to the host: dispatches
//! token requests, routes their answers back, and gives the engine the gateway's token
//! (`engine::Env::upstream_token`). See the contract in `credential::cache`.

use std::collections::HashMap;
use std::rc::Rc;

use super::host::{Host, Outbound};
use super::store::HostStore;
use super::waiting::{read_call_response, Cx, WaitMode, Wake};
use crate::credential::cache::{
    CredAction, CredEvent, CredIo, CredTicket, CredentialCache, RideAnswer, WaitAnswer,
};
use crate::credential::grant::MAX_GRANT_BODY_BYTES;
use crate::credential::spec::CredentialSpec;
use crate::engine::CredentialState;
use crate::reason::Reason;

/// How often the credential gauges are recorded.
const GAUGE_PERIOD_MS: u64 = 5_000;

/// A token request a Kong request must send from its own context.
pub type CredentialRide = (usize, CredTicket);

#[derive(Default)]
pub struct CredentialManager {
    caches: Vec<CredentialCache>,
    /// Root-dispatched calls: token → (credential, ticket).
    calls: HashMap<u32, (usize, CredTicket)>,
    store_off: bool,
    next_gauges_ms: u64,
}

impl CredentialManager {
    pub fn new(specs: &[CredentialSpec], owner_id: u64, shared_data: bool) -> Self {
        CredentialManager {
            caches: specs
                .iter()
                .enumerate()
                .map(|(i, s)| CredentialCache::new(s.clone(), owner_id.wrapping_add(i as u64)))
                .collect(),
            calls: HashMap::new(),
            store_off: !shared_data,
            next_gauges_ms: 0,
        }
    }

    pub fn on_tick<H: Host>(&mut self, cx: &mut Cx<'_, H>) -> Vec<Wake> {
        let mut wakes = Vec::new();
        for i in 0..self.caches.len() {
            self.run(cx, i, &mut wakes, |c, io, out| c.on_tick(io, out));
        }
        if cx.now_ms >= self.next_gauges_ms && !self.caches.is_empty() {
            self.next_gauges_ms = cx.now_ms.saturating_add(GAUGE_PERIOD_MS);
            for c in &self.caches {
                let name = crate::metrics::credential_gauge(&c.spec().name);
                cx.metrics
                    .gauge(cx.host, &name, c.usable_for_secs(cx.now_ms));
                if let Some(age) = c.age_secs(cx.now_ms) {
                    let name = crate::metrics::credential_age_gauge(&c.spec().name);
                    cx.metrics.gauge(cx.host, &name, age);
                }
            }
        }
        wakes
    }

    /// The answer to a root-dispatched token request; `None` when the call is not one.
    pub fn on_http_call_response<H: Host>(
        &mut self,
        cx: &mut Cx<'_, H>,
        token: u32,
        body_size: usize,
    ) -> Option<Vec<Wake>> {
        let (i, ticket) = self.calls.remove(&token)?;
        let resp = read_call_response(cx.host, MAX_GRANT_BODY_BYTES, body_size);
        let mut wakes = Vec::new();
        self.run(cx, i, &mut wakes, |c, io, out| {
            c.on_response(ticket, &resp, io, out)
        });
        Some(wakes)
    }

    /// The answer to a Kong ride's token request (from the request's own context).
    pub fn on_ride_response<H: Host>(
        &mut self,
        cx: &mut Cx<'_, H>,
        (i, ticket): CredentialRide,
        body_size: usize,
    ) {
        let resp = read_call_response(cx.host, MAX_GRANT_BODY_BYTES, body_size);
        self.run(cx, i, &mut Vec::new(), |c, io, out| {
            c.on_response(ticket, &resp, io, out)
        });
    }

    /// A ride could not be sent, or its request went away before the answer.
    pub fn ride_ended<H: Host>(&mut self, cx: &mut Cx<'_, H>, (i, ticket): CredentialRide) {
        self.run(cx, i, &mut Vec::new(), |c, io, out| {
            c.ride_ended(ticket, io, out)
        });
    }

    pub fn cancel_waiter(&mut self, id: u32) {
        for c in &mut self.caches {
            c.cancel_waiter(id);
        }
    }

    /// The request to send for a ride.
    pub fn spec(&self, i: usize) -> Option<&CredentialSpec> {
        self.caches.get(i).map(CredentialCache::spec)
    }

    /// The engine's question for one allowed request. A ride to send comes back in `ride`.
    pub fn upstream_token<H: Host>(
        &mut self,
        cx: &mut Cx<'_, H>,
        i: usize,
        waiter: u32,
        wait: WaitMode,
        ride: &mut Option<CredentialRide>,
    ) -> CredentialState {
        let now = cx.now_ms;
        let Some(cache) = self.caches.get_mut(i) else {
            return CredentialState::Unavailable {
                retry_after_secs: 30,
            };
        };
        if let Some(t) = cache.token(now) {
            return CredentialState::Ready(Rc::from(t));
        }
        match wait {
            WaitMode::Park => match cache.wait(waiter, now) {
                WaitAnswer::Ready => ready(cache, now),
                WaitAnswer::Wait => CredentialState::Loading,
                WaitAnswer::Unavailable { retry_after_secs } => {
                    CredentialState::Unavailable { retry_after_secs }
                }
            },
            WaitMode::Ride { allowed: false } => CredentialState::Unavailable {
                retry_after_secs: 1,
            },
            WaitMode::Ride { allowed: true } => {
                let answer = self.run(cx, i, &mut Vec::new(), |c, io, out| c.ride(io, out));
                match answer.unwrap_or(RideAnswer::Unavailable {
                    retry_after_secs: 1,
                }) {
                    RideAnswer::Ready => match self.caches.get(i) {
                        Some(c) => ready(c, now),
                        None => CredentialState::Loading,
                    },
                    RideAnswer::Dispatch(ticket) => {
                        *ride = Some((i, ticket));
                        CredentialState::Loading
                    }
                    RideAnswer::Unavailable { retry_after_secs } => {
                        CredentialState::Unavailable { retry_after_secs }
                    }
                }
            }
        }
    }

    /// Run `f` on credential `i` with the shared data it may use, then carry out the
    /// actions it asked for (wakes for parked requests go to `wakes`).
    fn run<H: Host, T>(
        &mut self,
        cx: &mut Cx<'_, H>,
        i: usize,
        wakes: &mut Vec<Wake>,
        f: impl FnOnce(&mut CredentialCache, &mut CredIo<'_>, &mut Vec<CredAction>) -> T,
    ) -> Option<T> {
        let (t, out) = self.with(cx, i, f)?;
        self.perform(cx, i, out, wakes);
        Some(t)
    }

    fn with<H: Host, T>(
        &mut self,
        cx: &mut Cx<'_, H>,
        i: usize,
        f: impl FnOnce(&mut CredentialCache, &mut CredIo<'_>, &mut Vec<CredAction>) -> T,
    ) -> Option<(T, Vec<CredAction>)> {
        let CredentialManager {
            caches, store_off, ..
        } = self;
        let cache = caches.get_mut(i)?;
        let mut store = HostStore::new(cx.host, store_off);
        let mut io = CredIo {
            now_ms: cx.now_ms,
            random: cx.random,
            store: store.as_dyn(),
        };
        let mut out = Vec::new();
        let t = f(cache, &mut io, &mut out);
        Some((t, out))
    }

    fn perform<H: Host>(
        &mut self,
        cx: &mut Cx<'_, H>,
        i: usize,
        mut out: Vec<CredAction>,
        wakes: &mut Vec<Wake>,
    ) {
        while !out.is_empty() {
            let mut next = Vec::new();
            for action in out {
                match action {
                    CredAction::Dispatch(ticket) => {
                        let Some(spec) = self.caches.get(i).map(CredentialCache::spec) else {
                            continue;
                        };
                        match cx.host.dispatch(&Outbound::credential(spec)) {
                            Ok(token) => {
                                self.calls.insert(token, (i, ticket));
                            }
                            Err(e) => {
                                log::warn!(
                                    "azure_ml_kong: credential {:?}: dispatch_http_call to upstream {:?} failed: {e:?} (Envoy: is it a defined cluster? Kong: host:port)",
                                    spec.name,
                                    spec.upstream
                                );
                                if let Some(((), more)) = self
                                    .with(cx, i, |c, io, out| c.on_dispatch_error(ticket, io, out))
                                {
                                    next.extend(more);
                                }
                            }
                        }
                    }
                    CredAction::Resume(id) => wakes.push(Wake::Resume(id)),
                    CredAction::Unavailable {
                        id,
                        retry_after_secs,
                    } => wakes.push(Wake::Unavailable {
                        waiter: id,
                        retry_after_secs: u32::try_from(retry_after_secs).unwrap_or(u32::MAX),
                        reason: Reason::UpstreamCredentialUnavailable,
                    }),
                    CredAction::Event(ev) => self.report(cx, i, &ev),
                }
            }
            out = next;
        }
    }

    /// One log line per event (never the token: events carry none) and its counter.
    fn report<H: Host>(&self, cx: &mut Cx<'_, H>, i: usize, ev: &CredEvent) {
        let Some(spec) = self.caches.get(i).map(CredentialCache::spec) else {
            return;
        };
        let (name, kind, uri) = (&spec.name, spec.kind.as_str(), &spec.uri_for_logs);
        match ev {
            CredEvent::Acquired {
                lifetime_secs,
                fetched: true,
            } => log::info!(
                "azure_ml_kong: credential {name:?} ({kind}): token acquired from {uri}, valid {lifetime_secs} s"
            ),
            CredEvent::Acquired { fetched: false, .. } => log::debug!(
                "azure_ml_kong: credential {name:?}: token taken from shared data"
            ),
            CredEvent::Failed {
                why,
                detail,
                streak,
                first: true,
            } => log::warn!(
                "azure_ml_kong: credential {name:?} ({kind}): token request to {uri} failed: {}: {detail} (failure {streak}; retrying with backoff, further failures at debug level)",
                why.code()
            ),
            CredEvent::Failed {
                why,
                detail,
                streak,
                ..
            } => log::debug!(
                "azure_ml_kong: credential {name:?}: token request failed again: {}: {detail} (failure {streak})",
                why.code()
            ),
            CredEvent::Recovered { after_failures } => log::warn!(
                "azure_ml_kong: credential {name:?}: recovered after {after_failures} failed token request(s)"
            ),
        }
        if let Some(counter) = crate::metrics::credential_counter(name, ev) {
            cx.metrics.increment(cx.host, &counter);
        }
    }
}

fn ready(cache: &CredentialCache, now: u64) -> CredentialState {
    match cache.token(now) {
        Some(t) => CredentialState::Ready(Rc::from(t)),
        None => CredentialState::Loading,
    }
}
