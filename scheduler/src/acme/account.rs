//! The cluster's ACME account: registered once per ACME directory, its credentials (the
//! account URL and its private key, as `instant-acme` serializes them: JSON with the PKCS#8
//! key in base64) kept by an [`AccountStore`] so a restart or another scheduler reuses it
//! rather than registering again (ACME servers limit new accounts).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;

use super::Secret;
use crate::store::StoreError;

/// Where the account's credentials are kept, by directory URL. The scheduler's store
/// implements it; [`MemoryAccountStore`] is for tests.
#[async_trait]
pub trait AccountStore: Send + Sync {
    /// The credentials saved for `directory`, if any.
    async fn account(&self, directory: &str) -> Result<Option<Secret>, StoreError>;
    /// Keeps the credentials of the account just registered with `directory`.
    async fn save_account(&self, directory: &str, credentials: &Secret) -> Result<(), StoreError>;
}

/// An [`AccountStore`] in memory: an account lives as long as the process.
#[derive(Debug, Default)]
pub struct MemoryAccountStore {
    accounts: Mutex<HashMap<String, Secret>>,
}

#[async_trait]
impl AccountStore for MemoryAccountStore {
    async fn account(&self, directory: &str) -> Result<Option<Secret>, StoreError> {
        let accounts = self.accounts.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(accounts.get(directory).cloned())
    }

    async fn save_account(&self, directory: &str, credentials: &Secret) -> Result<(), StoreError> {
        let mut accounts = self.accounts.lock().unwrap_or_else(PoisonError::into_inner);
        accounts.insert(directory.to_string(), credentials.clone());
        Ok(())
    }
}
