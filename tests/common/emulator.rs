//! Test doubles for what the EC2 emulator cannot do: inject real EC2 errors (capacity,
//! throttling) in front of it, and stand in for an instance's sshd.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;

/// The emulator's URL. The test command starts moto and sets it; without it, emulator tests fail
/// unless `VMFLEET_TEST_SKIP_MOTO=1` says to skip them.
pub fn moto_url() -> Option<String> {
    match std::env::var("VMFLEET_TEST_MOTO_URL") {
        Ok(u) => Some(u),
        Err(_) if std::env::var("VMFLEET_TEST_SKIP_MOTO").as_deref() == Ok("1") => {
            eprintln!("skipping an EC2 emulator test: VMFLEET_TEST_SKIP_MOTO=1");
            None
        }
        Err(_) => panic!("VMFLEET_TEST_MOTO_URL is not set: run ./scripts/test.sh, or set VMFLEET_TEST_SKIP_MOTO=1"),
    }
}

/// A proxy in front of the emulator that answers chosen calls with an EC2 error.
#[derive(Clone, Default)]
pub struct FaultProxy {
    inner: Arc<Mutex<Faults>>,
}

#[derive(Default)]
struct Faults {
    /// (action, error code, HTTP status) to answer instead of forwarding, in order.
    queue: VecDeque<(String, String, u16)>,
    /// Request bodies seen, in order.
    seen: Vec<String>,
    /// Actions forwarded to the emulator whose answer is then withheld, as if the caller died
    /// while waiting for it.
    hold: Vec<String>,
    /// Until when every mutating call is answered `RequestLimitExceeded`.
    throttle_until: Option<std::time::Instant>,
    /// Mutating calls answered so while throttling.
    throttled: usize,
}

/// The EC2 actions that change something (what AWS throttles per account in its mutating bucket).
const MUTATING: &[&str] = &[
    "RunInstances",
    "TerminateInstances",
    "StopInstances",
    "StartInstances",
    "CreateTags",
    "CreateVolume",
    "AttachVolume",
    "DetachVolume",
    "DeleteVolume",
];

impl FaultProxy {
    /// Starts the proxy for `upstream`; returns it and its URL.
    pub async fn start(upstream: String) -> (Self, String) {
        let proxy = FaultProxy::default();
        let state = (proxy.clone(), upstream, reqwest::Client::new());
        let app = axum::Router::new().fallback(forward).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        (proxy, url)
    }

    /// Answers the next `n` calls of `action` with `code`.
    pub fn inject(&self, action: &str, code: &str, status: u16, n: usize) {
        let mut f = self.inner.lock().expect("lock");
        for _ in 0..n {
            f.queue.push_back((action.into(), code.into(), status));
        }
    }

    /// Drops every injected error not yet answered.
    pub fn clear(&self) {
        self.inner.lock().expect("lock").queue.clear();
    }

    /// Forwards calls of `action` but never answers them, until [`FaultProxy::release`].
    pub fn hold(&self, action: &str) {
        self.inner.lock().expect("lock").hold.push(action.into());
    }

    /// Answers held actions again (calls already held stay unanswered).
    pub fn release(&self) {
        self.inner.lock().expect("lock").hold.clear();
    }

    /// Answers every mutating call with `RequestLimitExceeded` for `window` from now.
    pub fn throttle_mutations(&self, window: std::time::Duration) {
        self.inner.lock().expect("lock").throttle_until = Some(std::time::Instant::now() + window);
    }

    /// Mutating calls answered with throttling by [`FaultProxy::throttle_mutations`] so far.
    pub fn throttled(&self) -> usize {
        self.inner.lock().expect("lock").throttled
    }

    /// Request bodies of `action` seen so far (injected or forwarded).
    pub fn seen(&self, action: &str) -> Vec<String> {
        let kv = format!("Action={action}");
        self.inner.lock().expect("lock").seen.iter().filter(|b| b.split('&').any(|x| x == kv)).cloned().collect()
    }
}

