//! The EC2 driver and the fleet on it, against the moto EC2 emulator.
#![expect(clippy::tests_outside_test_module, reason = "integration tests live in tests/, not in a cfg(test) module")]

mod common;

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use base64::Engine;
use common::emulator::{any_key_sshd, moto_url, FaultProxy};
use vmfleet_provisioner::ec2::{Ec2Provider, Ec2Settings};
use vmfleet_provisioner::{LaunchSpec, Platform, Provider, ProvisionError, VolumeSpec};

struct Env {
    provider: Ec2Provider,
    proxy: FaultProxy,
    install: String,
    ami: String,
    subnets: Vec<(String, String)>,
    sg: String,
}

async fn env_with(tweak: impl FnOnce(&mut Ec2Settings)) -> Option<Env> {
    let moto = moto_url()?;
    let (proxy, url) = FaultProxy::start(moto).await;
    let base = Ec2Settings {
        region: "us-east-1".into(),
        endpoint_url: Some(url.clone()),
        access_key_id: Some("testing".into()),
        secret_access_key: Some("testing".into()),
        mutations_per_second: 1000.0,
        mutation_burst: 1000,
        sdk_max_attempts: 1,
        throttle_retries: 3,
        ..Default::default()
    };
    let probe = Ec2Provider::new(base.clone()).await;
    let c = probe.client();
    let subnets: Vec<(String, String)> = c
        .describe_subnets()
        .send()
        .await
        .expect("subnets")
        .subnets()
        .iter()
        .map(|s| (s.subnet_id().expect("id").to_string(), s.availability_zone().expect("az").to_string()))
        .collect();
    let vpc = c.describe_vpcs().send().await.expect("vpcs").vpcs()[0].vpc_id().expect("vpc").to_string();
    let install = format!("test-{}", vmfleet::store::short_id());
    let sg = c
        .create_security_group()
        .group_name(&install)
        .description("vmfleet test")
        .vpc_id(vpc)
        .send()
        .await
        .expect("sg")
        .group_id()
        .expect("sg id")
        .to_string();
    let images = c.describe_images().owners("amazon").send().await.expect("images");
    let ami = images
        .images()
        .iter()
        .find(|i| i.platform().is_none() && i.architecture().is_some_and(|a| a.as_str() == "x86_64"))
        .and_then(|i| i.image_id())
        .expect("a Linux x86_64 AMI in the emulator")
        .to_string();
    let mut settings = Ec2Settings {
        subnet_ids: subnets.iter().take(2).map(|(s, _)| s.clone()).collect(),
        security_group_id: Some(sg.clone()),
        ..base
    };
    tweak(&mut settings);
    Some(Env { provider: Ec2Provider::new(settings).await, proxy, install, ami, subnets, sg })
}

fn spec(e: &Env, vm: &str) -> LaunchSpec {
    LaunchSpec {
        vm_id: vm.into(),
        install_id: e.install.clone(),
        pool: "machine/default/medium".into(),
        image_id: e.ami.clone(),
        instance_type: "m5.large".into(),
        fallback_instance_types: vec!["m5a.large".into(), "m6i.large".into()],
        capacity: vmfleet_provisioner::Capacity::OnDemand,
        platform: Platform::Linux,
        ssh_user: "circleci".into(),
        ssh_public_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTheTest vm".into(),
        tags: BTreeMap::from([("team".into(), "ci".into())]),
    }
}

fn tags_of(i: &aws_sdk_ec2::types::Instance) -> BTreeMap<String, String> {
    i.tags()
        .iter()
        .map(|t| (t.key().unwrap_or_default().to_string(), t.value().unwrap_or_default().to_string()))
        .collect()
}

