//! Native test programs for azure-ml-kong: a mock Microsoft Entra ID (`mock-idp`)
//! and a mock Azure ML managed online endpoint (`mock-aml`).
//!
//! Both serve HTTP/1.1 with hyper (`http`: a small tokio runtime per server, synchronous
//! handlers). The library holds everything so that tests can run the servers in-process
//! (`idp::start`/`aml::start` stop when their handle drops; `spawn` serves until exit).

pub mod aml;
pub mod common;
pub mod http;
pub mod idp;
pub mod keys;
