//! The EC2 driver, on `aws-sdk-ec2`.
//!
//! Every instance and volume carries `vmfleet:install`, `vmfleet:vm` / `vmfleet:volume`,
//! `vmfleet:pool` (instances), `vmfleet:project` (volumes), `Name` and the operator's tags;
//! describe calls filter on `vmfleet:install`, so nothing vmfleet did not tag is ever seen, let
//! alone touched.
//!
//! # Design
//! A launch first looks the VM up by its `vmfleet:vm` tag and returns the instance it finds;
//! only then does it call RunInstances, with the VM id as `ClientToken`, so a retried launch
//! never makes a second instance (the tag lookup also covers emulators that ignore the token).
//! Mutating calls pass a token bucket first, so a burst of launches queues here instead of
//! being throttled by EC2; throttling that still happens is retried by the SDK's adaptive
//! retry and then by a jittered exponential backoff (`backon`) before it is reported.
//! On InsufficientInstanceCapacity the next instance type (and zone) is tried, and the failed
//! market, type and zone are remembered as unavailable for three minutes; `spot-with-fallback`
//! tries every spot type and zone before on-demand.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{
    Filter, HibernationOptionsRequest, HttpTokensState, IamInstanceProfileSpecification, InstanceInterruptionBehavior,
    InstanceMarketOptionsRequest, InstanceMetadataOptionsRequest, InstanceStateName, InstanceType, MarketType,
    ResourceType, SpotInstanceType, SpotMarketOptions, Tag, TagSpecification, VolumeState, VolumeType,
};
use backon::{ExponentialBuilder, Retryable};
use base64::Engine;

use crate::{
    Capacity, Instance, InstanceState, LaunchSpec, Platform, Provider, ProvisionError, Volume, VolumeSpec, TAG_INSTALL,
    TAG_POOL, TAG_PROJECT, TAG_VM, TAG_VOLUME,
};

/// How long an instance type and zone that ran out of capacity is avoided.
pub const CAPACITY_MEMORY: Duration = Duration::from_secs(180);

/// Settings of the EC2 driver.
#[derive(Clone, Default)]
pub struct Ec2Settings {
    /// Region.
    pub region: String,
    /// Endpoint for emulators and VPC endpoints.
    pub endpoint_url: Option<String>,
    /// Subnets to launch into (spread by VM id; their zones are read once).
    pub subnet_ids: Vec<String>,
    /// Security group of every instance.
    pub security_group_id: Option<String>,
    /// IAM instance profile name.
    pub instance_profile: Option<String>,
    /// Use public addresses instead of private ones.
    pub use_public_ip: bool,
    /// Static credentials; otherwise the SDK's default chain (instance profile, environment…).
    pub access_key_id: Option<String>,
    /// Secret of `access_key_id`. Never logged.
    pub secret_access_key: Option<String>,
    /// Reach every instance's SSH at this `host:port` instead (emulators, SSH tunnels).
    pub ssh_address_override: Option<String>,
    /// Sustained mutating calls per second.
    pub mutations_per_second: f64,
    /// Burst of mutating calls.
    pub mutation_burst: u32,
    /// Attempts of the SDK's adaptive retry per call.
    pub sdk_max_attempts: u32,
    /// Our own retries of a throttled call after the SDK gives up.
    pub throttle_retries: usize,
    /// Proxies for the EC2 API.
    pub proxy: ProxySettings,
}

/// Outbound proxies, as `HTTP_PROXY`, `HTTPS_PROXY` and `NO_PROXY` mean them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxySettings {
    /// Proxy for `http://` endpoints.
    pub http: Option<String>,
    /// Proxy for `https://` endpoints.
    pub https: Option<String>,
    /// Comma-separated hosts, domains and networks that bypass the proxies.
    pub no_proxy: Option<String>,
}

/// Instance metadata and container credential addresses: never sent through a proxy.
pub const NEVER_PROXIED: &str = "169.254.169.254,169.254.170.2,fd00:ec2::254";

impl ProxySettings {
    /// Reads `HTTP_PROXY`, `HTTPS_PROXY` and `NO_PROXY` (or their lower-case forms) via `get`.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Self {
        let var = |name: &str| get(name).or_else(|| get(&name.to_ascii_lowercase())).filter(|v| !v.trim().is_empty());
        Self { http: var("HTTP_PROXY"), https: var("HTTPS_PROXY"), no_proxy: var("NO_PROXY") }
    }

    /// The bypass list, always including the metadata addresses.
    pub fn bypass(&self) -> String {
        match &self.no_proxy {
            Some(n) => format!("{n},{NEVER_PROXIED}"),
            None => NEVER_PROXIED.to_string(),
        }
    }

    /// The proxy to use for an endpoint URL, if any.
    pub fn for_endpoint(&self, url: &str) -> Option<&str> {
        if url.starts_with("https://") {
            self.https.as_deref()
        } else {
            self.http.as_deref()
        }
    }

    fn config(&self, endpoint: &str) -> Result<Option<aws_smithy_http_client::proxy::ProxyConfig>, String> {
        use aws_smithy_http_client::proxy::ProxyConfig;
        let Some(url) = self.for_endpoint(endpoint) else { return Ok(None) };
        let cfg = if endpoint.starts_with("https://") { ProxyConfig::https(url) } else { ProxyConfig::http(url) };
        // The proxy URL may carry credentials: never echo it.
        cfg.map(|c| Some(c.no_proxy(self.bypass()))).map_err(|_| "the proxy URL is not valid".to_string())
    }
}

