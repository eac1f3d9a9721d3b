//! Secrets for jobs: project environment variables, contexts and SSH keys, sealed at rest.
//!
//! # Design
//! Every value is sealed with AES-256-GCM under the installation's secrets key, with a fresh
//! random nonce and, as associated data, the row it belongs to (`kind`, owner, name): a sealed
//! value copied into another row does not open. The store records which key sealed each value
//! (a key id, a hash of the key) and which key the installation uses now, so a process started
//! with another key refuses to start instead of writing values nobody else can read, and a
//! replica that finds values under a newer key re-reads its key file (another replica rotated
//! it). Values leave the store only on their way to a job's VM; the API shows names and a hint.
//! Job output is masked on the way to the store ([`Masker`]).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::store::{SecretRow, Store, StoreError};

mod mask;
mod seal;
pub use mask::Masker;
pub use seal::{check_context_name, check_value, check_var_name, hint, ssh_fingerprints, Cipher};

/// Errors of the secrets service. Never carries a value or a key.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// Something the caller gave is wrong.
    #[error("{0}")]
    Invalid(String),
    /// The key is missing, unreadable or not the installation's.
    #[error("secrets key: {0}")]
    Key(String),
    /// A sealed value did not open under the key.
    #[error("{0}")]
    Sealed(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub use crate::store::{CONTEXT_ENV, DEPLOY_KEY, PROJECT_ENV, SSH_KEY};

/// Values shorter than this are not masked in output (as CircleCI).
pub const MASK_MIN: usize = 4;
/// What a masked value prints as.
pub const MASK: &str = "********";
/// Largest environment variable value.
pub const MAX_VALUE: usize = 64 << 10;
/// Largest SSH private key.
pub const MAX_KEY: usize = 16 << 10;
/// Variables one project or context may hold.
pub const MAX_VARS: usize = 1_000;

/// Where the key comes from.
#[derive(Debug, Clone)]
enum Source {
    File(PathBuf),
    Environment,
}

/// The secrets key of one process, and where it came from.
#[derive(Debug)]
pub struct Secrets {
    cipher: RwLock<Arc<Cipher>>,
    source: Source,
    store: Store,
    install_id: String,
}

/// An SSH key a job may install.
#[derive(Clone)]
pub struct SshKey {
    /// `SHA256:…`.
    pub sha256: String,
    /// `aa:bb:…`.
    pub md5: String,
    /// The host it is for (all hosts when `None`).
    pub host: Option<String>,
    /// The private key.
    pub private_key: String,
}

/// What a job gets: its variables (the project's, then each context's, later ones winning), its
/// project's SSH keys, and a masker for all of their values.
#[derive(Clone, Default)]
pub struct JobSecrets {
    /// Variables, in the order they apply.
    pub env: Vec<(String, String)>,
    /// The project's SSH keys.
    pub ssh_keys: Vec<SshKey>,
    /// The job's checkout deploy key.
    pub deploy_key: Option<String>,
    /// Masks every value in output.
    pub masker: Masker,
}

impl JobSecrets {
    /// Rebuilds the masker from every value held.
    pub fn remask(&mut self) {
        let values = self
            .env
            .iter()
            .map(|(_, v)| v.as_bytes().to_vec())
            .chain(self.ssh_keys.iter().map(|k| k.private_key.as_bytes().to_vec()))
            .chain(self.deploy_key.iter().map(|k| k.as_bytes().to_vec()));
        self.masker = Masker::new(values);
    }
}

/// A variable as listed: its name and a hint, never its value.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VarView {
    /// Name.
    pub name: String,
    /// `xxxx` and the last 4 characters of a value of 8 or more.
    pub value: String,
    /// When it was set (RFC 3339).
    pub updated_at: String,
}

/// An SSH key as listed.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SshKeyView {
    /// `SHA256:…`.
    pub fingerprint: String,
    /// MD5 fingerprint, `aa:bb:…`.
    pub md5: String,
    /// The host it is for; empty for all.
    pub host: String,
    /// When it was added (RFC 3339).
    pub created_at: String,
}

