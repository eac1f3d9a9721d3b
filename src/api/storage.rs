//! Routes for what jobs stored: artifacts (listed and downloaded) and test results.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{ApiError, AppState, Caller, AGENT};

/// An artifact as listed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArtifactView {
    /// The task's node index.
    pub node: i64,
    /// Its path among the job's artifacts.
    pub path: String,
    /// Bytes.
    pub size: i64,
    /// Where to download it (relative to the server).
    pub url: String,
}

/// A job's test results.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TestsView {
    /// Test cases.
    pub total: usize,
    /// Passed.
    pub success: usize,
    /// Failed (`<failure>`).
    pub failed: usize,
    /// Errored (`<error>`).
    pub errors: usize,
    /// Skipped.
    pub skipped: usize,
    /// Seconds, summed.
    pub time_s: f64,
    /// Every case: node, file, classname, name, result, message, time.
    pub cases: Vec<TestCaseView>,
}

/// One test case.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestCaseView {
    /// The task's node index.
    pub node: i64,
    /// Its file, when known.
    pub file: Option<String>,
    /// Its class.
    pub classname: String,
    /// Its name.
    pub name: String,
    /// `success`, `failure`, `error`, `skipped`.
    pub result: String,
    /// The failure's message.
    pub message: Option<String>,
    /// Seconds.
    pub time_s: f64,
}

fn encode_path(p: &str) -> String {
    p.split('/').map(crate::client::segment).collect::<Vec<_>>().join("/")
}

pub(super) async fn list_artifacts(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<Json<Vec<ArtifactView>>, ApiError> {
    c.require(AGENT)?;
    let job = s.fleet.store.job(&id).await?;
    let rows = s.fleet.store.artifacts(&job.id).await?;
    Ok(Json(
        rows.into_iter()
            .map(|a| ArtifactView {
                url: format!("/api/v1/jobs/{}/artifacts/{}/{}", job.id, a.node_index, encode_path(&a.path)),
                node: a.node_index,
                path: a.path,
                size: a.size,
            })
            .collect(),
    ))
}

pub(super) async fn get_artifact(
    State(s): State<AppState>,
    c: Caller,
    Path((id, node, path)): Path<(String, i64, String)>,
) -> Result<Response, ApiError> {
    c.require(AGENT)?;
    let job = s.fleet.store.job(&id).await?;
    let rows = s.fleet.store.artifacts(&job.id).await?;
    let Some(a) = rows.into_iter().find(|a| a.node_index == node && a.path == path) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("job {} has no artifact {path} on node {node}", job.id),
        ));
    };
    let data = s.jobs.objects.get(&a.object_key).await.map_err(|e| {
        tracing::error!(error = %e, key = %a.object_key, "reading an artifact");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the object store did not answer")
    })?;
    let Some(data) = data else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("artifact {path} is past its retention"),
        ));
    };
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response())
}

pub(super) async fn tests(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<Json<TestsView>, ApiError> {
    c.require(AGENT)?;
    let job = s.fleet.store.job(&id).await?;
    let mut v = TestsView::default();
    for r in s.fleet.store.test_results(&job.id).await? {
        v.total += 1;
        match r.result.as_str() {
            "success" => v.success += 1,
            "failure" => v.failed += 1,
            "error" => v.errors += 1,
            _ => v.skipped += 1,
        }
        v.time_s += r.run_time;
        v.cases.push(TestCaseView {
            node: r.node_index,
            file: r.file,
            classname: r.classname,
            name: r.name,
            result: r.result,
            message: r.message,
            time_s: r.run_time,
        });
    }
    Ok(Json(v))
}

/// The routes' OpenAPI paths.
pub(super) fn openapi(spec: &mut Value, op: impl Fn(&str, &str, &str, &[(&str, &str)]) -> Value) {
    let params = |names: &[(&str, &str)]| -> Value {
        names.iter().map(|(n, t)| json!({"name": n, "in": "path", "required": true, "schema": {"type": t}})).collect()
    };
    let a = "operator, agent";
    let mut list = op("A job's artifacts: node, path, size, download url", a, "200", &[("404", "no such job")]);
    list["parameters"] = params(&[("id", "string")]);
    let mut get = op("Download an artifact", a, "200", &[("404", "no such job or artifact, or past its retention")]);
    get["parameters"] = params(&[("id", "string"), ("node", "integer"), ("path", "string")]);
    let mut tests = op(
        "A job's test results (JUnit): counts and every case with its result, message and time",
        a,
        "200",
        &[("404", "no such job")],
    );
    tests["parameters"] = params(&[("id", "string")]);
    spec["paths"]["/api/v1/jobs/{id}/artifacts"] = json!({"get": list});
    spec["paths"]["/api/v1/jobs/{id}/artifacts/{node}/{path}"] = json!({"get": get});
    spec["paths"]["/api/v1/jobs/{id}/tests"] = json!({"get": tests});
}
