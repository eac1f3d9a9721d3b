//! Drives the API router of a real in-process fleet (SQLite, local provider).

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use vmfleet::api::router;
use vmfleet::auth::hash_token;
use vmfleet::server::{start, Running};
use vmfleet::store::now_ms;

pub struct Api {
    pub running: Running,
    pub admin: String,
    pub _dir: tempfile::TempDir,
}

impl Drop for Api {
    fn drop(&mut self) {
        self.running.shutdown.trigger();
    }
}

pub async fn api() -> Api {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = super::test_config(dir.path());
    let token_path = config.admin_token_path();
    let running = start(config, None).await.expect("start");
    let admin = std::fs::read_to_string(&token_path).expect("admin token written on first start").trim().to_string();
    Api { running, admin, _dir: dir }
}

impl Api {
    pub async fn call(&self, method: &str, uri: &str, token: Option<&str>, body: Option<&str>) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Body::from(body.unwrap_or_default().to_string())).expect("request");
        let resp = router(self.running.state.clone()).oneshot(req).await.expect("response");
        let status = resp.status();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let v =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, v)
    }

    pub async fn token(&self, name: &str, scope: &str) -> String {
        let t = format!("tok-{name}-secret");
        self.running.fleet.store.insert_token(name, &hash_token(&t), scope, now_ms()).await.expect("token");
        t
    }
}
