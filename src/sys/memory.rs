//! citrusd's own footprint: what it tells glibc and the kernel at start so that memory it does not
//! use stays out of its resident set. Neither call changes what citrusd does.

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

/// One entry of the program's dynamic section (`Elf64_Dyn`).
#[repr(C)]
#[derive(Clone, Copy)]
struct Dyn {
    tag: i64,
    value: u64,
}

const DT_NULL: i64 = 0;
const DT_RELA: i64 = 7;
const DT_RELASZ: i64 = 8;

/// Unmaps the pages of the program's relocation table (`.rela.dyn`, ~400 KB for citrusd): the
/// dynamic loader applies it once, before `main`, and nothing reads it again. They are clean,
/// read-only pages of the binary, so this only drops them from the page tables (`MADV_DONTNEED`):
/// they leave the resident set, the kernel may keep them in its page cache, and a read would map
/// them back. Only whole pages inside the table are dropped. Returns the bytes unmapped.
pub fn release_relocation_table() -> usize {
    let Some((start, size)) = relocation_table() else {
        return 0;
    };
    let page = super::procfs::page_size() as usize;
    let first = start.div_ceil(page) * page;
    let end = (start + size) / page * page;
    if end <= first {
        return 0;
    }
    // SAFETY: [first, end) lies inside the relocation table, which the loader mapped read-only
    // from the binary and never wrote (relocations are applied elsewhere); dropping those pages
    // loses nothing, and no Rust object lives in them.
    let rc = unsafe { libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_DONTNEED) };
    if rc == 0 {
        end - first
    } else {
        0
    }
}

/// Address and size of the program's `.rela.dyn` in memory, from its program headers and dynamic
/// section; `None` for a program without one.
fn relocation_table() -> Option<(usize, usize)> {
    // SAFETY: getauxval only reads the auxiliary vector the kernel gave the process.
    let (phdr, phnum) = unsafe {
        (
            libc::getauxval(libc::AT_PHDR) as usize,
            libc::getauxval(libc::AT_PHNUM) as usize,
        )
    };
    if phdr == 0 || phnum == 0 {
        return None;
    }
    // SAFETY: AT_PHDR and AT_PHNUM describe the program headers, mapped (read-only) for the whole
    // life of the process.
    let headers = unsafe { std::slice::from_raw_parts(phdr as *const libc::Elf64_Phdr, phnum) };
    let own = headers.iter().find(|h| h.p_type == libc::PT_PHDR)?;
    let bias = phdr.checked_sub(own.p_vaddr as usize)?;
    let dynamic = headers.iter().find(|h| h.p_type == libc::PT_DYNAMIC)?;
    let mut entry = (bias + dynamic.p_vaddr as usize) as *const Dyn;
    let (mut rela, mut size) = (None, None);
    loop {
        // SAFETY: the dynamic section is mapped for the life of the process and ends with a
        // DT_NULL entry, where the walk stops.
        let d = unsafe { entry.read() };
        match d.tag {
            DT_NULL => break,
            DT_RELA => rela = Some(d.value as usize),
            DT_RELASZ => size = Some(d.value as usize),
            _ => {}
        }
        // SAFETY: not past DT_NULL yet, so the next entry is still inside the section.
        entry = unsafe { entry.add(1) };
    }
    let (rela, size) = (rela?, size?);
    // glibc turns the loader's copy of DT_RELA into an address in place; other loaders may not.
    let start = if rela >= bias { rela } else { bias + rela };
    // Only a table in a read-only segment: dropping written (copied-on-write) pages would lose
    // what was written.
    let vaddr = (start - bias) as u64;
    let read_only = headers.iter().any(|h| {
        h.p_type == libc::PT_LOAD
            && h.p_flags & libc::PF_W == 0
            && h.p_vaddr <= vaddr
            && vaddr + size as u64 <= h.p_vaddr + h.p_filesz
    });
    (size > 0 && read_only).then_some((start, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relocation_table_is_found_and_released_without_harm() {
        // The test binary is position-independent: it has a relocation table too.
        let (start, size) = relocation_table().expect("a PIE has .rela.dyn");
        assert!(size > 4096);
        let exe = std::fs::read_to_string("/proc/self/maps").unwrap();
        let me = std::fs::read_link("/proc/self/exe").unwrap();
        let mapped = exe.lines().any(|line| {
            let mut fields = line.split_whitespace();
            let range = fields.next().unwrap_or("");
            let (lo, hi) = range.split_once('-').unwrap_or(("0", "0"));
            let (lo, hi) = (
                usize::from_str_radix(lo, 16).unwrap_or(0),
                usize::from_str_radix(hi, 16).unwrap_or(0),
            );
            line.ends_with(me.to_str().unwrap_or("?")) && lo <= start && start + size <= hi
        });
        assert!(mapped, "the table lies in one mapping of the binary");
        let last = (start + size - 8) as *const u64;
        // SAFETY: the last entry's last word lies inside the mapped table.
        let before = unsafe { last.read_volatile() };
        let released = release_relocation_table();
        assert!(released > 0 && released <= size);
        // The pages read back as they were (they are file pages), and everything still works.
        // SAFETY: as above; a dropped page is mapped back from the binary on this read.
        assert_eq!(unsafe { last.read_volatile() }, before);
        assert_eq!(format!("{:?}", vec![1, 2]), "[1, 2]");
        assert_eq!(relocation_table(), Some((start, size)));
    }
}
