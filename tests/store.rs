//! One store suite, run against SQLite and PostgreSQL.
#![expect(clippy::tests_outside_test_module, reason = "integration tests live in tests/, not in a cfg(test) module")]

mod common;

use std::collections::HashSet;

use common::{pg_store, sqlite_store, vm_row};
use vmfleet::store::{
    now_ms, short_id, AuditEvent, JobRow, JobTaskRow, Store, StoreError, TaskRow, VmState, VolumeRow,
};

const POOL: &str = "machine/default/medium";

macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                let dir = tempfile::tempdir().expect("tempdir");
                super::$name(super::sqlite_store(dir.path()).await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                if let Some(store) = super::pg_store().await {
                    super::$name(store).await;
                }
            }
        }
    )*};
}

both!(
    install_id_is_stable,
    warm_vm_is_handed_over_else_on_demand,
    concurrent_requests_never_share_a_vm,
    release_retires_vm_and_volume,
    dlc_volume_never_crosses_projects,
    volume_delete_refused_while_attached,
    transitions_are_conditional,
    tokens_are_found_by_hash,
    paused_fleet_refuses_requests_and_clear_empties_it,
    lost_vm_requeues_a_waiting_task_and_fails_a_running_one,
    forgotten_volume_only_when_unused,
    a_warm_vm_that_comes_up_serves_the_oldest_task_waiting_for_a_boot,
    job_claims_are_fair_between_projects,
    concurrent_claims_never_take_the_same_job_task,
    an_expired_claim_is_requeued_and_its_owner_can_no_longer_write,
    stopped_vms_are_started_for_tasks_before_a_fresh_launch_never_twice,
);

fn task(project: &str, dlc: bool) -> TaskRow {
    common::task_row(POOL, project, dlc)
}

fn volume(project: &str, t: &TaskRow) -> VolumeRow {
    let now = now_ms();
    VolumeRow {
        id: format!("vol-{}", short_id()),
        project: project.into(),
        provider_id: None,
        zone: "z1".into(),
        size_gb: 100,
        state: "creating".into(),
        task_id: Some(t.id.clone()),
        vm_id: t.vm_id.clone(),
        created_at: now,
        last_used_at: now,
        state_since: now,
    }
}

async fn install_id_is_stable(s: Store) {
    let a = s.install_id(None).await.expect("id");
    assert_eq!(s.install_id(None).await.expect("id"), a);
    assert_eq!(s.install_id(Some(&a)).await.expect("same id"), a);
    assert!(matches!(s.install_id(Some("other")).await, Err(StoreError::Conflict(_))));
}

async fn warm_vm_is_handed_over_else_on_demand(s: Store) {
    let warm = vm_row(POOL, "ready", None);
    s.insert_vm(&warm).await.expect("insert");
    let t1 = task("p", false);
    let a = s.request_task(&t1, &vm_row(POOL, "requested", Some(&t1.id)), None).await.expect("request");
    assert!(a.warm && a.handed_over);
    assert_eq!(a.vm.as_ref().expect("vm").id, warm.id);
    let t1 = s.task(&t1.id).await.expect("task");
    assert_eq!((t1.state.as_str(), t1.vm_id.as_deref()), ("assigned", Some(warm.id.as_str())));
    assert_eq!(s.vm(&warm.id).await.expect("vm").state, "assigned");

    let t2 = task("p", false);
    let od = vm_row(POOL, "requested", Some(&t2.id));
    let a = s.request_task(&t2, &od, None).await.expect("request");
    assert!(!a.warm && !a.handed_over);
    assert_eq!(s.vm(&od.id).await.expect("vm").task_id.as_deref(), Some(t2.id.as_str()));
    assert_eq!(s.task(&t2.id).await.expect("task").state, "waiting");
    // A draining VM is not handed out.
    let drained = vm_row(POOL, "ready", None);
    s.insert_vm(&drained).await.expect("insert");
    s.drain_vm(&drained.id).await.expect("drain");
    let t3 = task("p", false);
    let a = s.request_task(&t3, &vm_row(POOL, "requested", Some(&t3.id)), None).await.expect("request");
    assert!(!a.warm);
}

