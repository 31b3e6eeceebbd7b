//! The virtio-net control queue (multiqueue's `VQ_PAIRS_SET`) over rings, descriptors and
//! commands that are all the fuzzer's; the number of enabled pairs must stay in bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| devices::virtio::net::fuzzing::run_control(data));
