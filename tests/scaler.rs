//! Warm pools from policy files on the local provider: convergence, schedule windows, daily
//! cycling, the `max_instances` bound, reloads, and DLC on warm VMs.
#![expect(clippy::tests_outside_test_module, reason = "integration tests live in tests/, not in a cfg(test) module")]

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use vmfleet::fleet::{Fleet, TaskRequest};
use vmfleet::store::VmRow;

const POOL: &str = "machine/default/medium";

struct Env {
    running: vmfleet::server::Running,
    policies: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Env {
    fn fleet(&self) -> &Arc<Fleet> {
        &self.running.fleet
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.running.shutdown.trigger();
    }
}

/// A fleet on the local provider whose policy directory holds `policy` as `pools.yaml`.
async fn start(policy: &str) -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).expect("dir");
    std::fs::write(policies.join("pools.yaml"), policy).expect("policy");
    let mut config = common::test_config(dir.path());
    config.policies_dir = Some(policies.clone());
    let running = vmfleet::server::start(config, None).await.expect("start");
    Env { running, policies, _dir: dir }
}

async fn pool_vms(fleet: &Fleet) -> Vec<VmRow> {
    fleet.store.live_vms().await.expect("vms").into_iter().filter(|v| v.pool == POOL).collect()
}

fn ready(vms: &[VmRow]) -> Vec<String> {
    vms.iter().filter(|v| v.state == "ready" && v.task_id.is_none()).map(|v| v.id.clone()).collect()
}

/// Waits until the pool has exactly `n` ready VMs and nothing starting or retiring.
async fn settle(fleet: &Fleet, n: usize) -> Vec<String> {
    common::eventually(60, || async {
        let vms = pool_vms(fleet).await;
        let r = ready(&vms);
        (r.len() == n && vms.len() == n).then_some(r)
    })
    .await
}

fn req(dlc: bool, project: &str) -> TaskRequest {
    TaskRequest {
        executor: "machine".into(),
        image: "default".into(),
        resource_class: "medium".into(),
        project: project.into(),
        docker_layer_caching: dlc,
    }
}

