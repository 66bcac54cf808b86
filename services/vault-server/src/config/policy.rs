//! `[policy]` and the policy file it names: which caller may do which operations for which
//! merchants.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use vault_core::ids::{CallerId, MerchantId};
use vault_core::policy::{Grant, MerchantScope, Operation, Policy};

use super::ConfigError;
use crate::identity::{IdentityConfig, is_spiffe_id, listable};

/// Where the policy lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// The policy file (TOML).
    pub path: PathBuf,
}

impl PolicyConfig {
    pub(super) fn resolve_paths(&mut self, base: &Path) {
        self.path = base.join(&self.path);
    }
}

/// The policy file's shape.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    caller: Vec<CallerEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CallerEntry {
    identity: String,
    operations: Vec<String>,
    merchants: Vec<String>,
}

/// A policy file as loaded: the policy, and the SHA-256 of the very bytes it was parsed from
/// (the digest `vault.start` records, so an auditor sees which policy each writer served under).
#[derive(Debug)]
pub struct LoadedPolicy {
    /// Who may do what.
    pub policy: Policy,
    /// The SHA-256 of the file's bytes, as read once and parsed.
    pub sha256: [u8; 32],
}

/// Reads a policy file, once: a list of `[[caller]]` tables, each with `identity` (SPIFFE ID or
/// CN), `operations` and `merchants` (`["*"]` for all). Identities not listed may do nothing.
/// The digest is of the same bytes the policy was parsed from.
///
/// # Errors
/// [`ConfigError`] for a file that cannot be read or is not UTF-8 TOML, unknown operations,
/// malformed merchant ids, duplicate identities, and identities no certificate could name under
/// `rules` (`identity::listable`; without `cn_fallback`, anything but a SPIFFE ID).
pub fn load_policy(path: &Path, rules: IdentityConfig) -> Result<LoadedPolicy, ConfigError> {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(LoadedPolicy {
        policy: parse_policy(path, &bytes, rules)?,
        sha256: vault_crypto::sha256(&bytes),
    })
}

