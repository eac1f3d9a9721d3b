//! End to end: the real `vmfleet serve`, the CLI, and OpenSSH's `ssh` client.
#![expect(clippy::tests_outside_test_module, reason = "integration tests live in tests/, not in a cfg(test) module")]

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::serve::{serve_with, Server, BIN};

fn serve() -> Server {
    serve_with("timeouts:\n  ssh_connect: 30s\n  vm_start: 60s\n")
}

impl Server {
    /// Requests a task, waits for its VM, writes its key; returns (task, port, key path).
    fn request(&self, project: &str, dlc: bool) -> (serde_json::Value, u16, std::path::PathBuf) {
        let key = self.dir.path().join(format!("key-{}", common_id()));
        let mut args = vec!["tasks", "request", "--project", project, "--wait", "--json", "--key-file"];
        let key_s = key.display().to_string();
        args.push(&key_s);
        if dlc {
            args.push("--dlc");
        }
        let t = self.json(&args);
        assert_eq!(t["state"], "assigned", "{t}");
        let port = t["ssh"]["port"].as_u64().expect("port") as u16;
        (t, port, key)
    }
}

fn common_id() -> String {
    vmfleet::store::short_id()
}

fn openssh(key: &Path, port: u16, command: &str) -> Output {
    Command::new("ssh")
        .args(["-i", &key.display().to_string(), "-p", &port.to_string()])
        .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes"])
        .args(["-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10"])
        .arg("circleci@127.0.0.1")
        .arg(command)
        .output()
        .expect("OpenSSH ssh client")
}

