//! The virtio-net worker over queues whose placement, rings, descriptors and buffers are
//! all the fuzzer's, with frames coming in from the backend; the fake backend fails the
//! target if the device hands it a chain outside the bounds the device promises.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| devices::virtio::net::fuzzing::run(data));
