//! The node's verified tokens (`crate::shared_verified`) as this worker reaches them, for
//! the configuration it runs.

use crate::shared_verified::SharedVerified;

/// Where the node's verified tokens are shared, for one configuration.
pub struct SharedShelf {
    pub slots: SharedVerified,
    /// Its own shared-data calls failed: a full zone must not switch off key sets and
    /// rate limits, which stay on the key caches' switch (`KeyManager::store_off`).
    pub off: bool,
    /// Mixed into every key-set generation: records of another configuration (providers,
    /// audiences, skew, secrets) are never taken.
    pub config_id: u64,
}

impl SharedShelf {
    pub fn off() -> SharedShelf {
        SharedShelf {
            slots: SharedVerified::new(0),
            off: true,
            config_id: 0,
        }
    }

    /// For a configuration document (`config`'s bytes) as compiled. Not used while the
    /// key caches have shared data off (configured so, or after a host error).
    pub fn new(config: &[u8], max_entries: usize) -> SharedShelf {
        use sha2::Digest as _;
        let d = sha2::Sha256::digest(config);
        let mut first = [0u8; 8];
        first.copy_from_slice(d.get(..8).unwrap_or(&[0; 8]));
        SharedShelf {
            slots: SharedVerified::new(max_entries),
            off: false,
            config_id: u64::from_le_bytes(first),
        }
    }

    /// The record scope for a key-set generation under this configuration.
    pub fn scope(&self, generation: u64) -> u64 {
        self.config_id ^ generation.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
}