#[tokio::test]
async fn launch_carries_ami_type_subnet_group_tags_and_user_data_once() {
    let Some(e) = env_with(|_| {}).await else { return };
    let s = spec(&e, "vm-launch1");
    let first = e.provider.launch(&s).await.expect("launch");
    let again = e.provider.launch(&s).await.expect("relaunch");
    assert_eq!(first.instance_id, again.instance_id, "a retried launch returns the same instance");
    let mine = e.provider.describe(&e.install).await.expect("describe");
    assert_eq!(mine.len(), 1, "one instance for one VM id");

    let c = e.provider.client();
    let out = c.describe_instances().instance_ids(&first.instance_id).send().await.expect("describe");
    let i = &out.reservations()[0].instances()[0];
    assert_eq!(i.image_id(), Some(e.ami.as_str()));
    assert_eq!(i.instance_type().map(|t| t.as_str()), Some("m5.large"));
    let subnet = i.subnet_id().expect("subnet");
    assert!(e.subnets.iter().take(2).any(|(s, _)| s == subnet), "launched into a configured subnet");
    assert!(i.security_groups().iter().any(|g| g.group_id() == Some(e.sg.as_str())));
    assert_eq!(i.metadata_options().and_then(|m| m.http_tokens()).map(|t| t.as_str()), Some("required"), "IMDSv2");
    let tags = tags_of(i);
    assert_eq!(tags.get("vmfleet:install"), Some(&e.install));
    assert_eq!(tags.get("vmfleet:vm").map(String::as_str), Some("vm-launch1"));
    assert_eq!(tags.get("vmfleet:pool").map(String::as_str), Some("machine/default/medium"));
    assert_eq!(tags.get("Name").map(String::as_str), Some("vmfleet-vm-launch1"));
    assert_eq!(tags.get("team").map(String::as_str), Some("ci"));
    let attr = c
        .describe_instance_attribute()
        .instance_id(&first.instance_id)
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
        .send()
        .await
        .expect("user data");
    let ud = base64::engine::general_purpose::STANDARD
        .decode(attr.user_data().and_then(|u| u.value()).expect("user data value"))
        .expect("base64");
    let ud = String::from_utf8(ud).expect("utf8");
    assert!(ud.starts_with("#cloud-config") && ud.contains("AAAAIFakeKeyForTheTest"), "{ud}");
    // The token the first attempt used is the VM id.
    let body = &e.proxy.seen("RunInstances")[0];
    assert!(body.split('&').any(|kv| kv == "ClientToken=vm-launch1"), "{body}");
}

#[tokio::test]
async fn describe_of_500_costs_a_handful_of_calls_and_sees_only_ours() {
    let Some(e) = env_with(|_| {}).await else { return };
    let c = e.provider.client();
    let tagged = |install: &str| {
        TagSpecification::builder()
            .resource_type(ResourceType::Instance)
            .tags(Tag::builder().key("vmfleet:install").value(install).build())
            .build()
    };
    c.run_instances()
        .image_id(&e.ami)
        .min_count(500)
        .max_count(500)
        .tag_specifications(tagged(&e.install))
        .send()
        .await
        .expect("500");
    c.run_instances()
        .image_id(&e.ami)
        .min_count(1)
        .max_count(1)
        .tag_specifications(tagged("someone-else"))
        .send()
        .await
        .expect("other");
    c.run_instances().image_id(&e.ami).min_count(1).max_count(1).send().await.expect("untagged");
    let before = e.provider.call_counts().get("DescribeInstances").copied().unwrap_or(0);
    let mine = e.provider.describe(&e.install).await.expect("describe");
    let calls = e.provider.call_counts()["DescribeInstances"] - before;
    assert_eq!(mine.len(), 500);
    assert!(calls <= 3, "describe of 500 VMs took {calls} calls");

    // Terminate is batched, and terminating what is gone (or unknown) is fine.
    let ids: Vec<String> = mine.iter().map(|i| i.instance_id.clone()).collect();
    let before = e.provider.call_counts().get("TerminateInstances").copied().unwrap_or(0);
    e.provider.terminate(&ids).await.expect("terminate");
    assert_eq!(e.provider.call_counts()["TerminateInstances"] - before, 1, "one call for 500 ids");
    assert!(e.provider.describe(&e.install).await.expect("describe").is_empty());
    e.provider.terminate(&ids[..3]).await.expect("terminate again");
    e.provider.terminate(&["i-0123456789abcdef0".to_string()]).await.expect("unknown id");
    // Nothing of another installation or untagged was touched.
    let others = c
        .describe_instances()
        .filters(Filter::builder().name("tag:vmfleet:install").values("someone-else").build())
        .filters(Filter::builder().name("instance-state-name").values("running").build())
        .send()
        .await
        .expect("others");
    assert!(!others.reservations().is_empty());
}

