//! `vmfleet reset`: the recovery the operations guide did by hand.

use super::*;

/// What `vmfleet reset` did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ResetReport {
    /// Instances tagged with this installation that were terminated.
    pub instances_terminated: Vec<String>,
    /// Volumes tagged with this installation that were deleted.
    pub volumes_deleted: Vec<String>,
    /// Records cleared: tasks, volumes, VMs.
    pub records_cleared: (u64, u64, u64),
}

impl Fleet {
    /// Tasks waiting or holding a VM.
    ///
    /// # Errors
    /// Store errors.
    pub async fn active_tasks(&self) -> Result<i64, FleetError> {
        let c = self.store.counts().await?;
        Ok(c.tasks.iter().map(|(_, _, n)| n).sum())
    }

    /// The recovery the operations guide did by hand: pause assignment and preallocation,
    /// terminate every instance and delete every volume tagged with this installation, clear the
    /// fleet's records, resume. The caller checks for running tasks first.
    ///
    /// # Errors
    /// Store or provider errors; the fleet stays paused when a step fails, so it can be rerun.
    pub async fn reset(&self) -> Result<ResetReport, FleetError> {
        let cloud = |e: ProvisionError| FleetError::provider("reset")(e);
        self.store.set_paused(true).await?;
        let mut report = ResetReport::default();
        let instances = self.provider.describe(&self.install_id).await.map_err(cloud)?;
        report.instances_terminated = instances.iter().map(|i| i.instance_id.clone()).collect();
        self.provider.terminate(&report.instances_terminated).await.map_err(cloud)?;
        for v in self.provider.describe_volumes(&self.install_id).await.map_err(cloud)? {
            if let Some(i) = &v.attached_to {
                match self.provider.detach_volume(&v.provider_id, i).await {
                    Ok(()) | Err(ProvisionError::NotFound(_)) => {}
                    Err(e) => return Err(cloud(e)),
                }
            }
            self.provider.delete_volume(&v.provider_id).await.map_err(cloud)?;
            report.volumes_deleted.push(v.provider_id);
        }
        report.records_cleared = self.store.clear_fleet().await?;
        let payload = serde_json::to_string(&report).unwrap_or_default();
        self.audit("fleet.reset", "cli", &self.install_id, &payload).await;
        self.store.set_paused(false).await?;
        Ok(report)
    }
}
