//! A packer manifest, with and without a build named.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = vmfleet_images::packer::parse_manifest(text, "fuzz.json", None);
    let _ = vmfleet_images::packer::parse_manifest(text, "fuzz.json", Some("linux"));
});
