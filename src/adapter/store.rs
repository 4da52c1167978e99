//! The host's shared data as the core's [`SharedStore`]: JWKS records and leases, the
//! gateway's credentials, rate-limit windows.

use proxy_wasm::types::Status;

use super::host::Host;
use crate::store::{NoSharedStore, SharedStore, StoreError, Versioned};

/// Proxy-Wasm shared data for the core. After the first host error it switches shared
/// data off for good (`off`): per-worker keys and limits from then on.
pub struct HostStore<'a, H> {
    host: &'a H,
    off: &'a mut bool,
    none: NoSharedStore,
    /// What goes on per worker once `off` is set (for the log line).
    users: &'static str,
}

impl<'a, H: Host> HostStore<'a, H> {
    pub fn new(host: &'a H, off: &'a mut bool) -> Self {
        HostStore::for_users(
            host,
            off,
            "caching JWKS, credentials and rate limits per worker",
        )
    }

    /// A store whose `off` switch is another user's (`users`: what falls back, and how).
    pub fn for_users(host: &'a H, off: &'a mut bool, users: &'static str) -> Self {
        HostStore {
            host,
            off,
            none: NoSharedStore,
            users,
        }
    }

    pub fn as_dyn(&mut self) -> &mut dyn SharedStore {
        if *self.off {
            &mut self.none
        } else {
            self
        }
    }

    fn fail(&mut self, what: &str, e: Status) -> StoreError {
        if !*self.off {
            *self.off = true;
            log::warn!(
                "azure_ml_kong: shared data unavailable ({what}: {e:?}); {}",
                self.users
            );
        }
        StoreError::Unavailable
    }
}

impl<H: Host> SharedStore for HostStore<'_, H> {
    fn get(&mut self, key: &str) -> Result<Option<Versioned>, StoreError> {
        match self.host.get_shared_data(key) {
            Ok((Some(v), cas)) => Ok(Some((v, cas))),
            Ok((None, _)) => Ok(None),
            Err(Status::NotFound) => Ok(None),
            Err(e) => Err(self.fail("get", e)),
        }
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        match self.host.set_shared_data(key, value, cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(StoreError::CasMismatch),
            Err(e) => Err(self.fail("set", e)),
        }
    }

    fn delete(&mut self, key: &str, cas: Option<u32>) -> Result<(), StoreError> {
        // Only housekeeping: a host that refuses removal keeps shared data on.
        match self.host.delete_shared_data(key, cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(StoreError::CasMismatch),
            Err(_) => Err(StoreError::Unavailable),
        }
    }
}