async fn clean_up(env: &Env) {
    env.fleet().reset().await.expect("reset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_converges_follows_a_schedule_window_and_reloads_without_restart() {
    let env = start("pools:\n  - {executor: machine, min_idle: 2, idle_timeout: 0s}\n").await;
    settle(env.fleet(), 2).await;

    // A window that always matches raises the target; the file is picked up without a restart.
    std::fs::write(
        env.policies.join("pools.yaml"),
        "pools:\n  - executor: machine\n    min_idle: 2\n    idle_timeout: 0s\n    schedules:\n      - {cron: '* * * * *', timezone: Europe/Berlin, min_idle: 3}\n",
    )
    .expect("policy");
    settle(env.fleet(), 3).await;

    // A broken file is refused whole: the running policy stays, and the reason names file, line
    // and key.
    std::fs::write(
        env.policies.join("pools.yaml"),
        "pools:\n  - executor: machine\n    min_idle: 1\n    schedules:\n      - {cron: '* * * *', min_idle: 3}\n",
    )
    .expect("policy");
    let err = common::eventually(30, || async { env.fleet().policy_error() }).await;
    assert!(
        err.contains("pools.yaml:5") && err.contains("pools[0].schedules[0]") && err.contains("has 4 fields"),
        "{err}"
    );
    // Two reconcile passes under the refused file.
    let passes = env.fleet().runs("pass");
    common::eventually(30, || async { (env.fleet().runs("pass") >= passes + 2).then_some(()) }).await;
    assert_eq!(ready(&pool_vms(env.fleet()).await).len(), 3, "the policy in force stays");

    // Outside every window (one that never matches), the pool's own min_idle holds again.
    std::fs::write(
        env.policies.join("pools.yaml"),
        "pools:\n  - executor: machine\n    min_idle: 1\n    idle_timeout: 0s\n    schedules:\n      - {cron: '0 0 30 2 *', min_idle: 3}\n",
    )
    .expect("policy");
    settle(env.fleet(), 1).await;
    assert_eq!(env.fleet().policy_error(), None);
    clean_up(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vms_older_than_max_age_are_cycled_without_dropping_below_target() {
    let env = start("pools:\n  - {executor: machine, min_idle: 2, max_replace_share: 0.5}\n").await;
    let first: HashSet<String> = settle(env.fleet(), 2).await.into_iter().collect();
    std::fs::write(
        env.policies.join("pools.yaml"),
        "pools:\n  - {executor: machine, min_idle: 2, max_replace_share: 0.5, max_age: 2s, idle_timeout: 0s}\n",
    )
    .expect("policy");
    // Sample the pool until every first-generation VM is gone: the ready count never falls
    // below the target meanwhile, and at most one replacement starts at a time.
    let fleet = env.fleet().clone();
    common::eventually(90, || {
        let first = first.clone();
        let fleet = fleet.clone();
        async move {
            let vms = pool_vms(&fleet).await;
            let r = ready(&vms);
            assert!(
                r.len() >= 2,
                "ready count fell below target: {:?}",
                vms.iter().map(|v| &v.state).collect::<Vec<_>>()
            );
            let starting =
                vms.iter().filter(|v| matches!(v.state.as_str(), "requested" | "provisioning" | "booting")).count();
            assert!(starting <= 1, "one replacement at a time (half of 2)");
            r.iter().all(|id| !first.contains(id)).then_some(())
        }
    })
    .await;
    let cycled = env
        .fleet()
        .store
        .audit_events(500)
        .await
        .expect("audit")
        .into_iter()
        .filter(|e| e.action == "vm.terminate" && e.actor == "scaler" && e.payload.contains("older than max_age"))
        .count();
    assert!(cycled >= 2, "the old VMs were retired as aged: {cycled}");
    clean_up(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_instances_bounds_warm_and_on_demand_vms_and_queued_tasks_wait_their_turn() {
    let env = start("pools:\n  - {executor: machine, min_idle: 2, max_instances: 3}\n").await;
    settle(env.fleet(), 2).await;
    let fleet = env.fleet().clone();
    let mut tasks = Vec::new();
    for _ in 0..5 {
        tasks.push(fleet.request_task(&req(false, "gh/acme/app")).await.expect("request"));
    }
    let queued = tasks.iter().filter(|t| t.vm_id.is_none()).count();
    assert!(queued >= 2, "at most 3 instances: {queued} of 5 queued");
    // Release tasks as they get VMs; every sample stays within the bound.
    let mut done: HashSet<String> = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while done.len() < tasks.len() {
        let live = pool_vms(&fleet).await;
        assert!(live.len() <= 3, "{} instances in the pool (every state counts)", live.len());
        for t in &tasks {
            let now = fleet.store.task(&t.id).await.expect("task");
            if now.state == "assigned" && done.insert(t.id.clone()) {
                fleet.release_task(&t.id).await.expect("release");
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "queued tasks did not all get a VM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for t in &tasks {
        assert_eq!(fleet.store.task(&t.id).await.expect("task").state, "released");
    }
    clean_up(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dlc_task_takes_a_warm_vm_with_its_projects_volume() {
    let env = start("pools:\n  - {executor: machine, min_idle: 1}\n").await;
    let warm = settle(env.fleet(), 1).await;
    let fleet = env.fleet().clone();
    let wait_assigned = |id: String| {
        let fleet = fleet.clone();
        async move {
            common::eventually(60, || {
                let fleet = fleet.clone();
                let id = id.clone();
                async move {
                    let t = fleet.store.task(&id).await.expect("task");
                    (t.state == "assigned").then_some(t)
                }
            })
            .await
        }
    };
    let t = fleet.request_task(&req(true, "gh/acme/app")).await.expect("request");
    assert_eq!(t.vm_id.as_deref(), Some(warm[0].as_str()), "the DLC task took the warm VM");
    let t = wait_assigned(t.id).await;
    let vm = fleet.store.vm(t.vm_id.as_deref().expect("vm")).await.expect("vm");
    assert!(vm.preallocated, "a warm VM");
    let vol = fleet.store.volume(t.volume_id.as_deref().expect("volume")).await.expect("volume");
    assert_eq!(
        (vol.project.as_str(), vol.state.as_str(), vol.vm_id.as_deref()),
        ("gh/acme/app", "attached", Some(vm.id.as_str()))
    );
    let run = |vm: &VmRow, cmd: &'static str| {
        let target = vmfleet_provisioner::ssh::Target {
            host: vm.host.clone().expect("host"),
            port: vm.ssh_port.expect("port") as u16,
            user: vm.ssh_user.clone(),
            private_key: vm.ssh_private_key.clone(),
            host_key: vm.host_key.clone(),
        };
        async move {
            let s = vmfleet_provisioner::ssh::wait_ready(&target, Duration::from_secs(10)).await.expect("ssh");
            let out = s.exec(cmd).await.expect("exec");
            s.close().await;
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        }
    };
    run(&vm, "echo warm-layer > \"$VMFLEET_DLC_DIR/cache\"").await;
    fleet.release_task(&t.id).await.expect("release");

    // The next DLC task of the project, again on a warm VM, finds what the first one left.
    let fresh = settle(env.fleet(), 1).await;
    common::eventually(30, || async {
        (fleet.store.volume(&vol.id).await.expect("vol").state == "available").then_some(())
    })
    .await;
    let t2 = fleet.request_task(&req(true, "gh/acme/app")).await.expect("request");
    assert_eq!(t2.vm_id.as_deref(), Some(fresh[0].as_str()));
    let t2 = wait_assigned(t2.id).await;
    assert_eq!(t2.volume_id.as_deref(), Some(vol.id.as_str()), "the project's own volume");
    let vm2 = fleet.store.vm(t2.vm_id.as_deref().expect("vm")).await.expect("vm");
    assert_eq!(run(&vm2, "cat \"$VMFLEET_DLC_DIR/cache\"").await, "warm-layer");
    clean_up(&env).await;
}

#[test]
fn the_shipped_default_policy_validates_and_bad_files_name_file_line_and_key() {
    let bin = env!("CARGO_BIN_EXE_vmfleet");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("vmfleet.yaml");
    std::fs::write(&config, format!("data_dir: {}\n", dir.path().display())).expect("config");
    let validate = |file: &Path| {
        std::process::Command::new(bin)
            .arg("--config")
            .arg(&config)
            .args(["policies", "validate"])
            .arg(file)
            .output()
            .expect("validate")
    };
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/default.yaml");
    let out = validate(&shipped);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok:"));
    for (text, want) in [
        ("pools:\n  - executor: machine\n    resource_class: huge\n", ":3: pools[0].resource_class: unknown resource class"),
        ("pools:\n  - executor: machine\n    min_idle: 5\n    max_instances: 2\n", ":4: pools[0].max_instances: 2 is below min_idle 5"),
        (
            "pools:\n  - executor: machine\n    schedules:\n      - {cron: '* 8-17 * * 1-5', timezone: Mars/Base, min_idle: 1}\n",
            ":4: pools[0].schedules[0]: unknown time zone",
        ),
        ("pools:\n  - executor: machine\n    scale_factr: 1\n", ":3: pools[0].scale_factr: "),
        (
            "asg_policies:\n  - asg: g\n    step_scaling:\n      - name: up\n        steps: [{lower: 0, upper: 5, adjustment: 1}, {lower: 10, adjustment: 2}]\n        alarm: {metric: TasksWaiting, period: 60, threshold: 1, comparison: GreaterThanThreshold}\n",
            ":5: asg_policies[0].step_scaling[0].steps: steps[0] and steps[1] leave a gap from 5 to 10",
        ),
        (
            "asg_policies:\n  - asg: g\n    scheduled:\n      - {name: morning, cron: '0 8 * * 1-5', min: 5, max: 2}\n",
            ":4: asg_policies[0].scheduled[0].min: 5 is above max 2",
        ),
    ] {
        let f = dir.path().join("bad.yaml");
        std::fs::write(&f, text).expect("write");
        let out = validate(&f);
        assert_eq!(out.status.code(), Some(2), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("bad.yaml{want}")), "{text}\n=> {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forecast_pool_keeps_warm_what_recently_arrived_per_boot_window() {
    let env = start("pools:\n  - {executor: machine, min_idle: 0, forecast: {quantile: 1.0, horizon: 3m}}\n").await;
    let fleet = env.fleet().clone();
    settle(&fleet, 0).await;
    // Three tasks arrive together (a build with parallelism 3) and finish.
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(fleet.request_task(&req(false, "gh/acme/app")).await.expect("request").id);
    }
    for id in &ids {
        common::eventually(60, || async {
            (fleet.store.task(id).await.expect("task").state == "assigned").then_some(())
        })
        .await;
        fleet.release_task(id).await.expect("release");
    }
    // Nothing is known of earlier days, so the last half hour decides: three per window.
    settle(&fleet, 3).await;
    clean_up(&env).await;
}
