//! The EC2 driver and the fleet on it, against the moto EC2 emulator.
#![expect(clippy::tests_outside_test_module, reason = "integration tests live in tests/, not in a cfg(test) module")]

mod common;

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use base64::Engine;
use common::emulator::{any_key_sshd, moto_url, recording_sshd, FaultProxy};
use vmfleet_provisioner::ec2::{Ec2Provider, Ec2Settings};
use vmfleet_provisioner::{InstanceState, LaunchSpec, Platform, Provider, ProvisionError, VolumeSpec};

struct Env {
    provider: Ec2Provider,
    proxy: FaultProxy,
    /// The proxy's URL: the endpoint of `provider`.
    url: String,
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
    Some(Env { provider: Ec2Provider::new(settings).await, proxy, url, install, ami, subnets, sg })
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
        skip_lookup: false,
        hibernate: false,
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

/// A task of the default pool without a DLC volume.
fn plain_request() -> vmfleet::fleet::TaskRequest {
    vmfleet::fleet::TaskRequest {
        executor: "machine".into(),
        image: "default".into(),
        resource_class: "medium".into(),
        project: "gh/acme/app".into(),
        docker_layer_caching: false,
    }
}

/// An in-process fleet on EC2 at `endpoint`, every instance's SSH at the test's `sshd`.
fn fleet_config(e: &Env, dir: &std::path::Path, endpoint: String, sshd: u16) -> vmfleet::config::Config {
    let mut config = common::test_config(dir);
    config.provider.kind = vmfleet::config::ProviderKind::Ec2;
    config.install_id = Some(e.install.clone());
    config.images.custom_linux = BTreeMap::from([("us-east-1".into(), e.ami.clone())]);
    let ec2 = &mut config.provider.ec2;
    ec2.region = "us-east-1".into();
    ec2.endpoint_url = Some(endpoint);
    ec2.access_key_id = Some("testing".into());
    ec2.secret_access_key = Some(vmfleet::config::Secret("testing".into()));
    ec2.subnet_ids = e.subnets.iter().map(|(s, _)| s.clone()).collect();
    ec2.security_group_id = Some(e.sg.clone());
    ec2.ssh_address_override = Some(format!("127.0.0.1:{sshd}"));
    config
}

#[tokio::test]
async fn fleet_on_ec2_requests_releases_and_attaches_dlc_in_the_right_zone() {
    let Some(moto) = moto_url() else { return };
    let Some(e) = env_with(|_| {}).await else { return };
    let (sshd, commands) = recording_sshd().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = fleet_config(&e, dir.path(), moto, sshd);
    config.provider.tags = BTreeMap::from([("team".into(), "ci".into())]);
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
    // Before the hand-over, the attached volume was made Docker's data root over SSH.
    let serial = vol.provider_id.as_deref().expect("pid").replace('-', "");
    let ran = commands.lock().expect("lock").clone();
    assert!(
        ran.iter()
            .any(|c| c.contains(&format!("nvme-Amazon_Elastic_Block_Store_{serial}")) && c.contains("/var/lib/docker")),
        "{ran:?}"
    );

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
    let config = write_config(&e, dir.path(), &moto, sshd);
    let cli = |args: &[&str]| cli(&config, args);
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

/// A configuration file for `vmfleet serve` on the emulator at `endpoint`, with instances'
/// SSH answered by `sshd`.
fn write_config(e: &Env, dir: &std::path::Path, endpoint: &str, sshd: u16) -> std::path::PathBuf {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let subnets: Vec<String> = e.subnets.iter().map(|(s, _)| format!("\"{s}\"")).collect();
    let config = dir.join("vmfleet.yaml");
    std::fs::write(
        &config,
        format!(
            "data_dir: {dir}\nlisten: 127.0.0.1:{port}\nreconcile_interval: 200ms\ninstall_id: {install}\n\
             images:\n  custom_linux: {{us-east-1: {ami}}}\n\
             provider:\n  kind: ec2\n  tags: {{team: ci}}\n  ec2:\n    region: us-east-1\n    endpoint_url: {endpoint}\n\
             \x20   access_key_id: AKIATESTKEY\n    secret_access_key: s3cr3t-value-never-shown\n\
             \x20   subnet_ids: [{subnets}]\n    security_group_id: {sg}\n    ssh_address_override: 127.0.0.1:{sshd}\n",
            dir = dir.display(),
            install = e.install,
            ami = e.ami,
            subnets = subnets.join(", "),
            sg = e.sg,
        ),
    )
    .expect("config");
    config
}

/// `vmfleet --config CONFIG ARGS…`, talking to the server the configuration names.
fn cli(config: &std::path::Path, args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_vmfleet"));
    c.arg("--config").arg(config).args(args).env_remove("VMFLEET_TOKEN").env_remove("VMFLEET_SERVER");
    c
}

/// Instances tagged with `install` that are not terminated.
async fn tagged_instances(e: &Env, install: &str) -> Vec<String> {
    let out = e
        .provider
        .client()
        .describe_instances()
        .filters(Filter::builder().name("tag:vmfleet:install").values(install).build())
        .send()
        .await
        .expect("describe");
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter(|i| i.state().and_then(|s| s.name()).is_some_and(|n| n.as_str() != "terminated"))
        .filter_map(|i| i.instance_id().map(String::from))
        .collect()
}

/// An instance made directly in the emulator with `tags`, as another tool (or a crashed
/// launch) would leave it.
async fn run_direct(e: &Env, tags: &[(&str, &str)]) -> String {
    let mut req = e
        .provider
        .client()
        .run_instances()
        .image_id(&e.ami)
        .instance_type(aws_sdk_ec2::types::InstanceType::M5Large)
        .min_count(1)
        .max_count(1);
    if !tags.is_empty() {
        let mut spec = TagSpecification::builder().resource_type(ResourceType::Instance);
        for (k, v) in tags {
            spec = spec.tags(Tag::builder().key(*k).value(*v).build());
        }
        req = req.tag_specifications(spec.build());
    }
    let out = req.send().await.expect("run");
    out.instances()[0].instance_id().expect("id").to_string()
}

fn instance_state(d: &aws_sdk_ec2::operation::describe_instances::DescribeInstancesOutput) -> String {
    d.reservations()[0].instances()[0]
        .state()
        .and_then(|s| s.name())
        .map(|n| n.as_str().to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn gc_reaps_only_our_orphans_fails_stuck_vms_collects_volumes_and_survives_provider_errors() {
    use vmfleet::store::{now_ms, VolumeRow};
    use vmfleet_gc::GcAction;
    let Some(e) = env_with(|_| {}).await else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = common::test_config(dir.path());
    config.provider.kind = vmfleet::config::ProviderKind::Ec2;
    config.install_id = Some(e.install.clone());
    config.images.custom_linux = BTreeMap::from([("us-east-1".into(), e.ami.clone())]);
    let ec2 = &mut config.provider.ec2;
    ec2.region = "us-east-1".into();
    ec2.endpoint_url = Some(e.url.clone());
    ec2.access_key_id = Some("testing".into());
    ec2.secret_access_key = Some(vmfleet::config::Secret("testing".into()));
    ec2.subnet_ids = e.subnets.iter().map(|(s, _)| s.clone()).collect();
    ec2.security_group_id = Some(e.sg.clone());
    let store = common::sqlite_store(dir.path()).await;
    let provider = vmfleet::fleet::build_provider(&config).await.expect("provider");
    let fleet = vmfleet::fleet::Fleet::new(config, store.clone(), provider).await.expect("fleet");
    let now = now_ms();
    const DAY: i64 = 86_400_000;

    // Instances: an orphan of ours, one without our tag, one of another installation.
    let ours = run_direct(&e, &[("vmfleet:install", &e.install), ("vmfleet:vm", "vm-ghost")]).await;
    let untagged = run_direct(&e, &[]).await;
    let theirs = run_direct(&e, &[("vmfleet:install", "another-installation")]).await;
    // A VM stuck in booting past the start timeout, a busy one well within the task timeout, and
    // an idle one whose instance vanished.
    let record = |id: &str, state: &str, instance: &str, since: i64, task: Option<&str>| {
        let mut vm = common::vm_row("machine/default/medium", state, task);
        vm.id = id.into();
        vm.instance_id = Some(instance.into());
        vm.requested_at = since;
        vm.state_since = since;
        vm
    };
    let stuck_i = e.provider.launch(&spec(&e, "vm-stuck")).await.expect("launch").instance_id;
    store.insert_vm(&record("vm-stuck", "booting", &stuck_i, now - 400_000, None)).await.expect("stuck");
    let busy = e.provider.launch(&spec(&e, "vm-busy")).await.expect("launch");
    store
        .insert_vm(&record("vm-busy", "assigned", &busy.instance_id, now - 3_600_000, Some("task-busy")))
        .await
        .expect("busy");
    let lost_i = e.provider.launch(&spec(&e, "vm-lost")).await.expect("launch").instance_id;
    store.insert_vm(&record("vm-lost", "ready", &lost_i, now, None)).await.expect("lost");
    e.provider.client().terminate_instances().instance_ids(&lost_i).send().await.expect("vanish");

    // Volumes: one unused for 15 days, one as old but attached to the busy VM, one orphan.
    let zone = busy.zone.clone();
    let make = |id: &str| VolumeSpec {
        volume_id: id.into(),
        install_id: e.install.clone(),
        project: "gh/acme/app".into(),
        size_gb: 10,
        zone: zone.clone(),
        tags: BTreeMap::new(),
    };
    let row = |id: &str, pid: &str, state: &str, task: Option<&str>| VolumeRow {
        id: id.into(),
        project: "gh/acme/app".into(),
        provider_id: Some(pid.into()),
        zone: zone.clone(),
        size_gb: 10,
        state: state.into(),
        task_id: task.map(Into::into),
        vm_id: task.map(|_| "vm-busy".into()),
        created_at: now - 20 * DAY,
        last_used_at: now - 15 * DAY,
        state_since: now - 15 * DAY,
    };
    let claim_as = |project: &str| common::task_row("machine/default/medium", project, true);
    let idle_v = e.provider.create_volume(&make("vol-idle")).await.expect("create").provider_id;
    store
        .claim_volume(&claim_as("other"), &zone, &row("vol-idle", &idle_v, "available", None))
        .await
        .expect("idle row");
    let busy_v = e.provider.create_volume(&make("vol-busy")).await.expect("create").provider_id;
    e.provider.attach_volume(&busy_v, &busy.instance_id).await.expect("attach");
    store
        .claim_volume(&claim_as("other"), &zone, &row("vol-busy", &busy_v, "attached", Some("task-busy")))
        .await
        .expect("busy row");
    let orphan_v = e.provider.create_volume(&make("vol-orphan")).await.expect("create").provider_id;

    let summaries = |actions: &[GcAction]| actions.iter().map(GcAction::summary).collect::<Vec<_>>().join("\n");
    let plan = summaries(&fleet.gc_dry_run(None).await.expect("dry run"));
    assert!(plan.contains(&format!("fail vm-stuck and terminate {stuck_i}")), "{plan}");
    assert!(plan.contains("mark vm-lost lost"), "{plan}");
    assert!(plan.contains(&format!("delete volume vol-idle ({idle_v})")), "{plan}");
    for spared in [&ours, &orphan_v] {
        assert!(!plan.contains(spared.as_str()), "young orphans are spared by the grace: {plan}");
    }
    let plan_actions = fleet.gc_dry_run(Some(std::time::Duration::ZERO)).await.expect("dry run");
    let plan = summaries(&plan_actions);
    assert!(plan.contains(&format!("terminate {ours}")), "{plan}");
    assert!(plan.contains(&format!("delete volume {orphan_v}")), "{plan}");
    for never in [&untagged, &theirs, &busy.instance_id, &busy_v] {
        assert!(!plan.contains(never.as_str()), "{never} must never be named: {plan}");
    }
    assert!(!plan.contains("vm-busy"), "{plan}");

    // The cloud fails every terminate and delete of this pass: nothing is lost or forgotten.
    e.proxy.inject("TerminateInstances", "InternalError", 500, 100);
    e.proxy.inject("DeleteVolume", "InternalError", 500, 100);
    for a in &plan_actions {
        fleet.apply_gc(a).await.expect("apply");
    }
    let c = e.provider.client();
    let d = c.describe_instances().instance_ids(&ours).send().await.expect("describe");
    assert_eq!(instance_state(&d), "running");
    assert_eq!(store.vm("vm-stuck").await.expect("vm").state, "booting", "kept for the next pass");
    let events = store.audit_events(100).await.expect("audit");
    assert!(
        events.iter().any(|ev| ev.action == "vm.terminate" && !ev.success && ev.target.contains(&ours)),
        "the failed attempt is audited"
    );
    let again = summaries(&fleet.gc_dry_run(Some(std::time::Duration::ZERO)).await.expect("dry run"));
    for still in [format!("terminate {ours}"), "fail vm-stuck".into(), "delete volume vol-idle".into()] {
        assert!(again.contains(&still), "{still} is planned again: {again}");
    }

    // The next pass, with the cloud answering again, finishes the job.
    e.proxy.clear();
    for a in fleet.gc_dry_run(Some(std::time::Duration::ZERO)).await.expect("dry run") {
        fleet.apply_gc(&a).await.expect("apply");
    }
    for (id, want) in [
        (&ours, "terminated"),
        (&stuck_i, "terminated"),
        (&untagged, "running"),
        (&theirs, "running"),
        (&busy.instance_id, "running"),
    ] {
        let d = c.describe_instances().instance_ids(id).send().await.expect("describe");
        assert_eq!(instance_state(&d), want, "{id}");
    }
    let stuck = store.vm("vm-stuck").await.expect("vm");
    assert_eq!(stuck.state, "failed");
    assert!(stuck.failure_reason.as_deref().unwrap_or_default().contains("VM start timeout"), "{stuck:?}");
    assert_eq!(store.vm("vm-lost").await.expect("vm").state, "failed");
    assert_eq!(store.vm("vm-busy").await.expect("vm").state, "assigned");
    let left: Vec<String> = c
        .describe_volumes()
        .send()
        .await
        .expect("volumes")
        .volumes()
        .iter()
        .filter_map(|v| v.volume_id().map(String::from))
        .collect();
    assert!(!left.contains(&idle_v) && !left.contains(&orphan_v), "{left:?}");
    assert!(left.contains(&busy_v), "a busy VM's volume is never deleted");
    assert_eq!(store.volume("vol-idle").await.expect("vol").state, "deleted");
    assert_eq!(store.volume("vol-busy").await.expect("vol").state, "attached");
    assert!(fleet.gc_dry_run(Some(std::time::Duration::ZERO)).await.expect("dry run").is_empty());
    let events = store.audit_events(200).await.expect("audit");
    let deletes: Vec<_> =
        events.iter().filter(|ev| ev.action == "volume.delete" && ev.target.contains("vol-idle")).collect();
    assert!(deletes.iter().any(|ev| !ev.success && ev.payload.contains("DLC inactivity period")), "{deletes:?}");
    assert!(deletes.iter().any(|ev| ev.success), "{deletes:?}");
    for id in [untagged, theirs, busy.instance_id] {
        c.terminate_instances().instance_ids(id).send().await.expect("clean up");
    }
}

/// `kill -9` of the service while its launch call is in flight, then a restart and one GC
/// pass: the instance that launch made is adopted, not duplicated and not leaked; `reset`
/// then leaves nothing with our tag.
#[tokio::test]
async fn kill_9_mid_launch_then_restart_and_gc_leave_no_untracked_instance() {
    let Some(e) = env_with(|_| {}).await else { return };
    let sshd = any_key_sshd().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(&e, dir.path(), &e.url, sshd);
    let serve = || spawn_serve(&config, dir.path());
    let up = || wait_up(&config);
    // The launch reaches the cloud, which makes the instance, but the answer never comes back.
    e.proxy.hold("RunInstances");
    let mut server = serve();
    up().await;
    let out =
        cli(&config, &["tasks", "request", "--project", "gh/acme/app", "--json"]).output().await.expect("request");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let task: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let task_id = task["id"].as_str().expect("id").to_string();
    let made = common::eventually(90, || async {
        let ids = tagged_instances(&e, &e.install).await;
        (!ids.is_empty()).then_some(ids)
    })
    .await;
    assert_eq!(made.len(), 1);
    server.start_kill().expect("kill -9");
    server.wait().await.expect("dead");
    e.proxy.release();

    let mut server = serve();
    up().await;
    let assigned = common::eventually(60, || async {
        let out = cli(&config, &["tasks", "show", &task_id, "--json"]).output().await.ok()?;
        let t: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (t["state"] == "assigned").then_some(t)
    })
    .await;
    let out = cli(&config, &["gc"]).output().await.expect("gc");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cli(&config, &["gc", "--dry-run", "--orphan-grace", "0s"]).output().await.expect("gc");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "nothing to collect", "no instance looks untracked");
    let vm: serde_json::Value = serde_json::from_slice(
        &cli(&config, &["vms", "show", assigned["vm_id"].as_str().expect("vm"), "--json"])
            .output()
            .await
            .expect("vm")
            .stdout,
    )
    .expect("vm json");
    assert_eq!(tagged_instances(&e, &e.install).await, made, "the in-flight launch was adopted, not repeated");
    assert_eq!(vm["instance_id"].as_str(), Some(made[0].as_str()));

    let _ = server.kill().await;
    let out = cli(&config, &["reset", "--yes", "--force"]).output().await.expect("reset");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(tagged_instances(&e, &e.install).await.is_empty(), "reset leaves no instance with our tag");
}

#[tokio::test]
async fn the_vm_row_records_the_fallback_type_the_launch_got() {
    let Some(e) = env_with(|s| s.subnet_ids.truncate(1)).await else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = common::test_config(dir.path());
    config.provider.kind = vmfleet::config::ProviderKind::Ec2;
    config.install_id = Some(e.install.clone());
    config.images.custom_linux = BTreeMap::from([("us-east-1".into(), e.ami.clone())]);
    let medium = config.resource_classes.get_mut("medium").expect("medium");
    medium.instance_type = "m5.large".into();
    medium.fallback_instance_types = vec!["m5a.large".into()];
    let ec2 = &mut config.provider.ec2;
    ec2.region = "us-east-1".into();
    ec2.endpoint_url = Some(e.url.clone());
    ec2.access_key_id = Some("testing".into());
    ec2.secret_access_key = Some(vmfleet::config::Secret("testing".into()));
    ec2.subnet_ids = vec![e.subnets[0].0.clone()];
    ec2.security_group_id = Some(e.sg.clone());
    ec2.sdk_max_attempts = 1;
    // Readiness checks stay on this machine.
    ec2.ssh_address_override = Some(format!("127.0.0.1:{}", any_key_sshd().await));
    e.proxy.inject("RunInstances", "InsufficientInstanceCapacity", 500, 1);
    let store = common::sqlite_store(dir.path()).await;
    let provider = vmfleet::fleet::build_provider(&config).await.expect("provider");
    let fleet = vmfleet::fleet::Fleet::new(config, store, provider).await.expect("fleet");
    let req = plain_request();
    let task = fleet.request_task(&req).await.expect("request");
    let vm_id = task.vm_id.expect("an on-demand VM");
    assert_eq!(fleet.store.vm(&vm_id).await.expect("vm").instance_type, "m5.large", "what was asked for");
    fleet.reconcile_once().await.expect("reconcile");
    let vm = fleet.store.vm(&vm_id).await.expect("vm");
    assert_eq!(vm.instance_type, "m5a.large", "what was launched");
    fleet.reset().await.expect("clean up");
}

/// `vmfleet serve` with `config`, logging to `serve.log` in `dir`; killed when dropped.
fn spawn_serve(config: &std::path::Path, dir: &std::path::Path) -> tokio::process::Child {
    cli(config, &["serve"])
        .stderr(std::fs::OpenOptions::new().create(true).append(true).open(dir.join("serve.log")).expect("log"))
        .kill_on_drop(true)
        .spawn()
        .expect("serve")
}

/// Waits until the server of `config` answers `vmfleet status`.
async fn wait_up(config: &std::path::Path) {
    common::eventually(90, || async {
        cli(config, &["status"]).output().await.ok().filter(|o| o.status.success()).map(|_| ())
    })
    .await
}

/// The HTTP API of a server started with `write_config`, with its admin token.
struct ServiceApi {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl ServiceApi {
    fn new(config: &std::path::Path, dir: &std::path::Path) -> Self {
        let text = std::fs::read_to_string(config).expect("config");
        let listen = text.lines().find_map(|l| l.strip_prefix("listen: ")).expect("listen");
        let token = std::fs::read_to_string(dir.join("admin.token")).expect("token").trim().to_string();
        Self { http: reqwest::Client::new(), base: format!("http://{listen}/api/v1"), token }
    }

    /// Requests `n` tasks at once (every fifth with a DLC volume, seven projects); each handle
    /// answers the task id once the request was acknowledged (201).
    fn burst(&self, n: usize) -> Vec<tokio::task::JoinHandle<Option<String>>> {
        (0..n)
            .map(|i| {
                let body = serde_json::json!({
                    "executor": "machine", "project": format!("gh/acme/p{}", i % 7), "docker_layer_caching": i % 5 == 0,
                });
                let req = self.http.post(format!("{}/tasks", self.base)).bearer_auth(&self.token).json(&body);
                tokio::spawn(async move {
                    let resp = req.send().await.ok()?;
                    if resp.status() != reqwest::StatusCode::CREATED {
                        return None;
                    }
                    let v: serde_json::Value = resp.json().await.ok()?;
                    v["id"].as_str().map(String::from)
                })
            })
            .collect()
    }

    /// The task as the API shows it, with its VM's record, for the campaign's log.
    async fn post_mortem(&self, task_url: &str) -> String {
        let get = |url: String| async move {
            let r = self.http.get(url).bearer_auth(&self.token).send().await.ok()?;
            r.json::<serde_json::Value>().await.ok()
        };
        let task = get(task_url.to_string()).await.unwrap_or_default();
        let vm = match task["vm_id"].as_str() {
            Some(vm) => get(format!("{}/vms/{vm}", self.base)).await.unwrap_or_default(),
            None => serde_json::Value::Null,
        };
        format!("task {task} vm {vm}")
    }

    /// Waits up to `secs` for each task to be served (assigned) or failed with its reason, and
    /// releases it; answers (served, failed with a reason, neither: lost).
    async fn settle_and_release(&self, ids: &[String], secs: u64) -> (usize, usize, usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        let (mut served, mut failed, mut lost) = (0, 0, 0);
        // Why tasks failed, with ids and figures blanked so alike reasons count together.
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        for id in ids {
            let url = format!("{}/tasks/{id}", self.base);
            let state = loop {
                let v: serde_json::Value = match self.http.get(&url).bearer_auth(&self.token).send().await {
                    Ok(r) if r.status().is_success() => r.json().await.unwrap_or_default(),
                    Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => break "missing".to_string(),
                    _ => serde_json::Value::Null,
                };
                let s = v["state"].as_str().unwrap_or_default().to_string();
                let has_reason = v["failure_reason"].as_str().is_some_and(|r| !r.is_empty());
                if s == "failed" && has_reason {
                    let reason = v["failure_reason"].as_str().unwrap_or_default();
                    let blanked: Vec<&str> = reason
                        .split_whitespace()
                        .map(|w| if w.bytes().any(|b| b.is_ascii_digit()) { "…" } else { w })
                        .collect();
                    *reasons.entry(blanked.join(" ")).or_default() += 1;
                }
                if s == "assigned" || (s == "failed" && has_reason) || std::time::Instant::now() > deadline {
                    break s;
                }
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            };
            match state.as_str() {
                "assigned" => served += 1,
                "failed" => failed += 1,
                _ => {
                    lost += 1;
                    eprintln!("unsettled: {}", self.post_mortem(&url).await);
                }
            }
            let _ = self.http.delete(&url).bearer_auth(&self.token).send().await;
        }
        if !reasons.is_empty() {
            eprintln!("failure reasons: {reasons:?}");
        }
        (served, failed, lost)
    }
}

/// A seeded generator for the campaign's choices (splitmix64).
struct Seeded(u64);

impl Seeded {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// What one trial of the kill -9 campaign found.
#[derive(Debug, Default)]
struct Trial {
    acknowledged: usize,
    /// Instances the cloud had made when the kill came (0 < this < tasks: mid-launch).
    instances_at_kill: usize,
    served: usize,
    failed_with_reason: usize,
    lost: usize,
    doubled: usize,
    leaked_instances: usize,
    leaked_volumes: usize,
}

impl Trial {
    fn add(&mut self, t: &Trial) {
        let fields = |t: &Trial| {
            [
                t.acknowledged,
                t.instances_at_kill,
                t.served,
                t.failed_with_reason,
                t.lost,
                t.doubled,
                t.leaked_instances,
                t.leaked_volumes,
            ]
        };
        let (x, y) = (fields(self), fields(t));
        let [a, i, s, f, l, d, li, lv]: [usize; 8] = std::array::from_fn(|k| x[k] + y[k]);
        *self = Trial {
            acknowledged: a,
            instances_at_kill: i,
            served: s,
            failed_with_reason: f,
            lost: l,
            doubled: d,
            leaked_instances: li,
            leaked_volumes: lv,
        };
    }
}

/// The kill -9 campaign (docs/RELIABILITY.md): each seeded trial sends a burst of tasks (every
/// fifth with a DLC volume) to `serve` on the emulator, kills it with SIGKILL at a random moment
/// of the burst, restarts it, waits for every acknowledged task, releases them, and runs one GC
/// pass; then counts tasks lost (acknowledged, never served nor failed with a reason), tasks
/// handed two VMs, and instances or volumes with our tag the store does not know. Short by
/// default (2 trials of 20 tasks); `scripts/chaos.sh` sets VMFLEET_CHAOS_TRIALS,
/// VMFLEET_CHAOS_TASKS and VMFLEET_CHAOS_SEED for the long run, VMFLEET_CHAOS_FIRST_TRIAL to
/// resume a seed's sequence of kill points at a trial, and VMFLEET_CHAOS_RESET_MOTO=1 to empty
/// the emulator before each trial (it runs alone there: moto slows with every instance it has
/// ever held, which measured it rather than the service after a dozen trials of 200).
#[tokio::test]
async fn chaos_kill_9_during_a_burst_then_restart_and_one_gc_pass() {
    let trials = env_number("VMFLEET_CHAOS_TRIALS", 2);
    let tasks = env_number("VMFLEET_CHAOS_TASKS", 20) as usize;
    let seed = env_number("VMFLEET_CHAOS_SEED", 1);
    let first = env_number("VMFLEET_CHAOS_FIRST_TRIAL", 0);
    let reset = std::env::var("VMFLEET_CHAOS_RESET_MOTO").as_deref() == Ok("1");
    let mut rng = Seeded(seed);
    let mut total = Trial::default();
    for trial in 0..trials {
        // Drawn for every trial, so that a resumed run kills at the seed's own moments.
        let kill_after = std::time::Duration::from_millis(rng.next() % 4000);
        if trial < first {
            continue;
        }
        if reset {
            let Some(moto) = moto_url() else { return };
            let out = tokio::process::Command::new("curl")
                .args(["-sf", "-X", "POST", &format!("{moto}/moto-api/reset")])
                .output()
                .await
                .expect("curl");
            assert!(out.status.success(), "resetting moto: {out:?}");
        }
        let Some(e) = env_with(|_| {}).await else { return };
        let t = chaos_trial(&e, tasks, kill_after).await;
        eprintln!("chaos trial {trial} (seed {seed}, kill after {kill_after:?}): {t:?}");
        total.add(&t);
    }
    eprintln!("chaos: trials {first} to {} of {tasks} tasks, seed {seed}: {total:?}", trials.saturating_sub(1));
    assert_eq!((total.lost, total.doubled, total.leaked_instances, total.leaked_volumes), (0, 0, 0, 0), "{total:?}");
}

async fn chaos_trial(e: &Env, tasks: usize, kill_after: std::time::Duration) -> Trial {
    let sshd = any_key_sshd().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(e, dir.path(), &e.url, sshd);
    let serve = || spawn_serve(&config, dir.path());
    let mut server = serve();
    wait_up(&config).await;
    let api = ServiceApi::new(&config, dir.path());
    let burst = api.burst(tasks);
    tokio::time::sleep(kill_after).await;
    server.start_kill().expect("kill -9");
    server.wait().await.expect("dead");
    let mut acknowledged = Vec::new();
    for b in burst {
        if let Ok(Some(id)) = b.await {
            acknowledged.push(id);
        }
    }
    let instances_at_kill = tagged_instances(e, &e.install).await.len();
    let mut server = serve();
    wait_up(&config).await;
    // A burst of 200 launches passes the mutation bucket (5 a second) in 40 s; moto on two
    // cores answers slower still.
    let settle = 240 + 2 * tasks as u64;
    let (served, failed_with_reason, lost) = api.settle_and_release(&acknowledged, settle).await;
    let mut out = Trial {
        acknowledged: acknowledged.len(),
        instances_at_kill,
        served,
        failed_with_reason,
        lost,
        ..Trial::default()
    };
    // One GC pass, as the operator would run it after a crash.
    let gc = cli(&config, &["gc", "--orphan-grace", "0s"]).output().await.expect("gc");
    assert!(gc.status.success(), "{}", String::from_utf8_lossy(&gc.stderr));
    let _ = server.kill().await;

    let store = vmfleet::store::Store::open(&format!("sqlite:{}", dir.path().join("vmfleet.db").display()), 2)
        .await
        .expect("store");
    let vms = store.vms(&[]).await.expect("vms");
    let known: std::collections::BTreeSet<String> =
        store.live_vms().await.expect("live").into_iter().filter_map(|v| v.instance_id).collect();
    out.leaked_instances = tagged_instances(e, &e.install).await.into_iter().filter(|i| !known.contains(i)).count();
    let mut handed: BTreeMap<String, usize> = BTreeMap::new();
    for v in vms.iter().filter(|v| v.assigned_at.is_some()) {
        if let Some(t) = &v.task_id {
            *handed.entry(t.clone()).or_default() += 1;
        }
    }
    out.doubled = handed.values().filter(|n| **n > 1).count();
    let volumes: std::collections::BTreeSet<String> =
        store.volumes(None).await.expect("volumes").into_iter().filter_map(|v| v.provider_id).collect();
    out.leaked_volumes = e
        .provider
        .describe_volumes(&e.install)
        .await
        .expect("cloud volumes")
        .into_iter()
        .filter(|v| !volumes.contains(&v.provider_id))
        .count();
    if out.lost + out.doubled + out.leaked_instances + out.leaked_volumes > 0 {
        // Kept for the post-mortem: the server's log and its store.
        eprintln!("chaos trial kept in {}", dir.keep().display());
        return out;
    }
    // Nothing of this trial stays behind for the next one.
    let reset = cli(&config, &["reset", "--yes", "--force"]).output().await.expect("reset");
    assert!(reset.status.success(), "{}", String::from_utf8_lossy(&reset.stderr));
    out
}

/// The throttling campaign (docs/RELIABILITY.md): every mutating EC2 call is answered
/// `RequestLimitExceeded` for a window (VMFLEET_CHAOS_THROTTLE_SECS, 5 s by default,
/// `scripts/chaos.sh` 60 s) while a burst of tasks arrives. The service must not storm the API
/// (each attempt takes a token of the mutation bucket, so the calls made are bounded by the
/// bucket's burst and rate, times the SDK's attempts per call), and every task must end served
/// or failed with the reason.
#[tokio::test]
async fn chaos_ec2_throttled_serves_or_fails_every_task_without_a_retry_storm() {
    let Some(e) = env_with(|_| {}).await else { return };
    let window = env_number("VMFLEET_CHAOS_THROTTLE_SECS", 5);
    let tasks = env_number("VMFLEET_CHAOS_TASKS", 20) as usize;
    let sshd = any_key_sshd().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(&e, dir.path(), &e.url, sshd);
    let mut server = spawn_serve(&config, dir.path());
    wait_up(&config).await;
    let api = ServiceApi::new(&config, dir.path());
    e.proxy.throttle_mutations(std::time::Duration::from_secs(window));
    let started = std::time::Instant::now();
    let mut ids = Vec::new();
    for b in api.burst(tasks) {
        if let Ok(Some(id)) = b.await {
            ids.push(id);
        }
    }
    assert_eq!(ids.len(), tasks, "requests are acknowledged while the cloud throttles");
    let (served, failed, lost) = api.settle_and_release(&ids, window + 240).await;
    let throttled = e.proxy.throttled();
    let settled = started.elapsed();
    let _ = server.kill().await;
    // The service's defaults: a bucket of 20 with 5 a second; the SDK tries each call 3 times.
    let bound = 3 * (20 + 5 * window as usize);
    eprintln!(
        "chaos throttle: {window} s window, {tasks} tasks: {served} served, {failed} failed with a reason, {lost} \
         lost; {throttled} mutating calls answered throttled (bound {bound}); all settled after {settled:?}"
    );
    assert_eq!(lost, 0);
    assert_eq!(served + failed, tasks);
    assert!(throttled <= bound, "{throttled} throttled calls: a retry storm");
    let reset = cli(&config, &["reset", "--yes", "--force"]).output().await.expect("reset");
    assert!(reset.status.success(), "{}", String::from_utf8_lossy(&reset.stderr));
}

async fn state_of(e: &Env, instance: &str) -> Option<InstanceState> {
    let all = e.provider.describe(&e.install).await.expect("describe");
    all.into_iter().find(|i| i.instance_id == instance).map(|i| i.state)
}

async fn wait_state(e: &Env, instance: &str, want: InstanceState) {
    for _ in 0..100 {
        if state_of(e, instance).await == Some(want) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{instance} never reached {want:?}: {:?}", state_of(e, instance).await);
}

#[tokio::test]
async fn a_hibernating_tier_vm_is_launched_for_it_and_a_refused_hibernation_stops_plainly() {
    let Some(e) = env_with(|_| {}).await else { return };
    let a = e.provider.launch(&LaunchSpec { hibernate: true, ..spec(&e, "vm-hib1") }).await.expect("launch");
    let run = &e.proxy.seen("RunInstances")[0];
    assert!(run.split('&').any(|kv| kv == "HibernationOptions.Configured=true"), "{run}");
    wait_state(&e, &a.instance_id, InstanceState::Running).await;
    // EC2 refuses the hibernation (here: injected): the instance is stopped plainly.
    e.proxy.inject("StopInstances", "UnsupportedHibernationConfiguration", 400, 1);
    e.provider.stop(std::slice::from_ref(&a.instance_id), true).await.expect("stop");
    wait_state(&e, &a.instance_id, InstanceState::Stopped).await;
    let stops = e.proxy.seen("StopInstances");
    assert_eq!(stops.len(), 2, "{stops:?}");
    assert!(stops[0].split('&').any(|kv| kv == "Hibernate=true"), "{}", stops[0]);
    assert!(!stops[1].contains("Hibernate"), "{}", stops[1]);
    // A spot launch never asks for hibernation (a one-time spot instance cannot stop).
    let spot = LaunchSpec { hibernate: true, capacity: vmfleet_provisioner::Capacity::Spot, ..spec(&e, "vm-hib2") };
    e.provider.launch(&spot).await.expect("spot launch");
    let run = e.proxy.seen("RunInstances").pop().expect("run");
    assert!(!run.contains("HibernationOptions"), "{run}");
}

#[tokio::test]
async fn stopped_instances_are_described_started_again_and_a_start_without_capacity_says_so() {
    let Some(e) = env_with(|_| {}).await else { return };
    let a = e.provider.launch(&spec(&e, "vm-stop1")).await.expect("launch");
    let b = e.provider.launch(&spec(&e, "vm-stop2")).await.expect("launch");
    wait_state(&e, &a.instance_id, InstanceState::Running).await;
    let both = vec![a.instance_id.clone(), b.instance_id.clone()];
    e.provider.stop(&both, false).await.expect("stop");
    wait_state(&e, &a.instance_id, InstanceState::Stopped).await;
    wait_state(&e, &b.instance_id, InstanceState::Stopped).await;
    assert_eq!(e.proxy.seen("StopInstances").len(), 1, "one call for the batch");
    // Stopping what is stopped is success; a stopped instance keeps its tags (describe finds it).
    e.provider.stop(std::slice::from_ref(&a.instance_id), false).await.expect("stop again");

    // No capacity to start: the caller is told so, nothing is running.
    e.proxy.inject("StartInstances", "InsufficientInstanceCapacity", 500, 1);
    let err = e.provider.start(std::slice::from_ref(&a.instance_id)).await.expect_err("no capacity");
    assert!(matches!(err, ProvisionError::InsufficientCapacity(_)), "{err}");
    assert_eq!(state_of(&e, &a.instance_id).await, Some(InstanceState::Stopped));

    e.provider.start(std::slice::from_ref(&a.instance_id)).await.expect("start");
    wait_state(&e, &a.instance_id, InstanceState::Running).await;
    let again = e.provider.describe(&e.install).await.expect("describe");
    let a2 = again.iter().find(|i| i.instance_id == a.instance_id).expect("same instance");
    assert_eq!(a2.vm_id.as_deref(), Some("vm-stop1"));
    assert_eq!(a2.zone, a.zone, "a start keeps the zone");

    // An unknown id among known ones: the known ones still start; the unknown one is NotFound.
    let with_unknown = vec![b.instance_id.clone(), "i-00000000000000000".to_string()];
    let err = e.provider.start(&with_unknown).await.expect_err("unknown id");
    assert!(matches!(err, ProvisionError::NotFound(_)), "{err}");
    wait_state(&e, &b.instance_id, InstanceState::Running).await;

    e.provider.terminate(&both).await.expect("terminate");
}

/// The stopped tier on EC2: a VM launched for it boots once and is stopped, a task starts it,
/// its release terminates it; a start without capacity gives the task a fresh launch and
/// terminates the stopped VM.
#[tokio::test]
async fn fleet_on_ec2_runs_a_stopped_tier_and_falls_back_to_a_fresh_launch_without_capacity() {
    let Some(e) = env_with(|_| {}).await else { return };
    let (sshd, _commands) = recording_sshd().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // Through the injecting proxy, to fail a start (once: no SDK retry of the answer).
    let mut config = fleet_config(&e, dir.path(), e.url.clone(), sshd);
    config.provider.ec2.sdk_max_attempts = 1;
    config.pools = vec![serde_json::from_value(serde_json::json!({
        "executor": "machine", "min_idle": 0, "max_instances": 3, "stopped": {"min": 1}
    }))
    .expect("pool")];
    let running = vmfleet::server::start(config, None).await.expect("start");
    let fleet = running.fleet.clone();
    let req = plain_request();
    let ec2_state = |instance: String| {
        let c = e.provider.client().clone();
        async move {
            let out = c.describe_instances().instance_ids(&instance).send().await.expect("describe");
            out.reservations()[0].instances()[0].state().and_then(|s| s.name()).map(|n| n.as_str().to_string())
        }
    };
    let one_stopped = || {
        let fleet = fleet.clone();
        async move {
            common::eventually(90, || async {
                let v = fleet.store.vms(&[vmfleet::store::VmState::Stopped]).await.expect("vms");
                (v.len() == 1).then(|| v[0].clone())
            })
            .await
        }
    };
    let assigned = |id: String| {
        let fleet = fleet.clone();
        async move {
            common::eventually(90, || async {
                let t = fleet.store.task(&id).await.expect("task");
                (t.state != "waiting").then_some(t)
            })
            .await
        }
    };

    let cold = one_stopped().await;
    let instance = cold.instance_id.clone().expect("instance");
    assert_eq!(ec2_state(instance.clone()).await.as_deref(), Some("stopped"));
    assert!(!e.proxy.seen("StopInstances").is_empty());

    let task = fleet.request_task(&req).await.expect("request");
    assert_eq!(task.vm_id.as_deref(), Some(cold.id.as_str()), "the stopped VM, not a fresh launch");
    let task = assigned(task.id.clone()).await;
    assert_eq!(task.state, "assigned", "{task:?}");
    assert_eq!(ec2_state(instance.clone()).await.as_deref(), Some("running"));
    assert_eq!(e.proxy.seen("StartInstances").len(), 1);
    fleet.release_task(&task.id).await.expect("release");
    common::eventually(60, || async {
        (fleet.store.vm(&cold.id).await.expect("vm").state == "terminated").then_some(())
    })
    .await;
    assert_eq!(ec2_state(instance).await.as_deref(), Some("terminated"));

    // The tier refills; this time the start finds no capacity.
    let cold = common::eventually(90, || async {
        let v = fleet.store.vms(&[vmfleet::store::VmState::Stopped]).await.expect("vms");
        v.into_iter().find(|v| v.id != cold.id)
    })
    .await;
    let instance = cold.instance_id.clone().expect("instance");
    e.proxy.inject("StartInstances", "InsufficientInstanceCapacity", 500, 1);
    let task = fleet.request_task(&req).await.expect("request");
    let task = assigned(task.id.clone()).await;
    assert_eq!(task.state, "assigned", "a fresh launch served it: {task:?}");
    assert_ne!(task.vm_id.as_deref(), Some(cold.id.as_str()));
    let failed = fleet.store.vm(&cold.id).await.expect("vm");
    assert_eq!(failed.state, "failed");
    assert!(failed.failure_reason.as_deref().unwrap_or_default().contains("no capacity to start"), "{failed:?}");
    common::eventually(60, || async {
        (ec2_state(instance.clone()).await.as_deref() == Some("terminated")).then_some(())
    })
    .await;
    assert_eq!(fleet.metrics.start_failures.get(), 1);
    fleet.release_task(&task.id).await.expect("release");
    fleet.reset().await.expect("reset");
    running.shutdown.trigger();
}
