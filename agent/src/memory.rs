//! Giving back the code pages an idle agent no longer uses.
//!
//! Most of an idle agent's resident memory is not its data (a few hundred KiB of heap,
//! stacks and relocated tables) but pages of its executable and of libc, mapped while it
//! started: argument and TOML parsing, the TLS handshake, certificate checks. The kernel
//! maps file pages in windows of up to 64 KiB around each one touched ("fault-around") and
//! leaves them mapped for the life of the process, so start-up alone left about 6 MiB of
//! the binary resident. [`Trimmer::release`] drops those mappings once the agent is idle;
//! what the idle loop uses (timers, TLS records, heartbeats, metrics) comes back at its next
//! use as minor faults from the page cache, the rest when it is needed again (a command, a
//! reconnect).
//!
//! - **Safe by construction**: only mappings whose every page the kernel can restore byte
//!   for byte are released — of a file, not writable, and without private (copy-on-write)
//!   pages. `MADV_DONTNEED` on such a mapping changes what is resident, never what is read.
//!   The relocated read-only data of a position-independent binary (RELRO) holds private
//!   pages and is never released: that would bring back unrelocated bytes.
//! - **Only files mapped before the agent started working**: the executable, the dynamic
//!   loader and the libraries it linked stay mapped until the process exits, so the range
//!   read from `/proc/self/smaps` is still the same mapping when it is released. A library
//!   loaded later (glibc's NSS modules during a name lookup) could in principle be unloaded
//!   and its range reused in between; such files are left alone.
//! - It frees no memory by itself: the pages stay in the page cache, now unmapped, which is
//!   where the kernel reclaims first when memory runs short.
//! - Linux only, like the rest of the agent; without `/proc` nothing is released.

use std::{
    collections::HashSet,
    ffi::c_void,
    fs::File,
    io::{self, BufRead, BufReader},
    ptr::NonNull,
};

use nix::sys::mman::{MmapAdvise, madvise};

/// A mapped file as `/proc/self/maps` names it: device and inode.
type FileId = (String, u64);

/// Releases idle file pages of the files mapped when it was made.
#[derive(Debug, Default)]
pub struct Trimmer {
    files: HashSet<FileId>,
}

impl Trimmer {
    /// Notes the files mapped now. Call at start-up, before the agent can load a library.
    pub fn at_start() -> Trimmer {
        let files = read_mappings("/proc/self/maps")
            .map(|maps| maps.into_iter().filter_map(|m| m.file).collect())
            .unwrap_or_else(|e| {
                tracing::debug!(error = %e, "cannot list our mappings; no pages will be released");
                HashSet::new()
            });
        Trimmer { files }
    }

    /// Drops the page-table entries of every releasable mapping (see the module docs);
    /// returns how many bytes were resident in them.
    pub fn release(&self) -> io::Result<u64> {
        if self.files.is_empty() {
            return Ok(0);
        }
        let mut released = 0;
        for m in read_mappings("/proc/self/smaps")? {
            if !m.releasable(&self.files) {
                continue;
            }
            let Some(start) = NonNull::new(m.start as *mut c_void) else {
                continue;
            };
            // SAFETY: `start..end` is one whole mapping of this process that holds only
            // unmodified pages of a file that stays mapped until exit (`releasable`), so
            // after MADV_DONTNEED every read of it sees the same bytes, faulted in again
            // from the file; nothing that Rust or libc relies on depends on residency.
            // A failure (a locked mapping) leaves the mapping as it was.
            if unsafe { madvise(start, m.end - m.start, MmapAdvise::MADV_DONTNEED) }.is_ok() {
                released += m.rss_kib * 1024;
            }
        }
        Ok(released)
    }
}

/// One entry of `/proc/self/maps`, with the sizes `smaps` adds.
#[derive(Debug, Default, PartialEq)]
struct Mapping {
    start: usize,
    end: usize,
    writable: bool,
    /// `None` for anonymous and special mappings (heap, stacks, vdso).
    file: Option<FileId>,
    rss_kib: u64,
    /// Private pages: written to (copy-on-write) or never backed by the file.
    anonymous_kib: u64,
    swap_kib: u64,
}

impl Mapping {
    fn releasable(&self, files: &HashSet<FileId>) -> bool {
        !self.writable
            && self.file.as_ref().is_some_and(|f| files.contains(f))
            && self.anonymous_kib == 0
            && self.swap_kib == 0
            && self.rss_kib > 0
            && self.end > self.start
    }
}

/// Reads `/proc/self/maps` or `/proc/self/smaps` a line at a time (smaps runs to about
/// 100 KiB; it is not worth holding at once).
fn read_mappings(path: &str) -> io::Result<Vec<Mapping>> {
    let mut reader = BufReader::new(File::open(path)?);
    let mut maps = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        parse_line(&line, &mut maps);
    }
    Ok(maps)
}

/// One line: a mapping's header starts a new [`Mapping`], a size line fills in the last.
fn parse_line(line: &str, maps: &mut Vec<Mapping>) {
    if let Some(m) = parse_header(line) {
        maps.push(m);
        return;
    }
    let (Some(m), Some((key, rest))) = (maps.last_mut(), line.split_once(':')) else {
        return;
    };
    let field = match key {
        "Rss" => &mut m.rss_kib,
        "Anonymous" => &mut m.anonymous_kib,
        "Swap" => &mut m.swap_kib,
        _ => return,
    };
    // An unreadable size counts as one page, so that it never makes a mapping releasable.
    *field = rest
        .trim()
        .strip_suffix("kB")
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(4);
}

