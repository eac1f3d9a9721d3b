//! Packer's `manifest` post-processor output, as a packer pipeline hands it to vmfleet.
//!
//! ```json
//! {"builds": [{"name": "linux", "builder_type": "amazon-ebs", "build_time": 1600000000,
//!              "artifact_id": "us-east-1:ami-0a1,us-west-2:ami-0b2",
//!              "packer_run_uuid": "6d0…", "custom_data": {"arch": "arm64"}}],
//!  "last_run_uuid": "6d0…"}
//! ```
//!
//! The manifest accumulates every run; the builds of `last_run_uuid` are the newest. Only
//! Amazon builders make AMIs.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::{Arch, Executor, Image, Platform};

/// A manifest problem, naming the file and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct ManifestError {
    /// The manifest file.
    pub origin: String,
    /// What is wrong, and where.
    pub message: String,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    #[serde(default)]
    builds: Vec<Build>,
    #[serde(default)]
    last_run_uuid: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Build {
    #[serde(default)]
    name: String,
    #[serde(default)]
    builder_type: String,
    #[serde(default)]
    artifact_id: String,
    #[serde(default)]
    packer_run_uuid: Option<String>,
    #[serde(default)]
    custom_data: BTreeMap<String, serde_json::Value>,
}

/// The AMIs of one build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// The build's name in the template.
    pub build_name: String,
    /// The packer run it came from.
    pub run_uuid: Option<String>,
    /// AMI id per region.
    pub amis: BTreeMap<String, String>,
    /// `custom_data` values, as strings.
    pub custom_data: BTreeMap<String, String>,
}

/// What an image is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageKind {
    /// Linux machine executor (and remote Docker).
    Linux,
    /// Windows machine executor.
    Windows,
    /// Linux with GPU drivers.
    Gpu,
    /// Remote Docker engines only.
    RemoteDocker,
}

impl ImageKind {
    /// Parses the CLI / API name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "linux" => Some(Self::Linux),
            "windows" => Some(Self::Windows),
            "gpu" => Some(Self::Gpu),
            "remote-docker" => Some(Self::RemoteDocker),
            _ => None,
        }
    }

    /// The image this kind describes.
    pub fn image(self, name: &str, version: &str, arch: Arch, amis: BTreeMap<String, String>) -> Image {
        let (platform, executors, gpu) = match self {
            Self::Linux => (Platform::Linux, vec![Executor::Machine, Executor::RemoteDocker], false),
            Self::Windows => (Platform::Windows, vec![Executor::Machine], false),
            Self::Gpu => (Platform::Linux, vec![Executor::Machine], true),
            Self::RemoteDocker => (Platform::Linux, vec![Executor::RemoteDocker], false),
        };
        Image { name: name.into(), version: version.into(), platform, arch, executors, gpu, amis }
    }
}

/// Whether `r` looks like an AWS region (`us-east-1`).
pub fn valid_region(r: &str) -> bool {
    let parts: Vec<&str> = r.split('-').collect();
    parts.len() >= 3
        && parts.iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()))
        && parts.last().is_some_and(|p| p.chars().all(|c| c.is_ascii_digit()))
}

/// Whether `a` looks like an AMI id (`ami-` and 8 or 17 hex digits).
pub fn valid_ami(a: &str) -> bool {
    a.strip_prefix("ami-").is_some_and(|h| (h.len() == 8 || h.len() == 17) && h.chars().all(|c| c.is_ascii_hexdigit()))
}

/// The largest manifest read.
pub const MAX_MANIFEST_BYTES: usize = 8 << 20;

