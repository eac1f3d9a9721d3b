//! The HTTP API.
//!
//! Handlers are thin: extract, authorize, call the fleet, map the result to a view. Every
//! error is `{"error": {"code", "message"}}`: 400 for malformed bodies and unknown names, 401
//! without a valid token, 403 for the wrong scope, 404, 409, 500.

mod openapi;
pub mod secrets;
pub mod storage;
pub mod views;
pub mod workflows;

use std::sync::{Arc, RwLock};

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::auth::{Authenticator, Principal, Scope};
use crate::fleet::{Fleet, FleetError, TaskRequest};
use views::{ImageDetail, ImagesView, JobView, OutputView, Summary, TaskView, VmView, VolumeView};

/// Shared state of the API.
#[derive(Clone)]
pub struct AppState {
    /// The fleet.
    pub fleet: Arc<Fleet>,
    /// Token checks.
    pub auth: Authenticator,
    /// Set when the configuration file on disk no longer validates.
    pub config_error: Arc<RwLock<Option<String>>>,
    /// The job pipeline.
    pub jobs: Arc<crate::jobs::Jobs>,
}

/// An API error.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }
    fn bad_request(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", m)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<FleetError> for ApiError {
    fn from(e: FleetError) -> Self {
        match e {
            FleetError::BadRequest(m) => ApiError::bad_request(m),
            FleetError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "not_found", m),
            FleetError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            e => {
                // The cause goes to the log only; the client gets an id to quote.
                let id = crate::store::short_id();
                let chain = error_chain(&e);
                if e.is_disk_full() {
                    tracing::error!(error_id = %id, error = %chain, "{}", crate::store::DISK_FULL);
                    ApiError::new(
                        StatusCode::INSUFFICIENT_STORAGE,
                        "disk_full",
                        format!(
                            "{}: nothing was changed; try again once space is freed (id {id})",
                            crate::store::DISK_FULL
                        ),
                    )
                } else if e.is_transient() {
                    tracing::warn!(error_id = %id, error = %chain, "unavailable");
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        format!("temporarily unavailable, try again (id {id})"),
                    )
                } else {
                    tracing::error!(error_id = %id, error = %chain, "internal error");
                    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("internal error (id {id})"))
                }
            }
        }
    }
}

/// An error and its sources, `outer: inner: …`, without repeating a source its parent's text
/// already shows.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        FleetError::from(e).into()
    }
}

/// JSON body whose rejections are API errors.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rej) if rej.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "request body: larger than this route accepts (job submissions {} MiB, every other route {} KiB)",
                    JOB_BODY_LIMIT >> 20,
                    BODY_LIMIT >> 10
                ),
            )),
            Err(rej) => Err(ApiError::bad_request(format!("request body: {}", rej.body_text()))),
        }
    }
}

/// The authenticated caller.
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let unauthorized =
            || ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "a valid bearer token is required");
        let header = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).ok_or_else(unauthorized)?;
        let token = header.strip_prefix("Bearer ").map(str::trim).filter(|t| !t.is_empty()).ok_or_else(unauthorized)?;
        match state.auth.authenticate(token).await? {
            Some(p) => Ok(Caller(p)),
            None => Err(unauthorized()),
        }
    }
}

impl Caller {
    fn require(&self, allowed: &[Scope]) -> Result<(), ApiError> {
        if self.0.has_any(allowed) {
            Ok(())
        } else {
            let names: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("token {} lacks the scope for this call (one of: admin, {})", self.0.name, names.join(", ")),
            ))
        }
    }
}

pub(crate) const AGENT: &[Scope] = &[Scope::Operator, Scope::Agent];
const PUBLISHER: &[Scope] = &[Scope::Operator, Scope::ImagePublisher];
pub(crate) const OPERATOR: &[Scope] = &[Scope::Operator];

/// The largest request body a route takes, unless it says otherwise: every body but a job's is a
/// few small fields.
pub const BODY_LIMIT: usize = 256 << 10;