async fn concurrent_requests_never_share_a_vm(s: Store) {
    for _ in 0..10 {
        s.insert_vm(&vm_row(POOL, "ready", None)).await.expect("insert");
    }
    let mut handles = Vec::new();
    for _ in 0..30 {
        let s = s.clone();
        handles.push(tokio::spawn(async move {
            let t = task("p", false);
            s.request_task(&t, &vm_row(POOL, "requested", Some(&t.id)), None).await.expect("request")
        }));
    }
    let mut warm = HashSet::new();
    let mut on_demand = 0;
    for h in handles {
        let a = h.await.expect("join");
        if a.warm {
            assert!(
                warm.insert(a.vm.as_ref().expect("vm").id.clone()),
                "vm {} handed out twice",
                a.vm.as_ref().expect("vm").id
            );
        } else {
            on_demand += 1;
        }
    }
    assert_eq!((warm.len(), on_demand), (10, 20));
}

async fn release_retires_vm_and_volume(s: Store) {
    s.insert_vm(&vm_row(POOL, "ready", None)).await.expect("insert");
    let mut t = task("p", true);
    let a = s.request_task(&t, &vm_row(POOL, "requested", Some(&t.id)), None).await.expect("request");
    assert!(a.warm && !a.handed_over, "a DLC task waits for its volume");
    t.vm_id = Some(a.vm.as_ref().expect("vm").id.clone());
    let vol = s.claim_volume(&t, "z1", &volume("p", &t)).await.expect("claim");
    s.set_volume_provider_id(&vol.id, "pv-1", now_ms()).await.expect("provider id");
    s.set_volume_attached(&vol.id, &t.id, &a.vm.as_ref().expect("vm").id, now_ms()).await.expect("attach");
    s.hand_over(&t.id, &a.vm.as_ref().expect("vm").id, now_ms()).await.expect("hand over");
    assert_eq!(s.task(&t.id).await.expect("task").state, "assigned");

    let released = s.release_task(&t.id, now_ms()).await.expect("release");
    assert_eq!(released.state, "released");
    assert_eq!(s.vm(&a.vm.as_ref().expect("vm").id).await.expect("vm").state, "releasing", "VMs are never reused");
    assert_eq!(s.volume(&vol.id).await.expect("vol").state, "detaching");
    s.set_volume_detached(&vol.id, now_ms()).await.expect("detached");
    let v = s.volume(&vol.id).await.expect("vol");
    assert_eq!((v.state.as_str(), v.task_id.as_deref()), ("available", None));
    // Releasing again is harmless.
    assert_eq!(s.release_task(&t.id, now_ms()).await.expect("again").state, "released");
    assert!(matches!(s.release_task("task-nope", now_ms()).await, Err(StoreError::NotFound(_))));
}

