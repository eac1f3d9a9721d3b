//! The stopped tier on the local provider: a pool with `stopped: {min: 2}` converges to two
//! stopped VMs, a task that finds no idle VM gets one of them started, the tier refills, and a
//! restart after dying between recording a stop or a start and asking for it finishes both.
#![expect(clippy::tests_outside_test_module, reason = "integration tests live in tests/, not in a cfg(test) module")]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use vmfleet::fleet::{Fleet, TaskRequest};
use vmfleet::store::{now_ms, VmRow, VmState};
use vmfleet_provisioner::local::LocalProvider;
use vmfleet_provisioner::{InstanceState, Provider};

const INSTALL: &str = "stopped-test";

fn config(dir: &Path) -> vmfleet::config::Config {
    let mut c = common::test_config(dir);
    c.install_id = Some(INSTALL.into());
    c.pools = vec![serde_json::from_value(serde_json::json!({
        "executor": "machine", "min_idle": 0, "max_instances": 4, "stopped": {"min": 2}
    }))
    .expect("pool")];
    c
}

fn req() -> TaskRequest {
    TaskRequest {
        executor: "machine".into(),
        image: "default".into(),
        resource_class: "medium".into(),
        project: "proj-a".into(),
        docker_layer_caching: false,
    }
}

async fn in_state(fleet: &Fleet, state: VmState) -> Vec<VmRow> {
    fleet.store.vms(&[state]).await.expect("vms")
}

/// Waits until the pool holds exactly two stopped VMs and nothing else live but `besides`
/// (and, with `warm`, idle running VMs).
async fn two_stopped(fleet: &Fleet, besides: &[&str], warm: bool) -> Vec<VmRow> {
    common::eventually(120, || async {
        let live = fleet.store.live_vms().await.expect("live");
        let stopped = in_state(fleet, VmState::Stopped).await;
        let others = live
            .iter()
            .filter(|v| v.state != "stopped" && !besides.contains(&v.id.as_str()))
            .filter(|v| !(warm && v.state == "ready" && v.task_id.is_none()))
            .count();
        (stopped.len() == 2 && others == 0).then_some(stopped)
    })
    .await
}

