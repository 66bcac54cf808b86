//! `[telemetry]`: the metrics listener (Prometheus text and the readiness probe, plain HTTP)
//! and where traces go (OTLP over gRPC). Both are off unless set.

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

use super::ConfigError;

/// `[telemetry]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Plain-HTTP listener for `GET /metrics` (Prometheus text), `GET /ready` (200 while the
    /// store and the KEK answer, else 503) and `GET /live`. Put it on an address only the
    /// monitoring network reaches: it needs no certificate. Off if absent.
    pub metrics_listen: Option<SocketAddr>,
    /// OTLP/gRPC endpoint traces are exported to (`http://collector:4317`). Off if absent.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` traces carry.
    pub service_name: Option<String>,
    /// The share of calls that start a trace of their own (no sampled `traceparent` from the
    /// caller) whose spans are exported, 0.0 to 1.0 (default 1.0). A call whose caller sent a
    /// `traceparent` follows the caller's decision. Every exported span costs CPU on the
    /// payment path (docs/benchmarks.md, "What telemetry costs").
    pub trace_sample_ratio: Option<f64>,
}

impl TelemetryConfig {
    /// The sample ratio for calls that start their own trace (1.0 unless set).
    #[must_use]
    pub fn trace_sample_ratio(&self) -> f64 {
        self.trace_sample_ratio.unwrap_or(1.0)
    }

    /// The service name traces carry (`vaultd` unless set).
    #[must_use]
    pub fn service_name(&self) -> &str {
        self.service_name.as_deref().unwrap_or("vaultd")
    }

    /// Checks the OTLP endpoint is an `http://` or `https://` URL with a host.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the setting.
    pub(super) fn check(&self, file: &Path) -> Result<(), ConfigError> {
        if let Some(endpoint) = &self.otlp_endpoint {
            let rest = endpoint
                .strip_prefix("http://")
                .or_else(|| endpoint.strip_prefix("https://"));
            if rest.is_none_or(|host| host.is_empty() || host.starts_with('/')) {
                return Err(ConfigError::invalid(
                    file,
                    "telemetry.otlp_endpoint",
                    "must be an http:// or https:// URL with a host, e.g. http://127.0.0.1:4317",
                ));
            }
        }
        if self
            .trace_sample_ratio
            .is_some_and(|ratio| !(0.0..=1.0).contains(&ratio))
        {
            return Err(ConfigError::invalid(
                file,
                "telemetry.trace_sample_ratio",
                "must be from 0.0 to 1.0",
            ));
        }
        if self
            .service_name
            .as_deref()
            .is_some_and(|name| name.is_empty() || name.len() > 64)
        {
            return Err(ConfigError::invalid(
                file,
                "telemetry.service_name",
                "must be 1 to 64 characters",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{STORAGE, load_with, refusal};

    #[test]
    fn telemetry_is_off_unless_set_and_names_a_bad_endpoint() {
        let config = load_with(STORAGE).unwrap();
        assert_eq!(config.telemetry.metrics_listen, None);
        assert_eq!(config.telemetry.otlp_endpoint, None);
        assert_eq!(config.telemetry.service_name(), "vaultd");

        let config = load_with(&format!(
            "{STORAGE}[telemetry]\nmetrics_listen = \"127.0.0.1:0\"\n\
             otlp_endpoint = \"http://127.0.0.1:4317\"\n"
        ))
        .unwrap();
        assert_eq!(
            config.telemetry.metrics_listen,
            Some("127.0.0.1:0".parse().unwrap())
        );

        for bad in ["collector:4317", "http://", "ftp://x"] {
            let err = refusal(&format!("[telemetry]\notlp_endpoint = {bad:?}\n"));
            assert!(err.contains("telemetry.otlp_endpoint"), "{err}");
        }
        let err = refusal("[telemetry]\ntrace_sample_ratio = 1.5\n");
        assert!(err.contains("telemetry.trace_sample_ratio"), "{err}");
        let err = refusal("[telemetry]\nmetrics_listen = \"nowhere\"\n");
        assert!(err.contains("metrics_listen"), "{err}");
    }
}
