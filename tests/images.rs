//! The image catalog: registration, promotion, rollback and resolution.
#![expect(clippy::tests_outside_test_module, reason = "integration tests live in tests/, not in a cfg(test) module")]

mod common;

use std::collections::BTreeMap;

use axum::http::StatusCode;
use common::harness::api;
use serde_json::json;
use vmfleet::fleet::{Fleet, RegisterImage, TaskRequest};

fn code(v: &serde_json::Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<none>")
}

#[tokio::test]
async fn publisher_registers_and_can_do_nothing_else() {
    let a = api().await;
    let publisher = a.token("packer", "image-publisher").await;
    let body = json!({"name": "ubuntu-2004", "version": "202010-01", "kind": "linux",
                      "amis": {"us-east-1": "ami-0a1b2c3d", "us-west-2": "ami-0b2c3d4e"}});
    let (s, v) = a.call("POST", "/api/v1/images", Some(&publisher), Some(&body.to_string())).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["versions"][0]["amis"]["us-west-2"], "ami-0b2c3d4e");
    let (s, _) = a.call("POST", "/api/v1/images", Some(&publisher), Some(&body.to_string())).await;
    assert_eq!(s, StatusCode::CONFLICT, "a version is registered once");
    for (m, uri, b) in [
        ("GET", "/api/v1/images", None),
        ("POST", "/api/v1/images/ubuntu-2004/promote", Some(r#"{"version":"202010-01"}"#)),
        ("GET", "/api/v1/vms", None),
        ("POST", "/api/v1/tasks", Some(r#"{"executor":"machine","project":"p"}"#)),
    ] {
        let (s, v) = a.call(m, uri, Some(&publisher), b).await;
        assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "forbidden"), "{m} {uri}");
    }
    let cases = [
        (json!({"name": "x y", "version": "1", "kind": "linux", "amis": {"us-east-1": "ami-0a1b2c3d"}}), "name"),
        (json!({"name": "x", "version": "1", "kind": "mac", "amis": {"us-east-1": "ami-0a1b2c3d"}}), "kind"),
        (
            json!({"name": "x", "version": "1", "kind": "linux", "arch": "sparc", "amis": {"us-east-1": "ami-0a1b2c3d"}}),
            "arch",
        ),
        (json!({"name": "x", "version": "1", "kind": "linux", "amis": {}}), "amis"),
        (json!({"name": "x", "version": "1", "kind": "linux", "amis": {"us-east-1": "i-123"}}), "amis.us-east-1"),
        (json!({"name": "x", "version": "1", "kind": "linux", "amis": {"mars": "ami-0a1b2c3d"}}), "amis.mars"),
    ];
    for (body, field) in cases {
        let (s, v) = a.call("POST", "/api/v1/images", Some(&publisher), Some(&body.to_string())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        assert!(v["error"]["message"].as_str().expect("msg").starts_with(field), "{body}: {v}");
    }
}

#[tokio::test]
async fn promote_and_rollback_keep_history_and_tasks_follow_the_alias() {
    let a = api().await;
    let t = a.admin.clone();
    for version in ["1", "2"] {
        let body = json!({"name": "ci", "version": version, "kind": "linux", "amis": {"us-east-1": "ami-0a1b2c3d"}});
        let (s, v) = a.call("POST", "/api/v1/images", Some(&t), Some(&body.to_string())).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let (s, v) = a.call("POST", "/api/v1/images/ci/promote", Some(&t), Some(r#"{"version":"9"}"#)).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"));
    let (s, v) = a.call("POST", "/api/v1/images/ci/rollback", Some(&t), None).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "conflict"), "nothing to roll back to yet");
    a.call("POST", "/api/v1/images/ci/promote", Some(&t), Some(r#"{"version":"1"}"#)).await;
    let (_, v) = a.call("POST", "/api/v1/images/ci/promote", Some(&t), Some(r#"{"version":"2"}"#)).await;
    assert_eq!(v["aliases"]["ci"], "ci:2");
    // A task on the alias gets the promoted version.
    let (_, task) =
        a.call("POST", "/api/v1/tasks", Some(&t), Some(r#"{"executor":"machine","project":"p","image":"ci"}"#)).await;
    let vm = a.running.fleet.store.vm(task["vm_id"].as_str().expect("vm")).await.expect("vm");
    assert_eq!(vm.image_id, "ci:2");
    let (s, v) = a.call("POST", "/api/v1/images/ci/rollback", Some(&t), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["aliases"]["ci"], "ci:1");
    let targets: Vec<&str> =
        v["history"].as_array().expect("history").iter().map(|h| h["target"].as_str().expect("t")).collect();
    assert_eq!(targets, ["ci:1", "ci:2", "ci:1"]);
    let (_, task) =
        a.call("POST", "/api/v1/tasks", Some(&t), Some(r#"{"executor":"machine","project":"p","image":"ci"}"#)).await;
    let vm = a.running.fleet.store.vm(task["vm_id"].as_str().expect("vm")).await.expect("vm");
    assert_eq!(vm.image_id, "ci:1");
    // Promoting onto another alias, such as the default one.
    let (_, v) =
        a.call("POST", "/api/v1/images/ci/promote", Some(&t), Some(r#"{"version":"2","alias":"default"}"#)).await;
    assert_eq!(v["aliases"]["default"], "ci:2");
}

/// Resolution on the EC2 provider: the region's AMI and the class's instance type. Nothing is
/// launched (no reconcile loop runs), so no emulator is needed.
#[tokio::test]
async fn gpu_and_windows_classes_resolve_to_their_amis_and_instance_types() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = common::test_config(dir.path());
    config.provider.kind = vmfleet::config::ProviderKind::Ec2;
    config.provider.ec2.region = "us-west-2".into();
    // Nothing here may reach AWS or the instance metadata service: a dead loopback endpoint and
    // static credentials, so that no call and no credential lookup leaves the machine.
    config.provider.ec2.endpoint_url = Some("http://127.0.0.1:9".into());
    config.provider.ec2.access_key_id = Some("testing".into());
    config.provider.ec2.secret_access_key = Some(vmfleet::config::Secret("testing".into()));
    config.images.custom_windows = BTreeMap::from([("us-west-2".into(), "ami-0ffffff1".into())]);
    config.images.custom_gpu =
        BTreeMap::from([("us-west-2".into(), "ami-0c0ffee1".into()), ("us-east-1".into(), "ami-0c0ffee2".into())]);
    let store = common::sqlite_store(dir.path()).await;
    let provider = vmfleet::fleet::build_provider(&config).await.expect("provider");
    let fleet = Fleet::new(config, store, provider).await.expect("fleet");
    let req = |image: &str, class: &str| TaskRequest {
        executor: "machine".into(),
        image: image.into(),
        resource_class: class.into(),
        project: "p".into(),
        docker_layer_caching: false,
    };
    let vm_of = |t: vmfleet::store::TaskRow| {
        let fleet = fleet.clone();
        async move { fleet.store.vm(t.vm_id.as_deref().expect("vm")).await.expect("vm") }
    };
    let vm = vm_of(fleet.request_task(&req("gpu-default", "gpu.nvidia.small")).await.expect("gpu")).await;
    assert_eq!((vm.image_id.as_str(), vm.instance_type.as_str()), ("ami-0c0ffee1", "g4dn.xlarge"));
    let vm = vm_of(fleet.request_task(&req("windows-default", "windows.medium")).await.expect("windows")).await;
    assert_eq!(
        (vm.image_id.as_str(), vm.instance_type.as_str(), vm.platform.as_str()),
        ("ami-0ffffff1", "m5.xlarge", "windows")
    );
    // Mismatches are refused with the reason.
    for (image, class, why) in [
        ("default", "gpu.nvidia.small", "GPU"),
        ("windows-default", "medium", "Windows image"),
        ("gpu-default", "windows.medium", "Linux image"),
        ("default", "arm.medium", "arm64"),
    ] {
        let err = fleet.request_task(&req(image, class)).await.expect_err("mismatch");
        assert!(err.to_string().contains(why), "{image} on {class}: {err}");
    }
    let err = fleet.request_task(&req("nope", "gpu.nvidia.small")).await.expect_err("unknown");
    assert!(err.to_string().contains("unknown image"), "{err}");
}

/// A promotion rolls a warm pool over to the new version without the ready count dropping below
/// target, and a VM busy with a task finishes on the old version.
#[tokio::test]
async fn promotion_replaces_idle_warm_vms_and_leaves_busy_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = common::test_config(dir.path());
    let yaml = "pools:\n  - {executor: machine, image: ci, min_idle: 2, max_replace_share: 0.5}\n";
    config.pools = vmfleet::config::Config::parse(yaml, "t", Vec::<(String, String)>::new())
        .expect("pool on a registered alias")
        .pools;
    let running = vmfleet::server::start(config, None).await.expect("start");
    let fleet = running.fleet.clone();
    for v in ["1", "2"] {
        let r = RegisterImage {
            name: "ci".into(),
            version: v.into(),
            kind: "linux".into(),
            arch: "x86_64".into(),
            amis: BTreeMap::from([("us-east-1".into(), "ami-0a1b2c3d".into())]),
        };
        fleet.register_image(&r, "t").await.expect("register");
    }
    fleet.promote_image("ci", "1", None, "t").await.expect("promote 1");
    let ready = |version: &'static str| {
        let fleet = fleet.clone();
        async move {
            let vms = fleet.store.vms(&[vmfleet::store::VmState::Ready]).await.expect("vms");
            vms.iter().filter(|v| v.image_id == format!("ci:{version}")).count()
        }
    };
    common::eventually(60, || async { (ready("1").await == 2).then_some(()) }).await;
    // One VM goes to a task before the promotion.
    let on_ci = TaskRequest {
        executor: "machine".into(),
        image: "ci".into(),
        resource_class: "medium".into(),
        project: "p".into(),
        docker_layer_caching: false,
    };
    let busy = fleet.request_task(&on_ci).await.expect("task");
    assert_eq!(busy.state, "assigned");
    common::eventually(60, || async { (ready("1").await == 2).then_some(()) }).await;
    fleet.promote_image("ci", "2", None, "t").await.expect("promote 2");
    // From now on a new task gets the new version, even while old idle VMs remain.
    let fresh = fleet.request_task(&on_ci).await.expect("task");
    assert_eq!(fleet.store.vm(fresh.vm_id.as_deref().expect("vm")).await.expect("vm").image_id, "ci:2");
    // Watch the rollout: the pool never has fewer than two ready VMs.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (old, new) = (ready("1").await, ready("2").await);
        assert!(old + new >= 2, "ready count fell to {}", old + new);
        if old == 0 && new == 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "rollout did not finish: {old} old, {new} new");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let vm = fleet.store.vm(busy.vm_id.as_deref().expect("vm")).await.expect("vm");
    assert_eq!((vm.state.as_str(), vm.image_id.as_str()), ("assigned", "ci:1"), "the busy VM is untouched");
    running.shutdown.trigger();
}
