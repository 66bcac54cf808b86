//! The key ports of [`MemoryStore`]: DEK use reservation, rotation, re-encryption, rewrap
//! and the dual-controlled shred.

use std::collections::BTreeSet;

use async_trait::async_trait;

use crate::audit::AuditRecord;
use crate::clock::now;
use crate::error::StoreError;
use crate::ids::{CallerId, MerchantId};
use crate::ports::{
    KeyContext, KeyStore, KeyVersionInfo, ShredRequest, TokenRecord, UseReservation, WrappedKey,
};

use super::{MemoryStore, ShredState, count, order};

#[async_trait]
impl KeyStore for MemoryStore {
    async fn reserve_dek_uses(
        &self,
        merchant: &MerchantId,
        version: u32,
        want: u64,
        limit: u64,
    ) -> Result<UseReservation, StoreError> {
        let mut state = self.lock()?;
        let at = (merchant.as_str().to_owned(), "dek", version);
        let Some(row) = state.keys.get_mut(&at) else {
            return Ok(UseReservation {
                granted: 0,
                total: 0,
            });
        };
        let old = row.uses;
        let new = old.saturating_add(want).min(limit).max(old);
        row.uses = new;
        Ok(UseReservation {
            granted: new - old,
            total: new,
        })
    }

    async fn add_data_key(
        &self,
        key: &WrappedKey,
        audit: Option<&AuditRecord>,
    ) -> Result<bool, StoreError> {
        let mut state = self.lock()?;
        if let Some(audit) = audit {
            state.audit_allowed()?;
            state.append(&self.writer, &[audit])?;
        }
        Ok(state.insert_key(key, now()))
    }

    async fn key_versions(&self, merchant: &MerchantId) -> Result<Vec<KeyVersionInfo>, StoreError> {
        let state = self.lock()?;
        let m = merchant.as_str().to_owned();
        Ok(state
            .keys
            .range((m.clone(), "", 0)..)
            .take_while(|((owner, _, _), _)| *owner == m)
            .map(|((_, purpose, version), row)| KeyVersionInfo {
                key: row.key.clone(),
                created_at: row.created_at,
                uses: row.uses,
                tokens: if *purpose == "dek" {
                    count(
                        state
                            .merchant_tokens(merchant)
                            .filter(|r| r.dek_version == *version)
                            .count(),
                    )
                } else {
                    0
                },
            })
            .collect())
    }

    async fn tokens_under_older_dek(
        &self,
        merchant: &MerchantId,
        newest: u32,
        after: &str,
        limit: u32,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        let state = self.lock()?;
        Ok(state
            .merchant_tokens(merchant)
            .filter(|r| r.dek_version < newest && r.token.as_str() > after)
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .cloned()
            .collect())
    }

    async fn count_tokens_under_older_dek(
        &self,
        merchant: &MerchantId,
        newest: u32,
    ) -> Result<u64, StoreError> {
        let state = self.lock()?;
        Ok(count(
            state
                .merchant_tokens(merchant)
                .filter(|r| r.dek_version < newest)
                .count(),
        ))
    }

