//! The CLI's HTTP client.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde::de::DeserializeOwned;

/// A client for one server.
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// A client for `base` (such as `http://127.0.0.1:3001`).
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(base: &str, token: Option<String>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
        Ok(Self { base: base.trim_end_matches('/').to_string(), token, http })
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> anyhow::Result<T> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().await.with_context(|| format!("cannot reach vmfleet at {}", self.base))?;
        let status = resp.status();
        let body = resp.text().await?;
        if !status.is_success() {
            bail!(api_error(status, body));
        }
        serde_json::from_str(&body).map_err(|e| anyhow!("unexpected answer from the server: {e}"))
    }

    /// GET.
    ///
    /// # Errors
    /// Transport or API errors, with the server's message.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.http.get(format!("{}{path}", self.base))).await
    }

    /// POST with a JSON body.
    ///
    /// # Errors
    /// Transport or API errors.
    pub async fn post<T: DeserializeOwned>(&self, path: &str, body: &serde_json::Value) -> anyhow::Result<T> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body)).await
    }

    /// GET of a long-lived response (an event stream): no overall timeout.
    ///
    /// # Errors
    /// Transport or API errors.
    pub async fn stream(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        let http = reqwest::Client::builder().connect_timeout(Duration::from_secs(10)).build()?;
        let mut req = http.get(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.with_context(|| format!("cannot reach vmfleet at {}", self.base))?;
        if !resp.status().is_success() {
            let status = resp.status();
            bail!(api_error(status, resp.text().await.unwrap_or_default()));
        }
        Ok(resp)
    }

    /// Whether a server answers `/status` at all within a second.
    pub async fn reachable(&self) -> bool {
        let probe = self.http.get(format!("{}/status", self.base)).timeout(Duration::from_secs(1));
        probe.send().await.is_ok()
    }

    /// PUT with a JSON body.
    ///
    /// # Errors
    /// Transport or API errors.
    pub async fn put<T: DeserializeOwned>(&self, path: &str, body: &serde_json::Value) -> anyhow::Result<T> {
        self.send(self.http.put(format!("{}{path}", self.base)).json(body)).await
    }

    /// DELETE of a route that answers 204 No Content.
    ///
    /// # Errors
    /// Transport or API errors.
    pub async fn delete_empty(&self, path: &str) -> anyhow::Result<()> {
        let mut req = self.http.delete(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.with_context(|| format!("cannot reach vmfleet at {}", self.base))?;
        let status = resp.status();
        if !status.is_success() {
            bail!(api_error(status, resp.text().await.unwrap_or_default()));
        }
        Ok(())
    }

    /// DELETE.
    ///
    /// # Errors
    /// Transport or API errors.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.http.delete(format!("{}{path}", self.base))).await
    }
}

/// One path segment, percent-encoded (project names hold `/`, fingerprints `/` and `+`).
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `STATUS REASON: message`, with the message of an API error body when it is one.
fn api_error(status: reqwest::StatusCode, body: String) -> String {
    let msg = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or(body);
    format!("{} {}: {}", status.as_u16(), status.canonical_reason().unwrap_or(""), msg)
}
