//! Keeping resident memory down around TensorFlow, so that peak RSS stays under 400 MB.
//!
//! Measured on the release binary before this module existed (610 MiB right after start):
//! - 290 MiB were file-backed pages of `libtensorflow_cc.so.2`: 125 MiB of its symbol and
//!   relocation tables (an 82 MB `.dynstr` alone) that only the dynamic linker reads, once, and
//!   104 MiB of code run by static initialisers. Serving touches a small part of either.
//! - 117 MiB of the heap were already freed by TensorFlow (the graph copies grappler makes when
//!   the session first runs) but kept by glibc's malloc in its arenas.
//!
//! Both are given back here, once, while the model loads (`classify::model::Classifier::load`).
//! Under load, what TensorFlow's threads free is kept from spreading over many malloc arenas
//! (`single_malloc_arena`, called from `main`), and mimalloc, which serves the Rust side, is set
//! to give memory back soon (`lean_mimalloc`). One of the two modules allowed `unsafe` (the other
//! is `classify::image::libjpeg_turbo`): four libc calls and two mimalloc ones, each used where
//! it cannot change what any memory holds (see each `SAFETY`).
#![allow(unsafe_code)]

use std::fs;

/// Makes every thread allocate from glibc's one main arena, unless the operator chose a number
/// with `MALLOC_ARENA_MAX` (glibc reads that itself). Call it first thing in `main`, before any
/// thread starts: arenas that exist stay.
///
/// Why: glibc gives a thread that meets contention its own arena (up to 8 per core). TensorFlow's
/// pool threads each free a batch's activations into their arena, and an arena keeps what it is
/// given back; with the default, peak RSS after start, cold c=8 and cached-hit loads measured
/// 378-415 MiB, with one arena 325-332 MiB, at the same throughput (two cores: little contention
/// to spread). Returns whether the limit was set (tests/api/ops.rs reads it from the start log).
pub fn single_malloc_arena() -> bool {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return false;
    }
    // SAFETY: mallopt changes a tuning parameter of the allocator; it takes no pointer.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) == 1 }
}

/// Keeps glibc's threshold for serving an allocation by `mmap` at its 128 KiB default, unless
/// the operator set one (`MALLOC_MMAP_THRESHOLD_`, or any `GLIBC_TUNABLES`). Call it first
/// thing in `main`, with [`single_malloc_arena`].
///
/// Why: glibc raises the threshold each time a mapped block is freed, up to 32 MiB, so after
/// the warm-up TensorFlow's activations (megabytes each) come from the arena, and what the arena
/// is given back it keeps. Fixed, each is mapped and unmapped whole. Peak RSS after start, cold
/// c=8 and cached-hit loads (two inference threads): 387 MiB with the moving threshold, 382
/// with it fixed; right after start 358 and 339 MiB.
pub fn fixed_mmap_threshold() {
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some()
        || std::env::var_os("GLIBC_TUNABLES").is_some()
    {
        return;
    }
    // SAFETY: mallopt changes a tuning parameter of the allocator; it takes no pointer. It
    // fails only for an unknown parameter or value; the threshold then moves as before.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024) };
}

/// mimalloc (the Rust side's allocator, see `main.rs`) nearly as lean as glibc's one arena:
/// memory committed as it is used rather than a whole arena at once (set at build time, in
/// `.cargo/config.toml`, because the first arena is reserved before `main`), and free pages
/// given back after 100 ms instead of 1 s. Measured peak RSS after the cold c=8 and cached-hit
/// loads: 446-455 MiB with mimalloc's defaults, 364 MiB with these, 343-353 MiB with glibc alone
/// (which costs 0.6 of the cached-hit throughput). A purge delay of 0 cost 8% of that
/// throughput for no less memory. Call it first thing in `main`. Returns whether the options
/// are as intended: they are set by number, and only where both read back as the mimalloc
/// version this was written against has them (v3), else left alone.
pub fn lean_mimalloc() -> bool {
    /// `mi_option_arena_eager_commit` and `mi_option_purge_delay` in mimalloc v3's `mi_option_e`
    /// (libmimalloc-sys's own constants still number them as in v1).
    const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: mi_option_get and mi_option_set read and write one integer setting of the
    // allocator; they take no pointer.
    unsafe {
        // 0 as the build sets it; 2 is mimalloc's own default (a build without the flag).
        let eager = libmimalloc_sys::mi_option_get(ARENA_EAGER_COMMIT);
        if !matches!(eager, 0 | 2) || libmimalloc_sys::mi_option_get(PURGE_DELAY) != 1000 {
            return false;
        }
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 100);
        eager == 0
    }
}

