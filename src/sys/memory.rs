//! citrusd's own footprint: what it tells glibc at start so that memory it does not use stays out
//! of its resident set, without changing what citrusd does.

/// Has glibc's allocator serve every allocation of 128 KiB or more from a mapping of its own, always.
/// Such a buffer (the log pumps' shared read buffer, a rotation's compression buffer) then costs
/// memory only for the pages written into it, and goes back to the system when freed. Left to
/// itself glibc raises that threshold to the size of the first big buffer freed (parsing the config
/// frees one), and later big buffers land in the heap, resident whole.
pub fn keep_big_allocations_mapped() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets a parameter of the allocator (under its own lock); no memory of
    // ours is touched.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}