#[tokio::test]
async fn dlc_volume_is_created_in_the_instance_zone_attached_detached_and_deleted() {
    let Some(e) = env_with(|_| {}).await else { return };
    let inst = e.provider.launch(&spec(&e, "vm-vol1")).await.expect("launch");
    let vs = VolumeSpec {
        volume_id: "vol-test-1".into(),
        install_id: e.install.clone(),
        project: "gh/acme/app".into(),
        size_gb: 100,
        zone: inst.zone.clone(),
        tags: BTreeMap::new(),
    };
    let v = e.provider.create_volume(&vs).await.expect("create");
    assert_eq!(v.zone, inst.zone);
    assert_eq!(e.provider.create_volume(&vs).await.expect("again").provider_id, v.provider_id, "idempotent");
    let c = e.provider.client();
    let d = c.describe_volumes().volume_ids(&v.provider_id).send().await.expect("describe");
    let vol = &d.volumes()[0];
    assert_eq!(vol.volume_type().map(|t| t.as_str()), Some("gp3"));
    assert_eq!(vol.size(), Some(100));
    let vtags: BTreeMap<_, _> =
        vol.tags().iter().map(|t| (t.key().unwrap_or_default(), t.value().unwrap_or_default())).collect();
    assert_eq!(vtags.get("vmfleet:project"), Some(&"gh/acme/app"));
    assert_eq!(vtags.get("vmfleet:install"), Some(&e.install.as_str()));

    let listed = e.provider.describe_volumes(&e.install).await.expect("volumes");
    assert_eq!(listed.len(), 1, "only DLC volumes, not the instances' root volumes: {listed:?}");
    e.provider.attach_volume(&v.provider_id, &inst.instance_id).await.expect("attach");
    e.provider.attach_volume(&v.provider_id, &inst.instance_id).await.expect("attach again is done already");
    let listed = e.provider.describe_volumes(&e.install).await.expect("volumes");
    assert_eq!(
        listed.iter().find(|x| x.provider_id == v.provider_id).and_then(|x| x.attached_to.clone()),
        Some(inst.instance_id.clone())
    );
    e.provider.detach_volume(&v.provider_id, &inst.instance_id).await.expect("detach");
    let listed = e.provider.describe_volumes(&e.install).await.expect("volumes");
    assert_eq!(listed.iter().find(|x| x.provider_id == v.provider_id).and_then(|x| x.attached_to.clone()), None);
    e.provider.delete_volume(&v.provider_id).await.expect("delete");
    e.provider.delete_volume(&v.provider_id).await.expect("delete again");
    assert!(e
        .provider
        .describe_volumes(&e.install)
        .await
        .expect("volumes")
        .iter()
        .all(|x| x.provider_id != v.provider_id));
}