#[test]
fn cli_request_openssh_login_release() {
    let s = serve();
    let (t, port, key) = s.request("gh/acme/app", false);
    let out = openssh(&key, port, "echo hi");
    assert!(out.status.success(), "ssh failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    let out = openssh(&key, port, "exit 5");
    assert_eq!(out.status.code(), Some(5), "exit status comes back through ssh");

    // A key that is not the VM's is refused.
    let other = s.dir.path().join("other");
    let gen = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()
        .expect("ssh-keygen");
    assert!(gen.success());
    assert!(!openssh(&other, port, "true").status.success(), "a foreign key must be refused");

    let status = s.cli_ok(&["status"]);
    assert!(status.contains("1 running"), "{status}");
    let id = t["id"].as_str().expect("id");
    s.cli_ok(&["tasks", "release", id]);
    let vm = t["vm_id"].as_str().expect("vm");
    for _ in 0..100 {
        if s.json(&["vms", "show", vm, "--json"])["state"] == "terminated" {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(s.json(&["vms", "show", vm, "--json"])["state"], "terminated");
    assert!(!openssh(&key, port, "true").status.success(), "the VM is destroyed after release");
    assert!(!s.dir.path().join("local/instances").join(format!("local-{vm}")).exists());
}

#[test]
fn dlc_volume_persists_within_a_project_only() {
    let s = serve();
    let run = |project: &str, cmd: &str| {
        let (t, port, key) = s.request(project, true);
        let out = openssh(&key, port, cmd);
        s.cli_ok(&["tasks", "release", t["id"].as_str().expect("id")]);
        // Wait until the volume is free again.
        for _ in 0..100 {
            let vols = s.json(&["volumes", "list", "--json"]);
            if vols.as_array().expect("list").iter().all(|v| v["state"] == "available") {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        (t, String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let (t1, _) = run("proj-a", "echo layer > \"$VMFLEET_DLC_DIR/cache\"");
    let (t2, seen) = run("proj-a", "cat \"$VMFLEET_DLC_DIR/cache\" 2>/dev/null || echo absent");
    assert_eq!(seen, "layer", "same project sees its cache");
    assert_eq!(t1["volume_id"], t2["volume_id"]);
    let (t3, seen) = run("proj-b", "cat \"$VMFLEET_DLC_DIR/cache\" 2>/dev/null || echo absent");
    assert_eq!(seen, "absent", "another project never sees it");
    assert_ne!(t3["volume_id"], t1["volume_id"]);
    let vols = s.json(&["volumes", "list", "--json"]);
    assert_eq!(vols.as_array().expect("list").len(), 2);
}

#[test]
fn config_check_names_key_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("bad.yaml");
    std::fs::write(&f, "listen: 127.0.0.1:3001\ntimeouts:\n  vm_start: 300s\n  ssh_conect: 10s\n").expect("write");
    let out = Command::new(BIN).arg("--config").arg(&f).args(["config", "check"]).output().expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml:4") && err.contains("ssh_conect"), "{err}");
    std::fs::write(&f, "listen: 127.0.0.1:3001\n").expect("write");
    let out = Command::new(BIN).arg("--config").arg(&f).args(["config", "check"]).output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Hostile CircleCI configs, each a dozen lines or a few megabytes: (file, what the error says).
fn hostile_configs(dir: &Path) -> Vec<(std::path::PathBuf, &'static str)> {
    let job = "jobs:\n  build:\n    machine: true\n    steps: [checkout]\n";
    let aliases = |first: String, levels: usize| {
        let mut t = format!("version: 2.1\nx0: &a0 {first}\n");
        for i in 1..levels {
            t += &format!("x{i}: &a{i} [{}]\n", vec![format!("*a{}", i - 1); 10].join(", "));
        }
        t + job
    };
    let mut commands = String::from("version: 2.1\ncommands:\n  c0:\n    steps: [{run: echo}]\n");
    for i in 1..10 {
        commands += &format!("  c{i}:\n    steps: [{}]\n", vec![format!("c{}", i - 1); 10].join(", "));
    }
    commands += "jobs:\n  build:\n    machine: true\n    steps: [c9]\n";
    let mut matrix = String::from("version: 2.1\njobs:\n  build:\n    machine: true\n    parameters:\n");
    let mut axes = String::new();
    for i in 0..10 {
        matrix += &format!("      p{i}: {{type: string}}\n");
        axes += &format!("              p{i}: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]\n");
    }
    matrix += "    steps: [checkout]\nworkflows:\n  w:\n    jobs:\n      - build:\n          matrix:\n            parameters:\n";
    matrix += &axes;
    let mut block = String::from("version: 2.1\n");
    for i in 0..100 {
        block += &format!("{}a:\n", "  ".repeat(i));
    }
    let keys: String = (0..250_000).map(|i| format!("  k{i}: 1\n")).collect();
    let shapes = [
        ("laughs", aliases("[lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]".into(), 10), "past 200000 nodes"),
        ("long-laughs", aliases(format!("'{}'", "x".repeat(60_000)), 5), "bytes of text"),
        (
            "flow-depth",
            format!("version: 2.1\n{job}x: {}{}\n", "[".repeat(100_000), "]".repeat(100_000)),
            "nest deeper",
        ),
        ("block-depth", block + job, "nest deeper than 64"),
        ("huge-scalar", format!("version: 2.1\n{job}x: '{}'\n", "x".repeat(5 << 20)), "the limit is 4194304 bytes"),
        ("many-keys", format!("version: 2.1\n{job}x:\n{keys}"), "past 200000 nodes"),
        ("commands", commands, "expands past 500000"),
        ("matrix", matrix, "the limit is 1000"),
    ];
    shapes
        .into_iter()
        .map(|(name, text, says)| {
            let f = dir.join(format!("{name}.yml"));
            std::fs::write(&f, text).expect("write");
            (f, says)
        })
        .collect()
}

#[test]
fn hostile_configs_get_a_clear_error_within_a_memory_bound_and_the_server_keeps_serving() {
    let s = serve();
    let files = hostile_configs(s.dir.path());
    for (f, says) in &files {
        let name = f.file_name().expect("name").to_string_lossy().to_string();
        // 1 GiB of address space: the unbounded parser needed tens of gigabytes for these.
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -v 1048576; exec {BIN} jobs validate {}", f.display()))
            .output()
            .expect("validate");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(text.contains(&name) && text.contains(says), "{name}: {text}");
        assert!(text.contains("limit"), "{name} names the limit: {text}");
        if !name.starts_with("matrix") {
            assert_eq!(out.status.code(), Some(2), "{name}: {text}");
        }
    }
    // The same files through the API, all at once, while other requests are answered.
    let job = |f: &Path| {
        let job = if f.ends_with("matrix.yml") { "build-0-0-0-0-0-0-0-0-0-0" } else { "build" };
        let f = f.display().to_string();
        s.cli(&["run", &f, "--job", job, "--project", "gh/acme/hostile"])
    };
    std::thread::scope(|scope| {
        let runs: Vec<_> = files.iter().map(|(f, says)| (scope.spawn(move || job(f)), *says)).collect();
        for _ in 0..5 {
            s.cli_ok(&["status"]);
        }
        for (run, says) in runs {
            let out = run.join().expect("run");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success() && err.contains(says), "{says}: {err}");
        }
    });
    s.cli_ok(&["status"]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.child.id())).expect("proc status");
    let peak_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    assert!(peak_kb < 512 * 1024, "serve peaked at {peak_kb} kB");
}

#[test]
fn images_register_from_a_packer_manifest_promote_and_roll_back() {
    let s = serve();
    let manifest = s.dir.path().join("packer-manifest.json");
    let write = |run: &str, amis: &str| {
        let text = format!(
            r#"{{"builds": [{{"name": "linux", "builder_type": "amazon-ebs", "artifact_id": "{amis}",
                 "packer_run_uuid": "{run}", "custom_data": {{}}}}], "last_run_uuid": "{run}"}}"#
        );
        std::fs::write(&manifest, text).expect("manifest");
    };
    let m = manifest.display().to_string();
    write("run-1", "us-east-1:ami-0a1b2c3d,us-west-2:ami-0b2c3d4e");
    let out =
        s.cli_ok(&["images", "register", "--packer-manifest", &m, "--name", "ubuntu-2004", "--version", "202010-01"]);
    assert!(out.contains("registered ubuntu-2004:202010-01 (2 regions"), "{out}");
    write("run-2", "us-east-1:ami-0e1e2e3e");
    s.cli_ok(&["images", "register", "--packer-manifest", &m, "--name", "ubuntu-2004", "--version", "202011-01"]);
    s.cli_ok(&["images", "promote", "ubuntu-2004", "202010-01"]);
    s.cli_ok(&["images", "promote", "ubuntu-2004", "202011-01"]);
    let show = s.json(&["images", "show", "ubuntu-2004", "--json"]);
    assert_eq!(show["aliases"]["ubuntu-2004"], "ubuntu-2004:202011-01");
    assert_eq!(show["versions"].as_array().expect("versions").len(), 2);
    s.cli_ok(&["images", "rollback", "ubuntu-2004"]);
    let show = s.json(&["images", "show", "ubuntu-2004", "--json"]);
    assert_eq!(show["aliases"]["ubuntu-2004"], "ubuntu-2004:202010-01");
    assert_eq!(show["history"].as_array().expect("history").len(), 3);
    // A broken manifest is refused with the file and the field, and nothing is registered.
    std::fs::write(
        &manifest,
        r#"{"builds": [{"name": "l", "builder_type": "amazon-ebs", "artifact_id": "us-east-1ami-0a1b2c3d"}]}"#,
    )
    .expect("manifest");
    let out = s.cli(&["images", "register", "--packer-manifest", &m, "--name", "bad", "--version", "1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("packer-manifest.json: builds[0].artifact_id"), "{err}");
    assert!(s.json(&["images", "list", "--json"])["images"]
        .as_array()
        .expect("images")
        .iter()
        .all(|i| i["name"] != "bad"));
}

/// A launch of one local VM, outside any `serve`.
fn local_spec(install: &str, vm: &str, public_key: &str) -> vmfleet_provisioner::LaunchSpec {
    vmfleet_provisioner::LaunchSpec {
        vm_id: vm.into(),
        install_id: install.into(),
        pool: "machine/default/medium".into(),
        image_id: "circleci-vm:test".into(),
        instance_type: "local".into(),
        fallback_instance_types: vec![],
        capacity: Default::default(),
        platform: vmfleet_provisioner::Platform::Linux,
        ssh_user: "circleci".into(),
        ssh_public_key: public_key.into(),
        tags: Default::default(),
        skip_lookup: false,
        hibernate: false,
    }
}

#[test]
fn gc_dry_run_explains_and_gc_reaps_only_our_orphans() {
    use vmfleet_provisioner::{local::LocalProvider, Provider};
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("vmfleet.yaml");
    std::fs::write(&config, format!("data_dir: {}\ninstall_id: gc-test\n", dir.path().display())).expect("config");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let provider = LocalProvider::new(dir.path().join("local"), BIN).expect("provider");
    let launch = |install: &str, vm: &str| {
        let spec =
            local_spec(install, vm, &vmfleet_provisioner::ssh::generate_keypair("k").expect("key").public_openssh);
        rt.block_on(provider.launch(&spec)).expect("launch").instance_id
    };
    let ours = launch("gc-test", "vm-orphan");
    let theirs = launch("someone-else", "vm-theirs");
    let gc = |args: &[&str]| {
        let out = Command::new(BIN).arg("--config").arg(&config).arg("gc").args(args).output().expect("gc");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let exists = |id: &str| dir.path().join("local/instances").join(id).exists();

    assert_eq!(gc(&["--dry-run"]).trim(), "nothing to collect", "young orphans are spared by the grace");
    let plan = gc(&["--dry-run", "--orphan-grace", "0s"]);
    assert!(
        plan.contains(&format!(
            "would terminate {ours}: instance {ours} is tagged with this installation but unknown to the store"
        )),
        "{plan}"
    );
    assert!(!plan.contains(&theirs), "another installation's instance is never named: {plan}");
    assert!(exists(&ours), "a dry run changes nothing");
    let done = gc(&["--orphan-grace", "0s"]);
    assert!(done.contains(&format!("will terminate {ours}")), "{done}");
    assert!(!exists(&ours), "the orphan is gone");
    assert!(exists(&theirs), "another installation's instance survives");
    assert_eq!(gc(&["--dry-run", "--orphan-grace", "0s"]).trim(), "nothing to collect");
    rt.block_on(provider.terminate(&[theirs])).expect("clean up");
}

#[test]
fn reset_refuses_while_tasks_run_then_leaves_nothing_tagged() {
    let s = serve();
    let (t, port, key) = s.request("gh/acme/app", true);
    assert!(openssh(&key, port, "true").status.success());
    let out = s.cli(&["reset", "--yes"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 tasks are waiting or running"), "{out:?}");
    // Without --yes and without a 'yes' on standard input, nothing happens.
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&s.config)
        .args(["reset", "--force"])
        .stdin(Stdio::null())
        .output()
        .expect("reset");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not confirmed"));
    assert!(openssh(&key, port, "true").status.success(), "still running");

    let report = s.cli_ok(&["reset", "--yes", "--force"]);
    assert!(report.contains("terminated 1 instances") && report.contains("deleted 1 volumes"), "{report}");
    assert!(report.contains("cleared 1 task, 1 volume and 1 VM records"), "{report}");
    assert!(!openssh(&key, port, "true").status.success(), "the VM is gone");
    let instances = s.dir.path().join("local/instances");
    assert_eq!(std::fs::read_dir(&instances).expect("dir").count(), 0, "no instance of ours is left");
    assert_eq!(std::fs::read_dir(s.dir.path().join("local/volumes")).expect("dir").count(), 0, "no volume left");
    assert!(s.json(&["vms", "list", "--json"]).as_array().expect("vms").is_empty());
    assert!(s.cli(&["tasks", "show", t["id"].as_str().expect("id")]).status.code() != Some(0));
    // The fleet works again afterwards.
    let (_, port, key) = s.request("gh/acme/app", false);
    assert!(openssh(&key, port, "true").status.success());
}

#[test]
fn local_vm_stops_keeping_its_disk_and_keys_and_starts_again() {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    use vmfleet_provisioner::{local::LocalProvider, Instance, InstanceState, Provider};
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let provider = LocalProvider::new(dir.path().join("local"), BIN).expect("provider");
    let keys = vmfleet_provisioner::ssh::generate_keypair("stop").expect("key");
    let key_file = dir.path().join("id");
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&key_file).expect("key file");
    std::io::Write::write_all(&mut f, keys.private_openssh.as_bytes()).expect("write key");
    let spec = local_spec("stop-test", "vm-stopper", &keys.public_openssh);
    let id = rt.block_on(provider.launch(&spec)).expect("launch").instance_id;
    let describe = || -> Instance {
        let all = rt.block_on(provider.describe("stop-test")).expect("describe");
        all.into_iter().find(|i| i.instance_id == id).expect("the VM is described")
    };
    let wait = |want: InstanceState| -> Instance {
        for _ in 0..200 {
            let i = describe();
            if i.state == want {
                return i;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{id} never reached {want:?}: {:?}", describe().state);
    };
    let first = wait(InstanceState::Running);
    let out = openssh(&key_file, first.ssh_port, "echo first-boot > marker && echo $PPID");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let vm_dir = provider.vm_dir(&id).expect("dir");
    let host_key_mode = std::fs::metadata(vm_dir.join("host_key")).expect("host key kept").permissions().mode();
    assert_eq!(host_key_mode & 0o777, 0o600);

    rt.block_on(provider.stop(std::slice::from_ref(&id), false)).expect("stop");
    let stopped = wait(InstanceState::Stopped);
    assert!(stopped.host.is_none(), "a stopped VM has no address");
    assert!(openssh(&key_file, first.ssh_port, "true").status.code() == Some(255), "nothing answers while stopped");
    rt.block_on(provider.stop(std::slice::from_ref(&id), false)).expect("stopping a stopped VM is success");

    rt.block_on(provider.start(std::slice::from_ref(&id))).expect("start");
    let again = wait(InstanceState::Running);
    assert_eq!(again.host_key, first.host_key, "the same host key after a start");
    let out = openssh(&key_file, again.ssh_port, "cat marker");
    assert!(out.status.success(), "the same key logs in: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "first-boot", "the disk survived the stop");
    rt.block_on(provider.start(std::slice::from_ref(&id))).expect("starting a running VM is success");

    rt.block_on(provider.terminate(std::slice::from_ref(&id))).expect("terminate");
    assert!(!vm_dir.exists());
    let missing = rt.block_on(provider.start(std::slice::from_ref(&id))).expect_err("gone");
    assert!(matches!(missing, vmfleet_provisioner::ProvisionError::NotFound(_)), "{missing}");
}

impl Server {
    /// `kill -9` of `serve`, then the same configuration started again.
    fn kill_9_and_restart(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
        self.child = Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(std::fs::OpenOptions::new().append(true).open(self.dir.path().join("serve.log")).expect("log"))
            .spawn()
            .expect("serve");
        for _ in 0..100 {
            if self.cli(&["status"]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("serve did not come back");
    }

    /// Live VMs: (id, state, instance).
    fn vms(&self) -> Vec<(String, String, Option<String>)> {
        let vms = self.json(&["vms", "list", "--json"]);
        vms.as_array()
            .expect("array")
            .iter()
            .map(|v| {
                let s = |k: &str| v[k].as_str().map(str::to_string);
                (s("id").expect("id"), s("state").expect("state"), s("instance_id"))
            })
            .collect()
    }

    fn wait_for(&self, what: &str, mut ok: impl FnMut(&[(String, String, Option<String>)]) -> bool) {
        for _ in 0..600 {
            if ok(&self.vms()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{what} never held: {:?}", self.vms());
    }
}

#[test]
fn kill_9_of_serve_while_the_stopped_tier_fills_and_starts_leaves_nothing_untracked() {
    use std::os::unix::fs::PermissionsExt;
    // An agent that takes a second to come up, as a VM's boot does, so that kills land while
    // VMs boot and start.
    let bin_dir = tempfile::tempdir().expect("tempdir");
    let agent = bin_dir.path().join("slow-agent");
    std::fs::write(&agent, format!("#!/bin/sh\nsleep 1\nexec {BIN} \"$@\"\n")).expect("agent");
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut s = serve_with(&format!(
        "timeouts:\n  ssh_connect: 30s\n  vm_start: 60s\nprovider:\n  local:\n    agent_program: {}\n\
         pools:\n  - {{executor: machine, min_idle: 0, max_instances: 6, stopped: {{min: 2}}}}\n",
        agent.display()
    ));
    let stopped = |v: &[(String, String, Option<String>)]| v.iter().filter(|(_, st, _)| st == "stopped").count();

    // Killed while the first VMs of the tier boot once (a stop takes milliseconds here).
    s.wait_for("a VM starting up", |v| v.iter().any(|(_, st, _)| st != "stopped"));
    s.kill_9_and_restart();
    s.wait_for("two stopped", |v| stopped(v) == 2 && v.len() == 2);

    // Killed while a task's request starts a stopped VM: the VM is `starting` until its agent
    // answers, a second after the start.
    let t = s.json(&["tasks", "request", "--project", "gh/acme/app", "--json"]);
    let id = t["id"].as_str().expect("id").to_string();
    let vm = t["vm_id"].as_str().expect("a stopped VM at once").to_string();
    assert!(s.vms().iter().any(|(v, st, _)| *v == vm && st == "starting"), "{:?}", s.vms());
    s.kill_9_and_restart();
    for _ in 0..600 {
        if s.json(&["tasks", "show", &id, "--json"])["state"] == "assigned" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Served, by the started VM or by whichever came up first (a VM of the tier's refill may
    // answer before it: then the started one joins the running warm pool).
    let t = s.json(&["tasks", "show", &id, "--json"]);
    assert_eq!(t["state"], "assigned", "{t}");
    let started = s.json(&["vms", "show", &vm, "--json"]);
    assert!(
        t["vm_id"].as_str() == Some(vm.as_str()) || matches!(started["state"].as_str(), Some("booting" | "ready")),
        "the started VM is neither the task's nor warm: {started}"
    );
    s.wait_for("the tier refilled and nothing half-done", |v| {
        stopped(v) == 2 && v.iter().all(|(_, st, _)| matches!(st.as_str(), "stopped" | "assigned" | "ready"))
    });

    // `vmfleet status` shows both tiers of the pool.
    let status = s.cli_ok(&["status"]);
    let header = status.lines().find(|l| l.starts_with("Pool")).expect("the pool table");
    let row = status.lines().find(|l| l.starts_with("machine/default/medium")).expect("the pool's row");
    let cols: Vec<&str> = header.split_whitespace().collect();
    let cells: Vec<&str> = row.split_whitespace().collect();
    let at = cols.iter().position(|c| *c == "stopped").expect("a stopped column");
    assert_eq!(cells[at], "2", "{status}");

    // One collector pass, then every instance on disk is a live VM's and every live VM has one.
    s.cli_ok(&["gc", "--orphan-grace", "0s"]);
    let on_disk: std::collections::BTreeSet<String> = std::fs::read_dir(s.dir.path().join("local/instances"))
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let tracked: std::collections::BTreeSet<String> = s.vms().into_iter().filter_map(|(_, _, i)| i).collect();
    assert_eq!(on_disk, tracked, "nothing untracked, nothing lost");
}
