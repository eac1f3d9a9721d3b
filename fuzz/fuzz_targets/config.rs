//! The configuration file, with one environment override so the override path runs too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmfleet::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = Config::parse(text, "fuzz.yaml", Vec::new());
    let _ = Config::parse(text, "fuzz.yaml", vec![("VMFLEET__TIMEOUTS__VM_START".to_string(), "120s".to_string())]);
});