async fn instance_state(provider: &LocalProvider, instance: &str) -> Option<InstanceState> {
    let all = provider.describe(INSTALL).await.expect("describe");
    all.into_iter().find(|i| i.instance_id == instance).map(|i| i.state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_keeps_two_stopped_vms_starts_one_for_a_task_and_refills() {
    // Shown when it fails: what the fleet did, for a failure seen only under load.
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let running = vmfleet::server::start(config(dir.path()), None).await.expect("start");
    let fleet = running.fleet.clone();
    let provider = LocalProvider::new(dir.path().join("local"), env!("CARGO_BIN_EXE_vmfleet")).expect("provider");

    let stopped = two_stopped(&fleet, &[], false).await;
    for vm in &stopped {
        assert!(vm.stop_after_boot, "launched for the stopped tier");
        let stamps = [vm.provisioning_at, vm.booting_at, vm.stopping_at, vm.stopped_at];
        assert!(stamps.iter().all(Option::is_some), "every transition stamped: {stamps:?}");
        assert!(vm.ready_at.is_none() && vm.task_id.is_none(), "never ready for a task, never ran one");
        let instance = vm.instance_id.as_deref().expect("launched");
        assert_eq!(instance_state(&provider, instance).await, Some(InstanceState::Stopped));
    }
    // Both tiers per pool in /metrics (and in `vmfleet status`, from the same counts).
    let counts = fleet.store.counts().await.expect("counts");
    let metrics = fleet.metrics.render(&counts, INSTALL, "local", &Default::default());
    assert!(metrics.contains("vmfleet_vms{pool=\"machine/default/medium\",state=\"stopped\"} 2"), "{metrics}");
    let audit = fleet.store.audit_events(1000).await.expect("audit");
    for vm in &stopped {
        assert!(audit.iter().any(|e| e.action == "vm.stop" && e.target == vm.id), "the stop is audited");
    }

    // No running idle VM: the task gets a stopped one started, not a fresh launch.
    let task = fleet.request_task(&req()).await.expect("request");
    let pool_ids: BTreeSet<String> = stopped.iter().map(|v| v.id.clone()).collect();
    let vm_id = task.vm_id.clone().expect("a VM at once");
    assert!(pool_ids.contains(&vm_id), "{vm_id} is one of the stopped VMs {pool_ids:?}");
    let task = common::eventually(60, || async {
        let t = fleet.store.task(&task.id).await.expect("task");
        (t.state == "assigned").then_some(t)
    })
    .await;
    let started = fleet.store.vm(&vm_id).await.expect("vm");
    assert!(started.starting_at.is_some() && !started.stop_after_boot);
    let audit = fleet.store.audit_events(1000).await.expect("audit");
    assert!(audit.iter().any(|e| e.action == "vm.start" && e.target == vm_id), "the start is audited");
    // Served by the started VM, or by whichever came up first (a VM of the tier's refill may
    // answer before it under load: then the started one joins the running warm pool).
    let vm_id = task.vm_id.clone().expect("the task's VM");
    let vm = fleet.store.vm(&vm_id).await.expect("vm");
    assert_eq!(vm.state, "assigned");
    assert!(vm_id == started.id || matches!(started.state.as_str(), "booting" | "ready"), "{started:?}");

    // The job runs on it with the VM's own key, on the disk its first boot left.
    let target = vmfleet_provisioner::ssh::Target {
        host: vm.host.clone().expect("host"),
        port: u16::try_from(vm.ssh_port.expect("port")).expect("port"),
        user: vm.ssh_user.clone(),
        private_key: vm.ssh_private_key.clone(),
        // Pinned at the first boot: a start brings back the same host key.
        host_key: Some(vm.host_key.clone().expect("host key")),
    };
    let session = vmfleet_provisioner::ssh::connect(&target, Duration::from_secs(10)).await.expect("ssh");
    let out = session.exec("test -d ~ && echo ok").await.expect("exec");
    assert_eq!((out.exit_status, String::from_utf8_lossy(&out.stdout).trim()), (Some(0), "ok"));
    session.close().await;

    // The tier refills behind it while the task runs. Under load the refill's VM may answer
    // first and take the task; the VM that loses it then waits warm.
    two_stopped(&fleet, &[&vm_id, &started.id], true).await;

    fleet.release_task(&task.id).await.expect("release");
    let instance = vm.instance_id.clone().expect("instance");
    common::eventually(60, || async {
        let v = fleet.store.vm(&vm_id).await.expect("vm");
        (v.state == "terminated" && !dir.path().join("local/instances").join(&instance).exists()).then_some(())
    })
    .await;
    fleet.reset().await.expect("reset");
    running.shutdown.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_finishes_a_stop_and_a_start_it_had_recorded_but_not_asked_for() {
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = LocalProvider::new(dir.path().join("local"), env!("CARGO_BIN_EXE_vmfleet")).expect("provider");
    let first = vmfleet::server::start(config(dir.path()), None).await.expect("start");
    let stopped = two_stopped(&first.fleet, &[], false).await;
    first.shutdown.trigger();
    drop(first);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // As if the process died between recording each change and the provider call: one VM
    // recorded `stopping` while its instance still runs, the other `starting` while its
    // instance is still stopped.
    let (a, b) = (&stopped[0], &stopped[1]);
    let url = format!("sqlite:{}", dir.path().join("vmfleet.db").display());
    let store = vmfleet::store::Store::open(&url, 1).await.expect("store");
    let a_instance = a.instance_id.clone().expect("instance");
    provider.start(std::slice::from_ref(&a_instance)).await.expect("start a");
    assert!(store.transition(&a.id, &[VmState::Stopped], VmState::Stopping, now_ms()).await.expect("a"));
    assert!(store.start_stopped(&b.id, None, now_ms()).await.expect("b"), "what the planner's start records");
    drop(store);

    let second = vmfleet::server::start(config(dir.path()), None).await.expect("restart");
    let fleet = second.fleet.clone();
    // The recorded stop is carried out; the recorded start too, and the started VM, with no
    // task, joins the running warm pool (the stopped tier then refills to two).
    common::eventually(90, || async {
        let a = fleet.store.vm(&a.id).await.expect("a");
        let b = fleet.store.vm(&b.id).await.expect("b");
        (a.state == "stopped" && b.state == "ready").then_some(())
    })
    .await;
    assert_eq!(instance_state(&provider, &a_instance).await, Some(InstanceState::Stopped));
    two_stopped(&fleet, &[&b.id], false).await;

    // One collector pass finds nothing untracked and nothing stuck.
    let plan = fleet.gc_dry_run(Some(Duration::ZERO)).await.expect("gc");
    assert!(plan.is_empty(), "nothing to collect: {plan:?}");
    let tracked: BTreeSet<String> =
        fleet.store.live_vms().await.expect("live").into_iter().filter_map(|v| v.instance_id).collect();
    let described: BTreeSet<String> =
        provider.describe(INSTALL).await.expect("describe").into_iter().map(|i| i.instance_id).collect();
    assert_eq!(tracked, described, "every instance is known to the store and every live VM has one");
    fleet.reset().await.expect("reset");
    second.shutdown.trigger();
}
