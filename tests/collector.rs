//! The collector on a fleet whose clock the test moves: DLC volumes age by the clock, not by
//! waiting, and only an unused one is ever collected.
#![expect(clippy::tests_outside_test_module, reason = "integration tests live in tests/, not in a cfg(test) module")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use vmfleet::fleet::{Fleet, ManualClock, TaskRequest};
use vmfleet::store::TaskRow;
use vmfleet_gc::{GcAction, GcReason};

const DAY: Duration = Duration::from_secs(86_400);

fn req(project: &str) -> TaskRequest {
    TaskRequest {
        executor: "machine".into(),
        image: "default".into(),
        resource_class: "medium".into(),
        project: project.into(),
        docker_layer_caching: true,
    }
}

async fn assigned(fleet: &Arc<Fleet>, id: &str) -> TaskRow {
    common::eventually(60, || async {
        let t = fleet.store.task(id).await.expect("task");
        (t.state == "assigned").then_some(t)
    })
    .await
}

fn volumes_named(actions: &[GcAction]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            GcAction::DeleteVolume { volume_id, .. } => volume_id.clone(),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unused_volume_is_collected_once_the_clock_passes_the_inactivity_period_and_a_busy_one_never() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = common::test_config(dir.path());
    // The default 14-day period; the service's own collector runs only on its first pass, so
    // the passes below are the test's, and the busy task outlives the jump of the clock.
    config.timeouts.dlc_inactivity = 14 * DAY;
    config.timeouts.long_running_task = 60 * DAY;
    config.gc.interval = 365 * DAY;
    config.gc.task_wait_limit = 365 * DAY;
    let clock = Arc::new(ManualClock::default());
    let running = vmfleet::server::start_with_clock(config, None, clock.clone()).await.expect("start");
    let fleet = running.fleet.clone();

    let a = fleet.request_task(&req("proj-a")).await.expect("request");
    let a = assigned(&fleet, &a.id).await;
    let vol_a = a.volume_id.clone().expect("volume");
    fleet.release_task(&a.id).await.expect("release");
    common::eventually(60, || async {
        (fleet.store.volume(&vol_a).await.expect("volume").state == "available").then_some(())
    })
    .await;
    let b = fleet.request_task(&req("proj-b")).await.expect("request");
    let b = assigned(&fleet, &b.id).await;
    let vol_b = b.volume_id.clone().expect("volume");

    let young = fleet.gc_dry_run(None).await.expect("dry run");
    assert!(volumes_named(&young).is_empty(), "a volume used just now is kept: {young:?}");

    clock.advance(15 * DAY);
    let plan = fleet.gc_dry_run(None).await.expect("dry run");
    assert_eq!(volumes_named(&plan), std::slice::from_ref(&vol_a), "only the unused volume goes: {plan:?}");
    let action = plan.iter().find(|a| matches!(a, GcAction::DeleteVolume { .. })).expect("deletion");
    assert!(matches!(action.reason(), GcReason::VolumeInactive { project, .. } if project == "proj-a"));
    assert_eq!(
        action.reason().to_string(),
        format!("volume {vol_a} of project proj-a unused for longer than the DLC inactivity period of 14 days")
    );
    assert_eq!(fleet.store.volume(&vol_a).await.expect("volume").state, "available", "a dry run changes nothing");

    fleet.apply_gc(action).await.expect("collect");
    assert_eq!(fleet.store.volume(&vol_a).await.expect("volume").state, "deleted");
    assert_eq!(fleet.store.volume(&vol_b).await.expect("volume").state, "attached");
    let left: Vec<String> = std::fs::read_dir(dir.path().join("local/volumes"))
        .expect("dir")
        .map(|d| d.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.len(), 1, "only the busy volume is left: {left:?}");
    let again = fleet.gc_dry_run(None).await.expect("dry run");
    assert!(volumes_named(&again).is_empty(), "nothing more to collect: {again:?}");

    fleet.reset().await.expect("reset");
    running.shutdown.trigger();
}

/// A VM whose instance stops before it is ready (on the local provider: its agent ends, as it
/// does when the data directory's disk is full) fails at once with that reason, long before the
/// VM start timeout, and its instance is terminated with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_whose_instance_stops_while_starting_fails_at_once_and_is_terminated() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = dir.path().join("dying-agent");
    std::fs::write(&agent, "#!/bin/sh\nexit 1\n").expect("agent");
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut config = common::test_config(dir.path());
    config.provider.local.agent_program = Some(agent);
    config.timeouts.vm_start = Duration::from_secs(3600);
    config.timeouts.ssh_connect = Duration::from_secs(3600);
    let running = vmfleet::server::start(config, None).await.expect("start");
    let fleet = running.fleet.clone();

    let mut request = req("proj-a");
    request.docker_layer_caching = false;
    let task = fleet.request_task(&request).await.expect("request");
    let failed = common::eventually(120, || async {
        let t = fleet.store.task(&task.id).await.expect("task");
        (t.state == "failed").then_some(t)
    })
    .await;
    let reason = failed.failure_reason.clone().unwrap_or_default();
    assert!(reason.contains("stopped before the VM was ready"), "{reason}");
    let vm = fleet.store.vms(&[]).await.expect("vms").into_iter().find(|v| v.task_id.as_deref() == Some(&task.id));
    let vm = vm.expect("the task's VM");
    assert_eq!(vm.state, "failed");
    let instance = vm.instance_id.clone().expect("launched");
    common::eventually(30, || async { (!dir.path().join("local/instances").join(&instance).exists()).then_some(()) })
        .await;
    running.shutdown.trigger();
}