async fn dlc_volume_never_crosses_projects(s: Store) {
    // Project a gets a volume, uses it, releases it.
    let mut ta = task("a", true);
    let vm_a = vm_row(POOL, "requested", Some(&ta.id));
    s.request_task(&ta, &vm_a, None).await.expect("request a");
    ta.vm_id = Some(vm_a.id.clone());
    let vol_a = s.claim_volume(&ta, "z1", &volume("a", &ta)).await.expect("claim a");
    s.set_volume_provider_id(&vol_a.id, "pv-a", now_ms()).await.expect("pid");
    s.set_volume_attached(&vol_a.id, &ta.id, &vm_a.id, now_ms()).await.expect("attach a");
    s.release_task(&ta.id, now_ms()).await.expect("release a");
    s.set_volume_detached(&vol_a.id, now_ms()).await.expect("detach a");

    // Project b never gets it, even by asking for it directly.
    let mut tb = task("b", true);
    let vm_b = vm_row(POOL, "requested", Some(&tb.id));
    s.request_task(&tb, &vm_b, None).await.expect("request b");
    tb.vm_id = Some(vm_b.id.clone());
    let err = s.set_volume_attached(&vol_a.id, &tb.id, &vm_b.id, now_ms()).await;
    assert!(matches!(err, Err(StoreError::Conflict(_))), "cross-project attach must be refused");
    let vol_b = s.claim_volume(&tb, "z1", &volume("b", &tb)).await.expect("claim b");
    assert_ne!(vol_b.id, vol_a.id);
    assert_eq!(vol_b.project, "b");

    // Another zone does not reuse it either.
    let mut ta_far = task("a", true);
    let vm_far = vm_row(POOL, "requested", Some(&ta_far.id));
    s.request_task(&ta_far, &vm_far, None).await.expect("request far");
    ta_far.vm_id = Some(vm_far.id.clone());
    let far =
        s.claim_volume(&ta_far, "z2", &VolumeRow { zone: "z2".into(), ..volume("a", &ta_far) }).await.expect("far");
    assert_ne!(far.id, vol_a.id);

    // Project a, same zone, reuses it.
    let mut ta2 = task("a", true);
    let vm_a2 = vm_row(POOL, "requested", Some(&ta2.id));
    s.request_task(&ta2, &vm_a2, None).await.expect("request a2");
    ta2.vm_id = Some(vm_a2.id.clone());
    let again = s.claim_volume(&ta2, "z1", &volume("a", &ta2)).await.expect("claim a2");
    assert_eq!(again.id, vol_a.id);
    // One task per volume: while a2 holds it, a third task of project a gets another.
    let mut ta3 = task("a", true);
    let vm_a3 = vm_row(POOL, "requested", Some(&ta3.id));
    s.request_task(&ta3, &vm_a3, None).await.expect("request a3");
    ta3.vm_id = Some(vm_a3.id.clone());
    let other = s.claim_volume(&ta3, "z1", &volume("a", &ta3)).await.expect("claim a3");
    assert_ne!(other.id, vol_a.id);
}

async fn volume_delete_refused_while_attached(s: Store) {
    let mut t = task("p", true);
    let vm = vm_row(POOL, "requested", Some(&t.id));
    s.request_task(&t, &vm, None).await.expect("request");
    t.vm_id = Some(vm.id.clone());
    let v = s.claim_volume(&t, "z1", &volume("p", &t)).await.expect("claim");
    s.set_volume_provider_id(&v.id, "pv", now_ms()).await.expect("pid");
    s.set_volume_attached(&v.id, &t.id, &vm.id, now_ms()).await.expect("attach");
    assert!(matches!(s.request_volume_delete(&v.id, now_ms()).await, Err(StoreError::Conflict(_))));
    s.release_task(&t.id, now_ms()).await.expect("release");
    s.set_volume_detached(&v.id, now_ms()).await.expect("detach");
    assert_eq!(s.request_volume_delete(&v.id, now_ms()).await.expect("delete").state, "deleting");
    assert!(matches!(s.request_volume_delete("vol-nope", now_ms()).await, Err(StoreError::NotFound(_))));
}

async fn transitions_are_conditional(s: Store) {
    let vm = vm_row(POOL, "ready", None);
    s.insert_vm(&vm).await.expect("insert");
    assert!(s.transition(&vm.id, &[VmState::Ready], VmState::Releasing, now_ms()).await.expect("t"));
    assert!(!s.transition(&vm.id, &[VmState::Ready], VmState::Releasing, now_ms()).await.expect("t"));
    let v = s.vm(&vm.id).await.expect("vm");
    assert_eq!(v.state, "releasing");
    assert!(v.releasing_at.is_some());
    s.fail_vm(&vm.id, "boom", now_ms()).await.expect("fail");
    let v = s.vm(&vm.id).await.expect("vm");
    assert_eq!((v.state.as_str(), v.failure_reason.as_deref()), ("failed", Some("boom")));
}

