//! `vmfleet projects`, `vmfleet contexts`, `vmfleet secrets`: values go in on standard input,
//! never as arguments, and only names and hints come back.

use std::io::Read as _;

use super::*;
use crate::api::secrets::ContextView;
use crate::client::segment;
use crate::secrets::{SshKeyView, VarView};

/// Standard input, less one trailing newline (`echo value |`, a file ending in one).
fn stdin_value(what: &str) -> anyhow::Result<String> {
    let mut s = String::new();
    std::io::stdin()
        .take(1 << 20)
        .read_to_string(&mut s)
        .with_context(|| format!("reading {what} from standard input"))?;
    if let Some(t) = s.strip_suffix('\n') {
        s = t.strip_suffix('\r').unwrap_or(t).to_string();
    }
    if s.is_empty() {
        bail!("{what}: nothing on standard input");
    }
    Ok(s)
}

fn vars_table(vars: &[VarView], json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(&vars);
    }
    table(
        &["Name", "Value", "Updated"],
        vars.iter().map(|v| vec![v.name.clone(), v.value.clone(), v.updated_at.clone()]).collect(),
    );
    Ok(())
}

fn keys_table(keys: &[SshKeyView], json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(&keys);
    }
    table(
        &["Fingerprint", "MD5", "Host", "Added"],
        keys.iter()
            .map(|k| {
                let host = if k.host.is_empty() { "(every host)".into() } else { k.host.clone() };
                vec![k.fingerprint.clone(), k.md5.clone(), host, k.created_at.clone()]
            })
            .collect(),
    );
    Ok(())
}

/// Variables of a project (`base` its `/api/v1/projects/P`) or a context.
async fn vars(api: &Client, base: &str, c: &VarsCmd, context: bool) -> anyhow::Result<()> {
    let path = |owner: &str| {
        if context {
            format!("/api/v1/contexts/{}", segment(owner))
        } else {
            format!("{base}/{}", segment(owner))
        }
    };
    let list = |v: serde_json::Value| -> anyhow::Result<Vec<VarView>> {
        Ok(if context { serde_json::from_value::<ContextView>(v)?.variables } else { serde_json::from_value(v)? })
    };
    match c {
        VarsCmd::Set { owner, name } => {
            let value = stdin_value(name)?;
            let v: serde_json::Value =
                api.put(&format!("{}/env/{}", path(owner), segment(name)), &json!({"value": value})).await?;
            let now = list(v)?;
            let hint = now.iter().find(|x| x.name == *name).map(|x| x.value.clone()).unwrap_or_default();
            println!("{name} set ({hint})");
        }
        VarsCmd::Unset { owner, name } => {
            let _: serde_json::Value = api.delete(&format!("{}/env/{}", path(owner), segment(name))).await?;
            println!("{name} removed");
        }
        VarsCmd::List { owner, json } => {
            let vars = if context {
                api.get::<ContextView>(&path(owner)).await?.variables
            } else {
                api.get::<Vec<VarView>>(&format!("{}/env", path(owner))).await?
            };
            vars_table(&vars, json.json)?;
        }
    }
    Ok(())
}

pub(super) async fn projects(api: &Client, c: &ProjectsCmd) -> anyhow::Result<()> {
    match c {
        ProjectsCmd::Env(v) => vars(api, "/api/v1/projects", v, false).await,
        ProjectsCmd::SshKeys(SshKeysCmd::Add { project, host }) => {
            let key = stdin_value("the private key")?;
            let path = format!("/api/v1/projects/{}/ssh-keys", segment(project));
            let k: SshKeyView = api.post(&path, &json!({"private_key": key, "host": host})).await?;
            println!(
                "added {} (MD5 {}) for {}",
                k.fingerprint,
                k.md5,
                if k.host.is_empty() { "every host" } else { &k.host }
            );
            Ok(())
        }
        ProjectsCmd::SshKeys(SshKeysCmd::List { project, json }) => {
            let keys: Vec<SshKeyView> = api.get(&format!("/api/v1/projects/{}/ssh-keys", segment(project))).await?;
            keys_table(&keys, json.json)
        }
        ProjectsCmd::SshKeys(SshKeysCmd::Remove { project, fingerprint }) => {
            let path = format!("/api/v1/projects/{}/ssh-keys/{}", segment(project), segment(fingerprint));
            let _: Vec<SshKeyView> = api.delete(&path).await?;
            println!("removed {fingerprint}");
            Ok(())
        }
    }
}

pub(super) async fn contexts(api: &Client, c: &ContextsCmd) -> anyhow::Result<()> {
    let show = |c: &ContextView| {
        let projects = if c.projects.is_empty() { "every project".to_string() } else { c.projects.join(", ") };
        vec![c.name.clone(), projects, c.created_at.clone()]
    };
    match c {
        ContextsCmd::Create { name, projects } => {
            let c: ContextView = api.post("/api/v1/contexts", &json!({"name": name, "projects": projects})).await?;
            table(&["Context", "Projects", "Created"], vec![show(&c)]);
        }
        ContextsCmd::List(json) => {
            let list: Vec<ContextView> = api.get("/api/v1/contexts").await?;
            if json.json {
                print_json(&list)?;
            } else {
                table(&["Context", "Projects", "Created"], list.iter().map(show).collect());
            }
        }
        ContextsCmd::Show { name, json } => {
            let c: ContextView = api.get(&format!("/api/v1/contexts/{}", segment(name))).await?;
            if json.json {
                print_json(&c)?;
            } else {
                table(&["Context", "Projects", "Created"], vec![show(&c)]);
                vars_table(&c.variables, false)?;
            }
        }
        ContextsCmd::Delete { name } => {
            api.delete_empty(&format!("/api/v1/contexts/{}", segment(name))).await?;
            println!("context {name} deleted");
        }
        ContextsCmd::Env(v) => vars(api, "", v, true).await?,
    }
    Ok(())
}

pub(super) async fn secrets(api: &Client, c: &SecretsCmd) -> anyhow::Result<()> {
    let SecretsCmd::RotateKey { new_key_stdin } = c;
    let body = if *new_key_stdin { json!({"new_key": stdin_value("the new key")?}) } else { json!({}) };
    let v: serde_json::Value = api.post("/api/v1/secrets/rotate-key", &body).await?;
    println!("every value is sealed under key {} now ({} values)", v["key_id"].as_str().unwrap_or("?"), v["values"]);
    Ok(())
}
