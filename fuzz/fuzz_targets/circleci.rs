//! The CircleCI config parser and resolver: parse, classify every job, expand the workflows,
//! and resolve every job and instance by name, as `jobs validate` and a submission do.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use vmfleet::jobs::circleci::{ConfigFile, Pipeline};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(cfg) = ConfigFile::parse(text, "fuzz.yml") else { return };
    let mut names = cfg.job_names();
    let _ = cfg.summaries();
    if let Ok(w) = cfg.workflow_jobs() {
        names.extend(w.into_iter().map(|w| w.name));
    }
    for name in names.iter().take(50) {
        let _ = cfg.job(name, &BTreeMap::new(), &Pipeline::default());
    }
});
