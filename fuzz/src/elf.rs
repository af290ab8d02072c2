//! The dynamic loader's check of a library file before it is ever opened by the dynamic
//! linker: the input is written as a file and checked.
//!
//! Properties: no panic; a file the check passes starts with the ELF magic and holds at least
//! an ELF header; a refusal says what is wrong.

use std::io::Write;

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut file = tempfile::NamedTempFile::new().expect("a temporary file");
    file.write_all(data).expect("writing the input");
    file.flush().expect("writing the input");
    match plinth_dynamic_loader::__fuzz::check_elf(file.path()) {
        Ok(()) => {
            assert!(data.starts_with(b"\x7fELF"), "passed without the ELF magic");
            assert!(data.len() >= 52, "passed shorter than any ELF header");
        }
        Err(reason) => assert!(!reason.is_empty(), "a refusal that says nothing"),
    }
}
