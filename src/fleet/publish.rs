//! Per-pool numbers to CloudWatch and DogStatsD.

use super::*;

impl Fleet {
    /// Publishes per-pool numbers to CloudWatch and DogStatsD when each is due.
    pub async fn publish(&self, vms: &[VmRow], now: i64) {
        let out = &self.config.metrics_out;
        let cw = out.cloudwatch.as_ref().filter(|c| self.due("cloudwatch", c.interval, now));
        let sd = out.dogstatsd.as_ref().filter(|d| self.due("dogstatsd", d.interval, now));
        if cw.is_none() && sd.is_none() {
            return;
        }
        let (stats, fleet_p95) = match self.pool_stats(vms, now).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "metrics not published");
                return;
            }
        };
        if let Some(c) = cw {
            let data = crate::metrics_out::cloudwatch_data(&stats, fleet_p95);
            if let Err(e) = self.aws().await.put_metrics(&c.namespace, &data).await {
                warn!(error = %e, "CloudWatch metrics not published");
            }
        }
        if let Some(d) = sd {
            let lines = crate::metrics_out::dogstatsd_lines(&d.prefix, &d.tags, &stats);
            if let Err(e) = send_udp(&d.address, &crate::metrics_out::datagrams(&lines, 1432)).await {
                warn!(error = %e, address = %d.address, "DogStatsD metrics not sent");
            }
        }
    }

    /// Per-pool numbers now, and the fleet-wide queue-time p95 over the last minute.
    pub(super) async fn pool_stats(
        &self,
        vms: &[VmRow],
        now: i64,
    ) -> Result<(std::collections::BTreeMap<String, crate::metrics_out::PoolStats>, Option<f64>), FleetError> {
        use crate::metrics_out::{p95, PoolStats};
        let policies = self.policies();
        let counts = self.store.counts().await?;
        let mut stats: std::collections::BTreeMap<String, PoolStats> = std::collections::BTreeMap::new();
        for p in &policies.pools {
            stats.entry(pool_key(p.executor.as_str(), &p.image, &p.resource_class)).or_default();
        }
        for (pool, state, n) in &counts.tasks {
            if state == "waiting" {
                stats.entry(pool.clone()).or_default().waiting += *n as u32;
            }
        }
        for vm in vms {
            stats.entry(vm.pool.clone()).or_default();
        }
        for (key, s) in stats.iter_mut() {
            let obs = observe(key, vms, None, &[]);
            s.idle = obs.idle.len() as u32;
            s.busy = obs.busy;
            if let Some(p) = policies.pool(key) {
                s.target = vmfleet_scaler::warm_target(&obs, &scaler_policy(p, self.target_floor(key)), now);
            }
        }
        let mut all = Vec::new();
        let mut by_pool: HashMap<String, Vec<f64>> = HashMap::new();
        for (pool, ms) in self.store.queue_times(now - 60_000).await? {
            let s = ms as f64 / 1000.0;
            all.push(s);
            by_pool.entry(pool).or_default().push(s);
        }
        for (pool, mut v) in by_pool {
            if let Some(s) = stats.get_mut(&pool) {
                s.queue_p95_s = p95(&mut v);
            }
        }
        Ok((stats, p95(&mut all)))
    }
}

/// Sends datagrams to `address` (`host:port`) from an ephemeral local port.
pub(super) async fn send_udp(address: &str, datagrams: &[String]) -> std::io::Result<()> {
    let target = tokio::net::lookup_host(address)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))?;
    let local = if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let sock = tokio::net::UdpSocket::bind(local).await?;
    for d in datagrams {
        sock.send_to(d.as_bytes(), target).await?;
    }
    Ok(())
}