/// Reads the newest Amazon build of a manifest (or the one named `build`).
///
/// # Errors
/// [`ManifestError`] naming the file and the field: malformed JSON (with line and column), no
/// Amazon build in the last run, several and none chosen, or an `artifact_id` that is not a list
/// of `REGION:AMI`.
pub fn parse_manifest(text: &str, origin: &str, build: Option<&str>) -> Result<Artifact, ManifestError> {
    let fail = |message: String| ManifestError { origin: origin.into(), message };
    // A manifest of a long-lived pipeline grows by a few hundred bytes a build; serde_json
    // bounds nesting (128) itself.
    if text.len() > MAX_MANIFEST_BYTES {
        return Err(fail(format!("the manifest is {} bytes; the limit is {MAX_MANIFEST_BYTES} bytes", text.len())));
    }
    let m: Manifest = serde_json::from_str(text).map_err(|e| fail(format!("not a packer manifest: {e}")))?;
    if m.builds.is_empty() {
        return Err(fail("builds: the manifest has no builds".into()));
    }
    let run = m.last_run_uuid.clone().or_else(|| m.builds.last().and_then(|b| b.packer_run_uuid.clone()));
    let candidates: Vec<(usize, &Build)> = m
        .builds
        .iter()
        .enumerate()
        .filter(|(_, b)| run.is_none() || b.packer_run_uuid == run)
        .filter(|(_, b)| b.builder_type.starts_with("amazon-"))
        .filter(|(_, b)| build.is_none_or(|n| b.name == n))
        .collect();
    let (index, b) = match (candidates.as_slice(), build) {
        ([], Some(n)) => {
            return Err(fail(format!("builds: no Amazon build named {n:?} in run {}", run.unwrap_or_default())))
        }
        ([], None) => {
            return Err(fail(format!("builds: no Amazon (amazon-*) build in run {}", run.unwrap_or_default())))
        }
        ([one], _) => *one,
        (many, _) => {
            let names: Vec<&str> = many.iter().map(|(_, b)| b.name.as_str()).collect();
            return Err(fail(format!(
                "builds: run {} has several Amazon builds ({}); choose one with --build",
                run.unwrap_or_default(),
                names.join(", ")
            )));
        }
    };
    let mut amis = BTreeMap::new();
    for pair in b.artifact_id.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (region, ami) = pair.split_once(':').unwrap_or(("", ""));
        if !valid_region(region) || !valid_ami(ami) {
            return Err(fail(format!(
                "builds[{index}].artifact_id: {pair:?} is not REGION:AMI (such as us-east-1:ami-0a1b2c3d)"
            )));
        }
        if amis.insert(region.to_string(), ami.to_string()).is_some() {
            return Err(fail(format!("builds[{index}].artifact_id: region {region} appears twice")));
        }
    }
    if amis.is_empty() {
        return Err(fail(format!("builds[{index}].artifact_id: no AMI in it")));
    }
    let custom_data = b
        .custom_data
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_string)))
        .collect();
    Ok(Artifact { build_name: b.name.clone(), run_uuid: b.packer_run_uuid.clone(), amis, custom_data })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_RUNS: &str = r#"{
      "builds": [
        {"name": "linux", "builder_type": "amazon-ebs", "build_time": 1, "artifact_id": "us-east-1:ami-00000001",
         "packer_run_uuid": "run-1", "custom_data": {}},
        {"name": "linux", "builder_type": "amazon-ebs", "build_time": 2,
         "artifact_id": "us-east-1:ami-0a1b2c3d4e5f60718,us-west-2:ami-0b2c3d4e",
         "packer_run_uuid": "run-2", "custom_data": {"arch": "arm64", "cuda": 12}},
        {"name": "vagrant", "builder_type": "vagrant", "artifact_id": "box", "packer_run_uuid": "run-2"}
      ],
      "last_run_uuid": "run-2"
    }"#;

    #[test]
    fn newest_run_wins() {
        let a = parse_manifest(TWO_RUNS, "m.json", None).expect("parse");
        assert_eq!(a.run_uuid.as_deref(), Some("run-2"));
        assert_eq!(a.amis["us-east-1"], "ami-0a1b2c3d4e5f60718");
        assert_eq!(a.amis["us-west-2"], "ami-0b2c3d4e");
        assert_eq!(a.custom_data["arch"], "arm64");
        assert_eq!(a.custom_data["cuda"], "12");
    }

    #[test]
    fn errors_name_file_and_field() {
        let cases = [
            ("{", "not a packer manifest"),
            (r#"{"builds": []}"#, "builds: the manifest has no builds"),
            (r#"{"builds": [{"name":"v","builder_type":"vagrant","artifact_id":"x"}]}"#, "no Amazon"),
            (
                r#"{"builds": [{"name":"l","builder_type":"amazon-ebs","artifact_id":"us-east-1ami-0a1b2c3d"}]}"#,
                "builds[0].artifact_id: \"us-east-1ami-0a1b2c3d\" is not REGION:AMI",
            ),
            (
                r#"{"builds": [{"name":"l","builder_type":"amazon-ebs","artifact_id":"us-east-1:ami-0a1b2c3d,us-east-1:ami-0a1b2c3e"}]}"#,
                "appears twice",
            ),
            (
                r#"{"builds": [{"name":"a","builder_type":"amazon-ebs","artifact_id":"us-east-1:ami-0a1b2c3d"},
                              {"name":"b","builder_type":"amazon-ebs","artifact_id":"us-east-1:ami-0a1b2c3e"}]}"#,
                "several Amazon builds (a, b)",
            ),
        ];
        for (text, needle) in cases {
            let e = parse_manifest(text, "packer-manifest.json", None).expect_err(text);
            assert!(e.to_string().starts_with("packer-manifest.json: "), "{e}");
            assert!(e.message.contains(needle), "{text}: {e}");
        }
        let e = parse_manifest(TWO_RUNS, "m", Some("windows")).expect_err("no such build");
        assert!(e.message.contains("\"windows\""), "{e}");
    }

    #[test]
    fn kinds_make_images() {
        let amis = BTreeMap::from([("us-east-1".to_string(), "ami-0a1b2c3d".to_string())]);
        let gpu = ImageKind::Gpu.image("cuda", "1", Arch::X86_64, amis.clone());
        assert!(gpu.gpu && gpu.platform == Platform::Linux && gpu.executors == [Executor::Machine]);
        let win = ImageKind::Windows.image("win", "1", Arch::X86_64, amis);
        assert_eq!(win.platform, Platform::Windows);
        assert_eq!(ImageKind::parse("remote-docker"), Some(ImageKind::RemoteDocker));
        assert_eq!(ImageKind::parse("mac"), None);
    }

    #[test]
    fn hostile_manifests_are_refused_with_the_limit() {
        let huge = format!("{{\"builds\": [], \"pad\": \"{}\"}}", "x".repeat(MAX_MANIFEST_BYTES));
        let e = parse_manifest(&huge, "m.json", None).expect_err("too big");
        assert!(e.to_string().contains("the limit is 8388608 bytes"), "{e}");
        let deep = format!("{{\"builds\": [], \"x\": {}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        // Skipped (iteratively) as an unknown field; the manifest is then judged on its builds.
        let e = parse_manifest(&deep, "m.json", None).expect_err("no builds");
        assert!(e.to_string().contains("m.json"), "{e}");
        let deep = format!("{{\"builds\": {}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        let e = parse_manifest(&deep, "m.json", None).expect_err("not builds");
        assert!(e.to_string().contains("not a packer manifest"), "{e}");
    }
}