/// `start-end perms offset dev inode [path]`, e.g.
/// `55ce5f634000-55ce5fb7d000 r-xp 00200000 fe:00 10010825   /usr/bin/mpanel-agent`.
fn parse_header(line: &str) -> Option<Mapping> {
    let mut fields = line.split_ascii_whitespace();
    let (start, end) = fields.next()?.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    let perms = fields.next()?;
    if perms.len() != 4 {
        return None;
    }
    let _offset = fields.next()?;
    let dev = fields.next()?;
    let inode: u64 = fields.next()?.parse().ok()?;
    let path = fields.next();
    Some(Mapping {
        start,
        end,
        writable: perms.as_bytes()[1] != b'-',
        // Inode 0 is an anonymous or special mapping ([heap], [vdso], …).
        file: (inode != 0 && path.is_some_and(|p| p.starts_with('/')))
            .then(|| (dev.to_owned(), inode)),
        ..Mapping::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55ce5f433000-55ce5f634000 r--p 00000000 fe:00 10010825                   /usr/bin/mpanel-agent
Size:               2052 kB
Rss:                1360 kB
Anonymous:             0 kB
Swap:                  0 kB
VmFlags: rd mr mw me
55ce5f634000-55ce5fb7d000 r-xp 00200000 fe:00 10010825                   /usr/bin/mpanel-agent
Rss:                4768 kB
Anonymous:             0 kB
Swap:                  0 kB
55ce5fb7d000-55ce5fbb1000 r--p 00748000 fe:00 10010825                   /usr/bin/mpanel-agent
Rss:                 208 kB
Anonymous:           208 kB
Swap:                  0 kB
55ce5fbb1000-55ce5fbb3000 rw-p 0077b000 fe:00 10010825                   /usr/bin/mpanel-agent
Rss:                   8 kB
Anonymous:             8 kB
Swap:                  0 kB
55ce60000000-55ce60042000 rw-p 00000000 00:00 0                          [heap]
Rss:                 144 kB
Anonymous:           144 kB
7f0000000000-7f0000010000 r-xp 00000000 fe:00 77                         /usr/lib/libnss_x.so (deleted)
Rss:                  64 kB
Anonymous:             0 kB
Swap:                  0 kB
7f1000000000-7f1000001000 r--p 00000000 fe:00 78                         /usr/lib/libc.so.6
Rss:                   4 kB
Anonymous:             0 kB
Swap:                  4 kB
7ffdab9b3000-7ffdab9b5000 r-xp 00000000 00:00 0                          [vdso]
Rss:                   8 kB
Anonymous:             0 kB
";

    fn parse(text: &str) -> Vec<Mapping> {
        let mut maps = Vec::new();
        for line in text.lines() {
            parse_line(line, &mut maps);
        }
        maps
    }

    #[test]
    fn only_unmodified_pages_of_start_up_files_are_released() {
        let maps = parse(SMAPS);
        assert_eq!(maps.len(), 8);
        assert_eq!(
            maps[1],
            Mapping {
                start: 0x55ce5f634000,
                end: 0x55ce5fb7d000,
                writable: false,
                file: Some(("fe:00".into(), 10010825)),
                rss_kib: 4768,
                anonymous_kib: 0,
                swap_kib: 0,
            }
        );
        let files: HashSet<FileId> = [("fe:00".to_owned(), 10010825), ("fe:00".to_owned(), 78)]
            .into_iter()
            .collect();
        let releasable: Vec<bool> = maps.iter().map(|m| m.releasable(&files)).collect();
        assert_eq!(
            releasable,
            [
                true,  // headers and read-only data
                true,  // code
                false, // RELRO: relocated, private pages
                false, // writable data
                false, // heap
                false, // a library loaded later
                false, // a copy-on-write page in swap
                false, // vdso
            ]
        );
    }

    #[test]
    fn an_unreadable_size_keeps_a_mapping() {
        let maps =
            parse("1000-2000 r--p 00000000 fe:00 5 /usr/bin/x\nRss: 4 kB\nAnonymous: many kB\n");
        let files: HashSet<FileId> = [("fe:00".to_owned(), 5)].into_iter().collect();
        assert_eq!(maps[0].anonymous_kib, 4);
        assert!(!maps[0].releasable(&files));
    }

    #[test]
    fn releasing_our_own_code_pages_keeps_the_process_working() {
        let trimmer = Trimmer::at_start();
        assert!(
            !trimmer.files.is_empty(),
            "the test binary is a mapped file"
        );
        let before = std::hint::black_box(serde_json::json!({ "a": [1, 2, 3] })).to_string();
        let released = trimmer.release().unwrap();
        assert!(released > 0, "some code of this test binary was resident");
        // Code and read-only data fault back in unchanged.
        let after = std::hint::black_box(serde_json::json!({ "a": [1, 2, 3] })).to_string();
        assert_eq!(before, after);
        trimmer.release().unwrap();
    }
}