async fn tokens_are_found_by_hash(s: Store) {
    s.insert_token("ci", "abc", "agent", now_ms()).await.expect("insert");
    assert_eq!(s.token_by_hash("abc").await.expect("get"), Some(("ci".into(), "agent".into())));
    assert_eq!(s.token_by_hash("zzz").await.expect("get"), None);
    assert!(matches!(s.insert_token("ci", "def", "agent", now_ms()).await, Err(StoreError::Conflict(_))));
    assert!(s.token_exists("ci").await.expect("exists"));
}

async fn paused_fleet_refuses_requests_and_clear_empties_it(s: Store) {
    let t = task("p", false);
    s.request_task(&t, &vm_row(POOL, "requested", Some(&t.id)), None).await.expect("request");
    s.set_paused(true).await.expect("pause");
    assert!(s.paused().await.expect("paused"));
    let t2 = task("p", false);
    let refused = s.request_task(&t2, &vm_row(POOL, "requested", Some(&t2.id)), None).await;
    assert!(matches!(refused, Err(StoreError::Conflict(_))), "{refused:?}");
    assert!(matches!(s.task(&t2.id).await, Err(StoreError::NotFound(_))), "nothing half-written");
    assert_eq!(s.clear_fleet().await.expect("clear"), (1, 0, 1));
    s.set_paused(false).await.expect("resume");
    let t3 = task("p", false);
    s.request_task(&t3, &vm_row(POOL, "requested", Some(&t3.id)), None).await.expect("request after resume");
}

async fn lost_vm_requeues_a_waiting_task_and_fails_a_running_one(s: Store) {
    // Waiting (DLC, volume being attached): the VM fails, the volume is let go, the task gets
    // the replacement and stays waiting.
    let mut t = task("p", true);
    let lost = vm_row(POOL, "booting", Some(&t.id));
    s.request_task(&t, &lost, None).await.expect("request");
    t.vm_id = Some(lost.id.clone());
    let vol = s.claim_volume(&t, "z1", &volume("p", &t)).await.expect("claim");
    s.set_volume_provider_id(&vol.id, "pv", now_ms()).await.expect("pid");
    let fresh = vm_row(POOL, "requested", Some(&t.id));
    assert!(s.requeue_task(&t.id, &lost.id, "lost: gone", &fresh, now_ms()).await.expect("requeue"));
    let old = s.vm(&lost.id).await.expect("old");
    assert_eq!((old.state.as_str(), old.task_id.as_deref()), ("failed", None));
    assert_eq!(old.failure_reason.as_deref(), Some("lost: gone"));
    let task_now = s.task(&t.id).await.expect("task");
    assert_eq!(task_now.state, "waiting");
    assert_eq!(task_now.vm_id.as_deref(), Some(fresh.id.as_str()));
    assert_eq!(task_now.volume_id, None, "the volume is claimed afresh for the new VM");
    assert_eq!(s.vm(&fresh.id).await.expect("fresh").task_id.as_deref(), Some(t.id.as_str()));
    assert_eq!(s.volume(&vol.id).await.expect("vol").state, "detaching");

    // Running: no requeue; the VM and its task fail.
    let t2 = task("p", false);
    s.insert_vm(&vm_row(POOL, "ready", None)).await.expect("warm");
    let a = s.request_task(&t2, &vm_row(POOL, "requested", Some(&t2.id)), None).await.expect("request");
    assert!(a.handed_over);
    let spare = vm_row(POOL, "requested", Some(&t2.id));
    assert!(!s
        .requeue_task(&t2.id, &a.vm.as_ref().expect("vm").id, "lost: gone", &spare, now_ms())
        .await
        .expect("requeue"));
    assert!(matches!(s.vm(&spare.id).await, Err(StoreError::NotFound(_))), "no replacement recorded");
    assert_eq!(s.vm(&a.vm.as_ref().expect("vm").id).await.expect("vm").state, "failed");
    let t2 = s.task(&t2.id).await.expect("task");
    assert_eq!((t2.state.as_str(), t2.failure_reason.as_deref()), ("failed", Some("lost: gone")));
}

