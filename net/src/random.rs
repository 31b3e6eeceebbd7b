//! Random bytes, for everything in vmm that needs them (smoltcp's seed, generated MACs):
//! the kernel's `getrandom(2)`, which needs no file and so works in a confined thread.

/// Fills `buf` with random bytes. Should the kernel refuse (it does not on any Linux vmm
/// runs on), the clock's nanoseconds stand in: these values need to differ between runs,
/// not to be secret.
pub fn fill(buf: &mut [u8]) {
    if getrandom::fill(buf).is_ok() {
        return;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let clock = (now.as_secs() ^ u64::from(now.subsec_nanos()).rotate_left(32)).to_le_bytes();
    for (b, c) in buf.iter_mut().zip(clock.iter().cycle()) {
        *b = *c;
    }
}

/// A random `u64`.
pub fn u64() -> u64 {
    let mut bytes = [0u8; 8];
    fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    #[test]
    fn two_draws_differ() {
        // 2^-64 odds of a false failure.
        assert_ne!(super::u64(), super::u64());
    }
}
