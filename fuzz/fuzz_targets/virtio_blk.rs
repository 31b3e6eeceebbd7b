//! The virtio-blk worker over a queue whose placement, rings, descriptors, request headers
//! and buffers are the fuzzer's, on an in-memory disk of the fuzzer's size that fails the
//! target if the device asks for a byte past its end, writes to it when it is read-only,
//! or uses a range operation it did not offer.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| devices::virtio::block::fuzzing::run(data));
