//! Reading the configuration: files, environment overrides, checks, and what follows from it.

use super::*;

impl Config {
    /// The EC2 driver's settings (shared with the Auto Scaling and CloudWatch clients).
    pub fn ec2_settings(&self) -> vmfleet_provisioner::ec2::Ec2Settings {
        let e = &self.provider.ec2;
        vmfleet_provisioner::ec2::Ec2Settings {
            region: e.region.clone(),
            endpoint_url: e.endpoint_url.clone(),
            subnet_ids: e.subnet_ids.clone(),
            security_group_id: e.security_group_id.clone(),
            instance_profile: e.instance_profile.clone(),
            use_public_ip: self.provider.use_public_ip,
            access_key_id: e.access_key_id.clone(),
            secret_access_key: e.secret_access_key.as_ref().map(|s| s.0.clone()),
            ssh_address_override: e.ssh_address_override.clone(),
            mutations_per_second: e.mutations_per_second,
            mutation_burst: e.mutation_burst,
            sdk_max_attempts: e.sdk_max_attempts,
            throttle_retries: e.throttle_retries,
            proxy: {
                let env = vmfleet_provisioner::ec2::ProxySettings::from_env(|k| std::env::var(k).ok());
                let p = &self.proxy;
                vmfleet_provisioner::ec2::ProxySettings {
                    http: p.http.as_ref().map(|s| s.0.clone()).or(env.http),
                    https: p.https.as_ref().map(|s| s.0.clone()).or(env.https),
                    no_proxy: p.no_proxy.clone().or(env.no_proxy),
                }
            },
        }
    }

    /// Loads `path` (or the defaults when `None`), then applies `VMFLEET__…` variables from
    /// `env`, then validates.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and line, or the variable, and the key.
    pub fn load(path: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let (text, origin) = match path {
            Some(p) => (
                std::fs::read_to_string(p)
                    .map_err(|e| ConfigError { origin: p.display().to_string(), message: e.to_string() })?,
                p.display().to_string(),
            ),
            None => (String::new(), "defaults".to_string()),
        };
        Self::parse(&text, &origin, env)
    }