/// Gives the heap pages glibc holds for freed memory back to the kernel, in every arena.
/// Costs a few milliseconds: call it after start-up steps that free a lot, not per request.
pub fn trim_heap() {
    // SAFETY: malloc_trim only releases free memory it owns; it takes no pointer.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Drops from this process the resident pages of every read-only mapping of a file whose path
/// contains `library` (e.g. `"libtensorflow"`) and that holds no private copy of a page. They
/// stay in the page cache, so a page needed later comes back with a minor fault; only what
/// stays resident changes. Returns the bytes of mappings dropped.
pub fn drop_library_pages(library: &str) -> usize {
    let Ok(smaps) = fs::read_to_string("/proc/self/smaps") else {
        return 0;
    };
    clean_read_only_mappings(&smaps)
        .filter(|mapping| mapping.path.contains(library))
        .map(|Mapping { start, end, .. }| {
            let len = end - start;
            // SAFETY: the range is one whole mapping of a file, read-only, with no anonymous
            // (privately copied) page: MADV_DONTNEED on a private file mapping only discards
            // private copies, and there are none, so every page reads back from the file as it
            // was. Pages can only turn private by a write, which a read-only mapping forbids.
            let dropped =
                unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
            if dropped == 0 {
                len
            } else {
                0
            }
        })
        .sum()
}

#[derive(Debug, PartialEq, Eq)]
struct Mapping<'a> {
    start: usize,
    end: usize,
    path: &'a str,
}

/// The mappings in `/proc/self/smaps` text that are file-backed, not writable, and have no
/// anonymous pages (the dynamic linker's relocated-then-protected RELRO pages have some).
fn clean_read_only_mappings(smaps: &str) -> impl Iterator<Item = Mapping<'_>> {
    let mut current: Option<Mapping<'_>> = None;
    smaps.lines().filter_map(move |line| {
        if let Some(kib) = line.strip_prefix("Anonymous:") {
            let clean = kib.split_whitespace().next() == Some("0");
            return current.take().filter(|_| clean);
        }
        if let Some(header) = mapping_header(line) {
            current = header;
        }
        None
    })
}

/// `Some(Some(mapping))` for the header line of a read-only file mapping, `Some(None)` for the
/// header of any other mapping, `None` for a field line.
fn mapping_header(line: &str) -> Option<Option<Mapping<'_>>> {
    let mut fields = line.split_whitespace();
    let (start, end) = fields.next()?.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    let perms = fields.next()?;
    let path = fields.nth(3).unwrap_or("");
    let file_read_only = !perms.contains('w') && path.starts_with('/') && end > start;
    Some(file_read_only.then_some(Mapping { start, end, path }))
}

/// Resident set now and at its peak, in KiB, from `/proc/self/status` (`None` off Linux).
pub fn resident_kib() -> Option<(u64, u64)> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
7f59a5400000-7f59b3881000 r--p 00000000 fe:00 5308676    /lib/libtensorflow_cc.so.2
Rss:              124980 kB
Anonymous:             0 kB
7f59b3881000-7f59c77be000 r-xp 0e480000 fe:00 5308676    /lib/libtensorflow_cc.so.2
Anonymous:             0 kB
7f59c77be000-7f59c7e48000 r--p 223bc000 fe:00 5308676    /lib/libtensorflow_cc.so.2
Anonymous:          6680 kB
7f59c7e48000-7f59c800f000 rw-p 22a45000 fe:00 5308676    /lib/libtensorflow_cc.so.2
Anonymous:          1820 kB
7f5970000000-7f5973ff0000 rw-p 00000000 00:00 0
Anonymous:         65472 kB
7ffd1e5f0000-7ffd1e5f2000 r-xp 00000000 00:00 0                          [vdso]
Anonymous:             0 kB
";

    #[test]
    fn only_clean_read_only_file_mappings_are_chosen() {
        let chosen: Vec<_> = clean_read_only_mappings(SMAPS).collect();
        // Not the RELRO segment (private copies), the data segment, the heap or the vDSO.
        assert_eq!(
            chosen,
            [
                Mapping {
                    start: 0x7f59a5400000,
                    end: 0x7f59b3881000,
                    path: "/lib/libtensorflow_cc.so.2"
                },
                Mapping {
                    start: 0x7f59b3881000,
                    end: 0x7f59c77be000,
                    path: "/lib/libtensorflow_cc.so.2"
                },
            ]
        );
        assert_eq!(
            clean_read_only_mappings("garbage\nAnonymous: 0 kB\n").count(),
            0
        );
    }

    #[test]
    fn dropping_a_mapped_library_keeps_it_working() {
        // This test binary links libtensorflow: drop its pages, then use it.
        let dropped = drop_library_pages("libtensorflow");
        assert!(dropped > 100 << 20, "dropped only {dropped} bytes");
        assert!(!tensorflow::version().unwrap().is_empty());
        trim_heap();
        let (now, peak) = resident_kib().unwrap();
        assert!(now > 0 && peak >= now);
    }

    #[test]
    fn an_unmapped_library_name_drops_nothing() {
        assert_eq!(drop_library_pages("no-such-library-here"), 0);
    }
}
