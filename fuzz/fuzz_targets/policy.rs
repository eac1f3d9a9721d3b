//! A policy file on top of the default configuration, as `policies validate` reads it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmfleet::config::Config;
use vmfleet::policy::Policies;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = Policies::from_texts(&[("fuzz.yaml".into(), text.to_string())], &Config::default());
});