/// The policy in `bytes`, the contents of the policy file `path` (named in errors).
fn parse_policy(path: &Path, bytes: &[u8], rules: IdentityConfig) -> Result<Policy, ConfigError> {
    let text = std::str::from_utf8(bytes).map_err(|e| ConfigError::Read {
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })?;
    let file: PolicyFile = toml::from_str(text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source: Box::new(source),
    })?;
    let invalid = |index: usize, key: &str, problem: String| ConfigError::Invalid {
        path: path.to_owned(),
        setting: format!("caller[{index}].{key}"),
        problem,
    };
    let mut grants = BTreeMap::new();
    for (index, entry) in file.caller.into_iter().enumerate() {
        listable(&entry.identity)
            .map_err(|problem| invalid(index, "identity", problem.to_owned()))?;
        if !rules.cn_fallback && !is_spiffe_id(&entry.identity) {
            return Err(invalid(
                index,
                "identity",
                "must be a SPIFFE ID: [identity] cn_fallback = false, so no certificate can name \
                 a caller by its CN"
                    .to_owned(),
            ));
        }
        let mut operations = BTreeSet::new();
        for name in &entry.operations {
            let op = Operation::from_name(name).ok_or_else(|| {
                let known: Vec<_> = Operation::ALL.iter().map(|op| op.as_str()).collect();
                invalid(
                    index,
                    "operations",
                    format!("unknown operation {name:?}; known: {}", known.join(", ")),
                )
            })?;
            operations.insert(op);
        }
        let merchants = if entry.merchants.iter().any(|m| m == "*") {
            if entry.merchants.len() != 1 {
                return Err(invalid(
                    index,
                    "merchants",
                    "\"*\" must stand alone".to_owned(),
                ));
            }
            MerchantScope::Any
        } else {
            let mut only = BTreeSet::new();
            for m in &entry.merchants {
                only.insert(
                    // Shape only: an id the card-number rule refuses may name a merchant
                    // from before the rule tightened; vaultd reports it at start.
                    MerchantId::parse_shape("merchants", m)
                        .map_err(|e| invalid(index, "merchants", e.problem.to_owned()))?,
                );
            }
            MerchantScope::Only(only)
        };
        let identity = CallerId::new(entry.identity);
        if grants
            .insert(
                identity.clone(),
                Grant {
                    operations,
                    merchants,
                },
            )
            .is_some()
        {
            // Not the identity itself: it may be one the card-number rule refuses.
            return Err(invalid(index, "identity", "is listed twice".to_owned()));
        }
    }
    Ok(Policy::new(grants))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::write;

    #[test]
    fn policy_parses_and_refuses_mistakes() {
        let dir = tempfile::tempdir().unwrap();
        let good = write(
            dir.path(),
            "good.toml",
            r#"
[[caller]]
identity = "spiffe://vault.test/gateway"
operations = ["tokenize", "metadata"]
merchants = ["*"]

[[caller]]
identity = "payments"
operations = ["detokenize"]
merchants = ["m1", "m2"]
"#,
        );
        let loaded = load_policy(&good, IdentityConfig::default()).unwrap();
        // The digest is of the file's bytes, exactly as read and parsed.
        let bytes = std::fs::read(&good).unwrap();
        assert_eq!(loaded.sha256, vault_crypto::sha256(&bytes));
        let policy = loaded.policy;
        let m1 = MerchantId::parse("m", "m1").unwrap();
        let m3 = MerchantId::parse("m", "m3").unwrap();
        assert!(policy.allows(&CallerId::new("payments"), Operation::Detokenize, &m1));
        assert!(!policy.allows(&CallerId::new("payments"), Operation::Detokenize, &m3));

        for (name, text, expect) in [
            (
                "op.toml",
                "[[caller]]\nidentity = \"a\"\noperations = [\"detokenise\"]\nmerchants = [\"*\"]\n",
                "unknown operation",
            ),
            (
                "dup.toml",
                "[[caller]]\nidentity = \"a\"\noperations = []\nmerchants = [\"*\"]\n[[caller]]\nidentity = \"a\"\noperations = []\nmerchants = [\"*\"]\n",
                "listed twice",
            ),
            (
                "star.toml",
                "[[caller]]\nidentity = \"a\"\noperations = []\nmerchants = [\"*\", \"m1\"]\n",
                "stand alone",
            ),
            (
                "space.toml",
                "[[caller]]\nidentity = \"payments \"\noperations = []\nmerchants = [\"*\"]\n",
                "caller[0].identity: must not begin or end with a space",
            ),
            (
                "reserved.toml",
                "[[caller]]\nidentity = \"VaultD\"\noperations = []\nmerchants = [\"*\"]\n",
                "caller[0].identity: is a name the vault records its own events",
            ),
            (
                "spiffe.toml",
                "[[caller]]\nidentity = \"SPIFFE://vault.test/x\"\noperations = []\nmerchants = [\"*\"]\n",
                "caller[0].identity: is not a SPIFFE ID",
            ),
        ] {
            let path = write(dir.path(), name, text);
            let err = load_policy(&path, IdentityConfig::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(expect), "{err}");
        }
        // Without the CN fallback, a CN in the policy could never be named.
        let err = load_policy(&good, IdentityConfig { cn_fallback: false })
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("caller[1].identity: must be a SPIFFE ID"),
            "{err}"
        );
    }

    #[test]
    fn a_policy_that_is_not_utf8_or_missing_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latin1.toml");
        std::fs::write(&path, b"[[caller]]\nidentity = \"caf\xe9\"\n").unwrap();
        let err = load_policy(&path, IdentityConfig::default()).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
        assert!(err.to_string().contains("latin1.toml"), "{err}");
        let missing = dir.path().join("missing.toml");
        let err = load_policy(&missing, IdentityConfig::default()).unwrap_err();
        assert!(err.to_string().contains("missing.toml"), "{err}");
    }
}
