//! A CI trace (CSV), as `vmfleet simulate --trace` reads it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = vmfleet_sim::trace::parse_trace(text, "fuzz.csv");
});
