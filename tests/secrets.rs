//! Secrets for jobs end to end, on both backends: project variables, a restricted context and
//! an SSH key reach the job that may have them, masked in its output, and are nowhere readable
//! else (database file, `pg_dump`, server log, API); a key rotation keeps them usable.
#![expect(clippy::tests_outside_test_module, reason = "integration tests live in tests/, not in a cfg(test) module")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::serve::{serve_as, serve_with, Server};
use vmfleet::secrets::{Cipher, MASK};
use vmfleet::store::Store;

const CONFIG: &str = r#"
version: 2.1
jobs:
  deploy:
    machine: true
    steps:
      - add_ssh_keys:
          fingerprints:
            - "MD5_FINGERPRINT"
      - run:
          name: use the secrets
          command: |
            echo "token=$DEPLOY_TOKEN project=$PROJECT_VAR"
            # The config holds hashes, not the values: it is stored with the job.
            h() { printf %s "$1" | sha256sum | cut -c1-32; }
            [ "$(h "$DEPLOY_TOKEN")" = TOKEN_HASH ] && [ "$(h "$PROJECT_VAR")" = PROJECT_HASH ] && echo SECRETS-MATCH
            v="$DEPLOY_TOKEN"; printf 'split=%s' "${v:0:9}"; sleep 1; printf '%s\n' "${v:9}"
            stat -c 'mode %a' ~/.ssh/id_rsa_*
            ssh-keygen -l -E md5 -f ~/.ssh/id_rsa_*
            cat ~/.ssh/config
            cat ~/.ssh/id_rsa_*
workflows:
  release:
    jobs:
      - deploy:
          context: deploy
"#;

/// The values the test sets, and where they must not show.
struct Values {
    token: String,
    project: String,
    key: String,
}

impl Values {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("k");
        let ok = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&path).status();
        assert!(ok.expect("ssh-keygen").success());
        Self {
            token: format!("tok-{}-{}", vmfleet::store::short_id(), vmfleet::store::short_id()),
            project: format!("proj-{}", vmfleet::store::short_id()),
            key: std::fs::read_to_string(&path).expect("key"),
        }
    }

    /// What must never appear: each value, and each line of the key's body.
    fn needles(&self) -> Vec<String> {
        let mut v = vec![self.token.clone(), self.project.clone()];
        // The body's first line is the same in every unencrypted ed25519 key (the VMs' own keys too).
        v.extend(
            self.key.lines().filter(|l| !l.starts_with("-----")).skip(1).filter(|l| l.len() >= 16).map(str::to_string),
        );
        v
    }

    fn assert_absent(&self, what: &str, haystack: &[u8]) {
        let text = String::from_utf8_lossy(haystack);
        for n in self.needles() {
            assert!(!text.contains(&n), "{what} holds a secret value readable ({} bytes searched)", haystack.len());
            let bytes = n.as_bytes();
            assert!(!haystack.windows(bytes.len()).any(|w| w == bytes), "{what} holds a secret value");
        }
    }
}

fn sha256(s: &str) -> String {
    vmfleet::auth::hash_token(s)[..32].to_string()
}

fn pg_dump() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("bin/pg_dump")).filter(|p| p.exists()).collect())
        .unwrap_or_default();
    found.sort();
    found.pop().unwrap_or_else(|| "pg_dump".into())
}

fn sqlite_files(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for name in ["vmfleet.db", "vmfleet.db-wal", "vmfleet.db-shm"] {
        if let Ok(b) = std::fs::read(dir.join(name)) {
            all.extend(b);
        }
    }
    assert!(!all.is_empty(), "the database file is where the test looks");
    all
}

