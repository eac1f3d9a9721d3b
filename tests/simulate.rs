//! `vmfleet simulate` as an operator runs it: the clairvoyant bound and the warm hit rate in
//! the table and in `--json`.
#![expect(clippy::tests_outside_test_module, reason = "integration tests live in tests/, not in a cfg(test) module")]

use std::process::Command;

fn simulate(args: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("dir");
    let trace = dir.path().join("trace.csv");
    // Three tasks of one build, then one an hour later: 600 s, 600 s, 300 s and 120 s.
    std::fs::write(
        &trace,
        "submitted_at,task_id,build_id,project,executor,resource_class,docker_layer_caching,duration_s,status,node_index,parallelism\n\
         2019-10-07T09:00:00Z,1,1,a/b,machine,medium,false,600,passed,0,3\n\
         2019-10-07T09:00:00Z,2,1,a/b,machine,medium,false,600,passed,1,3\n\
         2019-10-07T09:00:00Z,3,1,a/b,machine,medium,false,300,passed,2,3\n\
         2019-10-07T10:00:00Z,4,2,a/b,machine,medium,false,120,passed,0,1\n",
    )
    .expect("trace");
    let out = Command::new(env!("CARGO_BIN_EXE_vmfleet"))
        .arg("simulate")
        .arg("--trace")
        .arg(&trace)
        .args(["--boot-time", "60s", "--boot-time-p95", "60s", "--capacity-errors", "0", "--compare", "static"])
        .args(args)
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn every_policy_is_measured_against_the_clairvoyant_bound() {
    let v: serde_json::Value = serde_json::from_str(&simulate(&["--json"])).expect("json");
    let policies = v["policies"].as_object().expect("policies");
    assert!(policies.len() >= 2, "vmfleet and the static baseline: {v}");
    // Each task's duration and one fixed 60 s boot.
    let bound = (600.0 + 600.0 + 300.0 + 120.0 + 4.0 * 60.0) / 3600.0;
    for (name, o) in policies {
        let f = |k: &str| o[k].as_f64().unwrap_or_else(|| panic!("{name}: no {k} in {o}"));
        assert!((f("oracle_vm_hours") - bound).abs() < 1e-6, "{name}: {o}");
        assert!((f("oracle_cost") - bound * 0.096).abs() < 1e-6, "{name}: priced as m5.large: {o}");
        // With a fixed boot, one VM per task and no DLC, nothing can pay less than the bound.
        assert!(f("vm_hours_vs_oracle") >= 1.0 - 1e-6, "{name}: {o}");
        assert!((f("vm_hours_vs_oracle") - f("vm_hours") / bound).abs() < 1e-6, "{name}: {o}");
        assert!((f("cost_vs_oracle") - f("cost") / f("oracle_cost")).abs() < 1e-6, "{name}: {o}");
        let hit = f("warm_hit_rate");
        assert!((0.0..=1.0).contains(&hit), "{name}: {o}");
        if f("p50_queue_s") >= 60.0 {
            assert!(hit < 0.5, "{name}: most tasks waited a boot, so most found no ready VM: {o}");
        }
    }
}

#[test]
fn the_table_names_the_bound_and_the_ratios() {
    let text = simulate(&[]);
    assert!(text.contains("clairvoyant bound"), "{text}");
    for column in ["VM-h/b", "cost/b", "warm hit"] {
        assert!(text.contains(column), "no {column} column: {text}");
    }
    let sweep = simulate(&["--sweep"]);
    assert!(sweep.contains("x bound") && sweep.contains("warm hit"), "frontiers carry the ratios: {sweep}");
}
