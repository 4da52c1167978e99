//! An in-memory [`Host`] that records every call with the context it was made in. Not a
//! Proxy-Wasm host: the tests call the context callbacks themselves, the way Kong or Envoy
//! would, and assert the calls the adapter made.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::types::{MetricType, Status};

use crate::adapter::host::{Host, Outbound};
use crate::respond::LocalResponse;

/// The root context's id; HTTP contexts get others.
pub const ROOT: u32 = 0;

/// A host call, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    SetTickPeriod,
    Dispatch { token: u32, path: String },
    SetHeader(String, Option<String>),
    SetResponseHeader(String, String),
    SetProperty(String, String),
    SendResponse { status: u32, error: String },
    Resume,
    SetEffectiveContext(u32),
    Count(String),
}

#[derive(Default)]
pub struct Mem {
    pub now_ms: u64,
    /// Kong's engine (`ngx.*` properties; `set_effective_context` does nothing) or Envoy.
    pub kong: bool,
    pub config: Vec<u8>,
    /// The context whose callback is running, or that the root switched to.
    pub current: u32,
    pub request_headers: HashMap<u32, Vec<(String, String)>>,
    /// Kong: `ngx.upstream_uri` per request.
    pub upstream_uri: HashMap<u32, String>,
    /// What `call_response_*` read: (headers, body).
    pub call_response: (Vec<(String, String)>, Vec<u8>),
    /// Shared data with Kong's CAS rules: key → (value, cas).
    pub shared: HashMap<String, (Vec<u8>, u32)>,
    pub shared_data_fails: bool,
    /// Shared-data calls on keys with this prefix fail (a zone full for some users).
    pub shared_fails_under: Option<String>,
    pub shared_data_calls: usize,
    pub dispatch_fails: bool,
    /// Every dispatched call's (upstream, body, timeout in ms), in order.
    pub dispatched: Vec<(String, Option<Vec<u8>>, u64)>,
    pub header_ops_fail: bool,
    /// Kong: the nginx variables declared besides `upstream_uri` (others are NotFound).
    pub ngx_declared: Vec<String>,
    next_token: u32,
    pub metrics: Vec<String>,
    pub calls: Vec<(u32, Call)>,
    /// The audit lines, in order.
    pub audit_lines: Vec<String>,
    /// Every host call by kind (the `Host` method's name), reads included.
    pub tally: BTreeMap<&'static str, usize>,
}

#[derive(Clone, Default)]
pub struct MemHost(pub Rc<RefCell<Mem>>);

impl MemHost {
    pub fn mem(&self) -> std::cell::RefMut<'_, Mem> {
        self.0.borrow_mut()
    }

    fn count(&self, kind: &'static str) {
        *self.mem().tally.entry(kind).or_default() += 1;
    }

    /// The host calls by kind since the last `take_tally`.
    pub fn take_tally(&self) -> BTreeMap<&'static str, usize> {
        std::mem::take(&mut self.mem().tally)
    }

    fn record(&self, call: Call) {
        let mut m = self.mem();
        let ctx = m.current;
        m.calls.push((ctx, call));
    }

    /// The calls recorded since the last `take_calls`.
    pub fn take_calls(&self) -> Vec<(u32, Call)> {
        std::mem::take(&mut self.mem().calls)
    }
}

impl Host for MemHost {
    fn now_ms(&self) -> u64 {
        self.count("now_ms");
        self.0.borrow().now_ms
    }

    fn plugin_configuration(&self) -> Vec<u8> {
        self.count("plugin_configuration");
        self.0.borrow().config.clone()
    }

    fn set_tick_period(&self, _period: Duration) -> Result<(), Status> {
        self.count("set_tick_period");
        self.record(Call::SetTickPeriod);
        Ok(())
    }

    fn request_headers(&self) -> Vec<(String, String)> {
        self.count("request_headers");
        let m = self.0.borrow();
        m.request_headers
            .get(&m.current)
            .cloned()
            .unwrap_or_default()
    }

    fn set_response_header(&self, name: &str, value: &str) -> Result<(), Status> {
        self.record(Call::SetResponseHeader(name.into(), value.into()));
        Ok(())
    }

    fn set_request_header(&self, name: &str, value: Option<&str>) -> Result<(), Status> {
        self.count("set_request_header");
        self.record(Call::SetHeader(name.into(), value.map(str::to_string)));
        if self.0.borrow().header_ops_fail {
            return Err(Status::BadArgument);
        }
        Ok(())
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        self.count("property");
        let m = self.0.borrow();
        if !m.kong {
            return None;
        }
        let path_header = || {
            m.request_headers
                .get(&m.current)?
                .iter()
                .find(|(k, _)| k == ":path")
                .map(|(_, v)| v.clone().into_bytes())
        };
        match path {
            ["ngx", "request_uri"] => path_header(),
            ["ngx", "upstream_uri"] => match m.upstream_uri.get(&m.current) {
                Some(u) => Some(u.clone().into_bytes()),
                None => path_header(),
            },
            _ => None,
        }
    }