impl std::fmt::Debug for Ec2Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ec2Settings")
            .field("region", &self.region)
            .field("endpoint_url", &self.endpoint_url)
            .field("subnet_ids", &self.subnet_ids)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// A token bucket for mutating calls.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    state: tokio::sync::Mutex<(f64, tokio::time::Instant)>,
}

impl Bucket {
    fn new(rate: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self { rate: rate.max(0.01), burst, state: tokio::sync::Mutex::new((burst, tokio::time::Instant::now())) }
    }

    async fn take(&self) {
        let mut s = self.state.lock().await;
        loop {
            let now = tokio::time::Instant::now();
            s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * self.rate).min(self.burst);
            s.1 = now;
            if s.0 >= 1.0 {
                s.0 -= 1.0;
                return;
            }
            tokio::time::sleep(Duration::from_secs_f64((1.0 - s.0) / self.rate)).await;
        }
    }
}

/// The EC2 driver.
pub struct Ec2Provider {
    client: aws_sdk_ec2::Client,
    settings: Ec2Settings,
    bucket: Bucket,
    calls: Mutex<BTreeMap<&'static str, u64>>,
    unavailable: Mutex<HashMap<(bool, String, String), Instant>>,
    subnet_zones: tokio::sync::OnceCell<Vec<(String, String)>>,
}

impl std::fmt::Debug for Ec2Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ec2Provider").field("settings", &self.settings).finish_non_exhaustive()
    }
}

fn sdk_err<E, R>(op: &str, e: aws_sdk_ec2::error::SdkError<E, R>) -> ProvisionError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let code = e.code().unwrap_or_default().to_string();
    let message = e.message().map_or_else(|| aws_sdk_ec2::error::DisplayErrorContext(&e).to_string(), str::to_string);
    let text = format!("{op}: {code}: {message}");
    match code.as_str() {
        "InsufficientInstanceCapacity"
        | "InsufficientCapacity"
        | "InsufficientHostCapacity"
        | "InsufficientReservedInstanceCapacity"
        | "Unsupported" => ProvisionError::InsufficientCapacity(text),
        "RequestLimitExceeded" | "Throttling" | "ThrottlingException" | "RequestThrottled" => {
            ProvisionError::Throttled(text)
        }
        c if c.ends_with(".NotFound") => ProvisionError::NotFound(text),
        c if c.starts_with("Invalid") || c == "MissingParameter" || c == "UnauthorizedOperation" => {
            ProvisionError::Invalid(text)
        }
        _ => ProvisionError::Other(text),
    }
}

fn tag(k: &str, v: &str) -> Tag {
    Tag::builder().key(k).value(v).build()
}

fn tag_value<'a>(tags: &'a [Tag], key: &str) -> Option<&'a str> {
    tags.iter().find(|t| t.key() == Some(key)).and_then(|t| t.value())
}

fn ms(t: Option<&aws_sdk_ec2::primitives::DateTime>) -> i64 {
    t.and_then(|t| t.to_millis().ok()).unwrap_or(0)
}

/// Cloud-init for Linux: the `circleci` user with the VM's key, in the docker group.
pub fn linux_user_data(user: &str, public_key: &str) -> String {
    format!(
        "#cloud-config\nusers:\n  - default\n  - name: {user}\n    shell: /bin/bash\n    sudo: \"ALL=(ALL) NOPASSWD:ALL\"\n    ssh_authorized_keys:\n      - {key}\nruncmd:\n  - [sh, -c, \"getent group docker && usermod -aG docker {user} || true\"]\n",
        key = public_key.trim()
    )
}