/// Writes `text` to `path` (mode 0600) atomically: a reader sees the old file or the new one.
fn write_key_file(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Creates `path` holding `text` (mode 0600), complete or not at all; `AlreadyExists` when
/// another process created it first.
fn create_key_file(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("new-{}-{}", std::process::id(), crate::store::short_id()));
    write_key_file(&tmp, text)?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    linked
}

fn read_key_file(path: &Path) -> Result<Cipher, SecretsError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| SecretsError::Key(format!("reading {}: {}", path.display(), e.kind())))?;
    Cipher::from_text(&text).map_err(|e| SecretsError::Key(format!("{}: {e}", path.display())))
}

impl Secrets {
    /// Loads the key (`key`, from the environment, else the key file) and checks it against the
    /// key the store's values are sealed with. On an installation's first start with no key, a
    /// key is generated into `key_file` (mode 0600); a later start whose file is missing is
    /// refused, never given a new key.
    ///
    /// # Errors
    /// [`SecretsError::Key`] naming the file or variable and what is wrong, never the key.
    pub async fn load(
        store: Store,
        install_id: &str,
        key: Option<&str>,
        key_file: &Path,
    ) -> Result<Arc<Self>, SecretsError> {
        let recorded = store.secrets_key_id().await?;
        let (cipher, source) = match key {
            Some(text) => {
                let c = Cipher::from_text(text)
                    .map_err(|e| SecretsError::Key(format!("secrets.key (VMFLEET__SECRETS__KEY): {e}")))?;
                (c, Source::Environment)
            }
            None if key_file.exists() => {
                let mut c = read_key_file(key_file)?;
                // A rotation that wrote the new key but died before its transaction committed
                // leaves the old key beside it; the values are still sealed under that one.
                let previous = key_file.with_extension("previous");
                if recorded.as_deref().is_some_and(|id| id != c.id()) && previous.exists() {
                    let old = read_key_file(&previous)?;
                    if recorded.as_deref() == Some(old.id()) {
                        write_key_file(key_file, &old.to_text())
                            .map_err(|e| SecretsError::Key(format!("writing {}: {}", key_file.display(), e.kind())))?;
                        let _ = std::fs::remove_file(&previous);
                        tracing::warn!(
                            key_id = old.id(),
                            "an unfinished key rotation was undone; the key in use is the previous one"
                        );
                        c = old;
                    }
                }
                (c, Source::File(key_file.to_path_buf()))
            }
            None => {
                if let Some(id) = &recorded {
                    return Err(SecretsError::Key(format!(
                        "{} is missing, and this installation's values are sealed under key {id}: copy the key file \
                         from another replica or set VMFLEET__SECRETS__KEY",
                        key_file.display()
                    )));
                }
                // Replicas sharing a data directory may start together: the first key file
                // linked into place wins, and the others read it.
                let c = Cipher::generate();
                let c = match create_key_file(key_file, &c.to_text()) {
                    Ok(()) => {
                        tracing::info!(path = %key_file.display(), key_id = c.id(), "generated the secrets key");
                        c
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_key_file(key_file)?,
                    Err(e) => return Err(SecretsError::Key(format!("writing {}: {}", key_file.display(), e.kind()))),
                };
                (c, Source::File(key_file.to_path_buf()))
            }
        };
        let now = crate::store::now_ms();
        let installed = store.record_secrets_key_id(cipher.id(), now).await?;
        if installed != cipher.id() {
            return Err(SecretsError::Key(format!(
                "this process has key {}, but the installation's values are sealed under key {installed}: give every \
                 replica the same key",
                cipher.id()
            )));
        }
        let me = Arc::new(Self { cipher: RwLock::new(Arc::new(cipher)), source, store, install_id: install_id.into() });
        me.seal_plain_deploy_keys().await?;
        Ok(me)
    }

    /// The key in use.
    pub fn cipher(&self) -> Arc<Cipher> {
        self.cipher.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The key for values sealed under `key_id`: the one in use, or, when another replica
    /// rotated the key, the key file's new one.
    fn cipher_for(&self, key_id: &str) -> Result<Arc<Cipher>, SecretsError> {
        let c = self.cipher();
        if c.id() == key_id {
            return Ok(c);
        }
        if let Source::File(path) = &self.source {
            if let Ok(fresh) = read_key_file(path) {
                if fresh.id() == key_id {
                    let fresh = Arc::new(fresh);
                    *self.cipher.write().unwrap_or_else(|p| p.into_inner()) = fresh.clone();
                    tracing::info!(key_id, "the secrets key was rotated; using the key file's new key");
                    return Ok(fresh);
                }
            }
        }
        Err(SecretsError::Key(format!(
            "values are sealed under key {key_id}, and this process has key {}: the key was rotated; give this \
             process the new key and restart it",
            c.id()
        )))
    }

    /// Opens a stored row.
    ///
    /// # Errors
    /// As [`Cipher::open`]; [`SecretsError::Key`] for a key this process lacks.
    pub fn open(&self, row: &SecretRow) -> Result<Vec<u8>, SecretsError> {
        self.cipher_for(&row.key_id)?.open(&row.kind, &row.owner, &row.name, &row.sealed)
    }

    /// Opens a row as text.
    ///
    /// # Errors
    /// As [`Secrets::open`].
    pub fn open_text(&self, row: &SecretRow) -> Result<String, SecretsError> {
        String::from_utf8(self.open(row)?).map_err(|_| SecretsError::Sealed(format!("{} is not UTF-8", row.name)))
    }

    /// A row sealing `value` under the key in use.
    pub fn seal_row(
        &self,
        kind: &str,
        owner: &str,
        name: &str,
        host: Option<&str>,
        alias: Option<&str>,
        value: &[u8],
    ) -> SecretRow {
        let c = self.cipher();
        let now = crate::store::now_ms();
        SecretRow {
            kind: kind.into(),
            owner: owner.into(),
            name: name.into(),
            host: host.map(str::to_string),
            alias: alias.map(str::to_string),
            sealed: c.seal(kind, owner, name, value),
            key_id: c.id().to_string(),
            created_at: now,
            updated_at: now,
        }
    }

    fn event(&self, action: &str, actor: &str, target: &str, payload: serde_json::Value) -> crate::store::AuditEvent {
        let payload = payload.to_string();
        crate::store::AuditEvent::new(action, actor, target, &payload, &self.install_id, crate::store::now_ms())
    }

    /// Seals and stores a value, re-sealing once under the installation's key when another
    /// replica rotated it meanwhile. The audit event names the row, never the value.
    async fn put(
        &self,
        (kind, owner, name): (&str, &str, &str),
        host: Option<&str>,
        alias: Option<&str>,
        value: &[u8],
        actor: &str,
    ) -> Result<(), SecretsError> {
        let action = match kind {
            PROJECT_ENV => "project.env.set",
            CONTEXT_ENV => "context.env.set",
            _ => "project.ssh_key.add",
        };
        let audit = self.event(action, actor, owner, serde_json::json!({"name": name, "host": host}));
        for _ in 0..2 {
            let row = self.seal_row(kind, owner, name, host, alias, value);
            match self.store.put_secret(&row, MAX_VARS, &audit).await? {
                None => return Ok(()),
                Some(current) => {
                    self.cipher_for(&current)?;
                }
            }
        }
        Err(SecretsError::Key("the installation's key changed twice while a value was written; try again".into()))
    }

    /// Sets a project's variable.
    ///
    /// # Errors
    /// [`SecretsError::Invalid`] for a bad name or value; store errors.
    pub async fn set_project_var(
        &self,
        project: &str,
        name: &str,
        value: &str,
        actor: &str,
    ) -> Result<(), SecretsError> {
        check_var_name(name)?;
        check_value(name, value)?;
        self.put((PROJECT_ENV, project, name), None, None, value.as_bytes(), actor).await
    }

    /// Sets a context's variable.
    ///
    /// # Errors
    /// As [`Secrets::set_project_var`]; [`StoreError::NotFound`] for an unknown context.
    pub async fn set_context_var(
        &self,
        context: &str,
        name: &str,
        value: &str,
        actor: &str,
    ) -> Result<(), SecretsError> {
        self.store.context(context).await?;
        check_var_name(name)?;
        check_value(name, value)?;
        self.put((CONTEXT_ENV, context, name), None, None, value.as_bytes(), actor).await
    }

    /// Adds a project's SSH key; returns its view.
    ///
    /// # Errors
    /// [`SecretsError::Invalid`] for text that is not a private key, or a bad host.
    pub async fn add_ssh_key(
        &self,
        project: &str,
        private_key: &str,
        host: Option<&str>,
        actor: &str,
    ) -> Result<SshKeyView, SecretsError> {
        let host = host.map(str::trim).filter(|h| !h.is_empty());
        if let Some(h) = host {
            let ok = h.len() <= 253
                && h.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '*' | '?'));
            if !ok {
                return Err(SecretsError::Invalid(format!("{h:?} is not a host name")));
            }
        }
        let (sha, md5, _) = ssh_fingerprints(private_key)?;
        let mut key = private_key.trim_end().to_string();
        key.push('\n');
        self.put((SSH_KEY, project, &sha), host, Some(&md5), key.as_bytes(), actor).await?;
        let now = crate::store::now_ms();
        Ok(SshKeyView {
            fingerprint: sha,
            md5,
            host: host.unwrap_or_default().into(),
            created_at: crate::store::rfc3339(now),
        })
    }