async fn forgotten_volume_only_when_unused(s: Store) {
    let mut t = task("p", true);
    let vm = vm_row(POOL, "requested", Some(&t.id));
    s.request_task(&t, &vm, None).await.expect("request");
    t.vm_id = Some(vm.id.clone());
    let v = s.claim_volume(&t, "z1", &volume("p", &t)).await.expect("claim");
    s.set_volume_provider_id(&v.id, "pv", now_ms()).await.expect("pid");
    s.set_volume_attached(&v.id, &t.id, &vm.id, now_ms()).await.expect("attach");
    assert!(!s.forget_volume(&v.id, now_ms()).await.expect("forget"), "attached: kept");
    s.release_task(&t.id, now_ms()).await.expect("release");
    s.set_volume_detached(&v.id, now_ms()).await.expect("detach");
    assert!(s.forget_volume(&v.id, now_ms()).await.expect("forget"));
    assert_eq!(s.volume(&v.id).await.expect("vol").state, "deleted");
}

async fn a_warm_vm_that_comes_up_serves_the_oldest_task_waiting_for_a_boot(s: Store) {
    // Two tasks wait for their own launches; a warm VM comes up.
    let mut older = task("p", false);
    older.created_at -= 1000;
    let older_vm = vm_row(POOL, "booting", Some(&older.id));
    s.request_task(&older, &older_vm, None).await.expect("request");
    let newer = task("p", false);
    s.request_task(&newer, &vm_row(POOL, "provisioning", Some(&newer.id)), None).await.expect("request");
    // It was launched for the stopped tier: serving a task, it is not stopped after its boot.
    let mut warm = vm_row(POOL, "booting", None);
    warm.stop_after_boot = true;
    s.insert_vm(&warm).await.expect("warm");
    assert_eq!(s.give_to_waiting_task(&warm.id, POOL).await.expect("give"), Some(older.id.clone()));
    let w = s.vm(&warm.id).await.expect("vm");
    assert_eq!((w.task_id.as_deref(), w.preallocated, w.stop_after_boot), (Some(older.id.as_str()), false, false));
    assert_eq!(s.task(&older.id).await.expect("task").vm_id.as_deref(), Some(warm.id.as_str()));
    let freed = s.vm(&older_vm.id).await.expect("vm");
    assert_eq!((freed.task_id, freed.preallocated, freed.state.as_str()), (None, true, "booting"), "now a warm VM");
    // The freed VM's own readiness check, having read the VM before, comes up late: it may not
    // hand the task a second VM.
    let late = s.hand_over(&older.id, &older_vm.id, now_ms()).await;
    assert!(matches!(late, Err(StoreError::Conflict(_))), "{late:?}");
    let (t, freed) = (s.task(&older.id).await.expect("task"), s.vm(&older_vm.id).await.expect("vm"));
    assert_eq!(
        (t.state.as_str(), t.vm_id.as_deref(), freed.state.as_str()),
        ("waiting", Some(warm.id.as_str()), "booting")
    );
    s.hand_over(&older.id, &warm.id, now_ms()).await.expect("the VM that took it hands it over");
    assert_eq!(s.vm(&warm.id).await.expect("vm").state, "assigned");
    // Another pool's VM, or one with nobody waiting, takes nothing.
    let other = vm_row("machine/default/large", "booting", None);
    s.insert_vm(&other).await.expect("other");
    assert_eq!(s.give_to_waiting_task(&other.id, "machine/default/large").await.expect("give"), None);
}