/// PowerShell user data for Windows: OpenSSH Server with the VM's key.
pub fn windows_user_data(public_key: &str) -> String {
    format!(
        "<powershell>\n\
         Add-WindowsCapability -Online -Name OpenSSH.Server~~~~0.0.1.0\n\
         New-Item -ItemType Directory -Force -Path C:\\ProgramData\\ssh | Out-Null\n\
         Set-Content -Path C:\\ProgramData\\ssh\\administrators_authorized_keys -Value '{key}'\n\
         icacls.exe C:\\ProgramData\\ssh\\administrators_authorized_keys /inheritance:r /grant 'Administrators:F' /grant 'SYSTEM:F'\n\
         Set-Service -Name sshd -StartupType Automatic\n\
         Start-Service sshd\n\
         New-NetFirewallRule -Name vmfleet-sshd -DisplayName 'OpenSSH Server' -Enabled True -Direction Inbound -Protocol TCP -Action Allow -LocalPort 22\n\
         </powershell>\n",
        key = public_key.trim().replace('\'', "")
    )
}

impl Ec2Provider {
    /// Builds the client (credentials from the settings or the default chain).
    pub async fn new(settings: Ec2Settings) -> Self {
        let sdk = sdk_config(&settings).await;
        let bucket = Bucket::new(settings.mutations_per_second, settings.mutation_burst);
        Self {
            client: aws_sdk_ec2::Client::new(&sdk),
            settings,
            bucket,
            calls: Mutex::new(BTreeMap::new()),
            unavailable: Mutex::new(HashMap::new()),
            subnet_zones: tokio::sync::OnceCell::new(),
        }
    }

    /// The SDK client, for tests and tools that inspect what was created.
    pub fn client(&self) -> &aws_sdk_ec2::Client {
        &self.client
    }

