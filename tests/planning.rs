//! The service and the simulator plan from the same snapshot with the same code: one fleet
//! state, written once into the store and once into the simulator, gives the same actions.
#![expect(clippy::tests_outside_test_module, reason = "integration tests live in tests/, not in a cfg(test) module")]

mod common;

use std::time::Duration;

use vmfleet::fleet::Fleet;
use vmfleet::store::{Bounds, VmRow};
use vmfleet_scaler::{ScaleAction, VmPhase};
use vmfleet_sim::trace::{Task, Trace};

const MEDIUM: &str = "machine/default/medium";
const LARGE: &str = "machine/default/large";

fn vm(id: &str, pool: &str, state: &str, task: Option<&str>, image_id: &str, at: i64) -> VmRow {
    let mut v = common::vm_row(pool, state, task);
    v.id = id.into();
    v.image_id = image_id.into();
    v.resource_class = pool.rsplit('/').next().unwrap_or_default().into();
    v.requested_at = at;
    v.ready_at = (state == "ready").then_some(at);
    v.state_since = at;
    v
}

#[tokio::test]
async fn one_snapshot_gives_the_same_actions_in_the_service_and_the_simulator() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).expect("dir");
    let policy = policies.join("pools.yaml");
    std::fs::write(
        &policy,
        "pools:\n  - {executor: machine, min_idle: 3, max_instances: 6, idle_timeout: 0s, max_age: 0s}\n",
    )
    .expect("policy");
    let mut config = common::test_config(dir.path());
    config.policies_dir = Some(policies);
    let store = common::sqlite_store(dir.path()).await;
    let provider = vmfleet::fleet::build_provider(&config).await.expect("provider");
    let fleet = Fleet::new(config.clone(), store, provider).await.expect("fleet");
    fleet.reload_policies().expect("policies");
    let current = fleet.current_image(MEDIUM).expect("the pool's image resolves");

    // The trace: three tasks queued (two of project 0, one of project 1), one running.
    let t0 = 1_700_000_000_000;
    let task = |at: i64, project: u32, pool: usize| Task { at, project, pool, dlc: false, dur: 600_000 };
    let trace = Trace {
        tasks: vec![task(t0 + 10, 0, 0), task(t0 + 11, 0, 0), task(t0 + 12, 1, 0), task(t0, 0, 0)],
        pools: vec![MEDIUM.into(), LARGE.into()],
        projects: 2,
    };
    let id = vmfleet_sim::engine::task_id;

    // The same fleet in the store...
    let rows = [
        vm("vm-1", MEDIUM, "ready", None, &current, t0),
        vm("vm-2", MEDIUM, "booting", None, &current, t0),
        vm("vm-3", MEDIUM, "assigned", Some(&id(3)), &current, t0),
        vm("vm-4", LARGE, "ready", None, "any", t0),
        vm("vm-5", LARGE, "ready", None, "any", t0 + 1),
    ];
    for r in &rows {
        fleet.store.insert_vm(r).await.expect("vm");
    }
    for i in 0..3 {
        let mut t = common::task_row(MEDIUM, &trace.tasks[i].project.to_string(), false);
        t.id = id(i);
        t.created_at = trace.tasks[i].at;
        // No room: the task is recorded queued, without a VM.
        let no_room = Bounds { pool_max: Some(0), fleet_max: None };
        let od = vm(&format!("od-{i}"), MEDIUM, "requested", Some(&t.id), "not-current", t.created_at);
        let a = fleet.store.request_task_within(&t, &od, None, no_room).await.expect("task");
        assert!(a.vm.is_none(), "queued");
    }
    // ...and in the simulator, with the policy read by the same code as `vmfleet simulate`.
    let cloud = vmfleet_sim::Cloud::new(Duration::from_secs(90), Duration::from_secs(180), 0.0);
    let collector = vmfleet::cli::simulate::collector(&config);
    let mut sim = vmfleet_sim::Sim::new(&trace, cloud, collector, 1);
    sim.place(0, VmPhase::Ready, None, Some(t0), t0);
    sim.place(0, VmPhase::Starting, None, None, t0);
    sim.place(0, VmPhase::Assigned, Some(3), None, t0);
    sim.place(1, VmPhase::Ready, None, Some(t0), t0);
    sim.place(1, VmPhase::Ready, None, Some(t0 + 1), t0 + 1);
    for i in 0..3 {
        sim.enqueue(0, i);
    }
    let setup = vmfleet::cli::simulate::setup(&trace, &config, Some(&policy)).expect("setup");
    let mut planner = vmfleet_sim::Vmfleet::new(
        setup.pools.iter().map(|p| p.policy.clone()).collect(),
        setup.pools.iter().map(|p| p.forecast).collect(),
        setup.fleet_max,
    );

    let now = t0 + 60_000;
    let service = fleet.plan_scale(now).await.expect("plan");
    let simulated = sim.plan_once(&mut planner, now);
    assert_eq!(service, simulated);
    // What that plan is: the idle VM to the oldest queued task, one launch each for the other
    // project's task and the next (fair order), one warm VM within max_instances 6, and the
    // unnamed pool's idle VMs retired.
    let kinds: Vec<String> = service
        .iter()
        .map(|a| match a {
            ScaleAction::Assign { vm_id, task_id, .. } => format!("assign {vm_id} {task_id}"),
            ScaleAction::LaunchForTasks { task_ids, .. } => format!("for {}", task_ids.join(",")),
            ScaleAction::Launch { count, .. } => format!("launch {count}"),
            ScaleAction::Terminate { vm_id, .. } => format!("retire {vm_id}"),
            ScaleAction::Start { vm_id, .. } => format!("start {vm_id}"),
            ScaleAction::LaunchStopped { count, .. } => format!("launch stopped {count}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            format!("assign vm-1 {}", id(0)),
            format!("for {},{}", id(2), id(1)),
            "launch 1".into(),
            "retire vm-4".into(),
            "retire vm-5".into()
        ]
    );
}

#[test]
fn a_stopped_tier_reaches_the_planner_as_the_policy_says() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("stopped.yaml");
    let text = "pools:\n  - executor: machine\n    max_instances: 5\n    stopped: {min: 2, max: 4}\n";
    std::fs::write(&file, text).expect("write");
    let config = vmfleet::config::Config::default();
    let p = vmfleet::policy::Policies::load_file(&file, &config).expect("the simulator reads it");
    let policy = vmfleet::fleet::scaler_policy(&p.pools[0], None);
    assert_eq!((policy.min_stopped, policy.max_stopped), (2, Some(4)));
}
