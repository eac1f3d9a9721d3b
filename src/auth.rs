//! API tokens: bearer tokens with scopes, stored only as SHA-256 hashes.
//!
//! Tokens are 256-bit random strings, so a plain SHA-256 is enough to make a leaked database
//! or config useless to an attacker; no slow hash is needed. On first start of an installation
//! an `admin` token is generated into `<data_dir>/admin.token` (mode 0600), where the CLI finds it.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::config::TokenConfig;
pub use crate::domain::Scope;
use crate::store::{now_ms, Store, StoreError};

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Token name.
    pub name: String,
    /// Its scopes.
    pub scopes: Vec<Scope>,
}

impl Principal {
    /// Whether any of `allowed` is held (admin holds all).
    pub fn has_any(&self, allowed: &[Scope]) -> bool {
        self.scopes.iter().any(|s| *s == Scope::Admin || allowed.contains(s))
    }
}

/// Hex SHA-256 of a token.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A fresh random token.
pub fn generate_token() -> String {
    format!("vmf_{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// Checks tokens against the configured hashes and the database.
#[derive(Debug, Clone)]
pub struct Authenticator {
    configured: HashMap<String, Principal>,
    store: Store,
}

impl Authenticator {
    /// From the config's tokens and the store.
    pub fn new(tokens: &[TokenConfig], store: Store) -> Self {
        let configured = tokens
            .iter()
            .map(|t| {
                let scopes = t.scopes.iter().filter_map(|s| Scope::parse(s)).collect();
                (t.sha256.to_ascii_lowercase(), Principal { name: t.name.clone(), scopes })
            })
            .collect();
        Self { configured, store }
    }

    /// The principal for a bearer token, if it is known.
    ///
    /// # Errors
    /// [`StoreError`] when the database cannot be asked.
    pub async fn authenticate(&self, token: &str) -> Result<Option<Principal>, StoreError> {
        let hash = hash_token(token);
        if let Some(p) = self.configured.get(&hash) {
            return Ok(Some(p.clone()));
        }
        Ok(self
            .store
            .token_by_hash(&hash)
            .await?
            .map(|(name, scopes)| Principal { name, scopes: scopes.split(',').filter_map(Scope::parse).collect() }))
    }
}

/// Makes sure the installation has an admin token; writes a new one to `path` (mode 0600).
///
/// # Errors
/// I/O or database errors.
pub async fn ensure_admin_token(store: &Store, path: &Path) -> anyhow::Result<bool> {
    if store.token_exists("admin").await? {
        return Ok(false);
    }
    let token = generate_token();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(token.as_bytes())?;
    f.write_all(b"\n")?;
    store.insert_token("admin", &hash_token(&token), "admin", now_ms()).await?;
    Ok(true)
}