    /// Parses YAML text; see [`Config::load`].
    ///
    /// # Errors
    /// [`ConfigError`].
    pub fn parse(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let text = if text.trim().is_empty() { "{}" } else { text };
        let mut cfg: Config = from_yaml_str(text, origin)?;
        let overrides: Vec<(String, String)> = env.into_iter().filter(|(k, _)| k.starts_with("VMFLEET__")).collect();
        if !overrides.is_empty() {
            let mut value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text)
                .map_err(|e| ConfigError { origin: origin.into(), message: e.to_string() })?;
            for (k, v) in &overrides {
                let path: Vec<String> = k["VMFLEET__".len()..].split("__").map(str::to_ascii_lowercase).collect();
                if path.iter().any(String::is_empty) {
                    return Err(ConfigError { origin: k.clone(), message: "empty key segment".into() });
                }
                let scalar: serde_yaml_ng::Value =
                    serde_yaml_ng::from_str(v).unwrap_or(serde_yaml_ng::Value::String(v.clone()));
                set_path(&mut value, &path, scalar).map_err(|m| ConfigError { origin: k.clone(), message: m })?;
            }
            let names: Vec<&str> = overrides.iter().map(|(k, _)| k.as_str()).collect();
            cfg = serde_path_to_error::deserialize(value).map_err(|e| ConfigError {
                origin: format!("environment ({})", names.join(", ")),
                message: format!("{}: {}", e.path(), e.inner()),
            })?;
        }
        cfg.validate(text, origin)?;
        Ok(cfg)
    }

    /// Checks one pool (of the configuration or a policy file) against the resource classes
    /// and images. On failure: the key under `prefix`, a text to find its line by, and why.
    pub(crate) fn check_pool(
        &self,
        prefix: &str,
        pool: &PoolConfig,
        catalog: &vmfleet_images::Catalog,
    ) -> Result<(), (String, String, String)> {
        let fail =
            |key: &str, needle: &str, message: String| Err((format!("{prefix}.{key}"), needle.to_string(), message));
        let Some(rc) = self.resource_classes.get(&pool.resource_class) else {
            return fail(
                "resource_class",
                &pool.resource_class,
                format!("unknown resource class {:?}", pool.resource_class),
            );
        };
        let req = requirement(pool.executor, rc);
        match catalog.resolve(&pool.image, &req) {
            // Registered images and aliases live in the store; the service checks those.
            Ok(_) | Err(vmfleet_images::ImageError::Unknown(_)) => {}
            Err(e) => return fail("image", &pool.image, e.to_string()),
        }
        if !(pool.max_replace_share > 0.0 && pool.max_replace_share <= 1.0) {
            return fail(
                "max_replace_share",
                "max_replace_share",
                format!("{} is not a share above 0 and at most 1", pool.max_replace_share),
            );
        }
        if !(0.0..=10.0).contains(&pool.scale_factor) {
            return fail("scale_factor", "scale_factor", format!("{} is not between 0 and 10", pool.scale_factor));
        }
        if let Some(max) = pool.max_instances {
            if max < pool.min_idle {
                return fail("max_instances", "max_instances", format!("{max} is below min_idle {}", pool.min_idle));
            }
        }
        for (j, w) in pool.schedules.iter().enumerate() {
            if let Err(m) = vmfleet_scaler::CronWindow::parse(&w.cron, &w.timezone) {
                let needle = if m.contains("time zone") { &w.timezone } else { &w.cron };
                return fail(&format!("schedules[{j}]"), needle, m);
            }
            if let Some(max) = pool.max_instances.filter(|m| *m < w.min_idle) {
                return fail(
                    &format!("schedules[{j}].min_idle"),
                    &w.cron,
                    format!("{} is above the pool's max_instances {max}", w.min_idle),
                );
            }
        }
        let forecasts = [
            ("forecast", pool.forecast.as_ref()),
            ("stopped.forecast", pool.stopped.as_ref().and_then(|s| s.forecast.as_ref())),
        ];
        for (key, f) in forecasts.into_iter().filter_map(|(k, f)| Some((k, f?))) {
            if !(0.0..=1.0).contains(&f.quantile) {
                return fail(&format!("{key}.quantile"), "quantile", format!("{} is not between 0 and 1", f.quantile));
            }
            if !(0.0..=1.0).contains(&f.recent_weight) {
                return fail(
                    &format!("{key}.recent_weight"),
                    "recent_weight",
                    format!("{} is not between 0 and 1", f.recent_weight),
                );
            }
            if f.horizon < Duration::from_secs(60) {
                return fail(&format!("{key}.horizon"), "horizon", "must be at least 1m".into());
            }
        }
        if let Some(st) = &pool.stopped {
            if let Some(max) = st.max.filter(|m| *m < st.min) {
                return fail("stopped.max", "max", format!("{max} is below stopped.min {}", st.min));
            }
            if let Some(max) = pool.max_instances.filter(|m| *m < pool.min_idle + st.min) {
                return fail(
                    "stopped.min",
                    "min",
                    format!("min_idle {} and stopped.min {} do not fit in max_instances {max}", pool.min_idle, st.min),
                );
            }
        }
        if let Some(st) = &pool.step_scaling {
            if st.alarm.trim().is_empty() {
                return fail("step_scaling.alarm", "alarm", "must name a CloudWatch alarm".into());
            }
            if vmfleet_scaler::step::AdjustmentType::parse(&st.adjustment_type).is_none() {
                return fail(
                    "step_scaling.adjustment_type",
                    &st.adjustment_type,
                    format!("{:?}: use ChangeInCapacity, PercentChangeInCapacity or ExactCapacity", st.adjustment_type),
                );
            }
            if let Err(m) = vmfleet_scaler::step::validate_steps(&steps(&st.steps)) {
                return fail("step_scaling.steps", "steps", m);
            }
        }
        Ok(())
    }

    fn validate(&self, text: &str, origin: &str) -> Result<(), ConfigError> {
        let err = |key: &str, needle: &str, message: String| ConfigError {
            origin: match line_of(text, needle) {
                Some(l) => format!("{origin}:{l}"),
                None => origin.to_string(),
            },
            message: format!("{key}: {message}"),
        };
        if let Some(id) = &self.install_id {
            if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return Err(err("install_id", "install_id", "use 1 to 64 letters, digits or '-'".into()));
            }
        }
        if let Some(url) = &self.database.url {
            if !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(err(
                    "database.url",
                    "url",
                    format!("{} is neither sqlite:PATH nor postgres://…", crate::store::redact_url(url)),
                ));
            }
        }
        if self.provider.kind == ProviderKind::Ec2 {
            let e = &self.provider.ec2;
            if e.region.trim().is_empty() {
                return Err(err("provider.ec2.region", "ec2", "required with provider.kind: ec2".into()));
            }
            if e.access_key_id.is_some() != e.secret_access_key.is_some() {
                return Err(err(
                    "provider.ec2.secret_access_key",
                    "access_key_id",
                    "access_key_id and secret_access_key go together".into(),
                ));
            }
            if e.mutations_per_second <= 0.0 {
                return Err(err(
                    "provider.ec2.mutations_per_second",
                    "mutations_per_second",
                    "must be above zero".into(),
                ));
            }
        }
        if self.resource_classes.is_empty() {
            return Err(err("resource_classes", "resource_classes", "at least one resource class is needed".into()));
        }
        for (name, rc) in &self.resource_classes {
            if rc.instance_type.trim().is_empty() {
                return Err(err(&format!("resource_classes.{name}.instance_type"), name, "must not be empty".into()));
            }
        }
        let catalog = self.catalog();
        for (i, pool) in self.pools.iter().enumerate() {
            if let Err((key, needle, message)) = self.check_pool(&format!("pools[{i}]"), pool, &catalog) {
                return Err(err(&key, &needle, message));
            }
        }
        for t in &self.auth.tokens {
            if t.sha256.len() != 64 || !t.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(err(
                    &format!("auth.tokens[{}].sha256", t.name),
                    &t.name,
                    "must be 64 hex digits (the SHA-256 of the token, never the token itself)".into(),
                ));
            }
            for s in &t.scopes {
                if crate::domain::Scope::parse(s).is_none() {
                    return Err(err(
                        &format!("auth.tokens[{}].scopes", t.name),
                        s,
                        format!("unknown scope {s:?}; use admin, operator, agent, image-publisher or secrets"),
                    ));
                }
            }
        }
        if self.reconcile_interval.is_zero() {
            return Err(err("reconcile_interval", "reconcile_interval", "must be above zero".into()));
        }
        if let Some(d) = &self.metrics_out.dogstatsd {
            if d.address.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
                return Err(err(
                    "metrics_out.dogstatsd.address",
                    "address",
                    format!("{:?} is not host:port", d.address),
                ));
            }
        }
        if let Some(c) = &self.metrics_out.cloudwatch {
            if c.namespace.is_empty() || c.namespace.starts_with("AWS/") {
                return Err(err(
                    "metrics_out.cloudwatch.namespace",
                    "namespace",
                    format!("{:?}: use a namespace of your own (not empty, not AWS/…)", c.namespace),
                ));
            }
        }
        if self.gc.interval.is_zero() {
            return Err(err("gc.interval", "interval", "must be above zero".into()));
        }
        if self.gc.volumes_per_project == 0 {
            return Err(err("gc.volumes_per_project", "volumes_per_project", "must be at least 1".into()));
        }
        Ok(())
    }

    /// The image catalog: built-ins plus the operator's custom AMIs and images.
    pub fn catalog(&self) -> Catalog {
        let mut c = Catalog::builtin();
        let mut custom =
            |name: &str, alias: &str, amis: &BTreeMap<String, String>, executors: Vec<Executor>, platform, gpu| {
                if amis.is_empty() {
                    return;
                }
                c.add(Image {
                    name: name.into(),
                    version: "custom".into(),
                    platform,
                    arch: Arch::X86_64,
                    executors,
                    gpu,
                    amis: amis.clone(),
                });
                c.alias(alias, &format!("{name}:custom"));
            };
        let im = &self.images;
        custom(
            "custom-linux",
            "default",
            &im.custom_linux,
            vec![Executor::Machine, Executor::RemoteDocker],
            Platform::Linux,
            false,
        );
        custom(
            "custom-remote-docker",
            "docker-default",
            &im.custom_remote_docker,
            vec![Executor::RemoteDocker],
            Platform::Linux,
            false,
        );
        custom(
            "custom-windows",
            "windows-default",
            &im.custom_windows,
            vec![Executor::Machine],
            Platform::Windows,
            false,
        );
        custom("custom-gpu", "gpu-default", &im.custom_gpu, vec![Executor::Machine], Platform::Linux, true);
        for img in &im.extra {
            c.add(img.clone());
        }
        for (alias, target) in &im.aliases {
            c.alias(alias, target);
        }
        c
    }

    /// The database URL: the configured one, or SQLite in the data directory.
    pub fn database_url(&self) -> String {
        self.database.url.clone().unwrap_or_else(|| format!("sqlite:{}", self.data_dir.join("vmfleet.db").display()))
    }

    /// Where the generated admin token is written.
    pub fn admin_token_path(&self) -> PathBuf {
        self.data_dir.join("admin.token")
    }

    /// The secrets key file.
    pub fn secrets_key_path(&self) -> PathBuf {
        self.secrets.key_file.clone().unwrap_or_else(|| self.data_dir.join("secrets.key"))
    }

    /// The filesystem object store's directory.
    pub fn objects_path(&self) -> PathBuf {
        self.storage.path.clone().unwrap_or_else(|| self.data_dir.join("objects"))
    }

    /// The object store this configuration names.
    ///
    /// # Errors
    /// As [`crate::objects::open`].
    pub async fn object_store(
        &self,
    ) -> Result<std::sync::Arc<dyn crate::objects::ObjectStore>, crate::objects::ObjectError> {
        crate::objects::open(&self.storage, &self.objects_path(), self.ec2_settings()).await
    }
}

