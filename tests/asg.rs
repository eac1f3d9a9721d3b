//! Auto Scaling and CloudWatch against the moto emulator: `policies apply`, alarm-driven pools,
//! and publishing metrics.
#![expect(clippy::tests_outside_test_module, reason = "integration tests live in tests/, not in a cfg(test) module")]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::emulator::moto_url;

/// A configuration whose AWS clients talk to the emulator, for a fresh installation.
fn config_text(dir: &Path, moto: &str, install: &str, extra: &str) -> String {
    format!(
        "data_dir: {}\ninstall_id: {install}\nreconcile_interval: 100ms\n\
         provider:\n  ec2:\n    region: us-east-1\n    endpoint_url: {moto}\n    access_key_id: testing\n    secret_access_key: testing\n{extra}",
        dir.display()
    )
}

/// An Auto Scaling group in the emulator.
async fn make_group(aws: &vmfleet::asg::Aws, moto: &str, name: &str) {
    let ec2 = aws_sdk_ec2::Client::from_conf(
        aws_sdk_ec2::Config::builder()
            .region(aws_sdk_ec2::config::Region::new("us-east-1"))
            .endpoint_url(moto)
            .credentials_provider(aws_sdk_ec2::config::Credentials::new("testing", "testing", None, None, "test"))
            .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
            .build(),
    );
    let images = ec2.describe_images().owners("amazon").send().await.expect("images");
    let ami = images.images().iter().find_map(|i| i.image_id()).expect("an AMI").to_string();
    let a = aws.autoscaling();
    a.create_launch_configuration()
        .launch_configuration_name(name)
        .image_id(ami)
        .instance_type("m5.large")
        .send()
        .await
        .expect("launch configuration");
    a.create_auto_scaling_group()
        .auto_scaling_group_name(name)
        .launch_configuration_name(name)
        .min_size(0)
        .max_size(10)
        .desired_capacity(0)
        .availability_zones("us-east-1a")
        .send()
        .await
        .expect("group");
}

fn policy_file(group: &str, high_step: i64) -> String {
    format!(
        "asg_policies:\n  - asg: {group}\n    step_scaling:\n      - name: scale-out-on-queue\n        adjustment_type: ChangeInCapacity\n\
         \x20       steps: [{{lower: 0, upper: 10, adjustment: 1}}, {{lower: 10, adjustment: {high_step}}}]\n        warmup: 120\n\
         \x20       alarm: {{metric: TasksWaiting, namespace: vmfleet, statistic: Average, period: 60, threshold: 2, comparison: GreaterThanThreshold, evaluation_periods: 1}}\n\
         \x20   scheduled:\n      - {{name: morning, cron: \"0 8 * * 1-5\", timezone: America/New_York, min: 2, desired: 5}}\n\
         \x20     - {{name: night, cron: \"0 20 * * *\", timezone: America/New_York, min: 0, desired: 1}}\n\
         \x20   termination_hook: {{heartbeat_timeout: 600}}\n"
    )
}

