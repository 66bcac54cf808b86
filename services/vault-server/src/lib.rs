//! The card vault's server: gRPC over mutual TLS 1.3 in front of `vault_core::Vault`.
//!
//! - `app`: the composition root ([`app::Application`]): config in, a bound server out.
//! - `check`: `vaultd check-config`, everything start would refuse short of reaching the store
//!   and the KEK.
//! - `config`: `vaultd.toml`, one module per section, parsed into typed values; the policy file.
//! - `kek`: opens the configured KEKs as the domain's key ring.
//! - `tls`: rustls settings (TLS 1.3 only, client certificates required) and the accept loop.
//! - `identity`: the caller's identity from its certificate (SPIFFE URI SAN, else CN).
//! - `grpc`: the `TokenService` implementation (protobuf <-> domain).
//! - `admin`: the `KeyAdminService` implementation (key status, rotation, rewrap, shred).
//! - `audit`: the `AuditService` implementation (reads, exports, public keys, prune).
//! - `limits`: the governor call limiter, and the start-up report of ids the card-number rule
//!   refuses.
//! - `status`: the one table from domain errors to gRPC status codes.
//! - `dev`: `vaultd dev`, the embedded default with a generated PKI and a dev KEK.
//! - `pki`: the small CA `dev` and the tests use.
//! - `telemetry`: the `tracing` subscriber: logs, and the layer that feeds `metrics`.
//! - `metrics`: every series `vaultd` exports, defined once; `probe`: the plain-HTTP listener
//!   serving them and the readiness probe; `observe`: the layer every gRPC call passes
//!   through (its span and its metrics); `trace_context`: the caller's W3C trace context.
//! - `hygiene`: process settings applied at start (no core dumps).

pub mod admin;
pub mod app;
pub mod audit;
pub mod check;
pub mod config;
pub mod destinations;
pub mod dev;
pub mod grpc;
pub mod hygiene;
pub mod identity;
pub mod kek;
pub mod limits;
pub mod metrics;
pub mod observe;
pub mod pki;
pub mod probe;
mod reload;
pub mod status;
pub mod telemetry;
pub mod tls;
pub mod trace_context;