#[tokio::test]
async fn capacity_error_falls_back_to_the_next_type_and_is_remembered() {
    let Some(e) = env_with(|s| s.subnet_ids.truncate(1)).await else { return };
    e.proxy.inject("RunInstances", "InsufficientInstanceCapacity", 500, 1);
    let i = e.provider.launch(&spec(&e, "vm-cap1")).await.expect("launch falls back");
    let out = e.provider.client().describe_instances().instance_ids(&i.instance_id).send().await.expect("describe");
    assert_eq!(out.reservations()[0].instances()[0].instance_type().map(|t| t.as_str()), Some("m5a.large"));
    let runs = e.proxy.seen("RunInstances");
    assert_eq!(runs.len(), 2);
    let has = |body: &str, kv: &str| body.split('&').any(|x| x == kv);
    assert!(has(&runs[0], "InstanceType=m5.large") && has(&runs[1], "InstanceType=m5a.large"));

    // The next VM does not try m5.large in that zone again for a while.
    e.provider.launch(&spec(&e, "vm-cap2")).await.expect("launch");
    let runs = e.proxy.seen("RunInstances");
    assert_eq!(runs.len(), 3);
    assert!(has(&runs[2], "InstanceType=m5a.large"), "remembered as unavailable");

    // Every type out of capacity: a clear error, nothing launched.
    e.proxy.inject("RunInstances", "InsufficientInstanceCapacity", 500, 3);
    let err = e.provider.launch(&spec(&e, "vm-cap3")).await.expect_err("no capacity anywhere");
    assert!(matches!(err, ProvisionError::InsufficientCapacity(_)), "{err}");
}

#[tokio::test]
async fn spot_with_fallback_buys_spot_first_then_on_demand() {
    let Some(e) = env_with(|s| s.subnet_ids.truncate(1)).await else { return };
    let spot = |b: &str| b.split('&').any(|kv| kv == "InstanceMarketOptions.MarketType=spot");
    let mut s = spec(&e, "vm-spot1");
    s.capacity = vmfleet_provisioner::Capacity::Spot;
    s.fallback_instance_types.clear();
    e.provider.launch(&s).await.expect("spot");
    assert!(spot(&e.proxy.seen("RunInstances")[0]), "bought on the spot market");

    // No spot capacity for any type: on-demand, after every spot type was tried.
    let mut s = spec(&e, "vm-spot2");
    s.capacity = vmfleet_provisioner::Capacity::SpotWithFallback;
    s.fallback_instance_types = vec!["m5a.large".into()];
    e.proxy.inject("RunInstances", "InsufficientInstanceCapacity", 500, 2);
    e.provider.launch(&s).await.expect("falls back to on-demand");
    let runs: Vec<bool> = e.proxy.seen("RunInstances")[1..].iter().map(|b| spot(b)).collect();
    assert_eq!(runs, [true, true, false], "spot m5.large, spot m5a.large, then on-demand");

    // Spot only, and none to be had: a clear capacity error.
    let mut s = spec(&e, "vm-spot3");
    s.capacity = vmfleet_provisioner::Capacity::Spot;
    s.instance_type = "c5.large".into();
    s.fallback_instance_types.clear();
    e.proxy.inject("RunInstances", "InsufficientInstanceCapacity", 500, 1);
    let err = e.provider.launch(&s).await.expect_err("no spot");
    assert!(matches!(err, ProvisionError::InsufficientCapacity(_)), "{err}");
}

#[tokio::test]
async fn throttling_is_retried_with_backoff_and_ends() {
    let Some(e) = env_with(|_| {}).await else { return };
    e.proxy.inject("DescribeInstances", "RequestLimitExceeded", 503, 2);
    e.provider.describe(&e.install).await.expect("succeeds after backing off");
    assert_eq!(e.proxy.seen("DescribeInstances").len(), 3);
    // A storm that does not stop: the call gives up after its retries, with the reason.
    e.proxy.inject("DescribeInstances", "RequestLimitExceeded", 503, 50);
    let err = e.provider.describe(&e.install).await.expect_err("gives up");
    assert!(matches!(err, ProvisionError::Throttled(_)), "{err}");
    assert_eq!(e.proxy.seen("DescribeInstances").len(), 3 + 4, "one call and three retries");
}