    /// Removes a value: a project's or context's variable, or a project's SSH key (by either
    /// fingerprint).
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when there is none.
    pub async fn remove(&self, kind: &str, owner: &str, name: &str, actor: &str) -> Result<(), SecretsError> {
        let mut name = name.to_string();
        if kind == SSH_KEY {
            let md5 = name.trim_start_matches("MD5:").to_ascii_lowercase();
            if let Some(k) = self
                .store
                .secrets_of(SSH_KEY, owner)
                .await?
                .into_iter()
                .find(|k| k.alias.as_deref() == Some(md5.as_str()))
            {
                name = k.name;
            }
        }
        let action = match kind {
            PROJECT_ENV => "project.env.unset",
            CONTEXT_ENV => "context.env.unset",
            _ => "project.ssh_key.remove",
        };
        let audit = self.event(action, actor, owner, serde_json::json!({"name": name}));
        if self.store.delete_secret(kind, owner, &name, &audit).await? {
            Ok(())
        } else {
            Err(StoreError::NotFound(format!("{} {name} of {owner}", kind.replace('_', " "))).into())
        }
    }

    /// A project's or context's variables, as listed.
    ///
    /// # Errors
    /// A value that does not open; store errors.
    pub async fn list_vars(&self, kind: &str, owner: &str) -> Result<Vec<VarView>, SecretsError> {
        let mut out = Vec::new();
        for r in self.store.secrets_of(kind, owner).await? {
            let value = self.open_text(&r)?;
            out.push(VarView {
                name: r.name.clone(),
                value: hint(&value),
                updated_at: crate::store::rfc3339(r.updated_at),
            });
        }
        Ok(out)
    }

