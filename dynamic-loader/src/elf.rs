//! A sanity check of an ELF file before `dlopen` sees it.
//!
//! The dynamic linker maps each loadable segment of a library straight from the file. If the
//! file is shorter than a segment says (a truncated copy, an interrupted install), the
//! mapping succeeds and the first touch of a page past the end kills the process with
//! SIGBUS — inside `dlopen`, while it applies relocations. So the loader reads the ELF header
//! and program headers itself and refuses a file whose loadable segments do not all lie
//! within it, or that is not an ELF shared object for this machine's word size and byte order.

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::Path;

/// `PT_LOAD`: a loadable segment.
const PT_LOAD: u32 = 1;
/// `ET_DYN`: a shared object.
const ET_DYN: u16 = 3;
/// More program headers than any real library has; bounds the read.
const MAX_PROGRAM_HEADERS: u16 = 4096;

/// Checks that `path` is an ELF shared object of this platform's class and byte order whose
/// loadable segments all lie within the file.
///
/// # Errors
/// What is wrong, in a sentence.
pub(crate) fn check(path: &Path) -> Result<(), String> {
    let mut file = File::open(path).map_err(|e| format!("cannot be read: {e}"))?;
    let len = file
        .metadata()
        .map_err(|e| format!("cannot be read: {e}"))?
        .len();
    let mut ident = [0u8; 64];
    let n = read_up_to(&mut file, &mut ident)?;
    if n < 16 || ident[..4] != *b"\x7fELF" {
        return Err("not an ELF file (no ELF magic at its start)".to_string());
    }
    let is_64 = match ident[4] {
        1 => false,
        2 => true,
        other => return Err(format!("invalid ELF class {other}")),
    };
    if is_64 != cfg!(target_pointer_width = "64") {
        return Err(format!(
            "ELF class is {}-bit, this process is {}-bit",
            if is_64 { 64 } else { 32 },
            usize::BITS
        ));
    }
    let little = match ident[5] {
        1 => true,
        2 => false,
        other => return Err(format!("invalid ELF byte order {other}")),
    };
    if little != cfg!(target_endian = "little") {
        return Err("ELF byte order differs from this process's".to_string());
    }
    let header_len = if is_64 { 64 } else { 52 };
    if n < header_len {
        return Err(format!(
            "truncated: {len} bytes, shorter than an ELF header"
        ));
    }
    let reader = Reader { little };
    let e_type = reader.u16(&ident[16..]);
    if e_type != ET_DYN {
        return Err(format!("not a shared object (ELF type {e_type})"));
    }
    let (phoff, phentsize, phnum) = if is_64 {
        (
            reader.u64(&ident[32..]),
            reader.u16(&ident[54..]),
            reader.u16(&ident[56..]),
        )
    } else {
        (
            u64::from(reader.u32(&ident[28..])),
            reader.u16(&ident[42..]),
            reader.u16(&ident[44..]),
        )
    };
    let min_entry = if is_64 { 56 } else { 32 };
    if phnum == 0 || phnum > MAX_PROGRAM_HEADERS || usize::from(phentsize) < min_entry {
        return Err(format!(
            "implausible program headers ({phnum} of {phentsize} bytes)"
        ));
    }
    let table_len = u64::from(phnum) * u64::from(phentsize);
    if phoff.checked_add(table_len).is_none_or(|end| end > len) {
        return Err(format!(
            "truncated: program headers end past the file's {len} bytes"
        ));
    }
    let mut table = vec![0u8; usize::try_from(table_len).map_err(|e| e.to_string())?];
    file.seek(SeekFrom::Start(phoff))
        .and_then(|_| file.read_exact(&mut table))
        .map_err(|e| format!("cannot read program headers: {e}"))?;
    for (index, entry) in table.chunks_exact(usize::from(phentsize)).enumerate() {
        if reader.u32(entry) != PT_LOAD {
            continue;
        }
        let (offset, file_size) = if is_64 {
            (reader.u64(&entry[8..]), reader.u64(&entry[32..]))
        } else {
            (
                u64::from(reader.u32(&entry[4..])),
                u64::from(reader.u32(&entry[16..])),
            )
        };
        let end = offset.checked_add(file_size);
        if end.is_none_or(|end| end > len) {
            return Err(format!(
                "truncated: loadable segment {index} needs bytes up to {}, the file has {len}",
                end.map_or_else(|| "overflow".to_string(), |e| e.to_string())
            ));
        }
    }
    Ok(())
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> Result<usize, String> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("cannot be read: {e}")),
        }
    }
    Ok(filled)
}

struct Reader {
    little: bool,
}

impl Reader {
    fn u16(&self, b: &[u8]) -> u16 {
        let bytes = [b[0], b[1]];
        if self.little {
            u16::from_le_bytes(bytes)
        } else {
            u16::from_be_bytes(bytes)
        }
    }

    fn u32(&self, b: &[u8]) -> u32 {
        let bytes = [b[0], b[1], b[2], b[3]];
        if self.little {
            u32::from_le_bytes(bytes)
        } else {
            u32::from_be_bytes(bytes)
        }
    }