#[tokio::test]
async fn fleet_on_ec2_requests_releases_and_attaches_dlc_in_the_right_zone() {
    let Some(moto) = moto_url() else { return };
    let Some(e) = env_with(|_| {}).await else { return };
    let sshd = any_key_sshd().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = common::test_config(dir.path());
    config.provider.kind = vmfleet::config::ProviderKind::Ec2;
    config.provider.tags = BTreeMap::from([("team".into(), "ci".into())]);
    config.install_id = Some(e.install.clone());
    config.images.custom_linux = BTreeMap::from([("us-east-1".into(), e.ami.clone())]);
    let ec2 = &mut config.provider.ec2;
    ec2.region = "us-east-1".into();
    ec2.endpoint_url = Some(moto);
    ec2.access_key_id = Some("testing".into());
    ec2.secret_access_key = Some(vmfleet::config::Secret("testing".into()));
    ec2.subnet_ids = e.subnets.iter().map(|(s, _)| s.clone()).collect();
    ec2.security_group_id = Some(e.sg.clone());
    ec2.ssh_address_override = Some(format!("127.0.0.1:{sshd}"));
    let running = vmfleet::server::start(config, None).await.expect("start");
    let fleet = running.fleet.clone();
    let req = |dlc| vmfleet::fleet::TaskRequest {
        executor: "machine".into(),
        image: "default".into(),
        resource_class: "medium".into(),
        project: "gh/acme/app".into(),
        docker_layer_caching: dlc,
    };
    let task = fleet.request_task(&req(true)).await.expect("request");
    let task = common::eventually(60, || {
        let fleet = fleet.clone();
        let id = task.id.clone();
        async move {
            let t = fleet.store.task(&id).await.expect("task");
            (t.state != "waiting").then_some(t)
        }
    })
    .await;
    assert_eq!(task.state, "assigned", "{task:?}");
    let vm = fleet.store.vm(task.vm_id.as_deref().expect("vm")).await.expect("vm");
    assert_eq!(vm.image_id, e.ami, "the AMI of the region");
    let instance_id = vm.instance_id.clone().expect("instance");
    let c = e.provider.client();
    let out = c.describe_instances().instance_ids(&instance_id).send().await.expect("describe");
    let i = &out.reservations()[0].instances()[0];
    assert_eq!(i.instance_type().map(|t| t.as_str()), Some("m5.large"));
    assert_eq!(tags_of(i).get("vmfleet:vm"), Some(&vm.id));
    let vol = fleet.store.volume(task.volume_id.as_deref().expect("volume")).await.expect("volume");
    assert_eq!(
        Some(vol.zone.as_str()),
        i.placement().and_then(|p| p.availability_zone()),
        "volume in the instance's zone"
    );
    let d = c.describe_volumes().volume_ids(vol.provider_id.as_deref().expect("pid")).send().await.expect("vol");
    assert_eq!(d.volumes()[0].attachments().first().and_then(|a| a.instance_id()), Some(instance_id.as_str()));

    fleet.release_task(&task.id).await.expect("release");
    common::eventually(60, || {
        let fleet = fleet.clone();
        let id = vm.id.clone();
        async move { (fleet.store.vm(&id).await.expect("vm").state == "terminated").then_some(()) }
    })
    .await;
    let out = c.describe_instances().instance_ids(&instance_id).send().await.expect("describe");
    assert_eq!(
        out.reservations()[0].instances()[0].state().and_then(|s| s.name()).map(|n| n.as_str()),
        Some("terminated")
    );
    let d = c.describe_volumes().volume_ids(vol.provider_id.as_deref().expect("pid")).send().await.expect("vol");
    assert!(d.volumes()[0].attachments().is_empty(), "volume detached and kept for the project");
    assert_eq!(fleet.store.volume(&vol.id).await.expect("vol").state, "available");
    running.shutdown.trigger();
}

#[tokio::test]
async fn calls_go_through_the_configured_proxy() {
    let Some(moto) = moto_url() else { return };
    let (proxy, proxy_url) = FaultProxy::start(moto.clone()).await;
    let Some(e) = env_with(|s| {
        s.endpoint_url = Some(moto.clone());
        s.proxy.http = Some(proxy_url.clone());
    })
    .await
    else {
        return;
    };
    assert!(proxy.seen("DescribeInstances").is_empty());
    e.provider.describe(&e.install).await.expect("describe through the proxy");
    assert_eq!(proxy.seen("DescribeInstances").len(), 1, "the call went through the proxy");
    assert!(e.proxy.seen("DescribeInstances").is_empty(), "and not through the endpoint's own front");
}

