//! [`FakeKek`]: a key-encryption key in memory (AES-256-GCM under a random key, bound to each
//! key's context like the real backends), which counts its calls and can be told to fail.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use async_trait::async_trait;
use vault_crypto::{AeadKey, KeyMaterial};

use crate::error::KekError;
use crate::ports::{KeyContext, KeyEncryptionKey, Wrapping};

/// What a [`FakeKek`] is told to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum KekFault {
    /// Nothing fails.
    #[default]
    None,
    /// Every call fails as if the backend were unreachable.
    Down,
    /// Unwraps fail authentication (the wrapped bytes were altered, or the key changed).
    Integrity,
}

impl KekFault {
    fn from_u8(n: u8) -> Self {
        match n {
            1 => Self::Down,
            2 => Self::Integrity,
            _ => Self::None,
        }
    }
}

/// A KEK in memory. Its id is both its name and the id of every key it wraps.
pub struct FakeKek {
    id: String,
    key: AeadKey,
    fault: AtomicU8,
    wraps: AtomicUsize,
    unwraps: AtomicUsize,
}

impl std::fmt::Debug for FakeKek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeKek")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl FakeKek {
    /// A new KEK with a fresh random key, named `id`.
    #[must_use]
    pub fn new(id: &str) -> Arc<Self> {
        Arc::new(Self {
            id: id.to_owned(),
            key: AeadKey::new(&KeyMaterial::generate()),
            fault: AtomicU8::new(KekFault::None as u8),
            wraps: AtomicUsize::new(0),
            unwraps: AtomicUsize::new(0),
        })
    }

    /// Makes the KEK fail as `fault` says from now on.
    pub fn set_fault(&self, fault: KekFault) {
        self.fault.store(fault as u8, Ordering::SeqCst);
    }

    /// Unwraps answered so far (successful or not, once past the fault switch).
    #[must_use]
    pub fn unwraps(&self) -> usize {
        self.unwraps.load(Ordering::SeqCst)
    }

    /// Wraps answered so far.
    #[must_use]
    pub fn wraps(&self) -> usize {
        self.wraps.load(Ordering::SeqCst)
    }

    fn fault(&self) -> KekFault {
        KekFault::from_u8(self.fault.load(Ordering::SeqCst))
    }

    fn reachable(&self) -> Result<(), KekError> {
        match self.fault() {
            KekFault::Down => Err(KekError::unavailable("the fake KEK was told to fail")),
            KekFault::None | KekFault::Integrity => Ok(()),
        }
    }
}

#[async_trait]
impl KeyEncryptionKey for FakeKek {
    fn name(&self) -> &str {
        &self.id
    }

    fn owns(&self, kek_id: &str) -> bool {
        kek_id == self.id
    }

    async fn current_id(&self) -> Result<String, KekError> {
        self.reachable()?;
        Ok(self.id.clone())
    }

    async fn wrap(&self, context: &KeyContext, key: &KeyMaterial) -> Result<Wrapping, KekError> {
        self.reachable()?;
        self.wraps.fetch_add(1, Ordering::SeqCst);
        Ok(Wrapping {
            kek_id: self.id.clone(),
            wrapped: self.key.wrap_key(&context.associated_data(), key),
        })
    }

    async fn unwrap(
        &self,
        context: &KeyContext,
        _kek_id: &str,
        wrapped: &[u8],
    ) -> Result<KeyMaterial, KekError> {
        self.reachable()?;
        self.unwraps.fetch_add(1, Ordering::SeqCst);
        if self.fault() == KekFault::Integrity {
            return Err(KekError::Integrity);
        }
        self.key
            .unwrap_key(&context.associated_data(), wrapped)
            .map_err(|_| KekError::Integrity)
    }

    async fn check(&self) -> Result<(), KekError> {
        self.reachable()
    }
}