/// The largest job submission: a CircleCI config of up to 4 MiB (the parser's limit) escaped in
/// JSON, with its other fields.
pub const JOB_BODY_LIMIT: usize = 10 << 20;

/// The router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/api/v1/openapi.json", get(|| async { Json(openapi::spec()) }))
        .route("/api/v1/summary", get(summary))
        .route("/api/v1/tasks", post(request_task).get(list_tasks))
        .route("/api/v1/tasks/{id}", get(show_task).delete(release_task))
        .route("/api/v1/vms", get(list_vms))
        .route("/api/v1/vms/{id}", get(show_vm).delete(destroy_vm))
        .route("/api/v1/vms/{id}/drain", post(drain_vm))
        .route("/api/v1/images", get(list_images).post(register_image))
        .route("/api/v1/images/{name}", get(show_image))
        .route("/api/v1/images/{name}/promote", post(promote_image))
        .route("/api/v1/images/{name}/rollback", post(rollback_image))
        .route("/api/v1/volumes", get(list_volumes))
        .route("/api/v1/volumes/{id}", get(show_volume).delete(delete_volume))
        .route("/api/v1/jobs", post(submit_job).layer(DefaultBodyLimit::max(JOB_BODY_LIMIT)).get(list_jobs))
        .route("/api/v1/jobs/{id}", get(show_job))
        .route("/api/v1/jobs/{id}/output", get(job_output))
        .route("/api/v1/jobs/{id}/cancel", post(cancel_job))
        .route("/api/v1/jobs/{id}/artifacts", get(storage::list_artifacts))
        .route("/api/v1/jobs/{id}/artifacts/{node}/{*path}", get(storage::get_artifact))
        .route("/api/v1/jobs/{id}/tests", get(storage::tests))
        .route("/api/v1/pipelines", post(workflows::submit_pipeline).layer(DefaultBodyLimit::max(JOB_BODY_LIMIT)))
        .route("/api/v1/pipelines/{id}", get(workflows::show_pipeline))
        .route("/api/v1/workflows", get(workflows::list_workflows))
        .route("/api/v1/workflows/{id}", get(workflows::show_workflow))
        .route("/api/v1/workflows/{id}/cancel", post(workflows::cancel_workflow))
        .route("/api/v1/workflows/{id}/rerun", post(workflows::rerun_workflow))
        .route("/api/v1/workflows/{id}/approve/{job}", post(workflows::approve))
        .route("/api/v1/projects/{project}/env", get(secrets::list_project_env))
        .route(
            "/api/v1/projects/{project}/env/{name}",
            put(secrets::set_project_env).delete(secrets::unset_project_env),
        )
        .route("/api/v1/projects/{project}/ssh-keys", get(secrets::list_ssh_keys).post(secrets::add_ssh_key))
        .route("/api/v1/projects/{project}/ssh-keys/{fingerprint}", axum::routing::delete(secrets::remove_ssh_key))
        .route("/api/v1/contexts", get(secrets::list_contexts).post(secrets::create_context))
        .route("/api/v1/contexts/{name}", get(secrets::show_context).delete(secrets::delete_context))
        .route("/api/v1/contexts/{name}/env/{var}", put(secrets::set_context_env).delete(secrets::unset_context_env))
        .route("/api/v1/secrets/rotate-key", post(secrets::rotate_key))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this endpoint")
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// How long `/status` waits for the database's answer.
const STATUS_PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

