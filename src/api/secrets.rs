//! Routes for jobs' secrets: project variables and SSH keys, contexts, the key's rotation.
//! Values go in and never come out: lists show names and hints.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiJson, AppState, Caller};
use crate::auth::Scope;
use crate::secrets::{SecretsError, SshKeyView, VarView, CONTEXT_ENV, PROJECT_ENV, SSH_KEY};
use crate::store::ContextRow;

const SECRETS: &[Scope] = &[Scope::Secrets];

impl From<SecretsError> for ApiError {
    fn from(e: SecretsError) -> Self {
        match e {
            SecretsError::Invalid(m) => ApiError::bad_request(m),
            SecretsError::Store(e) => e.into(),
            // Key and sealing problems are the installation's, not the caller's; their text
            // names keys by id only.
            e => {
                tracing::error!(error = %e, "secrets");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "secrets_key", e.to_string())
            }
        }
    }
}

fn project(p: &str) -> Result<(), ApiError> {
    crate::fleet::validate_project(p).map_err(ApiError::from)
}

/// A value to set. Its `Debug` shows no value.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SetValue {
    value: String,
}

/// An SSH key to add.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AddKey {
    private_key: String,
    #[serde(default)]
    host: Option<String>,
}

/// A context to create.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewContext {
    name: String,
    #[serde(default)]
    projects: Vec<String>,
}

/// A context as shown.
#[derive(Debug, Serialize, Deserialize)]
pub struct ContextView {
    /// Name.
    pub name: String,
    /// Projects that may use it; empty for every project.
    pub projects: Vec<String>,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// Its variables, as listed.
    #[serde(default)]
    pub variables: Vec<VarView>,
}

impl ContextView {
    fn new(c: &ContextRow, variables: Vec<VarView>) -> Self {
        Self {
            name: c.name.clone(),
            projects: c.project_list(),
            created_at: crate::store::rfc3339(c.created_at),
            variables,
        }
    }
}

/// The rotation's optional new key.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Rotate {
    #[serde(default)]
    new_key: Option<String>,
}

pub(super) async fn list_project_env(
    State(s): State<AppState>,
    c: Caller,
    Path(p): Path<String>,
) -> Result<Json<Vec<VarView>>, ApiError> {
    c.require(SECRETS)?;
    project(&p)?;
    Ok(Json(s.jobs.secrets.list_vars(PROJECT_ENV, &p).await?))
}

pub(super) async fn set_project_env(
    State(s): State<AppState>,
    c: Caller,
    Path((p, name)): Path<(String, String)>,
    ApiJson(body): ApiJson<SetValue>,
) -> Result<Json<Vec<VarView>>, ApiError> {
    c.require(SECRETS)?;
    project(&p)?;
    s.jobs.secrets.set_project_var(&p, &name, &body.value, &c.0.name).await?;
    Ok(Json(s.jobs.secrets.list_vars(PROJECT_ENV, &p).await?))
}

pub(super) async fn unset_project_env(
    State(s): State<AppState>,
    c: Caller,
    Path((p, name)): Path<(String, String)>,
) -> Result<Json<Vec<VarView>>, ApiError> {
    c.require(SECRETS)?;
    project(&p)?;
    s.jobs.secrets.remove(PROJECT_ENV, &p, &name, &c.0.name).await?;
    Ok(Json(s.jobs.secrets.list_vars(PROJECT_ENV, &p).await?))
}

pub(super) async fn list_ssh_keys(
    State(s): State<AppState>,
    c: Caller,
    Path(p): Path<String>,
) -> Result<Json<Vec<SshKeyView>>, ApiError> {
    c.require(SECRETS)?;
    project(&p)?;
    Ok(Json(s.jobs.secrets.list_ssh_keys(&p).await?))
}

pub(super) async fn add_ssh_key(
    State(s): State<AppState>,
    c: Caller,
    Path(p): Path<String>,
    ApiJson(body): ApiJson<AddKey>,
) -> Result<(StatusCode, Json<SshKeyView>), ApiError> {
    c.require(SECRETS)?;
    project(&p)?;
    let view = s.jobs.secrets.add_ssh_key(&p, &body.private_key, body.host.as_deref(), &c.0.name).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

pub(super) async fn remove_ssh_key(
    State(s): State<AppState>,
    c: Caller,
    Path((p, fingerprint)): Path<(String, String)>,
) -> Result<Json<Vec<SshKeyView>>, ApiError> {
    c.require(SECRETS)?;
    project(&p)?;
    s.jobs.secrets.remove(SSH_KEY, &p, &fingerprint, &c.0.name).await?;
    Ok(Json(s.jobs.secrets.list_ssh_keys(&p).await?))
}

pub(super) async fn list_contexts(State(s): State<AppState>, c: Caller) -> Result<Json<Vec<ContextView>>, ApiError> {
    c.require(SECRETS)?;
    let rows = s.fleet.store.contexts().await?;
    Ok(Json(rows.iter().map(|r| ContextView::new(r, Vec::new())).collect()))
}

pub(super) async fn create_context(
    State(s): State<AppState>,
    c: Caller,
    ApiJson(body): ApiJson<NewContext>,
) -> Result<(StatusCode, Json<ContextView>), ApiError> {
    c.require(SECRETS)?;
    let row = s.jobs.secrets.create_context(&body.name, &body.projects, &c.0.name).await?;
    Ok((StatusCode::CREATED, Json(ContextView::new(&row, Vec::new()))))
}

async fn context_view(s: &AppState, name: &str) -> Result<ContextView, ApiError> {
    let row = s.fleet.store.context(name).await?;
    let vars = s.jobs.secrets.list_vars(CONTEXT_ENV, name).await?;
    Ok(ContextView::new(&row, vars))
}

pub(super) async fn show_context(
    State(s): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<Json<ContextView>, ApiError> {
    c.require(SECRETS)?;
    Ok(Json(context_view(&s, &name).await?))
}

pub(super) async fn delete_context(
    State(s): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    c.require(SECRETS)?;
    s.jobs.secrets.delete_context(&name, &c.0.name).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn set_context_env(
    State(s): State<AppState>,
    c: Caller,
    Path((name, var)): Path<(String, String)>,
    ApiJson(body): ApiJson<SetValue>,
) -> Result<Json<ContextView>, ApiError> {
    c.require(SECRETS)?;
    s.jobs.secrets.set_context_var(&name, &var, &body.value, &c.0.name).await?;
    Ok(Json(context_view(&s, &name).await?))
}

pub(super) async fn unset_context_env(
    State(s): State<AppState>,
    c: Caller,
    Path((name, var)): Path<(String, String)>,
) -> Result<Json<ContextView>, ApiError> {
    c.require(SECRETS)?;
    s.fleet.store.context(&name).await?;
    s.jobs.secrets.remove(CONTEXT_ENV, &name, &var, &c.0.name).await?;
    Ok(Json(context_view(&s, &name).await?))
}

pub(super) async fn rotate_key(
    State(s): State<AppState>,
    c: Caller,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    c.require(SECRETS)?;
    // The body is optional; its text never reaches an error message (it may hold a key).
    let req: Rotate = if body.iter().all(u8::is_ascii_whitespace) {
        Rotate::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|_| ApiError::bad_request("request body: expected {\"new_key\": BASE64} or nothing"))?
    };
    let id = s.jobs.secrets.rotate(req.new_key.as_deref(), &c.0.name).await?;
    let values = s.fleet.store.all_secrets().await?.len();
    Ok(Json(serde_json::json!({"key_id": id, "values": values})))
}
