//! Image versions: registration (from packer pipelines), promotion and rollback.

use super::*;

/// A registered image row as a catalog image; `None` for a row this version cannot read.
pub(super) fn image_of(row: &crate::store::ImageRow) -> Option<vmfleet_images::Image> {
    let kind = vmfleet_images::packer::ImageKind::parse(&row.kind)?;
    let arch: vmfleet_images::Arch = serde_json::from_value(serde_json::Value::String(row.arch.clone())).ok()?;
    let amis = serde_json::from_str(&row.amis).ok()?;
    Some(kind.image(&row.name, &row.version, arch, amis))
}

/// A request to register an image version.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterImage {
    /// Name, such as `ubuntu-2004`.
    pub name: String,
    /// Version, such as `202010-01`.
    pub version: String,
    /// `linux`, `windows`, `gpu` or `remote-docker`.
    pub kind: String,
    /// `x86_64` (default) or `arm64`.
    #[serde(default = "default_arch")]
    pub arch: String,
    /// AMI per region.
    pub amis: std::collections::BTreeMap<String, String>,
}

pub(super) fn default_arch() -> String {
    "x86_64".into()
}

pub(super) fn valid_image_part(s: &str) -> bool {
    !s.is_empty() && s.len() <= 100 && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl Fleet {
    /// Registers an image version (from a packer pipeline).
    ///
    /// # Errors
    /// [`FleetError::BadRequest`] naming the bad field; [`FleetError::Conflict`] when that version
    /// exists.
    pub async fn register_image(&self, req: &RegisterImage, actor: &str) -> Result<crate::store::ImageRow, FleetError> {
        use vmfleet_images::packer::{valid_ami, valid_region, ImageKind};
        let bad = |m: String| Err(FleetError::BadRequest(m));
        if !valid_image_part(&req.name) {
            return bad(format!("name {:?}: use letters, digits, '-', '_' or '.'", req.name));
        }
        if !valid_image_part(&req.version) {
            return bad(format!("version {:?}: use letters, digits, '-', '_' or '.'", req.version));
        }
        if ImageKind::parse(&req.kind).is_none() {
            return bad(format!("kind {:?}: use linux, windows, gpu or remote-docker", req.kind));
        }
        if serde_json::from_value::<vmfleet_images::Arch>(serde_json::Value::String(req.arch.clone())).is_err() {
            return bad(format!("arch {:?}: use x86_64 or arm64", req.arch));
        }
        if req.amis.is_empty() {
            return bad("amis: at least one region's AMI is needed".into());
        }
        for (region, ami) in &req.amis {
            if !valid_region(region) || !valid_ami(ami) {
                return bad(format!("amis.{region}: {ami:?} is not an AMI id in a region"));
            }
        }
        self.check_amis(req).await?;
        let row = crate::store::ImageRow {
            name: req.name.clone(),
            version: req.version.clone(),
            kind: req.kind.clone(),
            arch: req.arch.clone(),
            amis: serde_json::to_string(&req.amis).map_err(FleetError::other("encoding the image's AMIs"))?,
            registered_at: self.now(),
        };
        self.store.insert_image(&row).await?;
        self.refresh_catalog().await?;
        self.audit("image.register", actor, &format!("{}:{}", req.name, req.version), &row.amis).await;
        Ok(row)
    }

    /// With a cloud provider, checks the AMI of its region: it exists, is `available`, and its
    /// platform and architecture are what the kind and arch declare. (The provider's client is
    /// bound to one region; AMIs of other regions are checked when used there.)
    pub(super) async fn check_amis(&self, req: &RegisterImage) -> Result<(), FleetError> {
        let region = match self.config.provider.kind {
            ProviderKind::Ec2 => &self.config.provider.ec2.region,
            ProviderKind::Local => return Ok(()),
        };
        let Some(ami) = req.amis.get(region) else { return Ok(()) };
        let facts = match self.provider.describe_image(ami).await {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(ProvisionError::NotFound(_)) | Err(ProvisionError::Invalid(_)) => {
                return Err(FleetError::BadRequest(format!("amis.{region}: {ami} does not exist in {region}")))
            }
            Err(e) => return Err(FleetError::provider(format!("checking {ami}"))(e)),
        };
        if facts.state != "available" {
            return Err(FleetError::BadRequest(format!("amis.{region}: {ami} is {}, not available", facts.state)));
        }
        let want = if req.kind == "windows" { Platform::Windows } else { Platform::Linux };
        if facts.platform != want {
            return Err(FleetError::BadRequest(format!(
                "amis.{region}: {ami} is a {:?} image, and kind {} needs {:?}",
                facts.platform, req.kind, want
            )));
        }
        if !facts.architecture.is_empty() && facts.architecture != req.arch {
            return Err(FleetError::BadRequest(format!(
                "amis.{region}: {ami} is built for {}, and arch says {}",
                facts.architecture, req.arch
            )));
        }
        Ok(())
    }

    /// Points `alias` (default: the image's name) at `name:version`.
    ///
    /// # Errors
    /// [`FleetError::NotFound`] for an unknown version.
    pub async fn promote_image(
        &self,
        name: &str,
        version: &str,
        alias: Option<&str>,
        actor: &str,
    ) -> Result<String, FleetError> {
        let target = format!("{name}:{version}");
        if !self.catalog().images().iter().any(|i| i.id() == target) {
            return Err(FleetError::NotFound(format!("image {target} is not registered")));
        }
        let alias = alias.unwrap_or(name);
        self.point_alias(alias, &target, actor).await?;
        self.audit("image.promote", actor, alias, &target).await;
        Ok(target)
    }

    /// Points `alias` back at what it pointed to before its current target.
    ///
    /// # Errors
    /// [`FleetError::Conflict`] when there is nothing to roll back to.
    pub async fn rollback_image(&self, alias: &str, actor: &str) -> Result<String, FleetError> {
        let history = self.store.alias_history(Some(alias)).await?;
        let Some(current) = history.last() else {
            return Err(FleetError::Conflict(format!("alias {alias} has no promotion history")));
        };
        let Some(previous) = history.iter().rev().find(|a| a.target != current.target) else {
            return Err(FleetError::Conflict(format!(
                "alias {alias} has never pointed elsewhere than {}",
                current.target
            )));
        };
        let target = previous.target.clone();
        self.point_alias(alias, &target, actor).await?;
        self.audit("image.rollback", actor, alias, &target).await;
        Ok(target)
    }

    pub(super) async fn point_alias(&self, alias: &str, target: &str, actor: &str) -> Result<(), FleetError> {
        // Keep history strictly ordered even within one millisecond.
        let last = self.store.alias_history(Some(alias)).await?.last().map_or(0, |a| a.set_at);
        self.store.set_alias(alias, target, actor, self.now().max(last + 1)).await?;
        self.refresh_catalog().await?;
        Ok(())
    }
}