/// Records a job of `n` queued tasks for `project`.
async fn job(s: &Store, project: &str, n: i64, at: i64) -> String {
    let id = format!("job-{}", short_id());
    let row = JobRow {
        id: id.clone(),
        number: 0,
        name: "j".into(),
        project: project.into(),
        config_file: "c.yml".into(),
        spec: "{}".into(),
        pool: POOL.into(),
        repo: None,
        revision: None,
        branch: None,
        deploy_key: None,
        parallelism: n,
        state: "queued".into(),
        cancel_requested: false,
        failure_reason: None,
        queued_at: at,
        started_at: None,
        finished_at: None,
        workflow_id: None,
        tag: None,
    };
    let tasks: Vec<JobTaskRow> = (0..n).map(|i| JobTaskRow::queued(&id, i, project, at)).collect();
    let audit = AuditEvent {
        id: short_id(),
        version: 1,
        action: "workflow.job.scheduled".into(),
        actor: "test".into(),
        target: id.clone(),
        payload: String::new(),
        occurred_at: at,
        scope: "t".into(),
        success: true,
        request: None,
    };
    s.insert_job(&row, &tasks, &audit).await.expect("job");
    id
}

async fn job_claims_are_fair_between_projects(s: Store) {
    let now = now_ms();
    // A 50-way matrix of one project, then two tasks of another.
    job(&s, "gh/big/matrix", 50, now - 1000).await;
    job(&s, "gh/small/app", 2, now).await;
    let mut projects = Vec::new();
    for _ in 0..4 {
        let t = s.claim_job_task("me", now + 60_000, now).await.expect("claim").expect("a task");
        projects.push(t.project);
    }
    // The small project's tasks do not wait behind the 48 other tasks of the matrix.
    assert_eq!(projects, ["gh/big/matrix", "gh/small/app", "gh/big/matrix", "gh/small/app"]);
}

async fn concurrent_claims_never_take_the_same_job_task(s: Store) {
    let now = now_ms();
    job(&s, "gh/acme/app", 40, now).await;
    let mut handles = Vec::new();
    for w in 0..8 {
        let s = s.clone();
        handles.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(t) = s.claim_job_task(&format!("w{w}"), now + 60_000, now).await.expect("claim") {
                got.push(t.id);
            }
            got
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.expect("join"));
    }
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!((all.len(), unique.len()), (40, 40));
}

async fn an_expired_claim_is_requeued_and_its_owner_can_no_longer_write(s: Store) {
    let now = now_ms();
    let job_id = job(&s, "gh/acme/app", 1, now).await;
    let t = s.claim_job_task("dead", now + 1000, now).await.expect("claim").expect("task");
    // Its VM request, held by the owner that then dies.
    let ft = task("gh/acme/app", false);
    s.request_task(&ft, &vm_row(POOL, "requested", Some(&ft.id)), None).await.expect("fleet task");
    s.set_job_fleet_task(&t.id, "dead", &ft.id, false).await.expect("recorded");
    assert!(s.renew_lease(&t.id, "dead", now + 2000).await.expect("renew"));
    assert!(s.expired_job_tasks(now + 1500).await.expect("expired").is_empty(), "renewed in time");
    let expired = s.expired_job_tasks(now + 2500).await.expect("expired");
    assert_eq!(expired.len(), 1);
    assert_eq!(s.requeue_expired(&expired[0], 3, now + 2500).await.expect("requeue"), Some("queued"));
    // A second replica racing for the same requeue loses quietly.
    assert_eq!(s.requeue_expired(&expired[0], 3, now + 2500).await.expect("requeue"), None);
    // The fleet task is released: its VM is retired.
    assert_eq!(s.task(&ft.id).await.expect("task").state, "released");
    assert!(!s.renew_lease(&t.id, "dead", now + 9000).await.expect("renew"), "the claim is gone");
    assert!(!s.finish_job_task(&t.id, "dead", "success", Some(0), None, now).await.expect("finish"));
    let again = s.claim_job_task("alive", now + 60_000, now + 3000).await.expect("claim").expect("requeued task");
    assert_eq!((again.id.as_str(), again.attempt, again.fleet_task_id.as_deref()), (t.id.as_str(), 2, None));
    assert!(s.finish_job_task(&t.id, "alive", "success", Some(0), None, now + 4000).await.expect("finish"));
    assert_eq!(s.finish_job_if_done(&job_id, now + 4000).await.expect("finish job").as_deref(), Some("success"));
    assert_eq!(s.finish_job_if_done(&job_id, now + 4000).await.expect("once").as_deref(), None);
}