async fn forward(
    State((proxy, upstream, http)): State<(FaultProxy, String, reqwest::Client)>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let text = String::from_utf8_lossy(&body).to_string();
    let fault = {
        let mut f = proxy.inner.lock().expect("lock");
        f.seen.push(text.clone());
        let pos = f.queue.iter().position(|(a, _, _)| text.split('&').any(|x| x == format!("Action={a}")));
        let throttling = f.throttle_until.is_some_and(|t| std::time::Instant::now() < t)
            && MUTATING.iter().any(|a| text.split('&').any(|x| x == format!("Action={a}")));
        if throttling {
            f.throttled += 1;
            Some((String::new(), "RequestLimitExceeded".to_string(), 503))
        } else {
            pos.and_then(|i| f.queue.remove(i))
        }
    };
    if let Some((_, code, status)) = fault {
        let xml = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>injected {code}</Message></Error></Errors><RequestID>test</RequestID></Response>"
        );
        return (StatusCode::from_u16(status).expect("status"), xml).into_response();
    }
    let mut req = http.request(
        reqwest::Method::from_bytes(method.as_str().as_bytes()).expect("method"),
        format!("{upstream}{}", uri.path_and_query().map_or("/", |p| p.as_str())),
    );
    for (k, v) in &headers {
        if k != "host" && k != "content-length" {
            req = req.header(k.as_str(), v.as_bytes());
        }
    }
    let resp = req.body(body.to_vec()).send().await.expect("emulator");
    let status = StatusCode::from_u16(resp.status().as_u16()).expect("status");
    let bytes = resp.bytes().await.expect("body");
    let held =
        proxy.inner.lock().expect("lock").hold.iter().any(|a| text.split('&').any(|x| x == format!("Action={a}")));
    if held {
        std::future::pending::<()>().await;
    }
    (status, [("content-type", "text/xml")], bytes.to_vec()).into_response()
}

/// Commands an [`recording_sshd`] was asked to run, in order.
pub type Commands = Arc<Mutex<Vec<String>>>;

/// An SSH server on 127.0.0.1 that accepts any key: it stands in for the sshd of instances the
/// emulator pretends to run, so the real readiness code has something to shake hands with.
pub async fn any_key_sshd() -> u16 {
    recording_sshd().await.0
}

/// [`any_key_sshd`] that also accepts commands: each is recorded and answered with exit
/// status 0 and no output.
pub async fn recording_sshd() -> (u16, Commands) {
    use russh::server::{Auth, Msg, Server as _, Session};
    use russh::{Channel, ChannelId};
    #[derive(Clone)]
    struct S(Commands);
    impl russh::server::Server for S {
        type Handler = S;
        fn new_client(&mut self, _: Option<std::net::SocketAddr>) -> S {
            self.clone()
        }
    }
    impl russh::server::Handler for S {
        type Error = russh::Error;
        async fn auth_publickey(
            &mut self,
            _: &str,
            _: russh::server::VerifiedPublicKey<'_>,
        ) -> Result<Auth, Self::Error> {
            Ok(Auth::Accept)
        }
        async fn channel_open_session(
            &mut self,
            _channel: Channel<Msg>,
            reply: russh::server::ChannelOpenHandle,
            _session: &mut Session,
        ) -> Result<(), Self::Error> {
            reply.accept().await;
            Ok(())
        }
        async fn exec_request(
            &mut self,
            channel: ChannelId,
            data: &[u8],
            session: &mut Session,
        ) -> Result<(), Self::Error> {
            self.0.lock().expect("lock").push(String::from_utf8_lossy(data).into_owned());
            session.channel_success(channel)?;
            session.exit_status_request(channel, 0)?;
            session.eof(channel)?;
            session.close(channel)
        }
    }
    let keys = vmfleet_provisioner::ssh::generate_keypair("host").expect("key");
    let key = vmfleet_provisioner::ssh::parse_private_key(&keys.private_openssh).expect("parse");
    let config = Arc::new(russh::server::Config { keys: vec![key], ..Default::default() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let commands: Commands = Arc::default();
    let server = S(commands.clone());
    tokio::spawn(async move {
        let mut server = server;
        let _ = server.run_on_socket(config, &listener).await;
    });
    (port, commands)
}
