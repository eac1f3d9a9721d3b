//! The HTTP API, driven through the router against a real (SQLite) fleet on the local provider.
#![expect(clippy::tests_outside_test_module, reason = "integration tests live in tests/, not in a cfg(test) module")]

mod common;

use axum::http::StatusCode;
use common::harness::{api, Api};
use serde_json::{json, Value};
use vmfleet::server::start;

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<no error code>")
}

#[tokio::test]
async fn admin_token_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let a = api().await;
    let path = a.running.fleet.config.admin_token_path();
    let mode = std::fs::metadata(path).expect("token file").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[tokio::test]
async fn status_metrics_and_openapi_need_no_token() {
    let a = api().await;
    let (s, v) = a.call("GET", "/status", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["status"], "ok");
    assert_eq!(v["install_id"], a.running.fleet.install_id.as_str());
    let (s, v) = a.call("GET", "/metrics", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let text = v.as_str().expect("text");
    for name in
        ["vmfleet_assignment_latency_seconds_bucket", "vmfleet_provisioning_duration_seconds_count", "vmfleet_info"]
    {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    let (s, v) = a.call("GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let paths: Vec<&String> = v["paths"].as_object().expect("paths").keys().collect();
    for p in ["/api/v1/tasks", "/api/v1/tasks/{id}", "/api/v1/vms", "/api/v1/vms/{id}/drain", "/api/v1/volumes/{id}"] {
        assert!(paths.iter().any(|x| *x == p), "{p} not described");
    }
}

#[tokio::test]
async fn status_reports_a_broken_config_with_500() {
    let a = api().await;
    *a.running.state.config_error.write().expect("lock") = Some("configuration: f.yaml:3: bad".into());
    let (s, v) = a.call("GET", "/status", None, None).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(v["reason"].as_str().expect("reason").contains("f.yaml:3"));
}

#[tokio::test]
async fn missing_or_wrong_tokens_get_401_and_wrong_scope_403() {
    let a = api().await;
    let body = r#"{"executor":"machine","project":"p"}"#;
    let (s, v) = a.call("POST", "/api/v1/tasks", None, Some(body)).await;
    assert_eq!((s, code(&v)), (StatusCode::UNAUTHORIZED, "unauthorized"));
    let (s, _) = a.call("GET", "/api/v1/vms", Some("not-a-token"), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let agent = a.token("ci", "agent").await;
    let (s, v) = a.call("GET", "/api/v1/vms", Some(&agent), None).await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "forbidden"));
    let (s, _) = a.call("GET", "/api/v1/volumes", Some(&agent), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let operator = a.token("ops", "operator").await;
    let (s, _) = a.call("GET", "/api/v1/vms", Some(&operator), None).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn malformed_and_unknown_requests_get_400_with_a_reason() {
    let a = api().await;
    let t = a.admin.clone();
    let cases = [
        ("{not json", "request body"),
        (r#"{"executor":"machine"}"#, "project"),
        (r#"{"executor":"machine","project":"p","colour":"red"}"#, "colour"),
        (r#"{"executor":"kubernetes","project":"p"}"#, "unknown executor"),
        (r#"{"executor":"machine","project":"p","image":"nope"}"#, "unknown image"),
        (r#"{"executor":"machine","project":"p","resource_class":"huge"}"#, "unknown resource class"),
        (r#"{"executor":"machine","project":"p","resource_class":"windows.medium"}"#, "Windows"),
        (r#"{"executor":"machine","project":"p","resource_class":"gpu.nvidia.small"}"#, "GPU"),
        (r#"{"executor":"machine","project":""}"#, "project name"),
        (r#"{"executor":"machine","project":"a b"}"#, "project name"),
        (r#"[1,2,3]"#, "request body"),
    ];
    for (body, needle) in cases {
        let (s, v) = a.call("POST", "/api/v1/tasks", Some(&t), Some(body)).await;
        assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "bad_request"), "{body}");
        let msg = v["error"]["message"].as_str().expect("message");
        assert!(msg.contains(needle), "{body}: {msg:?} should mention {needle:?}");
    }
    let (s, v) = a.call("GET", "/api/v1/tasks?limit=abc", Some(&t), None).await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "bad_request"));
    assert!(a.running.fleet.store.tasks(None, 10).await.expect("tasks").is_empty(), "nothing was queued");
}

#[tokio::test]
async fn unknown_ids_get_404_and_unknown_routes_json() {
    let a = api().await;
    let t = a.admin.clone();
    for (m, uri) in [
        ("GET", "/api/v1/tasks/task-nope"),
        ("DELETE", "/api/v1/tasks/task-nope"),
        ("GET", "/api/v1/vms/vm-nope"),
        ("POST", "/api/v1/vms/vm-nope/drain"),
        ("DELETE", "/api/v1/vms/vm-nope"),
        ("DELETE", "/api/v1/volumes/vol-nope"),
        ("GET", "/api/v1/nothing-here"),
    ] {
        let (s, v) = a.call(m, uri, Some(&t), None).await;
        assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"), "{m} {uri}");
    }
    let (s, v) = a.call("PUT", "/api/v1/tasks", Some(&t), None).await;
    assert_eq!((s, code(&v)), (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"));
}

#[tokio::test]
async fn request_reach_and_release_a_vm() {
    let a = api().await;
    let agent = a.token("ci", "agent").await;
    let (s, v) =
        a.call("POST", "/api/v1/tasks", Some(&agent), Some(r#"{"executor":"machine","project":"gh/acme/app"}"#)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id = v["id"].as_str().expect("id").to_string();
    let task = common::eventually(60, || async {
        let (_, v) = a.call("GET", &format!("/api/v1/tasks/{id}"), Some(&agent), None).await;
        (v["state"] != "waiting").then_some(v)
    })
    .await;
    assert_eq!(task["state"], "assigned", "{task}");
    let ssh = &task["ssh"];
    let target = vmfleet_provisioner::ssh::Target {
        host: ssh["host"].as_str().expect("host").into(),
        port: ssh["port"].as_u64().expect("port") as u16,
        user: ssh["user"].as_str().expect("user").into(),
        private_key: ssh["private_key"].as_str().expect("key").into(),
        host_key: ssh["host_key"].as_str().map(Into::into),
    };
    let session = vmfleet_provisioner::ssh::connect(&target, std::time::Duration::from_secs(10)).await.expect("ssh");
    let out = session.exec("echo hello; echo oops >&2; exit 7").await.expect("exec");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
    assert_eq!(out.exit_status, Some(7));
    session.close().await;

    // The VM list never carries private keys.
    let (_, vms) = a.call("GET", "/api/v1/vms", Some(&a.admin), None).await;
    assert!(!vms.to_string().contains("PRIVATE KEY"));

    let (s, v) = a.call("DELETE", &format!("/api/v1/tasks/{id}"), Some(&agent), None).await;
    assert_eq!((s, v["state"].as_str()), (StatusCode::OK, Some("released")));
    let vm_id = task["vm_id"].as_str().expect("vm").to_string();
    common::eventually(30, || async {
        let (_, v) = a.call("GET", &format!("/api/v1/vms/{vm_id}"), Some(&a.admin), None).await;
        (v["state"] == "terminated").then_some(())
    })
    .await;
    assert!(vmfleet_provisioner::ssh::connect(&target, std::time::Duration::from_secs(3)).await.is_err(), "VM is gone");
}

#[tokio::test]
async fn volume_delete_is_409_while_attached() {
    let a = api().await;
    let t = a.admin.clone();
    let (_, v) = a
        .call(
            "POST",
            "/api/v1/tasks",
            Some(&t),
            Some(r#"{"executor":"machine","project":"p","docker_layer_caching":true}"#),
        )
        .await;
    let id = v["id"].as_str().expect("id").to_string();
    let task = common::eventually(60, || async {
        let (_, v) = a.call("GET", &format!("/api/v1/tasks/{id}"), Some(&t), None).await;
        (v["state"] == "assigned").then_some(v)
    })
    .await;
    let vol = task["volume_id"].as_str().expect("a DLC task has a volume").to_string();
    let (s, v) = a.call("DELETE", &format!("/api/v1/volumes/{vol}"), Some(&t), None).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "conflict"));
    a.call("DELETE", &format!("/api/v1/tasks/{id}"), Some(&t), None).await;
    let v = common::eventually(30, || async {
        let (s, v) = a.call("DELETE", &format!("/api/v1/volumes/{vol}"), Some(&t), None).await;
        (s == StatusCode::OK).then_some(v)
    })
    .await;
    assert!(v["state"] == "deleting" || v["state"] == "deleted", "{v}");
}

#[tokio::test]
async fn warm_pool_fills_and_serves_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = common::test_config(dir.path());
    config.pools = vec![serde_json::from_value(json!({"executor": "machine", "min_idle": 2})).expect("pool")];
    let token_path = config.admin_token_path();
    let running = start(config, None).await.expect("start");
    let admin = std::fs::read_to_string(token_path).expect("token").trim().to_string();
    let a = Api { running, admin, _dir: dir };
    common::eventually(60, || async {
        let (_, v) = a.call("GET", "/api/v1/summary", Some(&a.admin), None).await;
        (v["pools"]["machine/default/medium"]["ready"] == 2).then_some(())
    })
    .await;
    let (s, v) = a.call("POST", "/api/v1/tasks", Some(&a.admin), Some(r#"{"executor":"machine","project":"p"}"#)).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(v["state"], "assigned", "a warm VM is handed over in the request itself: {v}");
    assert!(v["ssh"]["private_key"].as_str().is_some_and(|k| k.contains("OPENSSH PRIVATE KEY")));
    // The pool refills to two idle VMs beside the busy one.
    common::eventually(60, || async {
        let (_, v) = a.call("GET", "/api/v1/summary", Some(&a.admin), None).await;
        let p = &v["pools"]["machine/default/medium"];
        (p["ready"] == 2 && p["assigned"] == 1).then_some(())
    })
    .await;
}

fn openssl(args: &[&str]) -> String {
    let out = std::process::Command::new("openssl").args(args).output().expect("openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn remote_docker_task_gets_tls_files_chained_to_the_installation_ca() {
    let a = api().await;
    let t = a.admin.clone();
    let (s, v) = a.call("POST", "/api/v1/tasks", Some(&t), Some(r#"{"executor":"remote-docker","project":"p"}"#)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id = v["id"].as_str().expect("id").to_string();
    let task = common::eventually(60, || async {
        let (_, v) = a.call("GET", &format!("/api/v1/tasks/{id}"), Some(&t), None).await;
        (v["state"] != "waiting").then_some(v)
    })
    .await;
    assert_eq!(task["state"], "assigned", "{task}");
    let d = &task["docker"];
    assert_eq!(d["docker_tls_verify"], "1");
    assert!(d["docker_host"].is_null(), "the local provider runs no Docker daemon: {d}");
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, v: &Value| {
        let p = dir.path().join(name);
        std::fs::write(&p, v.as_str().expect("pem")).expect("write");
        p.display().to_string()
    };
    let ca = write("ca.pem", &d["ca_cert"]);
    let cert = write("cert.pem", &d["client_cert"]);
    assert!(d["client_key"].as_str().expect("key").contains("PRIVATE KEY"));
    assert!(openssl(&["verify", "-CAfile", &ca, &cert]).contains(": OK"));
    assert!(openssl(&["x509", "-in", &cert, "-noout", "-text"]).contains("TLS Web Client Authentication"));

    // The VM got a server certificate for the address tasks dial, from the same CA.
    let vm = task["vm_id"].as_str().expect("vm");
    let server = a
        .running
        .fleet
        .config
        .data_dir
        .join(format!("local/instances/local-{vm}/home/circleci/.docker-tls/server-cert.pem"));
    let server = server.display().to_string();
    assert!(openssl(&["verify", "-CAfile", &ca, &server]).contains(": OK"));
    let text = openssl(&["x509", "-in", &server, "-noout", "-text"]);
    assert!(text.contains("IP Address:127.0.0.1") && text.contains("TLS Web Server Authentication"), "{text}");

    // A second task gets its own client certificate.
    let (_, v2) =
        a.call("POST", "/api/v1/tasks", Some(&t), Some(r#"{"executor":"remote-docker","project":"p"}"#)).await;
    let id2 = v2["id"].as_str().expect("id").to_string();
    let task2 = common::eventually(60, || async {
        let (_, v) = a.call("GET", &format!("/api/v1/tasks/{id2}"), Some(&t), None).await;
        (v["state"] == "assigned").then_some(v)
    })
    .await;
    assert_ne!(task2["docker"]["client_cert"], d["client_cert"]);
    assert_eq!(task2["docker"]["ca_cert"], d["ca_cert"], "one CA per installation");
}

#[tokio::test]
async fn request_bodies_are_bounded_per_route() {
    let a = api().await;
    let t = Some(a.admin.as_str());
    let big = |n: usize| format!("{{\"pool\": \"{}\"}}", "x".repeat(n));
    let (st, body) = a.call("POST", "/api/v1/tasks", t, Some(&big(300 << 10))).await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(code(&body), "payload_too_large", "{body}");
    assert!(body.to_string().len() < 1000, "the answer does not echo the body");
    // A job takes more: a 5 MiB config reaches the parser, which names its own limit.
    let job = |n: usize| {
        json!({"config": format!("version: 2.1\n# {}\n", "x".repeat(n)), "job": "build", "project": "gh/acme/app"})
            .to_string()
    };
    let (st, body) = a.call("POST", "/api/v1/jobs", t, Some(&job(5 << 20))).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.to_string().contains("the limit is 4194304 bytes"), "{body}");
    let (st, body) = a.call("POST", "/api/v1/jobs", t, Some(&job(11 << 20))).await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    let (st, _) = a.call("GET", "/status", None, None).await;
    assert_eq!(st, StatusCode::OK);
}
