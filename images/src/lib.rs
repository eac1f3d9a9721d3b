//! The vmfleet image catalog.
//!
//! An image is a name and version with a platform, an architecture, the executors it serves,
//! whether it carries GPU drivers, and an AMI per region. Aliases (`default`,
//! `docker-default`, `windows-default`, `gpu-default`, or any operator-chosen name) point at
//! one image version. Resolution checks that the image fits what the task asked for and says
//! exactly why when it does not.

pub mod packer;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Why an image cannot serve a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// No alias or `name:version` of that name.
    #[error("unknown image {0:?}")]
    Unknown(String),
    /// The image has no AMI in the region.
    #[error("image {image} has no AMI in region {region}")]
    NoAmiInRegion {
        /// `name:version`.
        image: String,
        /// The region asked for.
        region: String,
    },
    /// Platform, architecture, GPU or executor mismatch.
    #[error("image {image} cannot serve this task: {reason}")]
    Mismatch {
        /// `name:version`.
        image: String,
        /// What does not fit.
        reason: String,
    },
}

/// Operating system family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// Linux.
    Linux,
    /// Windows.
    Windows,
}

/// CPU architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// x86-64.
    #[serde(alias = "amd64")]
    X86_64,
    /// 64-bit Arm.
    #[serde(alias = "aarch64")]
    Arm64,
}

/// Kind of executor a task asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Executor {
    /// A whole VM for the job.
    Machine,
    /// A Docker engine for a docker-executor job.
    RemoteDocker,
}

impl Executor {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Executor::Machine => "machine",
            Executor::RemoteDocker => "remote-docker",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "machine" => Some(Executor::Machine),
            "remote-docker" => Some(Executor::RemoteDocker),
            _ => None,
        }
    }
}

/// One image version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    /// Name, such as `ubuntu-2004`.
    pub name: String,
    /// Version, such as `202010-01`.
    pub version: String,
    /// Platform.
    pub platform: Platform,
    /// Architecture.
    pub arch: Arch,
    /// Executors it serves.
    pub executors: Vec<Executor>,
    /// Whether it carries GPU drivers.
    #[serde(default)]
    pub gpu: bool,
    /// AMI id per region.
    #[serde(default)]
    pub amis: BTreeMap<String, String>,
}

impl Image {
    /// `name:version`.
    pub fn id(&self) -> String {
        format!("{}:{}", self.name, self.version)
    }
}

/// What the task needs from an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// The executor asked for.
    pub executor: Executor,
    /// Platform of the resource class.
    pub platform: Platform,
    /// Architecture of the resource class.
    pub arch: Arch,
    /// Whether the resource class has GPUs.
    pub gpu: bool,
}

/// Images and aliases.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    images: Vec<Image>,
    aliases: BTreeMap<String, String>,
}

/// The operations guide's default VM service Linux AMIs (Ubuntu 16.04, Docker 18.06.3).
/// The guide prints the eu-west-2 id with fewer digits than an AMI id has; it is kept as
/// printed, and an operator in that region should set a custom AMI.
pub const DEFAULT_LINUX_AMIS: [(&str, &str); 14] = [
    ("ap-northeast-1", "ami-0e49af0659db9fc5d"),
    ("ap-northeast-2", "ami-03e485694bc2da249"),
    ("ap-south-1", "ami-050370e57dfc6574a"),
    ("ap-southeast-1", "ami-0a75ff7b28897268c"),
    ("ap-southeast-2", "ami-072b1b45245549586"),
    ("ca-central-1", "ami-0e44086f0f518ad2d"),
    ("eu-central-1", "ami-09cbcfe446101b4ea"),
    ("eu-west-1", "ami-0d1cbc2cc3075510a"),
    ("eu-west-2", "ami-0bd22dc30fa260b"),
    ("sa-east-1", "ami-038596d5a4fc9893b"),
    ("us-east-1", "ami-0843ca047684abe87"),
    ("us-east-2", "ami-03d60a35576647f63"),
    ("us-west-1", "ami-06f6efb13d9ccf93d"),
    ("us-west-2", "ami-0b5b8ad02f405a909"),
];

impl Catalog {
    /// The built-in catalog: the guide's default Linux image behind `default` and
    /// `docker-default`. Windows and GPU images must come from the operator.
    pub fn builtin() -> Self {
        let mut c = Catalog::default();
        c.add(Image {
            name: "circleci-vm".into(),
            version: "ubuntu-1604-docker-18.06.3".into(),
            platform: Platform::Linux,
            arch: Arch::X86_64,
            executors: vec![Executor::Machine, Executor::RemoteDocker],
            gpu: false,
            amis: DEFAULT_LINUX_AMIS.iter().map(|(r, a)| (r.to_string(), a.to_string())).collect(),
        });
        c.alias("default", "circleci-vm:ubuntu-1604-docker-18.06.3");
        c.alias("docker-default", "circleci-vm:ubuntu-1604-docker-18.06.3");
        c
    }

    /// Adds or replaces an image version.
    pub fn add(&mut self, image: Image) {
        self.images.retain(|i| !(i.name == image.name && i.version == image.version));
        self.images.push(image);
    }