#[tokio::test]
async fn cli_against_the_emulator_launches_and_terminates() {
    let Some(moto) = moto_url() else { return };
    let Some(e) = env_with(|_| {}).await else { return };
    let sshd = any_key_sshd().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let subnets: Vec<String> = e.subnets.iter().map(|(s, _)| format!("\"{s}\"")).collect();
    let config = dir.path().join("vmfleet.yaml");
    std::fs::write(
        &config,
        format!(
            "data_dir: {dir}\nlisten: 127.0.0.1:{port}\nreconcile_interval: 200ms\ninstall_id: {install}\n\
             images:\n  custom_linux: {{us-east-1: {ami}}}\n\
             provider:\n  kind: ec2\n  tags: {{team: ci}}\n  ec2:\n    region: us-east-1\n    endpoint_url: {moto}\n\
             \x20   access_key_id: AKIATESTKEY\n    secret_access_key: s3cr3t-value-never-shown\n\
             \x20   subnet_ids: [{subnets}]\n    security_group_id: {sg}\n    ssh_address_override: 127.0.0.1:{sshd}\n",
            dir = dir.path().display(),
            install = e.install,
            ami = e.ami,
            subnets = subnets.join(", "),
            sg = e.sg,
        ),
    )
    .expect("config");
    let bin = env!("CARGO_BIN_EXE_vmfleet");
    let cli = |args: &[&str]| {
        let mut c = tokio::process::Command::new(bin);
        c.arg("--config").arg(&config).args(args).env_remove("VMFLEET_TOKEN").env_remove("VMFLEET_SERVER");
        c
    };
    let check = cli(&["config", "check"]).output().await.expect("check");
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    assert!(!String::from_utf8_lossy(&check.stdout).contains("s3cr3t"));
    let log = dir.path().join("serve.log");
    let mut server =
        cli(&["serve"]).stderr(std::fs::File::create(&log).expect("log")).kill_on_drop(true).spawn().expect("serve");
    common::eventually(30, || async {
        cli(&["status"]).output().await.ok().filter(|o| o.status.success()).map(|_| ())
    })
    .await;

    let out = cli(&["tasks", "request", "--project", "gh/acme/app", "--dlc", "--wait", "--json"])
        .output()
        .await
        .expect("request");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let task: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(task["state"], "assigned", "{task}");
    let vm: serde_json::Value = serde_json::from_slice(
        &cli(&["vms", "show", task["vm_id"].as_str().expect("vm"), "--json"]).output().await.expect("vm").stdout,
    )
    .expect("vm json");
    let instance_id = vm["instance_id"].as_str().expect("instance").to_string();
    let c = e.provider.client();
    let d = c.describe_instances().instance_ids(&instance_id).send().await.expect("describe");
    let i = &d.reservations()[0].instances()[0];
    let tags = tags_of(i);
    assert_eq!(i.image_id(), Some(e.ami.as_str()));
    assert_eq!(i.instance_type().map(|t| t.as_str()), Some("m5.large"));
    assert_eq!(tags.get("vmfleet:install"), Some(&e.install));
    assert_eq!(tags.get("team").map(String::as_str), Some("ci"));
    let zone = i.placement().and_then(|p| p.availability_zone()).expect("zone").to_string();
    let vols: serde_json::Value =
        serde_json::from_slice(&cli(&["volumes", "list", "--json"]).output().await.expect("volumes").stdout)
            .expect("json");
    assert_eq!(vols[0]["zone"], zone.as_str(), "the DLC volume is in the instance's zone");

    let out = cli(&["tasks", "release", task["id"].as_str().expect("id")]).output().await.expect("release");
    assert!(out.status.success());
    common::eventually(60, || async {
        let d = c.describe_instances().instance_ids(&instance_id).send().await.ok()?;
        let state = d.reservations()[0].instances()[0].state()?.name()?.as_str().to_string();
        (state == "terminated").then_some(())
    })
    .await;
    let _ = server.kill().await;
    let log = std::fs::read_to_string(&log).expect("log");
    assert!(!log.contains("s3cr3t"), "the secret must never be logged");
}