    fn u64(&self, b: &[u8]) -> u64 {
        let bytes = [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]];
        if self.little {
            u64::from_le_bytes(bytes)
        } else {
            u64::from_be_bytes(bytes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This test binary's own dependencies include shared objects; libc is one everywhere
    /// this module is compiled.
    fn some_shared_object() -> Option<std::path::PathBuf> {
        let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
        maps.lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .find(|p| p.contains("libc.so") || p.contains("libc-"))
            .map(std::path::PathBuf::from)
    }

    /// Writes each case's contents to a file under `dir` and checks it: `expected` is a
    /// fragment of the error, or "" for a file that passes.
    fn check_each(dir: &std::path::Path, cases: Vec<(&str, Vec<u8>, &str)>) {
        for (name, contents, expected) in cases {
            let path = dir.join(name);
            std::fs::write(&path, contents).unwrap();
            match check(&path) {
                Ok(()) => assert_eq!(expected, "", "{name} passed"),
                Err(e) => assert!(!expected.is_empty() && e.contains(expected), "{name}: {e}"),
            }
        }
    }

    #[test]
    fn truncations_and_garbage_are_refused() {
        let Some(real) = some_shared_object() else {
            panic!("no libc mapped in /proc/self/maps");
        };
        let bytes = std::fs::read(&real).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        // (name, contents, expected error fragment or "" for ok)
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("whole", bytes.clone(), ""),
            ("half", bytes[..bytes.len() / 2].to_vec(), "truncated"),
            ("header only", bytes[..64].to_vec(), "truncated"),
            ("tiny", bytes[..10].to_vec(), "not an ELF file"),
            ("empty", Vec::new(), "not an ELF file"),
            ("text", b"hello, world".repeat(100), "not an ELF file"),
        ];
        check_each(tmp.path(), cases);
        // A directory opens, but reading it fails (EISDIR): an error, not a retry for ever
        // (bounded here, so that a retrying check fails this test instead of hanging it).
        let (sender, receiver) = std::sync::mpsc::channel();
        let dir = tmp.path().to_path_buf();
        std::thread::spawn(move || sender.send(check(&dir)));
        let result = receiver
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("checking a directory did not return in 60 s: a read error is retried");
        let error = result.unwrap_err();
        assert!(error.starts_with("cannot be read: "), "{error}");
    }

    /// A 64-bit little-endian ELF shared-object header whose `phnum` program headers of
    /// `phentsize` bytes follow it.
    fn header(phnum: u16, phentsize: u16) -> Vec<u8> {
        let mut header = vec![0u8; 64];
        header[..4].copy_from_slice(b"\x7fELF");
        header[4] = 2; // 64-bit
        header[5] = 1; // little-endian
        header[6] = 1; // version
        header[16..18].copy_from_slice(&ET_DYN.to_le_bytes());
        header[32..40].copy_from_slice(&64u64.to_le_bytes());
        header[54..56].copy_from_slice(&phentsize.to_le_bytes());
        header[56..58].copy_from_slice(&phnum.to_le_bytes());
        header
    }

    /// A 64-bit program header: its type, file offset and size in the file.
    fn segment(kind: u32, offset: u64, size: u64) -> Vec<u8> {
        let mut entry = vec![0u8; 56];
        entry[..4].copy_from_slice(&kind.to_le_bytes());
        entry[8..16].copy_from_slice(&offset.to_le_bytes());
        entry[32..40].copy_from_slice(&size.to_le_bytes());
        entry
    }

    /// Made-up headers at each boundary of each check: a file that ends exactly where its
    /// last segment does passes, one byte short does not; only loadable segments count.
    #[cfg(all(target_pointer_width = "64", target_endian = "little"))]
    #[test]
    fn every_bound_of_the_header_checks() {
        const PT_DYNAMIC: u32 = 2;
        let exact = [
            header(2, 56),
            segment(PT_LOAD, 0, 176),
            // Not loadable: its offset and size are never checked.
            segment(PT_DYNAMIC, 0, 1 << 40),
        ]
        .concat();
        let mut past = exact.clone();
        past[64 + 32..64 + 40].copy_from_slice(&177u64.to_le_bytes());
        let tmp = tempfile::tempdir().unwrap();
        // (name, contents, expected error fragment or "" for ok)
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("exactly as long as its segments", exact.clone(), ""),
            (
                "a segment one byte past the end",
                past,
                "loadable segment 0 needs bytes up to 177, the file has 176",
            ),
            (
                "16 bytes",
                exact[..16].to_vec(),
                "shorter than an ELF header",
            ),
            (
                "40 bytes",
                exact[..40].to_vec(),
                "shorter than an ELF header",
            ),
            ("no program headers", header(0, 56), "implausible"),
            ("4097 program headers", header(4097, 56), "implausible"),
            (
                "entries too small",
                [header(1, 55), vec![0; 55]].concat(),
                "implausible",
            ),
            (
                "4096 program headers, not in the file",
                header(4096, 56),
                "program headers end past the file's 64 bytes",
            ),
            (
                "program headers one byte short",
                exact[..64 + 112 - 1].to_vec(),
                "program headers end past the file's 175 bytes",
            ),
        ];
        check_each(tmp.path(), cases);
    }
}