    /// Points `alias` at `name:version`.
    pub fn alias(&mut self, alias: &str, target: &str) {
        self.aliases.insert(alias.to_string(), target.to_string());
    }

    /// All images.
    pub fn images(&self) -> &[Image] {
        &self.images
    }

    /// All aliases and their targets.
    pub fn aliases(&self) -> &BTreeMap<String, String> {
        &self.aliases
    }

    /// Finds an image by alias or `name:version`.
    ///
    /// # Errors
    /// [`ImageError::Unknown`].
    pub fn lookup(&self, name: &str) -> Result<&Image, ImageError> {
        let target = self.aliases.get(name).map_or(name, String::as_str);
        self.images.iter().find(|i| i.id() == target).ok_or_else(|| ImageError::Unknown(name.to_string()))
    }

    /// Resolves `name` for a task, checking that the image fits it.
    ///
    /// # Errors
    /// [`ImageError::Unknown`] or [`ImageError::Mismatch`] naming what does not fit.
    pub fn resolve(&self, name: &str, req: &Requirement) -> Result<&Image, ImageError> {
        let image = self.lookup(name)?;
        let mismatch = |reason: String| Err(ImageError::Mismatch { image: image.id(), reason });
        if image.platform != req.platform {
            return mismatch(format!(
                "it is a {} image and the resource class is {}",
                platform_name(image.platform),
                platform_name(req.platform)
            ));
        }
        if image.arch != req.arch {
            return mismatch(format!(
                "it is built for {} and the resource class runs on {}",
                arch_name(image.arch),
                arch_name(req.arch)
            ));
        }
        if req.gpu && !image.gpu {
            return mismatch("the resource class has GPUs and the image has no GPU drivers".into());
        }
        if !image.executors.contains(&req.executor) {
            return mismatch(format!("it does not serve the {} executor", req.executor.as_str()));
        }
        Ok(image)
    }

    /// The AMI of `image` in `region`.
    ///
    /// # Errors
    /// [`ImageError::NoAmiInRegion`].
    pub fn ami<'a>(&self, image: &'a Image, region: &str) -> Result<&'a str, ImageError> {
        image
            .amis
            .get(region)
            .map(String::as_str)
            .ok_or_else(|| ImageError::NoAmiInRegion { image: image.id(), region: region.to_string() })
    }
}

fn platform_name(p: Platform) -> &'static str {
    match p {
        Platform::Linux => "Linux",
        Platform::Windows => "Windows",
    }
}

fn arch_name(a: Arch) -> &'static str {
    match a {
        Arch::X86_64 => "x86_64",
        Arch::Arm64 => "arm64",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linux(executor: Executor) -> Requirement {
        Requirement { executor, platform: Platform::Linux, arch: Arch::X86_64, gpu: false }
    }

    #[test]
    fn default_alias_resolves_per_region() {
        let c = Catalog::builtin();
        let img = c.resolve("default", &linux(Executor::Machine)).expect("default resolves");
        assert_eq!(c.ami(img, "us-east-1").expect("us-east-1"), "ami-0843ca047684abe87");
        assert_eq!(c.ami(img, "mars-1"), Err(ImageError::NoAmiInRegion { image: img.id(), region: "mars-1".into() }));
        assert_eq!(img.amis.len(), 14);
    }

    #[test]
    fn mismatches_say_why() {
        let c = Catalog::builtin();
        let windows = Requirement { platform: Platform::Windows, ..linux(Executor::Machine) };
        let err = c.resolve("default", &windows).expect_err("linux image for windows class");
        assert!(err.to_string().contains("Linux image and the resource class is Windows"), "{err}");
        let arm = Requirement { arch: Arch::Arm64, ..linux(Executor::Machine) };
        assert!(c.resolve("default", &arm).expect_err("arm").to_string().contains("arm64"));
        let gpu = Requirement { gpu: true, ..linux(Executor::Machine) };
        assert!(c.resolve("default", &gpu).expect_err("gpu").to_string().contains("GPU"));
        assert_eq!(c.resolve("nope", &linux(Executor::Machine)), Err(ImageError::Unknown("nope".into())));
    }

    #[test]
    fn name_version_and_replacement() {
        let mut c = Catalog::builtin();
        let img = Image {
            name: "ubuntu-2004".into(),
            version: "202010-01".into(),
            platform: Platform::Linux,
            arch: Arch::X86_64,
            executors: vec![Executor::Machine],
            gpu: false,
            amis: BTreeMap::from([("us-east-1".into(), "ami-1".into())]),
        };
        c.add(img.clone());
        assert_eq!(c.resolve("ubuntu-2004:202010-01", &linux(Executor::Machine)), Ok(&img));
        let err = c.resolve("ubuntu-2004:202010-01", &linux(Executor::RemoteDocker)).expect_err("executor");
        assert!(err.to_string().contains("remote-docker"));
        c.add(Image { amis: BTreeMap::new(), ..img });
        assert_eq!(c.images().iter().filter(|i| i.name == "ubuntu-2004").count(), 1);
    }
}
