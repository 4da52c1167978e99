//! Native test programs for azure-ml-kong: a mock Microsoft Entra ID (`mock-idp`)
//! and a mock Azure ML managed online endpoint (`mock-aml`).
//!
//! Both are small synchronous servers on `http` (a thread per connection, keep-alive). The library holds everything so
//! that tests can run the servers in-process (`idp::spawn`, `aml::spawn`).

pub mod aml;
pub mod common;
pub mod http;
pub mod idp;
pub mod keys;