    /// A project's SSH keys, as listed.
    ///
    /// # Errors
    /// Store errors.
    pub async fn list_ssh_keys(&self, project: &str) -> Result<Vec<SshKeyView>, SecretsError> {
        Ok(self
            .store
            .secrets_of(SSH_KEY, project)
            .await?
            .into_iter()
            .map(|r| SshKeyView {
                fingerprint: r.name,
                md5: r.alias.unwrap_or_default(),
                host: r.host.unwrap_or_default(),
                created_at: crate::store::rfc3339(r.created_at),
            })
            .collect())
    }

    /// Creates a context, usable by `projects` only (every project when empty).
    ///
    /// # Errors
    /// [`SecretsError::Invalid`] for a bad name or project; a context of that name exists.
    pub async fn create_context(
        &self,
        name: &str,
        projects: &[String],
        actor: &str,
    ) -> Result<crate::store::ContextRow, SecretsError> {
        check_context_name(name)?;
        for p in projects {
            crate::fleet::validate_project(p).map_err(|e| SecretsError::Invalid(e.to_string()))?;
        }
        let row = crate::store::ContextRow {
            name: name.into(),
            projects: serde_json::to_string(projects).unwrap_or_else(|_| "[]".into()),
            created_at: crate::store::now_ms(),
        };
        let audit = self.event("context.create", actor, name, serde_json::json!({"projects": projects}));
        self.store.create_context(&row, &audit).await?;
        Ok(row)
    }

