//! `[audit]` and `[audit.sink]`: how often the audit trail's head is signed, how long records
//! stay online and exports are kept (PCI DSS 10.5.1), and the optional second copy for a SIEM.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use vault_core::trail::AuditRetention;

use super::{ConfigError, units};

/// Audit trail settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Time between checkpoints of this writer's chain head (`checkpoint_interval_secs`;
    /// skipped while it has not moved). Records written since the last checkpoint are protected
    /// by the hash chain only, so this bounds what an undetected truncation of the newest
    /// records can remove. At most [`AuditConfig::MAX_CHECKPOINT_INTERVAL`].
    #[serde(
        rename = "checkpoint_interval_secs",
        deserialize_with = "units::secs",
        default = "default_checkpoint_interval"
    )]
    pub checkpoint_interval: Duration,
    /// Days records stay online (PCI DSS 10.5.1: at least three months): `vaultctl audit
    /// prune` never removes a younger record. From 90 to `retain_days`.
    #[serde(default = "default_online_days")]
    pub online_days: u32,
    /// Days an export must be kept (PCI DSS 10.5.1: at least twelve months); exports say until
    /// when. At least 365.
    #[serde(default = "default_retain_days")]
    pub retain_days: u32,
    /// Replaces `online_days` with no 90-day floor (0: anything exported may go at once). Not
    /// PCI compliant below 90; for tests. The vault warns at start when it is set.
    #[serde(default)]
    pub danger_online_days: Option<u32>,
    /// A second copy of every committed record for a SIEM (`[audit.sink]`), if wanted.
    #[serde(default)]
    pub sink: Option<AuditSinkConfig>,
}

/// `[audit.sink]`: JSON lines (the export's record lines) to standard output or a file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSinkConfig {
    /// `-` for standard output, else a file (relative to this file) records are appended to.
    pub path: String,
    /// If true, a record the sink cannot take fails its call (UNAVAILABLE; no PAN released),
    /// as the database's audit table does. If false, the failure is only logged.
    #[serde(default)]
    pub required: bool,
}

impl AuditConfig {
    /// The longest interval allowed.
    pub const MAX_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(3_600);
    /// PCI DSS 10.5.1: the last three months immediately available.
    pub const MIN_ONLINE_DAYS: u32 = 90;
    /// PCI DSS 10.5.1: twelve months kept.
    pub const MIN_RETAIN_DAYS: u32 = 365;
    /// A hundred years.
    pub const MAX_RETAIN_DAYS: u32 = 36_500;

    pub(super) fn resolve_paths(&mut self, base: &Path) {
        if let Some(sink) = self.sink.as_mut()
            && sink.path != "-"
        {
            sink.path = base.join(&sink.path).display().to_string();
        }
    }

    pub(super) fn check(&self, file: &Path) -> Result<(), ConfigError> {
        if self.checkpoint_interval.is_zero()
            || self.checkpoint_interval > Self::MAX_CHECKPOINT_INTERVAL
        {
            return Err(ConfigError::Invalid {
                path: file.to_owned(),
                setting: "audit.checkpoint_interval_secs".to_owned(),
                problem: format!(
                    "must be from 1 to {}",
                    Self::MAX_CHECKPOINT_INTERVAL.as_secs()
                ),
            });
        }
        let invalid = |setting: &str, problem: String| ConfigError::Invalid {
            path: file.to_owned(),
            setting: setting.to_owned(),
            problem,
        };
        if self.retain_days < Self::MIN_RETAIN_DAYS || self.retain_days > Self::MAX_RETAIN_DAYS {
            return Err(invalid(
                "audit.retain_days",
                format!(
                    "must be from {} to {}",
                    Self::MIN_RETAIN_DAYS,
                    Self::MAX_RETAIN_DAYS
                ),
            ));
        }
        if self.online_days < Self::MIN_ONLINE_DAYS || self.online_days > self.retain_days {
            return Err(invalid(
                "audit.online_days",
                format!(
                    "must be from {} to audit.retain_days ({})",
                    Self::MIN_ONLINE_DAYS,
                    self.retain_days
                ),
            ));
        }
        if self
            .danger_online_days
            .is_some_and(|d| d > self.retain_days)
        {
            return Err(invalid(
                "audit.danger_online_days",
                format!("must not exceed audit.retain_days ({})", self.retain_days),
            ));
        }
        Ok(())
    }

    /// The retention rules the vault enforces.
    #[must_use]
    pub fn retention(&self) -> AuditRetention {
        AuditRetention {
            online_days: self.danger_online_days.unwrap_or(self.online_days),
            retain_days: self.retain_days,
        }
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            checkpoint_interval: default_checkpoint_interval(),
            online_days: default_online_days(),
            retain_days: default_retain_days(),
            danger_online_days: None,
            sink: None,
        }
    }
}

fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(60)
}

fn default_online_days() -> u32 {
    AuditRetention::default().online_days
}

fn default_retain_days() -> u32 {
    AuditRetention::default().retain_days
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{STORAGE, load_with, refusal};

    #[test]
    fn retention_follows_pci_unless_told_otherwise() {
        for (table, setting) in [
            ("[audit]\nonline_days = 30\n", "audit.online_days"),
            (
                "[audit]\nonline_days = 400\nretain_days = 365\n",
                "audit.online_days",
            ),
            ("[audit]\nretain_days = 364\n", "audit.retain_days"),
            ("[audit]\nretain_days = 4000000\n", "audit.retain_days"),
            (
                "[audit]\ndanger_online_days = 366\n",
                "audit.danger_online_days",
            ),
            (
                "[audit]\ncheckpoint_interval_secs = 0\n",
                "audit.checkpoint_interval_secs",
            ),
            (
                "[audit]\ncheckpoint_interval_secs = 3601\n",
                "audit.checkpoint_interval_secs",
            ),
        ] {
            let err = refusal(table);
            assert!(err.contains(setting), "{table}: {err}");
        }
        let config = load_with(&format!(
            "{STORAGE}[audit]\nonline_days = 120\ndanger_online_days = 0\n"
        ))
        .unwrap();
        let retention = config.audit.retention();
        assert_eq!((retention.online_days, retention.retain_days), (0, 365));
    }
}