fn out(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Runs the whole scenario against `s`; `db` reads what the database holds on disk (the
/// SQLite files, or a `pg_dump`), `url` opens the store.
async fn scenario(s: &Server, db: &dyn Fn() -> Vec<u8>, url: &str) {
    let v = Values::new();
    let ok = |args: &[&str], stdin: Option<&str>| {
        let o = s.cli_in(args, stdin);
        assert!(o.status.success(), "vmfleet {args:?}: {}", out(&o));
        out(&o)
    };
    let mut shown = String::new();
    shown += &ok(&["contexts", "create", "deploy", "--project", "gh/acme/a"], None);
    shown += &ok(&["contexts", "env", "set", "deploy", "DEPLOY_TOKEN"], Some(&format!("{}\n", v.token)));
    shown += &ok(&["projects", "env", "set", "gh/acme/a", "PROJECT_VAR"], Some(&v.project));
    shown += &ok(&["projects", "ssh-keys", "add", "gh/acme/a", "--host", "git.example.com"], Some(&v.key));
    let keys: serde_json::Value =
        serde_json::from_str(&ok(&["projects", "ssh-keys", "list", "gh/acme/a", "--json"], None)).expect("json");
    let md5 = keys[0]["md5"].as_str().expect("md5").to_string();
    let sha = keys[0]["fingerprint"].as_str().expect("sha256").to_string();
    assert!(sha.starts_with("SHA256:") && keys[0]["host"] == "git.example.com", "{keys}");

    // What the API shows: names and hints.
    let listed = ok(&["projects", "env", "list", "gh/acme/a", "--json"], None);
    let last4 = &v.project[v.project.len() - 4..];
    assert!(listed.contains("PROJECT_VAR") && listed.contains(&format!("xxxx{last4}")), "{listed}");
    let ctx = ok(&["contexts", "show", "deploy", "--json"], None);
    assert!(ctx.contains("DEPLOY_TOKEN") && ctx.contains("gh/acme/a"), "{ctx}");
    shown += &listed;
    shown += &ctx;

    let config = s.dir.path().join("config.yml");
    let text = CONFIG
        .replace("MD5_FINGERPRINT", &md5)
        .replace("TOKEN_HASH", &sha256(&v.token))
        .replace("PROJECT_HASH", &sha256(&v.project));
    std::fs::write(&config, &text).expect("config");
    let config = config.display().to_string();
    let run = |project: &str| s.cli(&["run", &config, "--job", "deploy", "--project", project]);

    let first = run("gh/acme/a");
    let text_out = out(&first);
    assert_eq!(first.status.code(), Some(0), "{text_out}");
    assert!(text_out.contains(&format!("token={MASK} project={MASK}")), "{text_out}");
    assert!(text_out.contains("SECRETS-MATCH"), "the job got the values: {text_out}");
    assert!(text_out.contains(&format!("split={MASK}")), "a value split across output chunks is masked: {text_out}");
    assert!(text_out.contains("mode 600"), "{text_out}");
    assert!(text_out.contains(&format!("MD5:{md5}")), "the key on the VM is the project's: {text_out}");
    assert!(
        text_out.contains("Host git.example.com") && text_out.contains(&format!("added SSH key {sha}")),
        "{text_out}"
    );
    shown += &text_out;

    // Project B may not use the context: refused before anything is queued.
    let jobs_before = s.json(&["jobs", "list", "--json"]).as_array().map_or(0, Vec::len);
    let refused = run("gh/acme/b");
    let why = out(&refused);
    assert_eq!(refused.status.code(), Some(2), "{why}");
    assert!(why.contains("context deploy is restricted to gh/acme/a; project gh/acme/b may not use it"), "{why}");
    assert_eq!(s.json(&["jobs", "list", "--json"]).as_array().map_or(0, Vec::len), jobs_before, "nothing queued");
    let store = Store::open(url, 2).await.expect("store");
    let tasks = store.tasks(None, 1000).await.expect("tasks");
    assert!(!tasks.is_empty() && tasks.iter().all(|t| t.project == "gh/acme/a"), "no VM asked for for project B");
    shown += &why;

    let jobs = s.json(&["jobs", "list", "--json"]);
    let number = jobs[0]["number"].to_string();
    shown += &ok(&["jobs", "show", &number, "--json"], None);
    shown += &ok(&["jobs", "logs", &number], None);

    // Rotation: every value re-sealed; the old key opens none; jobs still get them.
    let key_file = s.dir.path().join("secrets.key");
    let old = Cipher::from_text(&std::fs::read_to_string(&key_file).expect("key file")).expect("old key");
    shown += &ok(&["secrets", "rotate-key"], None);
    let new = Cipher::from_text(&std::fs::read_to_string(&key_file).expect("key file")).expect("new key");
    assert_ne!(old.id(), new.id());
    assert!(!key_file.with_extension("previous").exists(), "the old key is not kept");
    let rows = store.all_secrets().await.expect("rows");
    assert_eq!(rows.len(), 3, "two variables and a key");
    for r in &rows {
        assert_eq!(r.key_id, new.id());
        assert!(old.open(&r.kind, &r.owner, &r.name, &r.sealed).is_err(), "{} opens under the old key", r.name);
        assert!(new.open(&r.kind, &r.owner, &r.name, &r.sealed).is_ok(), "{} opens under the new key", r.name);
    }
    assert_eq!(store.secrets_key_id().await.expect("key id").as_deref(), Some(new.id()));
    let again = run("gh/acme/a");
    let again_out = out(&again);
    assert!(again.status.success() && again_out.contains("SECRETS-MATCH"), "{again_out}");
    shown += &again_out;

    v.assert_absent("the CLI's and API's output", shown.as_bytes());
    v.assert_absent("the server log", s.log().as_bytes());
    v.assert_absent("the database", &db());
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_reach_their_job_masked_and_nowhere_else_on_sqlite() {
    let s = serve_with("timeouts:\n  ssh_connect: 30s\n  vm_start: 60s\n");
    let dir = s.dir.path().to_path_buf();
    let url = format!("sqlite:{}", dir.join("vmfleet.db").display());
    scenario(&s, &|| sqlite_files(&dir), &url).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_reach_their_job_masked_and_nowhere_else_on_postgres() {
    let Some(url) = common::fresh_pg_url().await else { return };
    let token = vmfleet::auth::generate_token();
    let extra = format!(
        "timeouts:\n  ssh_connect: 30s\n  vm_start: 60s\ndatabase:\n  url: {url}\nauth:\n  tokens:\n    - name: admin\n      \
         sha256: {}\n      scopes: [admin]\n",
        vmfleet::auth::hash_token(&token)
    );
    let s = serve_as(&extra, Some(token));
    let dump = |url: String| {
        move || {
            let plain = url.split('?').next().unwrap_or(&url);
            let o = Command::new(pg_dump()).arg("--dbname").arg(plain).output().expect("pg_dump");
            assert!(o.status.success(), "pg_dump: {}", String::from_utf8_lossy(&o.stderr));
            assert!(
                String::from_utf8_lossy(&o.stdout).contains("CREATE TABLE public.secrets"),
                "the dump is of our database"
            );
            o.stdout
        }
    };
    scenario(&s, &dump(url.clone()), &url).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn only_secrets_and_admin_tokens_touch_secrets_and_bad_input_is_named() {
    let a = common::harness::api().await;
    let agent = a.token("ci", "agent").await;
    let operator = a.token("ops", "operator").await;
    let keeper = a.token("vault", "secrets").await;
    let path = "/api/v1/projects/gh%2Facme%2Fa/env/API_KEY";
    let body = r#"{"value": "value-of-the-api-key"}"#;
    for t in [&agent, &operator] {
        let (st, v) = a.call("PUT", path, Some(t), Some(body)).await;
        assert_eq!(st, 403, "{v}");
        let (st, _) = a.call("GET", "/api/v1/projects/gh%2Facme%2Fa/env", Some(t), None).await;
        assert_eq!(st, 403);
        let (st, _) = a.call("GET", "/api/v1/contexts", Some(t), None).await;
        assert_eq!(st, 403);
    }
    let (st, v) = a.call("PUT", path, Some(&keeper), Some(body)).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v[0]["value"], "xxxx-key", "{v}");
    assert!(!v.to_string().contains("value-of-the-api-key"));
    let (st, v) = a.call("PUT", "/api/v1/projects/gh%2Facme%2Fa/env/1BAD", Some(&keeper), Some(body)).await;
    assert_eq!(st, 400);
    assert!(
        v["error"]["message"].as_str().unwrap_or_default().contains("\"1BAD\" is not an environment variable name"),
        "{v}"
    );
    let (st, v) = a.call("PUT", path, Some(&keeper), Some(r#"{"value": ""}"#)).await;
    assert_eq!(st, 400, "{v}");
    let (st, v) = a
        .call("POST", "/api/v1/projects/gh%2Facme%2Fa/ssh-keys", Some(&keeper), Some(r#"{"private_key": "nope"}"#))
        .await;
    assert_eq!(st, 400);
    assert!(v["error"]["message"].as_str().unwrap_or_default().contains("not an unencrypted SSH private key"), "{v}");
    let (st, v) = a.call("PUT", "/api/v1/contexts/missing/env/A", Some(&keeper), Some(body)).await;
    assert_eq!(st, 404, "{v}");
    let (st, v) = a.call("POST", "/api/v1/contexts", Some(&keeper), Some(r#"{"name": "a/b"}"#)).await;
    assert_eq!(st, 400, "{v}");
    let (st, _) = a.call("POST", "/api/v1/contexts", Some(&keeper), Some(r#"{"name": "org"}"#)).await;
    assert_eq!(st, 201);
    let (st, v) = a.call("POST", "/api/v1/contexts", Some(&keeper), Some(r#"{"name": "org"}"#)).await;
    assert_eq!(st, 409, "{v}");
    // The audit trail names what changed, never the value.
    let events = a.running.fleet.store.audit_events(50).await.expect("audit");
    let text = format!("{events:?}");
    assert!(text.contains("project.env.set") && !text.contains("value-of-the-api-key"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_starting_together_on_one_data_directory_share_one_key_and_a_stranger_is_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = common::sqlite_store(dir.path()).await;
    let file = dir.path().join("secrets.key");
    let loads = (0..4).map(|_| vmfleet::secrets::Secrets::load(store.clone(), "install", None, &file));
    let loaded = futures_util::future::join_all(loads).await;
    let ids: std::collections::BTreeSet<String> =
        loaded.into_iter().map(|r| r.expect("every replica starts").cipher().id().to_string()).collect();
    assert_eq!(ids.len(), 1, "one key: {ids:?}");
    // Another key, or a missing key file once values may exist, is refused with both named.
    let stranger = Cipher::generate().to_text();
    let err =
        vmfleet::secrets::Secrets::load(store.clone(), "install", Some(&stranger), &file).await.expect_err("refused");
    assert!(err.to_string().contains("give every replica the same key"), "{err}");
    std::fs::remove_file(&file).expect("rm");
    let err = vmfleet::secrets::Secrets::load(store.clone(), "install", None, &file).await.expect_err("refused");
    assert!(err.to_string().contains("is missing"), "{err}");
    assert!(!file.exists(), "no new key is made for an installation that has one");
}
