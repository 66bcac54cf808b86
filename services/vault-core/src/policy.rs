//! Who may do what: identities mapped to operations and merchant scopes. Deny by default.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::ids::{CallerId, MerchantId};

/// An operation a policy can grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    /// Swap a PAN for a token.
    Tokenize,
    /// Swap a token back for its PAN.
    Detokenize,
    /// Read a token's non-sensitive metadata.
    Metadata,
    /// Delete a token.
    Delete,
    /// Read the audit log.
    AuditRead,
    /// Manage keys.
    KeysAdmin,
    /// Remove exported audit records older than the online window.
    AuditPrune,
    /// Send a token's card to an approved destination (the forward proxy).
    Forward,
    /// Propose, approve, revoke and list forward destinations.
    DestinationsAdmin,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Self; 9] = [
        Self::Tokenize,
        Self::Detokenize,
        Self::Metadata,
        Self::Delete,
        Self::AuditRead,
        Self::KeysAdmin,
        Self::AuditPrune,
        Self::Forward,
        Self::DestinationsAdmin,
    ];

    /// The operation's name as policy files and audit records spell it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tokenize => "tokenize",
            Self::Detokenize => "detokenize",
            Self::Metadata => "metadata",
            Self::Delete => "delete",
            Self::AuditRead => "audit.read",
            Self::KeysAdmin => "keys.admin",
            Self::AuditPrune => "audit.prune",
            Self::Forward => "forward",
            Self::DestinationsAdmin => "destinations.admin",
        }
    }

    /// The operation named `name`.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.as_str() == name)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The merchants a grant covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MerchantScope {
    /// Every merchant.
    Any,
    /// Only these merchants.
    Only(BTreeSet<MerchantId>),
}

/// What one identity may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Operations allowed.
    pub operations: BTreeSet<Operation>,
    /// Merchants those operations are allowed for.
    pub merchants: MerchantScope,
}

/// The access policy: identities not listed may do nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    grants: BTreeMap<CallerId, Grant>,
}

impl Policy {
    /// A policy from grants. An identity listed twice keeps the last grant; configuration
    /// loaders refuse duplicates before they get here.
    #[must_use]
    pub fn new(grants: impl IntoIterator<Item = (CallerId, Grant)>) -> Self {
        Self {
            grants: grants.into_iter().collect(),
        }
    }

    /// True if `caller` may perform `operation` for `merchant`.
    #[must_use]
    pub fn allows(&self, caller: &CallerId, operation: Operation, merchant: &MerchantId) -> bool {
        self.grants.get(caller).is_some_and(|grant| {
            grant.operations.contains(&operation)
                && match &grant.merchants {
                    MerchantScope::Any => true,
                    MerchantScope::Only(merchants) => merchants.contains(merchant),
                }
        })
    }

    /// True if `caller` may perform `operation` for every merchant (vault-wide operations).
    #[must_use]
    pub fn allows_everywhere(&self, caller: &CallerId, operation: Operation) -> bool {
        self.grants.get(caller).is_some_and(|grant| {
            grant.operations.contains(&operation) && grant.merchants == MerchantScope::Any
        })
    }

    /// True if `caller` may perform `operation` for at least one merchant.
    #[must_use]
    pub fn grants(&self, caller: &CallerId, operation: Operation) -> bool {
        self.grants
            .get(caller)
            .is_some_and(|grant| grant.operations.contains(&operation))
    }

    /// The identities the policy names.
    pub fn identities(&self) -> impl Iterator<Item = &CallerId> {
        self.grants.keys()
    }

    /// The merchants the policy names (in grants limited to some merchants).
    pub fn merchants(&self) -> impl Iterator<Item = &MerchantId> {
        self.grants.values().flat_map(|grant| {
            match &grant.merchants {
                MerchantScope::Any => None,
                MerchantScope::Only(merchants) => Some(merchants.iter()),
            }
            .into_iter()
            .flatten()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merchant(id: &str) -> MerchantId {
        MerchantId::parse("merchant_id", id).unwrap()
    }

    #[test]
    fn deny_by_default_and_scoped_grants() {
        let gateway = CallerId::new("spiffe://vault.test/gateway");
        let payments = CallerId::new("payments");
        let policy = Policy::new([
            (
                gateway.clone(),
                Grant {
                    operations: [Operation::Tokenize, Operation::Metadata].into(),
                    merchants: MerchantScope::Any,
                },
            ),
            (
                payments.clone(),
                Grant {
                    operations: [Operation::Detokenize].into(),
                    merchants: MerchantScope::Only([merchant("m1")].into()),
                },
            ),
        ]);
        assert!(policy.allows(&gateway, Operation::Tokenize, &merchant("any")));
        assert!(!policy.allows(&gateway, Operation::Detokenize, &merchant("m1")));
        assert!(policy.allows(&payments, Operation::Detokenize, &merchant("m1")));
        assert!(!policy.allows(&payments, Operation::Detokenize, &merchant("m2")));
        assert!(!policy.allows(
            &CallerId::new("stranger"),
            Operation::Metadata,
            &merchant("m1")
        ));
        assert!(!Policy::default().allows(&gateway, Operation::Tokenize, &merchant("m1")));
        assert!(policy.allows_everywhere(&gateway, Operation::Tokenize));
        assert!(!policy.allows_everywhere(&payments, Operation::Detokenize));
    }

    #[test]
    fn operation_names_round_trip() {
        for op in Operation::ALL {
            assert_eq!(Operation::from_name(op.as_str()), Some(op));
        }
    }
}