    /// Deletes a context and its variables.
    ///
    /// # Errors
    /// [`StoreError::NotFound`].
    pub async fn delete_context(&self, name: &str, actor: &str) -> Result<(), SecretsError> {
        let audit = self.event("context.delete", actor, name, serde_json::json!({}));
        Ok(self.store.delete_context(name, &audit).await?)
    }

    /// Checks that `project` may use every one of `contexts`.
    ///
    /// # Errors
    /// [`SecretsError::Invalid`] naming the context and why.
    pub async fn check_contexts(
        &self,
        project: &str,
        contexts: &[String],
    ) -> Result<Vec<crate::store::ContextRow>, SecretsError> {
        let mut rows = Vec::new();
        for name in contexts {
            let c = match self.store.context(name).await {
                Ok(c) => c,
                Err(StoreError::NotFound(_)) => {
                    return Err(SecretsError::Invalid(format!(
                        "context {name} does not exist (vmfleet contexts create {name})"
                    )))
                }
                Err(e) => return Err(e.into()),
            };
            if !c.allows(project) {
                return Err(SecretsError::Invalid(format!(
                    "context {name} is restricted to {}; project {project} may not use it",
                    c.project_list().join(", ")
                )));
            }
            rows.push(c);
        }
        Ok(rows)
    }

    /// Everything a job of `project` naming `contexts` gets.
    ///
    /// # Errors
    /// As [`Secrets::check_contexts`]; a value that does not open.
    pub async fn for_job(&self, project: &str, contexts: &[String]) -> Result<JobSecrets, SecretsError> {
        self.check_contexts(project, contexts).await?;
        let mut env: Vec<(String, String)> = Vec::new();
        let mut add = |rows: Vec<(String, String)>| {
            for (k, v) in rows {
                env.retain(|(e, _)| *e != k);
                env.push((k, v));
            }
        };
        let mut rows = Vec::new();
        for r in self.store.secrets_of(PROJECT_ENV, project).await? {
            rows.push((r.name.clone(), self.open_text(&r)?));
        }
        add(rows);
        for c in contexts {
            let mut rows = Vec::new();
            for r in self.store.secrets_of(CONTEXT_ENV, c).await? {
                rows.push((r.name.clone(), self.open_text(&r)?));
            }
            add(rows);
        }
        let mut ssh_keys = Vec::new();
        for r in self.store.secrets_of(SSH_KEY, project).await? {
            ssh_keys.push(SshKey {
                sha256: r.name.clone(),
                md5: r.alias.clone().unwrap_or_default(),
                host: r.host.clone(),
                private_key: self.open_text(&r)?,
            });
        }
        let mut s = JobSecrets { env, ssh_keys, deploy_key: None, masker: Masker::default() };
        s.remask();
        Ok(s)
    }

    /// Seals a job's deploy key for storage in the job row.
    pub fn seal_deploy_key(&self, job_id: &str, key: &str) -> String {
        let c = self.cipher();
        format!("{}:{}", c.id(), c.seal(DEPLOY_KEY, job_id, "checkout", key.as_bytes()))
    }