async fn status(State(s): State<AppState>) -> Response {
    let config_error = s.config_error.read().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some(reason) = config_error {
        return (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"status": "error", "reason": reason}))).into_response();
    }
    if let Some(e) = s.fleet.policy_error() {
        let reason = format!("policies refused (the previous ones stay in force): {e}");
        return (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"status": "error", "reason": reason}))).into_response();
    }
    let unhealthy = |reason: String| {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "error", "reason": reason}))).into_response()
    };
    // A stopped database must not hold the health check for the pool's whole acquire timeout.
    let ping = tokio::time::timeout(STATUS_PING_TIMEOUT, s.fleet.store.ping()).await;
    match ping {
        Ok(Ok(())) => {}
        Ok(Err(e)) if e.is_disk_full() => return unhealthy(crate::store::DISK_FULL.into()),
        Ok(Err(e)) => return unhealthy(format!("database unreachable: {e}")),
        Err(_) => {
            return unhealthy(format!("database unreachable: no answer within {} s", STATUS_PING_TIMEOUT.as_secs()))
        }
    }
    if let Some((since, reason)) = s.fleet.store_fault() {
        let secs = (s.fleet.now() - since).max(0) / 1000;
        return unhealthy(format!("reconcile passes failing for {secs} s: {reason}"));
    }
    Json(json!({
        "status": "ok",
        "install_id": s.fleet.install_id,
        "database": s.fleet.store.backend(),
        "provider": s.fleet.provider.kind(),
    }))
    .into_response()
}

async fn metrics(State(s): State<AppState>) -> Result<Response, ApiError> {
    let counts = s.fleet.store.counts().await?;
    let body =
        s.fleet.metrics.render(&counts, &s.fleet.install_id, s.fleet.provider.kind(), &s.fleet.provider.call_counts());
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response())
}

async fn summary(State(s): State<AppState>, c: Caller) -> Result<Json<Summary>, ApiError> {
    c.require(OPERATOR)?;
    let counts = s.fleet.store.counts().await?;
    Ok(Json(Summary::new(&s.fleet, &counts)))
}

async fn request_task(
    State(s): State<AppState>,
    c: Caller,
    ApiJson(req): ApiJson<TaskRequest>,
) -> Result<(StatusCode, Json<TaskView>), ApiError> {
    c.require(AGENT)?;
    let task = s.fleet.request_task(&req).await?;
    let view = TaskView::load(&s.fleet, task).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    pub(crate) state: Option<String>,
    pub(crate) limit: Option<i64>,
}