async fn stopped_vms_are_started_for_tasks_before_a_fresh_launch_never_twice(s: Store) {
    let mut stopped = HashSet::new();
    for _ in 0..5 {
        let mut vm = vm_row(POOL, "stopped", None);
        vm.stop_after_boot = true;
        s.insert_vm(&vm).await.expect("insert");
        stopped.insert(vm.id);
    }
    // Another image's stopped VM is not started (the pool resolves to `img` now).
    let mut other = vm_row(POOL, "stopped", None);
    other.image_id = "old-img".into();
    s.insert_vm(&other).await.expect("insert");
    let mut handles = Vec::new();
    for _ in 0..12 {
        let s = s.clone();
        handles.push(tokio::spawn(async move {
            let t = task("p", false);
            let a = s.request_task(&t, &vm_row(POOL, "requested", Some(&t.id)), None).await.expect("request");
            (t.id, a)
        }));
    }
    let (mut started, mut fresh) = (HashSet::new(), 0);
    for h in handles {
        let (task_id, a) = h.await.expect("join");
        let vm = a.vm.expect("a VM");
        assert!(!a.handed_over, "a started VM is handed over once it answers");
        if a.started {
            assert!(stopped.contains(&vm.id), "{} is not one of the stopped VMs", vm.id);
            assert!(started.insert(vm.id.clone()), "vm {} started for two tasks", vm.id);
            let row = s.vm(&vm.id).await.expect("vm");
            assert_eq!((row.state.as_str(), row.task_id.as_deref()), ("starting", Some(task_id.as_str())));
            assert!(row.starting_at.is_some() && !row.stop_after_boot && !row.preallocated);
            assert_eq!(s.task(&task_id).await.expect("task").vm_id.as_deref(), Some(vm.id.as_str()));
        } else {
            fresh += 1;
        }
    }
    assert_eq!((started.len(), fresh), (5, 7));
    assert_eq!(s.vm(&other.id).await.expect("vm").state, "stopped");

    // The planner's start of a stopped VM for the warm target: once, and not for a task
    // that already has a VM.
    let mut vm = vm_row(POOL, "stopped", None);
    vm.stop_after_boot = true;
    s.insert_vm(&vm).await.expect("insert");
    let t = task("p", false);
    s.request_task(&t, &vm_row(POOL, "requested", Some(&t.id)), None).await.expect("request");
    let spare = s.vm(&vm.id).await.expect("vm");
    assert_eq!(spare.state, "starting", "the request started it");
    let mut vm2 = vm_row(POOL, "stopped", None);
    vm2.stop_after_boot = true;
    s.insert_vm(&vm2).await.expect("insert");
    assert!(!s.start_stopped(&vm2.id, Some(&t.id), now_ms()).await.expect("start"), "the task has its VM");
    assert!(s.start_stopped(&vm2.id, None, now_ms()).await.expect("start"));
    assert!(!s.start_stopped(&vm2.id, None, now_ms()).await.expect("start"), "started once");
    let row = s.vm(&vm2.id).await.expect("vm");
    assert!(row.preallocated && row.task_id.is_none() && !row.stop_after_boot);
}