    fn count(&self, op: &'static str) {
        *self.calls.lock().unwrap_or_else(|p| p.into_inner()).entry(op).or_default() += 1;
    }

    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(10))
            .with_max_times(self.settings.throttle_retries)
            .with_jitter()
    }

    /// Runs a call, retrying throttling with backoff. Mutating calls take a bucket token first.
    async fn call<T, F, Fut>(&self, op: &'static str, mutating: bool, f: F) -> Result<T, ProvisionError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, ProvisionError>>,
    {
        (|| async {
            if mutating {
                self.bucket.take().await;
            }
            self.count(op);
            f().await
        })
        .retry(self.backoff())
        .when(|e| matches!(e, ProvisionError::Throttled(_)))
        .notify(|e, wait| tracing::warn!(op, error = %e, ?wait, "EC2 throttled; backing off"))
        .await
    }

    async fn subnet_zones(&self) -> Result<&[(String, String)], ProvisionError> {
        let v = self
            .subnet_zones
            .get_or_try_init(|| async {
                if self.settings.subnet_ids.is_empty() {
                    return Ok(Vec::new());
                }
                let out = self
                    .call("DescribeSubnets", false, || async {
                        self.client
                            .describe_subnets()
                            .set_subnet_ids(Some(self.settings.subnet_ids.clone()))
                            .send()
                            .await
                            .map_err(|e| sdk_err("DescribeSubnets", e))
                    })
                    .await?;
                let mut zones: Vec<(String, String)> = out
                    .subnets()
                    .iter()
                    .filter_map(|s| Some((s.subnet_id()?.to_string(), s.availability_zone()?.to_string())))
                    .collect();
                // Keep the operator's order.
                zones.sort_by_key(|(id, _)| self.settings.subnet_ids.iter().position(|s| s == id));
                Ok::<_, ProvisionError>(zones)
            })
            .await?;
        Ok(v.as_slice())
    }

    fn is_unavailable(&self, spot: bool, instance_type: &str, zone: &str) -> bool {
        let mut m = self.unavailable.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, at| at.elapsed() < CAPACITY_MEMORY);
        m.contains_key(&(spot, instance_type.to_string(), zone.to_string()))
    }

    fn mark_unavailable(&self, spot: bool, instance_type: &str, zone: &str) {
        self.unavailable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((spot, instance_type.to_string(), zone.to_string()), Instant::now());
    }

    fn to_instance(&self, i: &aws_sdk_ec2::types::Instance) -> Option<Instance> {
        let tags = i.tags();
        let state = match i.state().and_then(|s| s.name()) {
            Some(InstanceStateName::Pending) => InstanceState::Pending,
            Some(InstanceStateName::Running) => InstanceState::Running,
            Some(InstanceStateName::Terminated) => InstanceState::Terminated,
            Some(InstanceStateName::Stopped) => InstanceState::Stopped,
            _ => InstanceState::Stopping,
        };
        let (host, port) = match &self.settings.ssh_address_override {
            Some(addr) => {
                let (h, p) = addr.rsplit_once(':')?;
                (Some(h.to_string()), p.parse().ok()?)
            }
            None => {
                let ip = if self.settings.use_public_ip { i.public_ip_address() } else { i.private_ip_address() };
                (ip.map(str::to_string), 22)
            }
        };
        Some(Instance {
            instance_id: i.instance_id()?.to_string(),
            vm_id: tag_value(tags, TAG_VM).map(str::to_string),
            install_id: tag_value(tags, TAG_INSTALL)?.to_string(),
            state,
            host,
            ssh_port: port,
            host_key: None,
            zone: i.placement().and_then(|p| p.availability_zone()).unwrap_or_default().to_string(),
            instance_type: i.instance_type().map(|t| t.as_str().to_string()),
            launched_at_ms: ms(i.launch_time()),
        })
    }

    async fn describe_filtered(&self, filters: Vec<Filter>) -> Result<Vec<Instance>, ProvisionError> {
        let states = Filter::builder()
            .name("instance-state-name")
            .set_values(Some(vec![
                "pending".into(),
                "running".into(),
                "stopping".into(),
                "stopped".into(),
                "shutting-down".into(),
            ]))
            .build();
        let filters: Vec<Filter> = filters.into_iter().chain([states]).collect();
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .call("DescribeInstances", false, || async {
                    self.client
                        .describe_instances()
                        .set_filters(Some(filters.clone()))
                        .max_results(1000)
                        .set_next_token(token.clone())
                        .send()
                        .await
                        .map_err(|e| sdk_err("DescribeInstances", e))
                })
                .await?;
            for r in page.reservations() {
                out.extend(r.instances().iter().filter_map(|i| self.to_instance(i)));
            }
            token = page.next_token().filter(|t| !t.is_empty()).map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        out.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        Ok(out)
    }

    /// A mutating call over instance ids, 1000 a call. One unknown id fails a whole batch, so
    /// that batch is retried one id at a time; an unknown id on its own is success when
    /// `gone_ok` (terminating what is gone) and `NotFound` otherwise.
    async fn per_instances<F, Fut, E, R>(
        &self,
        op: &'static str,
        instance_ids: &[String],
        gone_ok: bool,
        f: F,
    ) -> Result<(), ProvisionError>
    where
        F: Fn(Vec<String>) -> Fut,
        Fut: std::future::Future<Output = Result<(), aws_sdk_ec2::error::SdkError<E, R>>>,
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        let one_call = |ids: &[String]| {
            let ids = ids.to_vec();
            let f = &f;
            async move { self.call(op, true, || async { f(ids.clone()).await.map_err(|e| sdk_err(op, e)) }).await }
        };
        for chunk in instance_ids.chunks(1000) {
            match one_call(chunk).await {
                Err(ProvisionError::NotFound(_)) if chunk.len() > 1 => {
                    for id in chunk {
                        match one_call(std::slice::from_ref(id)).await {
                            Err(ProvisionError::NotFound(_)) if gone_ok => {}
                            r => r?,
                        }
                    }
                }
                Err(ProvisionError::NotFound(_)) if gone_ok => {}
                r => r?,
            }
        }
        Ok(())
    }

    async fn run_one(
        &self,
        spec: &LaunchSpec,
        instance_type: &str,
        subnet: Option<&str>,
        spot: bool,
        token: &str,
    ) -> Result<Instance, ProvisionError> {
        let name = format!("vmfleet-{}", spec.vm_id);
        let mut tags = vec![
            tag(TAG_INSTALL, &spec.install_id),
            tag(TAG_VM, &spec.vm_id),
            tag(TAG_POOL, &spec.pool),
            tag("Name", &name),
        ];
        tags.extend(spec.tags.iter().map(|(k, v)| tag(k, v)));
        let user_data = match spec.platform {
            Platform::Linux => linux_user_data(&spec.ssh_user, &spec.ssh_public_key),
            Platform::Windows => windows_user_data(&spec.ssh_public_key),
        };
        let out = self
            .call("RunInstances", true, || async {
                let mut req = self
                    .client
                    .run_instances()
                    .image_id(&spec.image_id)
                    .instance_type(InstanceType::from(instance_type))
                    .min_count(1)
                    .max_count(1)
                    .client_token(token)
                    .user_data(base64::engine::general_purpose::STANDARD.encode(&user_data))
                    .metadata_options(
                        InstanceMetadataOptionsRequest::builder().http_tokens(HttpTokensState::Required).build(),
                    )
                    .tag_specifications(
                        TagSpecification::builder()
                            .resource_type(ResourceType::Instance)
                            .set_tags(Some(tags.clone()))
                            .build(),
                    )
                    .tag_specifications(
                        TagSpecification::builder()
                            .resource_type(ResourceType::Volume)
                            .set_tags(Some(tags.clone()))
                            .build(),
                    );
                if let Some(s) = subnet {
                    req = req.subnet_id(s);
                }
                if spot {
                    req = req.instance_market_options(
                        InstanceMarketOptionsRequest::builder()
                            .market_type(MarketType::Spot)
                            .spot_options(
                                SpotMarketOptions::builder()
                                    .spot_instance_type(SpotInstanceType::OneTime)
                                    .instance_interruption_behavior(InstanceInterruptionBehavior::Terminate)
                                    .build(),
                            )
                            .build(),
                    );
                }
                if spec.hibernate && !spot {
                    req = req.hibernation_options(HibernationOptionsRequest::builder().configured(true).build());
                }
                if let Some(sg) = &self.settings.security_group_id {
                    req = req.security_group_ids(sg);
                }
                if let Some(p) = &self.settings.instance_profile {
                    req = req.iam_instance_profile(IamInstanceProfileSpecification::builder().name(p).build());
                }
                req.send().await.map_err(|e| sdk_err("RunInstances", e))
            })
            .await?;
        out.instances()
            .first()
            .and_then(|i| self.to_instance(i))
            .ok_or_else(|| ProvisionError::Other("RunInstances returned no instance".into()))
    }

    async fn wait_volume(&self, volume_id: &str, want: VolumeState) -> Result<(), ProvisionError> {
        for _ in 0..120 {
            let out = self
                .call("DescribeVolumes", false, || async {
                    self.client
                        .describe_volumes()
                        .volume_ids(volume_id)
                        .send()
                        .await
                        .map_err(|e| sdk_err("DescribeVolumes", e))
                })
                .await?;
            if out.volumes().first().and_then(|v| v.state()) == Some(&want) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(ProvisionError::Other(format!("volume {volume_id} did not become {want} within 60 s")))
    }
}