fn apply(config: &Path, file: &Path, dry_run: bool) -> String {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_vmfleet"));
    c.arg("--config").arg(config).args(["policies", "apply"]).arg(file);
    if dry_run {
        c.arg("--dry-run");
    }
    let out = c.output().expect("apply");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn policies_apply_creates_exactly_what_differs_and_a_second_apply_changes_nothing() {
    let Some(moto) = moto_url() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let install = format!("t{}", vmfleet::store::short_id());
    let group = format!("docker-clients-{install}");
    let config_path = dir.path().join("vmfleet.yaml");
    std::fs::write(&config_path, config_text(dir.path(), &moto, &install, "")).expect("config");
    let config = vmfleet::config::Config::load(Some(&config_path), Vec::<(String, String)>::new()).expect("config");
    let aws = vmfleet::asg::Aws::new(&config.ec2_settings()).await;
    make_group(&aws, &moto, &group).await;
    let file: PathBuf = dir.path().join("asg.yaml");
    std::fs::write(&file, policy_file(&group, 3)).expect("policy");
    let pre = format!("vmfleet-{install}-");

    let plan = apply(&config_path, &file, true);
    for line in [
        format!("create    scaling-policy   {group} {pre}scale-out-on-queue"),
        format!("create    alarm            {group} {pre}{group}-scale-out-on-queue"),
        format!("create    scheduled-action {group} {pre}morning"),
        format!("create    scheduled-action {group} {pre}night"),
        format!("create    lifecycle-hook   {group} {pre}drain"),
    ] {
        assert!(plan.contains(&line), "{line}\n{plan}");
    }
    assert!(plan.contains("5 changes (dry run: nothing done)"), "{plan}");
    let a = aws.autoscaling();
    let policies = a.describe_policies().auto_scaling_group_name(&group).send().await.expect("policies");
    assert!(policies.scaling_policies().is_empty(), "a dry run creates nothing");

    let done = apply(&config_path, &file, false);
    assert!(done.contains("5 changes applied"), "{done}");
    let policies = a.describe_policies().auto_scaling_group_name(&group).send().await.expect("policies");
    let p = &policies.scaling_policies()[0];
    assert_eq!(p.policy_name(), Some(format!("{pre}scale-out-on-queue").as_str()));
    assert_eq!(p.policy_type(), Some("StepScaling"));
    assert_eq!(p.estimated_instance_warmup(), Some(120));
    let steps: Vec<_> = p
        .step_adjustments()
        .iter()
        .map(|s| (s.metric_interval_lower_bound(), s.metric_interval_upper_bound(), s.scaling_adjustment()))
        .collect();
    assert_eq!(steps, [(Some(0.0), Some(10.0), Some(1)), (Some(10.0), None, Some(3))]);
    let alarms = aws.cloudwatch().describe_alarms().alarm_name_prefix(&pre).send().await.expect("alarms");
    let alarm = &alarms.metric_alarms()[0];
    assert_eq!(alarm.metric_name(), Some("TasksWaiting"));
    assert_eq!(alarm.threshold(), Some(2.0));
    assert_eq!(alarm.alarm_actions(), [p.policy_arn().expect("arn").to_string()], "the alarm triggers the policy");
    let sched = a.describe_scheduled_actions().auto_scaling_group_name(&group).send().await.expect("scheduled");
    let mut s: Vec<_> = sched
        .scheduled_update_group_actions()
        .iter()
        .map(|x| {
            (
                x.scheduled_action_name().unwrap_or_default().to_string(),
                x.recurrence().map(String::from),
                x.desired_capacity(),
            )
        })
        .collect();
    s.sort();
    assert_eq!(
        s,
        [
            (format!("{pre}morning"), Some("0 8 * * 1-5".to_string()), Some(5)),
            (format!("{pre}night"), Some("0 20 * * *".to_string()), Some(1)),
        ]
    );
    let hooks = a.describe_lifecycle_hooks().auto_scaling_group_name(&group).send().await.expect("hooks");
    let h = &hooks.lifecycle_hooks()[0];
    assert_eq!(h.lifecycle_transition(), Some("autoscaling:EC2_INSTANCE_TERMINATING"));
    assert_eq!((h.heartbeat_timeout(), h.default_result()), (Some(600), Some("CONTINUE")));

    let again = apply(&config_path, &file, false);
    assert!(again.contains("no changes"), "{again}");
    assert!(!again.contains("create") && !again.contains("update"), "{again}");

    // A changed step updates only that policy.
    std::fs::write(&file, policy_file(&group, 4)).expect("policy");
    let plan = apply(&config_path, &file, true);
    let changed: Vec<&str> = plan.lines().filter(|l| !l.starts_with("unchanged") && !l.contains("dry run")).collect();
    assert_eq!(changed, [format!("update    scaling-policy   {group} {pre}scale-out-on-queue")], "{plan}");
    assert!(apply(&config_path, &file, false).contains("1 changes applied"));
    assert!(apply(&config_path, &file, false).contains("no changes"));

    // Removing what the file described deletes exactly ours, alarms before their policies; a
    // hand-made policy on the same group stays.
    a.put_scaling_policy()
        .auto_scaling_group_name(&group)
        .policy_name("hand-made")
        .policy_type("StepScaling")
        .adjustment_type("ChangeInCapacity")
        .step_adjustments(
            aws_sdk_autoscaling::types::StepAdjustment::builder()
                .metric_interval_lower_bound(0.0)
                .scaling_adjustment(1)
                .build(),
        )
        .send()
        .await
        .expect("hand-made policy");
    std::fs::write(&file, format!("asg_policies:\n  - asg: {group}\n")).expect("policy");
    let plan = apply(&config_path, &file, false);
    let deletes: Vec<&str> = plan.lines().filter(|l| l.starts_with("delete")).collect();
    assert_eq!(deletes.len(), 5, "{plan}");
    assert!(deletes[0].contains("alarm"), "alarms go first: {plan}");
    let left = a.describe_policies().auto_scaling_group_name(&group).send().await.expect("policies");
    let names: Vec<_> = left.scaling_policies().iter().filter_map(|p| p.policy_name()).collect();
    assert_eq!(names, ["hand-made"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_in_alarm_moves_the_warm_target_of_an_alarm_driven_pool() {
    let Some(moto) = moto_url() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let install = format!("t{}", vmfleet::store::short_id());
    let alarm = format!("queue-high-{install}");
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).expect("dir");
    std::fs::write(
        policies.join("pools.yaml"),
        format!(
            "pools:\n  - executor: machine\n    min_idle: 1\n    max_instances: 4\n    step_scaling:\n      alarm: {alarm}\n\
             \x20     steps: [{{lower: 0, upper: 10, adjustment: 1}}, {{lower: 10, adjustment: 2}}]\n      cooldown: 1h\n"
        ),
    )
    .expect("policy");
    let text = config_text(
        dir.path(),
        &moto,
        &install,
        &format!("policies_dir: {}\nmetrics_out:\n  alarm_poll: 100ms\n", policies.display()),
    );
    let mut config = vmfleet::config::Config::parse(&text, "test", Vec::<(String, String)>::new()).expect("config");
    config.provider.local.agent_program = Some(env!("CARGO_BIN_EXE_vmfleet").into());
    let running = vmfleet::server::start(config.clone(), None).await.expect("start");
    let fleet = running.fleet.clone();
    let ready = || async {
        let vms = fleet.store.live_vms().await.expect("vms");
        vms.iter().filter(|v| v.state == "ready").count()
    };
    common::eventually(60, || async { (ready().await == 1).then_some(()) }).await;

    let cw = fleet.aws().await.cloudwatch().clone();
    cw.put_metric_alarm()
        .alarm_name(&alarm)
        .metric_name("TasksWaiting")
        .namespace("vmfleet")
        .statistic(aws_sdk_cloudwatch::types::Statistic::Average)
        .period(60)
        .threshold(2.0)
        .comparison_operator(aws_sdk_cloudwatch::types::ComparisonOperator::GreaterThanThreshold)
        .evaluation_periods(1)
        .send()
        .await
        .expect("alarm");
    // OK: nothing moves, over two alarm reads after the alarm exists.
    let reads = fleet.runs("alarms");
    common::eventually(30, || async { (fleet.runs("alarms") >= reads + 2).then_some(()) }).await;
    assert_eq!(fleet.step_target("machine/default/medium"), None);
    // ALARM with a datapoint 14 (breach 12): the second step, +2.
    cw.set_alarm_state()
        .alarm_name(&alarm)
        .state_value(aws_sdk_cloudwatch::types::StateValue::Alarm)
        .state_reason("test")
        .state_reason_data(r#"{"recentDatapoints":[14.0]}"#)
        .send()
        .await
        .expect("set state");
    let target = common::eventually(30, || async { fleet.step_target("machine/default/medium") }).await;
    assert_eq!(target, 3, "min_idle 1 + 2");
    common::eventually(60, || async { (ready().await == 3).then_some(()) }).await;
    // Within the cooldown the firing alarm does not move it again, over two more reads.
    let reads = fleet.runs("alarms");
    common::eventually(30, || async { (fleet.runs("alarms") >= reads + 2).then_some(()) }).await;
    assert_eq!(fleet.step_target("machine/default/medium"), Some(3));
    let audit = fleet.store.audit_events(100).await.expect("audit");
    assert!(audit.iter().any(|e| e.action == "pool.scale" && e.payload.contains("from 1 to 3")), "{audit:?}");
    cw.delete_alarms().alarm_names(&alarm).send().await.expect("clean up");
    fleet.reset().await.expect("reset");
    running.shutdown.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_numbers_are_published_to_cloudwatch_and_dogstatsd() {
    let Some(moto) = moto_url() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let install = format!("t{}", vmfleet::store::short_id());
    let namespace = format!("vmfleet-{install}");
    let statsd = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("udp");
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).expect("dir");
    std::fs::write(policies.join("pools.yaml"), "pools:\n  - {executor: machine, min_idle: 1}\n").expect("policy");
    let text = config_text(
        dir.path(),
        &moto,
        &install,
        &format!(
            "policies_dir: {}\nmetrics_out:\n  cloudwatch: {{namespace: {namespace}, interval: 200ms}}\n  dogstatsd: {{address: '{}', tags: ['env:test'], interval: 200ms}}\n",
            policies.display(),
            statsd.local_addr().expect("addr")
        ),
    );
    let mut config = vmfleet::config::Config::parse(&text, "test", Vec::<(String, String)>::new()).expect("config");
    config.provider.local.agent_program = Some(env!("CARGO_BIN_EXE_vmfleet").into());
    let running = vmfleet::server::start(config, None).await.expect("start");
    let fleet = running.fleet.clone();

    let statsd = &statsd;
    let line = common::eventually(30, || async move {
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(1), statsd.recv(&mut buf)).await.ok()?.ok()?;
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        text.lines().find(|l| l.starts_with("circle.vm-service.vms.idle:1|g|")).map(String::from)
    })
    .await;
    assert_eq!(line, "circle.vm-service.vms.idle:1|g|#pool:machine/default/medium,env:test");

    let cw = fleet.aws().await.cloudwatch().clone();
    let metrics = common::eventually(30, || async {
        let out = cw.list_metrics().namespace(&namespace).send().await.ok()?;
        let names: Vec<(String, usize)> = out
            .metrics()
            .iter()
            .map(|m| (m.metric_name().unwrap_or_default().to_string(), m.dimensions().len()))
            .collect();
        (names.iter().any(|(n, d)| n == "VmsIdle" && *d == 1)).then_some(names)
    })
    .await;
    for want in ["TasksWaiting", "VmsIdle", "VmsBusy", "WarmTarget"] {
        assert!(metrics.iter().any(|(n, d)| n == want && *d == 1), "{want} per pool: {metrics:?}");
        assert!(metrics.iter().any(|(n, d)| n == want && *d == 0), "{want} fleet-wide: {metrics:?}");
    }
    fleet.reset().await.expect("reset");
    running.shutdown.trigger();
}