    async fn reencrypt_token(
        &self,
        record: &TokenRecord,
        from_version: u32,
    ) -> Result<bool, StoreError> {
        let mut state = self.lock()?;
        let at = (
            record.merchant.as_str().to_owned(),
            record.token.as_str().to_owned(),
        );
        match state.tokens.get_mut(&at) {
            Some(row) if row.dek_version == from_version => {
                row.dek_version = record.dek_version;
                row.sealed = record.sealed.clone();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn keys_not_under(
        &self,
        kek_id: &str,
        after: Option<&KeyContext>,
        limit: u32,
    ) -> Result<Vec<WrappedKey>, StoreError> {
        let state = self.lock()?;
        let after = after.map(order);
        Ok(state
            .keys
            .iter()
            .filter(|(at, row)| row.key.kek_id != kek_id && after.as_ref().is_none_or(|a| *at > a))
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .map(|(_, row)| row.key.clone())
            .collect())
    }

    async fn count_keys_not_under(&self, kek_id: &str) -> Result<u64, StoreError> {
        let state = self.lock()?;
        Ok(count(
            state
                .keys
                .values()
                .filter(|row| row.key.kek_id != kek_id)
                .count(),
        ))
    }

    async fn rewrap_key(&self, old: &WrappedKey, new: &WrappedKey) -> Result<bool, StoreError> {
        if old.context != new.context {
            return Err(StoreError::Corrupt(
                "rewrap changes the key's context".to_owned(),
            ));
        }
        let mut state = self.lock()?;
        match state.keys.get_mut(&order(&old.context)) {
            Some(row) if row.key.kek_id == old.kek_id && row.key.wrapped == old.wrapped => {
                row.key.kek_id.clone_from(&new.kek_id);
                row.key.wrapped.clone_from(&new.wrapped);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn pending_shred(
        &self,
        merchant: &MerchantId,
    ) -> Result<Option<ShredRequest>, StoreError> {
        let state = self.lock()?;
        Ok(state
            .shreds
            .iter()
            .find(|(r, s)| r.merchant == *merchant && *s == ShredState::Pending)
            .map(|(r, _)| r.clone()))
    }

    async fn request_shred(
        &self,
        request: &ShredRequest,
        supersede: Option<&str>,
        audit: &AuditRecord,
    ) -> Result<bool, StoreError> {
        let mut state = self.lock()?;
        let still_pending = state.shreds.iter().any(|(r, s)| {
            r.merchant == request.merchant
                && *s == ShredState::Pending
                && Some(r.request_id.as_str()) != supersede
        });
        let id_taken = state
            .shreds
            .iter()
            .any(|(r, _)| r.request_id == request.request_id);
        if still_pending || id_taken {
            return Ok(false);
        }
        state.audit_allowed()?;
        state.append(&self.writer, &[audit])?;
        for (r, s) in &mut state.shreds {
            if Some(r.request_id.as_str()) == supersede && *s == ShredState::Pending {
                *s = ShredState::Superseded;
            }
        }
        state.shreds.push((request.clone(), ShredState::Pending));
        Ok(true)
    }

    async fn execute_shred(
        &self,
        merchant: &MerchantId,
        request_id: &str,
        approver: &CallerId,
        audit: &AuditRecord,
    ) -> Result<Option<u64>, StoreError> {
        let mut state = self.lock()?;
        let Some(at) = state.shreds.iter().position(|(r, s)| {
            r.request_id == request_id
                && r.merchant == *merchant
                && *s == ShredState::Pending
                && r.requested_by != *approver
        }) else {
            return Ok(None);
        };
        state.audit_allowed()?;
        state.append(&self.writer, &[audit])?;
        if let Some((_, s)) = state.shreds.get_mut(at) {
            *s = ShredState::Executed;
        }
        let before = state.keys.len();
        state
            .keys
            .retain(|(owner, _, _), _| owner.as_str() != merchant.as_str());
        let destroyed = count(before - state.keys.len());
        state.shredded.insert(merchant.as_str().to_owned());
        Ok(Some(destroyed))
    }

    async fn is_shredded(&self, merchant: &MerchantId) -> Result<bool, StoreError> {
        Ok(self.lock()?.shredded.contains(merchant.as_str()))
    }

    async fn merchant_ids(&self) -> Result<Vec<MerchantId>, StoreError> {
        let state = self.lock()?;
        let owner = MerchantId::vault_owner();
        let ids: BTreeSet<&str> = state
            .keys
            .keys()
            .map(|(m, _, _)| m.as_str())
            .chain(state.shredded.iter().map(String::as_str))
            .filter(|m| *m != owner.as_str())
            .collect();
        ids.into_iter()
            .map(|id| {
                MerchantId::from_stored("merchant_id", id)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))
            })
            .collect()
    }
}