#[async_trait]
impl Provider for Ec2Provider {
    fn kind(&self) -> &'static str {
        "ec2"
    }

    async fn describe_image(&self, image_id: &str) -> Result<Option<crate::ImageFacts>, ProvisionError> {
        let out = self
            .call("DescribeImages", false, || async {
                self.client.describe_images().image_ids(image_id).send().await.map_err(|e| sdk_err("DescribeImages", e))
            })
            .await?;
        let Some(i) = out.images().first() else {
            return Err(ProvisionError::NotFound(format!("image {image_id} in region {}", self.settings.region)));
        };
        Ok(Some(crate::ImageFacts {
            image_id: image_id.into(),
            state: i.state().map(|s| s.as_str().to_string()).unwrap_or_default(),
            platform: if i.platform().is_some_and(|p| p.as_str().eq_ignore_ascii_case("windows")) {
                Platform::Windows
            } else {
                Platform::Linux
            },
            architecture: i.architecture().map(|a| a.as_str().to_string()).unwrap_or_default(),
        }))
    }

    fn call_counts(&self) -> BTreeMap<&'static str, u64> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn launch(&self, spec: &LaunchSpec) -> Result<Instance, ProvisionError> {
        if !spec.skip_lookup {
            let mine = vec![
                Filter::builder().name(format!("tag:{TAG_INSTALL}")).values(&spec.install_id).build(),
                Filter::builder().name(format!("tag:{TAG_VM}")).values(&spec.vm_id).build(),
            ];
            if let Some(existing) = self.describe_filtered(mine).await?.into_iter().next() {
                return Ok(existing);
            }
        }
        let subnets = self.subnet_zones().await?;
        // Spread VMs over the subnets, starting at a place derived from the VM id.
        let start = spec.vm_id.bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
        let placements: Vec<(Option<&str>, &str)> = if subnets.is_empty() {
            vec![(None, "")]
        } else {
            (0..subnets.len())
                .map(|i| &subnets[(start + i) % subnets.len()])
                .map(|(s, z)| (Some(s.as_str()), z.as_str()))
                .collect()
        };
        let markets: &[bool] = match spec.capacity {
            Capacity::OnDemand => &[false],
            Capacity::Spot => &[true],
            Capacity::SpotWithFallback => &[true, false],
        };
        let mut last = None;
        let mut first = true;
        for &spot in markets {
            for instance_type in spec.instance_types() {
                for (subnet, zone) in &placements {
                    if self.is_unavailable(spot, instance_type, zone) {
                        continue;
                    }
                    // The first attempt's token is the VM id itself; a fallback is a different
                    // request and needs its own token.
                    let token = if first {
                        spec.vm_id.clone()
                    } else {
                        format!("{}-{}-{instance_type}-{zone}", spec.vm_id, if spot { "spot" } else { "od" })
                    };
                    first = false;
                    match self.run_one(spec, instance_type, *subnet, spot, &token).await {
                        Ok(i) => return Ok(i),
                        Err(ProvisionError::InsufficientCapacity(m)) => {
                            tracing::warn!(vm = %spec.vm_id, instance_type, zone, spot, "no capacity; trying the next type, zone or market");
                            self.mark_unavailable(spot, instance_type, zone);
                            last = Some(ProvisionError::InsufficientCapacity(m));
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            ProvisionError::InsufficientCapacity(format!(
                "every instance type of {} is marked out of capacity for the next minutes",
                spec.vm_id
            ))
        }))
    }

    async fn describe(&self, install_id: &str) -> Result<Vec<Instance>, ProvisionError> {
        self.describe_filtered(vec![Filter::builder().name(format!("tag:{TAG_INSTALL}")).values(install_id).build()])
            .await
    }

    async fn terminate(&self, instance_ids: &[String]) -> Result<(), ProvisionError> {
        self.per_instances("TerminateInstances", instance_ids, true, |ids| async move {
            self.client.terminate_instances().set_instance_ids(Some(ids)).send().await.map(|_| ())
        })
        .await
    }

    async fn stop(&self, instance_ids: &[String], hibernate: bool) -> Result<(), ProvisionError> {
        let stop = |hibernate: bool| {
            self.per_instances("StopInstances", instance_ids, false, move |ids| async move {
                let req = self.client.stop_instances().set_instance_ids(Some(ids));
                req.set_hibernate(hibernate.then_some(true)).send().await.map(|_| ())
            })
        };
        match stop(hibernate).await {
            // Not launched for hibernation (the pool's setting changed since), or EC2 cannot
            // hibernate it now: a plain stop still keeps the VM's first boot.
            Err(ProvisionError::Invalid(m) | ProvisionError::Other(m) | ProvisionError::InsufficientCapacity(m))
                if hibernate =>
            {
                tracing::warn!(error = %m, "hibernating stop refused; stopping plainly");
                stop(false).await
            }
            r => r,
        }
    }

    async fn start(&self, instance_ids: &[String]) -> Result<(), ProvisionError> {
        self.per_instances("StartInstances", instance_ids, false, |ids| async move {
            self.client.start_instances().set_instance_ids(Some(ids)).send().await.map(|_| ())
        })
        .await
    }

    async fn create_volume(&self, spec: &VolumeSpec) -> Result<Volume, ProvisionError> {
        let mine = vec![
            Filter::builder().name(format!("tag:{TAG_INSTALL}")).values(&spec.install_id).build(),
            Filter::builder().name(format!("tag:{TAG_VOLUME}")).values(&spec.volume_id).build(),
        ];
        if let Some(v) = self.describe_volumes_filtered(mine).await?.into_iter().next() {
            return Ok(v);
        }
        let mut tags = vec![
            tag(TAG_INSTALL, &spec.install_id),
            tag(TAG_VOLUME, &spec.volume_id),
            tag(TAG_PROJECT, &spec.project),
            tag("Name", &format!("vmfleet-dlc-{}", spec.volume_id)),
        ];
        tags.extend(spec.tags.iter().map(|(k, v)| tag(k, v)));
        let out = self
            .call("CreateVolume", true, || async {
                self.client
                    .create_volume()
                    .availability_zone(&spec.zone)
                    .size(spec.size_gb as i32)
                    .volume_type(VolumeType::Gp3)
                    .client_token(&spec.volume_id)
                    .tag_specifications(
                        TagSpecification::builder()
                            .resource_type(ResourceType::Volume)
                            .set_tags(Some(tags.clone()))
                            .build(),
                    )
                    .send()
                    .await
                    .map_err(|e| sdk_err("CreateVolume", e))
            })
            .await?;
        let id =
            out.volume_id().ok_or_else(|| ProvisionError::Other("CreateVolume returned no id".into()))?.to_string();
        self.wait_volume(&id, VolumeState::Available).await?;
        Ok(Volume {
            provider_id: id,
            volume_id: Some(spec.volume_id.clone()),
            install_id: spec.install_id.clone(),
            zone: out.availability_zone().unwrap_or(&spec.zone).to_string(),
            attached_to: None,
            created_at_ms: ms(out.create_time()),
        })
    }

    async fn describe_volumes(&self, install_id: &str) -> Result<Vec<Volume>, ProvisionError> {
        // Root volumes carry their instance's tags; DLC volumes are the ones with a volume id.
        // (Emulators may ignore the tag-key filter, hence the second check.)
        let mut volumes = self
            .describe_volumes_filtered(vec![
                Filter::builder().name(format!("tag:{TAG_INSTALL}")).values(install_id).build(),
                Filter::builder().name("tag-key").values(TAG_VOLUME).build(),
            ])
            .await?;
        volumes.retain(|v| v.volume_id.is_some());
        Ok(volumes)
    }

    async fn attach_volume(&self, provider_volume_id: &str, instance_id: &str) -> Result<(), ProvisionError> {
        let result = self
            .call("AttachVolume", true, || async {
                self.client
                    .attach_volume()
                    .volume_id(provider_volume_id)
                    .instance_id(instance_id)
                    .device("/dev/sdf")
                    .send()
                    .await
                    .map_err(|e| sdk_err("AttachVolume", e))
            })
            .await;
        if let Err(e) = result {
            // Already attached to this very instance counts as done.
            let attached_here = self
                .describe_volumes_by_id(provider_volume_id)
                .await?
                .is_some_and(|v| v.attached_to.as_deref() == Some(instance_id));
            if !attached_here {
                return Err(e);
            }
        }
        self.wait_volume(provider_volume_id, VolumeState::InUse).await
    }

    fn data_root_script(&self, provider_volume_id: &str) -> Option<String> {
        Some(docker_data_root_script(provider_volume_id))
    }

    async fn detach_volume(&self, provider_volume_id: &str, instance_id: &str) -> Result<(), ProvisionError> {
        match self.describe_volumes_by_id(provider_volume_id).await? {
            None => return Err(ProvisionError::NotFound(format!("volume {provider_volume_id}"))),
            Some(v) if v.attached_to.as_deref() != Some(instance_id) => return Ok(()),
            Some(_) => {}
        }
        self.call("DetachVolume", true, || async {
            self.client
                .detach_volume()
                .volume_id(provider_volume_id)
                .instance_id(instance_id)
                .send()
                .await
                .map_err(|e| sdk_err("DetachVolume", e))
        })
        .await?;
        self.wait_volume(provider_volume_id, VolumeState::Available).await
    }

    async fn delete_volume(&self, provider_volume_id: &str) -> Result<(), ProvisionError> {
        let result = self
            .call("DeleteVolume", true, || async {
                self.client
                    .delete_volume()
                    .volume_id(provider_volume_id)
                    .send()
                    .await
                    .map_err(|e| sdk_err("DeleteVolume", e))
            })
            .await;
        match result {
            Ok(_) | Err(ProvisionError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Ec2Provider {
    async fn describe_volumes_by_id(&self, id: &str) -> Result<Option<Volume>, ProvisionError> {
        let out = self
            .call("DescribeVolumes", false, || async {
                self.client.describe_volumes().volume_ids(id).send().await.map_err(|e| sdk_err("DescribeVolumes", e))
            })
            .await;
        match out {
            Ok(o) => Ok(o.volumes().first().and_then(to_volume)),
            Err(ProvisionError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn describe_volumes_filtered(&self, filters: Vec<Filter>) -> Result<Vec<Volume>, ProvisionError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .call("DescribeVolumes", false, || async {
                    self.client
                        .describe_volumes()
                        .set_filters(Some(filters.clone()))
                        .max_results(500)
                        .set_next_token(token.clone())
                        .send()
                        .await
                        .map_err(|e| sdk_err("DescribeVolumes", e))
                })
                .await?;
            out.extend(
                page.volumes().iter().filter(|v| v.state() != Some(&VolumeState::Deleted)).filter_map(to_volume),
            );
            token = page.next_token().filter(|t| !t.is_empty()).map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        Ok(out)
    }
}

fn to_volume(v: &aws_sdk_ec2::types::Volume) -> Option<Volume> {
    let tags = v.tags();
    Some(Volume {
        provider_id: v.volume_id()?.to_string(),
        volume_id: tag_value(tags, TAG_VOLUME).map(str::to_string),
        install_id: tag_value(tags, TAG_INSTALL).unwrap_or_default().to_string(),
        zone: v.availability_zone().unwrap_or_default().to_string(),
        attached_to: v
            .attachments()
            .iter()
            .find(|a| a.state().is_some_and(|s| s.as_str() == "attached" || s.as_str() == "attaching"))
            .and_then(|a| a.instance_id())
            .map(str::to_string),
        created_at_ms: ms(v.create_time()),
    })
}

/// The AWS SDK configuration for `settings`: region, endpoint, credentials, retries and proxy.
/// The Auto Scaling and CloudWatch clients share it with the EC2 driver.
pub async fn sdk_config(settings: &Ec2Settings) -> aws_config::SdkConfig {
    use aws_config::retry::RetryConfig;
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(settings.region.clone()))
        .retry_config(RetryConfig::adaptive().with_max_attempts(settings.sdk_max_attempts.max(1)));
    if let Some(url) = &settings.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    let endpoint =
        settings.endpoint_url.clone().unwrap_or_else(|| format!("https://ec2.{}.amazonaws.com", settings.region));
    match settings.proxy.config(&endpoint) {
        Ok(Some(proxy)) => {
            use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider as Tls};
            let client = aws_smithy_http_client::Builder::new().build_with_connector_fn(move |s, rc| {
                let mut b = aws_smithy_http_client::Connector::builder().proxy_config(proxy.clone());
                b.set_connector_settings(s.cloned());
                if let Some(sleep) = rc.and_then(|rc| rc.sleep_impl()) {
                    b.set_sleep_impl(Some(sleep));
                }
                b.tls_provider(Tls::Rustls(CryptoMode::AwsLc)).build()
            });
            loader = loader.http_client(client);
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "ignoring the proxy setting"),
    }
    if let (Some(ak), Some(sk)) = (&settings.access_key_id, &settings.secret_access_key) {
        loader = loader.credentials_provider(aws_sdk_ec2::config::Credentials::new(
            ak.clone(),
            sk.clone(),
            None,
            None,
            "vmfleet-config",
        ));
    }
    loader.load().await
}

/// Makes an attached EBS volume Docker's data root on a running instance: finds its device
/// (NVMe instances name it by volume id, older ones `/dev/xvdf`), formats it if blank, stops
/// Docker, mounts it on `/var/lib/docker` and starts Docker again. Running it twice is
/// harmless.
pub fn docker_data_root_script(volume_id: &str) -> String {
    let serial = volume_id.replace('-', "");
    format!(
        r#"set -eu
if mountpoint -q /var/lib/docker; then echo "dlc: already mounted"; exit 0; fi
dev=""
for _ in $(seq 60); do
  for d in /dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{serial} /dev/xvdf /dev/sdf; do
    if [ -b "$d" ]; then dev=$(readlink -f "$d"); break; fi
  done
  [ -n "$dev" ] && break
  sleep 1
done
[ -n "$dev" ] || {{ echo "volume {volume_id} did not appear as a block device" >&2; exit 1; }}
sudo blkid "$dev" >/dev/null 2>&1 || sudo mkfs.ext4 -q -L vmfleet-dlc "$dev"
sudo systemctl stop docker.socket docker 2>/dev/null || true
sudo mkdir -p /var/lib/docker
sudo mount "$dev" /var/lib/docker
sudo systemctl start docker 2>/dev/null || true
echo "dlc: mounted $dev on /var/lib/docker"
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_root_script_finds_the_volume_by_its_nvme_serial_and_is_idempotent() {
        let s = docker_data_root_script("vol-0abc123");
        assert!(s.contains("/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0abc123"));
        assert!(s.contains("mountpoint -q /var/lib/docker"), "a second run is a no-op");
        assert!(s.contains("mount \"$dev\" /var/lib/docker"));
        let out = std::process::Command::new("sh").arg("-n").arg("-c").arg(&s).output().expect("sh");
        assert!(out.status.success(), "valid shell: {}", String::from_utf8_lossy(&out.stderr));
    }

    #[test]
    fn user_data_installs_the_key() {
        let l = linux_user_data("circleci", "ssh-ed25519 AAAA vm-1\n");
        assert!(l.starts_with("#cloud-config\n"));
        assert!(l.contains("name: circleci") && l.contains("- ssh-ed25519 AAAA vm-1\n"));
        let w = windows_user_data("ssh-ed25519 AAAA vm-1");
        assert!(
            w.starts_with("<powershell>") && w.contains("'ssh-ed25519 AAAA vm-1'") && w.contains("Start-Service sshd")
        );
    }

    #[test]
    fn proxies_follow_the_environment_and_skip_metadata() {
        let env = |k: &str| match k {
            "https_proxy" => Some("http://proxy:3128".to_string()),
            "NO_PROXY" => Some("internal.example".to_string()),
            _ => None,
        };
        let p = ProxySettings::from_env(env);
        assert_eq!(p.https.as_deref(), Some("http://proxy:3128"));
        assert_eq!(p.http, None);
        assert_eq!(p.for_endpoint("https://ec2.us-east-1.amazonaws.com"), Some("http://proxy:3128"));
        assert_eq!(p.for_endpoint("http://127.0.0.1:5000"), None);
        assert!(p.bypass().starts_with("internal.example,") && p.bypass().contains("169.254.169.254"));
        assert!(ProxySettings::default().bypass().contains("169.254.169.254"));
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let s = Ec2Settings { secret_access_key: Some("wJalrXUtnFEMI".into()), ..Default::default() };
        assert!(!format!("{s:?}").contains("wJalrXUtnFEMI"));
    }

    // Virtual time: the clock only moves when every task sleeps, so this checks the bucket's
    // arithmetic, not the machine's speed.
    #[tokio::test(start_paused = true)]
    async fn bucket_spaces_calls_beyond_the_burst() {
        let b = Bucket::new(10.0, 2);
        let t = tokio::time::Instant::now();
        b.take().await;
        b.take().await;
        assert_eq!(t.elapsed(), Duration::ZERO, "the burst is free");
        b.take().await;
        b.take().await;
        let waited = t.elapsed();
        assert!(waited >= Duration::from_millis(199) && waited <= Duration::from_millis(201), "{waited:?}");
    }
}
