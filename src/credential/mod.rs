//! The gateway's own identity towards Azure ML (`upstream_credentials`): what token
//! request to send, how to read its answer, and when to refresh. Sans-IO like the key
//! cache: time, randomness and responses come in as values.

pub mod cache;
pub mod grant;
pub mod schedule;
pub mod spec;
