//! The manifest, from YAML text to a resolved `VmConfig`: what `vmm validate` and `vmm run`
//! do with a file before anything else. No input may panic; a manifest that loads must
//! print back (`vmm validate`) as YAML that loads again to the same manifest.

#![no_main]

use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use vmm::config::{self, VmConfig};

fn load(text: &str) -> Result<config::Manifest, config::ManifestError> {
    config::documents::parse(text, Path::new("fuzz.yaml"), PathBuf::from("/nonexistent"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let manifest = match load(text) {
        Ok(m) => m,
        Err(e) => {
            // The message is what the user sees; building it must not panic either.
            let _ = e.to_string();
            return;
        }
    };
    let _ = VmConfig::from_manifest(&manifest);
    for attachment in &manifest.network_attachments {
        let _ = manifest.network_attachment(&attachment.metadata.name);
    }
    let printed = config::to_yaml(&manifest)
        .unwrap_or_else(|e| panic!("a loaded manifest does not print: {e}"));
    let again = load(&printed).unwrap_or_else(|e| {
        panic!("the printed manifest does not load again: {e}\n--- printed:\n{printed}")
    });
    assert_eq!(again.vm, manifest.vm, "printed:\n{printed}");
    assert_eq!(again.network_attachments, manifest.network_attachments);
    assert_eq!(again.secrets, manifest.secrets);
});