async fn list_tasks(
    State(s): State<AppState>,
    c: Caller,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<TaskView>>, ApiError> {
    c.require(OPERATOR)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let tasks = s.fleet.store.tasks(q.state.as_deref(), q.limit.unwrap_or(100).clamp(1, 1000)).await?;
    Ok(Json(tasks.into_iter().map(TaskView::summary).collect()))
}

async fn show_task(State(s): State<AppState>, c: Caller, Path(id): Path<String>) -> Result<Json<TaskView>, ApiError> {
    c.require(AGENT)?;
    let task = s.fleet.store.task(&id).await?;
    Ok(Json(TaskView::load(&s.fleet, task).await?))
}

async fn release_task(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<Json<TaskView>, ApiError> {
    c.require(AGENT)?;
    let task = s.fleet.release_task(&id).await?;
    Ok(Json(TaskView::summary(task)))
}

async fn list_vms(State(s): State<AppState>, c: Caller) -> Result<Json<Vec<VmView>>, ApiError> {
    c.require(OPERATOR)?;
    let vms = s.fleet.store.live_vms().await?;
    Ok(Json(vms.iter().map(VmView::from).collect()))
}

async fn show_vm(State(s): State<AppState>, c: Caller, Path(id): Path<String>) -> Result<Json<VmView>, ApiError> {
    c.require(OPERATOR)?;
    Ok(Json(VmView::from(&s.fleet.store.vm(&id).await?)))
}

async fn drain_vm(State(s): State<AppState>, c: Caller, Path(id): Path<String>) -> Result<Json<VmView>, ApiError> {
    c.require(OPERATOR)?;
    Ok(Json(VmView::from(&s.fleet.drain_vm(&id).await?)))
}

async fn destroy_vm(State(s): State<AppState>, c: Caller, Path(id): Path<String>) -> Result<Json<VmView>, ApiError> {
    c.require(OPERATOR)?;
    Ok(Json(VmView::from(&s.fleet.destroy_vm(&id).await?)))
}

async fn list_volumes(State(s): State<AppState>, c: Caller) -> Result<Json<Vec<VolumeView>>, ApiError> {
    c.require(OPERATOR)?;
    Ok(Json(s.fleet.store.volumes(None).await?.iter().map(VolumeView::from).collect()))
}

async fn show_volume(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<Json<VolumeView>, ApiError> {
    c.require(OPERATOR)?;
    Ok(Json(VolumeView::from(&s.fleet.store.volume(&id).await?)))
}

async fn delete_volume(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<Json<VolumeView>, ApiError> {
    c.require(OPERATOR)?;
    Ok(Json(VolumeView::from(&s.fleet.delete_volume(&id).await?)))
}

async fn list_images(State(s): State<AppState>, c: Caller) -> Result<Json<ImagesView>, ApiError> {
    c.require(OPERATOR)?;
    Ok(Json(ImagesView::from(&s.fleet.catalog())))
}

async fn register_image(
    State(s): State<AppState>,
    c: Caller,
    ApiJson(req): ApiJson<crate::fleet::RegisterImage>,
) -> Result<(StatusCode, Json<ImageDetail>), ApiError> {
    c.require(PUBLISHER)?;
    s.fleet.register_image(&req, &c.0.name).await?;
    let detail = ImageDetail::load(&s.fleet, &req.name).await?;
    Ok((StatusCode::CREATED, Json(detail)))
}

async fn show_image(
    State(s): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<Json<ImageDetail>, ApiError> {
    c.require(OPERATOR)?;
    Ok(Json(ImageDetail::load(&s.fleet, &name).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Promote {
    version: String,
    alias: Option<String>,
}

async fn promote_image(
    State(s): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<Promote>,
) -> Result<Json<ImageDetail>, ApiError> {
    c.require(OPERATOR)?;
    s.fleet.promote_image(&name, &req.version, req.alias.as_deref(), &c.0.name).await?;
    Ok(Json(ImageDetail::load(&s.fleet, &name).await?))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Rollback {
    alias: Option<String>,
}

async fn rollback_image(
    State(s): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<ImageDetail>, ApiError> {
    c.require(OPERATOR)?;
    // The body is optional: without one, the alias named like the image rolls back.
    let req: Rollback = if body.iter().all(u8::is_ascii_whitespace) {
        Rollback::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("request body: {e}")))?
    };
    s.fleet.rollback_image(req.alias.as_deref().unwrap_or(&name), &c.0.name).await?;
    Ok(Json(ImageDetail::load(&s.fleet, &name).await?))
}

async fn submit_job(
    State(s): State<AppState>,
    c: Caller,
    ApiJson(req): ApiJson<crate::jobs::JobSubmission>,
) -> Result<(StatusCode, Json<JobView>), ApiError> {
    c.require(AGENT)?;
    let job = s.jobs.submit(&req, &c.0.name).await?;
    Ok((StatusCode::CREATED, Json(JobView::load(&s.fleet.store, &job).await?)))
}

async fn list_jobs(
    State(s): State<AppState>,
    c: Caller,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<JobView>>, ApiError> {
    c.require(OPERATOR)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let jobs = s.fleet.store.jobs(q.state.as_deref(), q.limit.unwrap_or(50).clamp(1, 1000)).await?;
    Ok(Json(jobs.iter().map(JobView::summary).collect()))
}

async fn show_job(State(s): State<AppState>, c: Caller, Path(id): Path<String>) -> Result<Json<JobView>, ApiError> {
    c.require(AGENT)?;
    let job = s.fleet.store.job(&id).await?;
    Ok(Json(JobView::load(&s.fleet.store, &job).await?))
}

async fn cancel_job(State(s): State<AppState>, c: Caller, Path(id): Path<String>) -> Result<Json<JobView>, ApiError> {
    c.require(AGENT)?;
    let job = s.jobs.cancel(&id, &c.0.name).await?;
    Ok(Json(JobView::load(&s.fleet.store, &job).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputQuery {
    follow: Option<bool>,
}

/// The job's output as server-sent events: `output` events (an [`OutputView`] each) as they
/// are stored, then one `end` event with the job's state and exit code. With `follow=false`,
/// what there is now, then `end` if the job has ended.
async fn job_output(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
    q: Result<Query<OutputQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures_util::StreamExt as _;
    c.require(AGENT)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let follow = q.follow.unwrap_or(true);
    let job = s.fleet.store.job(&id).await?;
    let store = s.fleet.store.clone();
    struct Follow {
        cursors: std::collections::HashMap<(String, i64), i64>,
        ended: bool,
    }
    let start = Some(Follow { cursors: Default::default(), ended: false });
    let job_id = job.id.clone();
    let events = futures_util::stream::unfold(start, move |state| {
        let (store, job_id) = (store.clone(), job_id.clone());
        async move {
            let mut f = state?;
            loop {
                let chunks = match crate::jobs::poll_output(&store, &job_id, &mut f.cursors).await {
                    Ok(c) => c,
                    Err(e) => {
                        let ev = Event::default().event("error").data(e.to_string());
                        return Some((vec![ev], None));
                    }
                };
                if !chunks.is_empty() {
                    let evs = chunks
                        .into_iter()
                        .map(|(node, c)| {
                            let v =
                                OutputView { node, attempt: c.attempt, step: c.step, stream: c.stream, data: c.data };
                            Event::default().event("output").data(serde_json::to_string(&v).unwrap_or_default())
                        })
                        .collect();
                    return Some((evs, Some(f)));
                }
                if f.ended {
                    let end = match store.job(&job_id).await {
                        Ok(j) => match JobView::load(&store, &j).await {
                            Ok(v) => {
                                json!({"state": v.state, "exit_code": v.exit_code, "failure_reason": v.failure_reason})
                            }
                            Err(e) => json!({"error": e.to_string()}),
                        },
                        Err(e) => json!({"error": e.to_string()}),
                    };
                    return Some((vec![Event::default().event("end").data(end.to_string())], None));
                }
                let ended = store.job(&job_id).await.map(|j| j.ended());
                match ended {
                    // One more read after the end, for what was stored meanwhile.
                    Ok(true) => f.ended = true,
                    Ok(false) if !follow => return None,
                    Ok(false) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
                    Err(e) => {
                        let ev = Event::default().event("error").data(e.to_string());
                        return Some((vec![ev], None));
                    }
                }
            }
        }
    })
    .flat_map(|evs| futures_util::stream::iter(evs.into_iter().map(Ok::<_, std::convert::Infallible>)));
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmfleet_provisioner::ProvisionError;

    #[test]
    fn an_internal_error_answers_an_id_and_keeps_its_cause_out_of_the_body() {
        let e = FleetError::provider("describe instances")(ProvisionError::Invalid("db password hunter2".into()));
        let chain = error_chain(&e);
        assert!(chain.contains("hunter2"), "the log line has the cause: {chain}");
        let api = ApiError::from(e);
        assert_eq!((api.status, api.code), (StatusCode::INTERNAL_SERVER_ERROR, "internal"));
        assert!(api.message.starts_with("internal error (id ") && !api.message.contains("hunter2"), "{}", api.message);
    }

    #[test]
    fn a_throttled_cloud_is_unavailable_not_broken() {
        let e = FleetError::provider("launch")(ProvisionError::Throttled("RequestLimitExceeded".into()));
        let api = ApiError::from(e);
        assert_eq!((api.status, api.code), (StatusCode::SERVICE_UNAVAILABLE, "unavailable"));
        assert!(!api.message.contains("RequestLimitExceeded"));
        let bad = ApiError::from(FleetError::BadRequest("pool x is unknown".into()));
        assert_eq!((bad.status, bad.message.as_str()), (StatusCode::BAD_REQUEST, "pool x is unknown"));
    }

    #[test]
    fn a_source_the_parent_already_shows_is_not_repeated() {
        let e = FleetError::provider("reset")(ProvisionError::Other("boom".into()));
        assert_eq!(error_chain(&e), "reset: provider error: boom");
    }
}