/// What a resource class needs from an image.
pub fn requirement(executor: Executor, rc: &ResourceClass) -> vmfleet_images::Requirement {
    vmfleet_images::Requirement { executor, platform: rc.platform, arch: rc.arch, gpu: rc.gpus > 0 }
}

/// What one configuration or policy file may hold: real ones are a few hundred nodes.
pub const YAML_LIMITS: crate::yaml::Limits =
    crate::yaml::Limits { bytes: 1 << 20, nodes: 100_000, text: 4 << 20, depth: 32 };

/// Deserializes YAML, reporting the key path and line of the first error.
///
/// # Errors
/// [`ConfigError`] as `origin:line: path: message`.
pub fn from_yaml_str<T: serde::de::DeserializeOwned>(text: &str, origin: &str) -> Result<T, ConfigError> {
    // The typed deserializer has no bound on aliases or nesting of its own; the tree reader
    // checks them (and stops at the first node past a limit) before it runs.
    crate::yaml::parse_within(text, YAML_LIMITS)
        .map_err(|e| ConfigError { origin: format!("{origin}:{}", e.line), message: e.message })?;
    let de = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let origin = match inner.location() {
            Some(l) => format!("{origin}:{}", l.line()),
            None => origin.to_string(),
        };
        let message = if path == "." { inner.to_string() } else { format!("{path}: {inner}") };
        ConfigError { origin, message }
    })
}