    /// Opens a job's deploy key as stored by [`Secrets::seal_deploy_key`].
    ///
    /// # Errors
    /// As [`Secrets::open`].
    pub fn open_deploy_key(&self, job_id: &str, stored: &str) -> Result<String, SecretsError> {
        let Some((key_id, sealed)) = stored.split_once(':').filter(|(_, s)| Cipher::is_sealed(s)) else {
            return Ok(stored.to_string());
        };
        let bytes = self.cipher_for(key_id)?.open(DEPLOY_KEY, job_id, "checkout", sealed)?;
        String::from_utf8(bytes).map_err(|_| SecretsError::Sealed("the deploy key is not UTF-8".into()))
    }

    /// Seals deploy keys stored before they were sealed.
    async fn seal_plain_deploy_keys(&self) -> Result<(), SecretsError> {
        for (job, key) in self.store.deploy_keys().await? {
            if key.split_once(':').is_some_and(|(_, s)| Cipher::is_sealed(s)) {
                continue;
            }
            self.store.set_deploy_key(&job, &key, &self.seal_deploy_key(&job, &key)).await?;
        }
        Ok(())
    }

    /// Re-seals every value under a new key in one transaction, then makes it the key in use
    /// (writing it to the key file when the key came from one). `new_key` is required when the
    /// key came from the environment: the operator gives every replica the same new key.
    /// Returns the new key's id.
    ///
    /// # Errors
    /// A value that does not open (nothing is changed); a store error (nothing is changed);
    /// [`SecretsError::Invalid`] without `new_key` for a key from the environment.
    pub async fn rotate(&self, new_key: Option<&str>, actor: &str) -> Result<String, SecretsError> {
        let old = self.cipher();
        let new = match (new_key, &self.source) {
            (Some(text), _) => {
                Cipher::from_text(text).map_err(|e| SecretsError::Invalid(format!("the new key: {e}")))?
            }
            (None, Source::File(_)) => Cipher::generate(),
            (None, Source::Environment) => {
                return Err(SecretsError::Invalid(
                    "the key comes from VMFLEET__SECRETS__KEY: give the new key (vmfleet secrets rotate-key \
                     --new-key-stdin), then set it on every replica"
                        .into(),
                ))
            }
        };
        if new.id() == old.id() {
            return Err(SecretsError::Invalid("the new key is the key in use".into()));
        }
        let rows = self.store.all_secrets().await?;
        let mut resealed = Vec::with_capacity(rows.len());
        for r in &rows {
            let value = self.open(r)?;
            resealed.push((r.clone(), new.seal(&r.kind, &r.owner, &r.name, &value)));
        }
        let mut deploy = Vec::new();
        for (job, stored) in self.store.deploy_keys().await? {
            let key = self.open_deploy_key(&job, &stored)?;
            deploy.push((
                job.clone(),
                stored,
                format!("{}:{}", new.id(), new.seal(DEPLOY_KEY, &job, "checkout", key.as_bytes())),
            ));
        }
        let payload = serde_json::json!({"from": old.id(), "to": new.id(), "values": rows.len() + deploy.len()});
        let audit = self.event("secrets.rotate_key", actor, new.id(), payload);
        // The new key is on disk before any value depends on it: a crash between the two leaves
        // values under the old key, which the `.previous` file still opens.
        if let Source::File(path) = &self.source {
            let previous = path.with_extension("previous");
            write_key_file(&previous, &old.to_text())
                .map_err(|e| SecretsError::Key(format!("writing {}: {}", previous.display(), e.kind())))?;
            write_key_file(path, &new.to_text())
                .map_err(|e| SecretsError::Key(format!("writing {}: {}", path.display(), e.kind())))?;
        }
        let done = self.store.reseal_secrets(old.id(), new.id(), &resealed, &deploy, &audit).await;
        match done {
            Ok(()) => {
                *self.cipher.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new.clone());
                if let Source::File(path) = &self.source {
                    let _ = std::fs::remove_file(path.with_extension("previous"));
                }
                Ok(new.id().to_string())
            }
            Err(e) => {
                if let Source::File(path) = &self.source {
                    let _ = write_key_file(path, &old.to_text());
                    let _ = std::fs::remove_file(path.with_extension("previous"));
                }
                Err(e.into())
            }
        }
    }
}