#[tokio::test]
async fn registration_checks_the_ami_with_describe_images() {
    let Some(moto) = moto_url() else { return };
    let Some(e) = env_with(|_| {}).await else { return };
    let windows_ami = e
        .provider
        .client()
        .describe_images()
        .owners("amazon")
        .send()
        .await
        .expect("images")
        .images()
        .iter()
        .find(|i| i.platform().is_some_and(|p| p.as_str() == "windows"))
        .and_then(|i| i.image_id())
        .expect("a Windows AMI in the emulator")
        .to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = common::test_config(dir.path());
    config.provider.kind = vmfleet::config::ProviderKind::Ec2;
    config.provider.ec2.region = "us-east-1".into();
    config.provider.ec2.endpoint_url = Some(moto);
    config.provider.ec2.access_key_id = Some("testing".into());
    config.provider.ec2.secret_access_key = Some(vmfleet::config::Secret("testing".into()));
    let store = common::sqlite_store(dir.path()).await;
    let provider = vmfleet::fleet::build_provider(&config).await.expect("provider");
    let fleet = vmfleet::fleet::Fleet::new(config, store, provider).await.expect("fleet");
    let reg = |version: &str, kind: &str, arch: &str, ami: &str| vmfleet::fleet::RegisterImage {
        name: "img".into(),
        version: version.into(),
        kind: kind.into(),
        arch: arch.into(),
        amis: BTreeMap::from([("us-east-1".into(), ami.into())]),
    };
    fleet.register_image(&reg("1", "linux", "x86_64", &e.ami), "t").await.expect("a real Linux AMI");
    fleet.register_image(&reg("2", "windows", "x86_64", &windows_ami), "t").await.expect("a real Windows AMI");
    for (r, why) in [
        (reg("3", "linux", "x86_64", &windows_ami), "Windows"),
        (reg("4", "linux", "arm64", &e.ami), "built for x86_64"),
        (reg("5", "linux", "x86_64", "ami-0deadbeef00000000"), "does not exist"),
    ] {
        let err = fleet.register_image(&r, "t").await.expect_err(why);
        assert!(matches!(err, vmfleet::fleet::FleetError::BadRequest(_)) && err.to_string().contains(why), "{err}");
    }
    assert_eq!(fleet.catalog().images().iter().filter(|i| i.name == "img").count(), 2, "refused versions are not kept");

    // Registered, promoted, resolved in the region: GPU and Windows classes get their AMIs and
    // instance types. (No reconcile loop runs here, so nothing is launched.)
    fleet.register_image(&reg("gpu-1", "gpu", "x86_64", &e.ami), "t").await.expect("gpu image");
    fleet.promote_image("img", "gpu-1", Some("gpu-default"), "t").await.expect("promote gpu");
    fleet.promote_image("img", "2", Some("windows-default"), "t").await.expect("promote windows");
    let task = |image: &str, class: &str| vmfleet::fleet::TaskRequest {
        executor: "machine".into(),
        image: image.into(),
        resource_class: class.into(),
        project: "p".into(),
        docker_layer_caching: false,
    };
    for (image, class, ami, instance_type) in [
        ("gpu-default", "gpu.nvidia.small", e.ami.as_str(), "g4dn.xlarge"),
        ("windows-default", "windows.medium", windows_ami.as_str(), "m5.xlarge"),
    ] {
        let t = fleet.request_task(&task(image, class)).await.expect(class);
        let vm = fleet.store.vm(t.vm_id.as_deref().expect("vm")).await.expect("vm");
        assert_eq!((vm.image_id.as_str(), vm.instance_type.as_str()), (ami, instance_type), "{class}");
    }
    let err = fleet.request_task(&task("img:1", "gpu.nvidia.small")).await.expect_err("not a GPU image");
    assert!(err.to_string().contains("GPU"), "{err}");
}