pub(super) fn set_path(
    v: &mut serde_yaml_ng::Value,
    path: &[String],
    leaf: serde_yaml_ng::Value,
) -> Result<(), String> {
    use serde_yaml_ng::Value;
    let Some((head, rest)) = path.split_first() else {
        *v = leaf;
        return Ok(());
    };
    if v.is_null() {
        *v = Value::Mapping(Default::default());
    }
    match v {
        Value::Mapping(m) => {
            let entry = m.entry(Value::String(head.clone())).or_insert(Value::Null);
            set_path(entry, rest, leaf)
        }
        Value::Sequence(s) => {
            let i: usize = head.parse().map_err(|_| format!("{head} is not a list index"))?;
            let item = s.get_mut(i).ok_or_else(|| format!("list has no item {i}"))?;
            set_path(item, rest, leaf)
        }
        _ => Err(format!("{head} is inside a value that is not a section")),
    }
}

/// The 1-based line of the first line containing `needle` as a word-ish match.
pub(super) fn line_of(text: &str, needle: &str) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    text.lines().position(|l| l.contains(needle)).map(|i| i + 1)
}

/// Steps as the planner takes them.
pub fn steps(steps: &[StepConfig]) -> Vec<vmfleet_scaler::step::Step> {
    steps
        .iter()
        .map(|s| vmfleet_scaler::step::Step { lower: s.lower, upper: s.upper, adjustment: s.adjustment })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    #[test]
    fn defaults_follow_the_operations_guide() {
        let c = Config::parse("", "t", no_env()).expect("defaults");
        assert_eq!(c.timeouts.ssh_connect, Duration::from_secs(180));
        assert_eq!(c.timeouts.vm_start, Duration::from_secs(300));
        assert_eq!(c.timeouts.long_running_task, Duration::from_secs(21600));
        assert_eq!(c.timeouts.dlc_inactivity, Duration::from_secs(14 * 86400));
        assert!(!c.provider.use_public_ip);
        assert_eq!(c.listen.port(), 3001);
        assert_eq!(c.resource_classes.len(), 12);
        assert_eq!(c.resource_classes["arm.large"].arch, Arch::Arm64);
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = "listen: 127.0.0.1:3001\ntimeouts:\n  ssh_conect: 10s\n";
        let e = Config::parse(text, "vmfleet.yaml", no_env()).expect_err("typo");
        assert_eq!(e.origin, "vmfleet.yaml:3");
        assert!(e.message.contains("ssh_conect"), "{e}");
        assert!(e.message.contains("timeouts"), "{e}");
    }

    #[test]
    fn hostile_yaml_is_refused_with_its_line_and_limit() {
        let mut text = String::from("x0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..9 {
            text += &format!("x{i}: &a{i} [{}]\n", vec![format!("*a{}", i - 1); 10].join(", "));
        }
        text += "pools: *a8\n";
        let e = Config::parse(&text, "vmfleet.yaml", no_env()).expect_err("laughs");
        assert_eq!(e.origin, "vmfleet.yaml:5", "{e}");
        assert!(e.message.contains("past 100000 nodes"), "{e}");
    }

    #[test]
    fn semantic_errors_name_key_and_line() {
        let text = "pools:\n  - executor: machine\n    resource_class: hugeish\n";
        let e = Config::parse(text, "f.yaml", no_env()).expect_err("bad class");
        assert_eq!(e.origin, "f.yaml:3");
        assert!(e.message.starts_with("pools[0].resource_class"), "{e}");
        let text = "pools:\n  - executor: machine\n    resource_class: windows.medium\n";
        let e = Config::parse(text, "f.yaml", no_env()).expect_err("linux image on windows class");
        assert!(e.message.contains("pools[0].image"), "{e}");
    }

    #[test]
    fn environment_overrides_keys() {
        let env = vec![
            ("VMFLEET__TIMEOUTS__SSH_CONNECT".to_string(), "20s".to_string()),
            ("VMFLEET__PROVIDER__USE_PUBLIC_IP".to_string(), "true".to_string()),
            ("VMFLEET__DATABASE__MAX_CONNECTIONS".to_string(), "3".to_string()),
            ("OTHER".to_string(), "x".to_string()),
        ];
        let c = Config::parse("timeouts:\n  vm_start: 100s\n", "t", env).expect("env");
        assert_eq!(c.timeouts.ssh_connect, Duration::from_secs(20));
        assert_eq!(c.timeouts.vm_start, Duration::from_secs(100));
        assert!(c.provider.use_public_ip);
        assert_eq!(c.database.max_connections, 3);
        let bad = vec![("VMFLEET__TIMEOUTS__NOPE".to_string(), "1s".to_string())];
        let e = Config::parse("", "t", bad).expect_err("unknown env key");
        assert!(e.origin.contains("VMFLEET__TIMEOUTS__NOPE") && e.message.contains("nope"), "{e}");
    }

    #[test]
    fn custom_amis_take_over_aliases() {
        let text = "images:\n  custom_windows: {us-east-1: ami-0win}\n";
        let c = Config::parse(text, "t", no_env()).expect("custom");
        let cat = c.catalog();
        let req = requirement(Executor::Machine, &c.resource_classes["windows.medium"]);
        let img = cat.resolve("windows-default", &req).expect("windows");
        assert_eq!(cat.ami(img, "us-east-1").expect("ami"), "ami-0win");
    }

    #[test]
    fn ec2_needs_a_region_and_hides_its_secret() {
        let e = Config::parse("provider:\n  kind: ec2\n", "t", no_env()).expect_err("no region");
        assert!(e.message.contains("provider.ec2.region"), "{e}");
        let text = "provider:\n  kind: ec2\n  ec2:\n    region: us-east-1\n    access_key_id: AKIAEXAMPLE\n    secret_access_key: wJalrXUtnFEMIsecret\n";
        let c = Config::parse(text, "t", no_env()).expect("ec2");
        assert!(!format!("{c:?}").contains("wJalrXUtnFEMIsecret"));
        assert!(!serde_json::to_string(&c).expect("json").contains("wJalrXUtnFEMIsecret"));
        let half = "provider:\n  kind: ec2\n  ec2:\n    region: us-east-1\n    access_key_id: AKIAEXAMPLE\n";
        assert!(Config::parse(half, "t", no_env()).is_err());
    }

    #[test]
    fn pools_take_capacity_and_ordered_types() {
        let text = "pools:\n  - executor: machine\n    min_idle: 2\n    capacity: spot-with-fallback\n    instance_types: [m5.large, m5a.large]\n";
        let c = Config::parse(text, "t", no_env()).expect("pool");
        assert_eq!(c.pools[0].capacity, vmfleet_provisioner::Capacity::SpotWithFallback);
        assert_eq!(c.pools[0].instance_types, ["m5.large", "m5a.large"]);
        let e = Config::parse("pools:\n  - executor: machine\n    capacity: cheap\n", "f", no_env()).expect_err("bad");
        assert_eq!(e.origin, "f:3", "{e}");
    }

    #[test]
    fn token_must_be_a_hash() {
        let text = "auth:\n  tokens:\n    - name: ci\n      sha256: plaintext-token\n      scopes: [agent]\n";
        let e = Config::parse(text, "t", no_env()).expect_err("plaintext");
        assert!(e.message.contains("64 hex"), "{e}");
        assert!(!e.to_string().contains("plaintext-token"), "the value must not be echoed: {e}");
    }
}