    fn set_property(&self, path: &[&str], value: Option<&[u8]>) -> Result<(), Status> {
        self.count("set_property");
        let value = String::from_utf8_lossy(value.unwrap_or_default()).into_owned();
        if path == ["ngx", "upstream_uri"] {
            let mut m = self.mem();
            let ctx = m.current;
            m.upstream_uri.insert(ctx, value.clone());
        }
        self.record(Call::SetProperty(path.join("."), value));
        match path {
            ["ngx", "upstream_uri"] => Ok(()),
            ["ngx", name] if !self.0.borrow().ngx_declared.iter().any(|d| d == name) => {
                Err(Status::NotFound)
            }
            _ => Ok(()),
        }
    }

    fn send_response(&self, resp: &LocalResponse) -> Result<(), Status> {
        self.count("send_response");
        let body: serde_json::Value = serde_json::from_str(&resp.body).unwrap_or_default();
        self.record(Call::SendResponse {
            status: resp.status,
            error: body["error"].as_str().unwrap_or_default().to_string(),
        });
        Ok(())
    }

    fn resume_request(&self) -> Result<(), Status> {
        self.count("resume_request");
        self.record(Call::Resume);
        Ok(())
    }

    fn set_effective_context(&self, context_id: u32) -> Result<(), Status> {
        self.count("set_effective_context");
        self.record(Call::SetEffectiveContext(context_id));
        let mut m = self.mem();
        if !m.kong {
            m.current = context_id;
        }
        Ok(())
    }

    fn dispatch(&self, call: &Outbound<'_>) -> Result<u32, Status> {
        self.count("dispatch");
        if self.0.borrow().dispatch_fails {
            return Err(Status::InternalFailure);
        }
        let token = {
            let mut m = self.mem();
            m.next_token += 1;
            m.next_token
        };
        let path = call
            .headers
            .iter()
            .find(|(k, _)| k == ":path")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        self.mem().dispatched.push((
            call.upstream.to_string(),
            call.body.map(<[u8]>::to_vec),
            call.timeout_ms,
        ));
        self.record(Call::Dispatch { token, path });
        Ok(token)
    }

    fn call_response_headers(&self) -> Vec<(String, String)> {
        self.count("call_response_headers");
        self.0.borrow().call_response.0.clone()
    }

    fn call_response_body(&self, max: usize) -> Option<Vec<u8>> {
        self.count("call_response_body");
        let m = self.0.borrow();
        let b = &m.call_response.1;
        Some(b[..b.len().min(max)].to_vec())
    }

    fn get_shared_data(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), Status> {
        self.count("get_shared_data");
        let mut m = self.mem();
        m.shared_data_calls += 1;
        if m.shared_data_fails || fails_under(&m, key) {
            return Err(Status::InternalFailure);
        }
        match m.shared.get(key) {
            Some((v, cas)) => Ok((Some(v.clone()), Some(*cas))),
            None => Err(Status::NotFound),
        }
    }

    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Status> {
        self.count("set_shared_data");
        let mut m = self.mem();
        m.shared_data_calls += 1;
        if m.shared_data_fails || fails_under(&m, key) {
            return Err(Status::InternalFailure);
        }
        let cur = m.shared.get(key).map(|(_, c)| *c);
        match (cur, cas) {
            (Some(_), None) => return Err(Status::CasMismatch),
            (Some(c), Some(x)) if c != x => return Err(Status::CasMismatch),
            _ => {}
        }
        m.shared
            .insert(key.to_string(), (value.to_vec(), cur.unwrap_or(0) + 1));
        Ok(())
    }

    fn delete_shared_data(&self, key: &str, cas: Option<u32>) -> Result<(), Status> {
        self.count("delete_shared_data");
        let mut m = self.mem();
        m.shared_data_calls += 1;
        let cur = m.shared.get(key).map(|(_, c)| *c);
        match (cur, cas) {
            (Some(c), Some(x)) if c == x => {
                m.shared.remove(key);
                Ok(())
            }
            (None, _) => Ok(()),
            _ => Err(Status::CasMismatch),
        }
    }

    fn define_metric(&self, _kind: MetricType, name: &str) -> Result<u32, Status> {
        self.count("define_metric");
        let mut m = self.mem();
        m.metrics.push(name.to_string());
        Ok(u32::try_from(m.metrics.len() - 1).unwrap())
    }

    fn increment_metric(&self, id: u32, _offset: i64) -> Result<(), Status> {
        self.count("increment_metric");
        let name = self.0.borrow().metrics[id as usize].clone();
        self.record(Call::Count(name));
        Ok(())
    }

    fn audit_line(&self, _level: crate::config::LogLevel, line: &str) {
        self.count("audit_line");
        self.mem().audit_lines.push(line.to_string());
    }

    fn record_metric(&self, _id: u32, _value: u64) -> Result<(), Status> {
        self.count("record_metric");
        Ok(())
    }
}

fn fails_under(m: &Mem, key: &str) -> bool {
    m.shared_fails_under
        .as_deref()
        .is_some_and(|p| key.starts_with(p))
}
