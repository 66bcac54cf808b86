//! End-to-end tests: the real `vaultd` binary, started on port 0 with certificates generated
//! in the test, called over mutual TLS by a tonic client (and by grpcurl).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod harness;

mod abuse;
mod audit_fail_closed;
mod audit_sink;
mod audit_trail;
mod batch;
mod compose;
mod container;
mod crash;
mod forward;
mod front_door;
mod grpcurl;
mod hsm;
mod hygiene;
mod integrity;
mod key_lifecycle;
mod kubernetes;
mod live_config;
mod no_pan_leaks;
mod outage;
mod pg_cluster;
mod pg_tls;
mod processor;
mod python_client;
mod refusals;
mod replicas;
mod round_trip;
mod telemetry;
mod traces;
mod transit;
