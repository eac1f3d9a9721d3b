//! `vmfleet images`.

use super::*;

pub(super) async fn images(api: &Client, c: &ImagesCmd) -> anyhow::Result<std::process::ExitCode> {
    use crate::api::views::{ImageDetail, ImagesView};
    let detail = |d: &ImageDetail| {
        table(
            &["Version", "Platform", "Arch", "GPU", "Regions"],
            d.versions
                .iter()
                .map(|i| {
                    vec![
                        i.version.clone(),
                        format!("{:?}", i.platform).to_lowercase(),
                        format!("{:?}", i.arch).to_lowercase(),
                        i.gpu.to_string(),
                        i.amis.keys().cloned().collect::<Vec<_>>().join(","),
                    ]
                })
                .collect(),
        );
        for (a, t) in &d.aliases {
            println!("alias {a} -> {t}");
        }
        for h in &d.history {
            println!("{}  {} -> {}  by {}", h.set_at, h.alias, h.target, h.actor);
        }
    };
    match c {
        ImagesCmd::Register { packer_manifest, name, version, kind, build, arch } => {
            let origin = packer_manifest.display().to_string();
            let text = std::fs::read_to_string(packer_manifest).with_context(|| format!("reading {origin}"))?;
            let artifact = vmfleet_images::packer::parse_manifest(&text, &origin, build.as_deref())?;
            let arch =
                arch.clone().or_else(|| artifact.custom_data.get("arch").cloned()).unwrap_or_else(|| "x86_64".into());
            let body = json!({"name": name, "version": version, "kind": kind, "arch": arch, "amis": artifact.amis});
            let d: ImageDetail = api.post("/api/v1/images", &body).await?;
            println!("registered {name}:{version} ({} regions, build {})", artifact.amis.len(), artifact.build_name);
            detail(&d);
        }
        ImagesCmd::List(f) => {
            let v: ImagesView = api.get("/api/v1/images").await?;
            if f.json {
                print_json(&v)?;
            } else {
                table(
                    &["Image", "Platform", "Arch", "Executors", "Regions"],
                    v.images
                        .iter()
                        .map(|i| {
                            vec![
                                i.id(),
                                format!("{:?}", i.platform).to_lowercase() + if i.gpu { " (GPU)" } else { "" },
                                format!("{:?}", i.arch).to_lowercase(),
                                i.executors.iter().map(|e| e.as_str()).collect::<Vec<_>>().join(","),
                                i.amis.len().to_string(),
                            ]
                        })
                        .collect(),
                );
                println!();
                table(&["Alias", "Target"], v.aliases.iter().map(|(a, t)| vec![a.clone(), t.clone()]).collect());
            }
        }
        ImagesCmd::Show { name, json } => {
            let d: ImageDetail = api.get(&format!("/api/v1/images/{name}")).await?;
            if json.json {
                print_json(&d)?;
            } else {
                detail(&d);
            }
        }
        ImagesCmd::Promote { name, version, alias } => {
            let d: ImageDetail = api
                .post(&format!("/api/v1/images/{name}/promote"), &json!({"version": version, "alias": alias}))
                .await?;
            println!("{} -> {name}:{version}", alias.as_deref().unwrap_or(name));
            detail(&d);
        }
        ImagesCmd::Rollback { name, alias } => {
            let d: ImageDetail = api.post(&format!("/api/v1/images/{name}/rollback"), &json!({"alias": alias})).await?;
            let a = alias.as_deref().unwrap_or(name);
            println!("{a} -> {}", d.aliases.get(a).map_or("?", String::as_str));
            detail(&d);
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}
