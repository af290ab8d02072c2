//! The build fingerprint: what a plugin library and its host must share for Rust types to
//! mean the same thing on both sides of the boundary.
//!
//! Rust has no stable ABI: a `Registration`, an `InitContext` or an `Arc<dyn Trait>` can be
//! handed across only between code built by the same compiler, for the same target, from the
//! same crates with the same features. The fingerprint states those facts as text, one
//! `field: value` line each; the host compares its own with the library's before it reads
//! anything else the library hands over.
//!
//! | field | what it is | what it catches |
//! |---|---|---|
//! | `rustc` | `rustc --version` of the compiler that built this crate (from `build.rs`) | another compiler: layouts, `TypeId`s and std may differ |
//! | `target` | the target triple (`TARGET` in `build.rs`) | another architecture, OS or ABI |
//! | `plinth-core` | its version (pinned to this crate's version) | another plugin model |
//! | `plinth-core backend` | [`plinth_core::registry::BACKEND`]: `inventory` or `linkme` | the one feature of plinth-core |
//! | `panic` | the panic strategy | `abort`: a panic could not be caught and turned into an error |
//! | `debug-assertions` | on or off | a debug build against a release build |
//! | `plinth-core identity` | the `TypeId` of [`plinth_core::Registration`], the sentinel type | see below |
//!
//! **What the sentinel catches.** A `TypeId` hashes the type's path and the identity of the
//! crate that defines it; the compiler derives that identity from the crate name and cargo's
//! `-C metadata`, which cargo computes from the package (name, version, source), its enabled
//! features, the build profile, the target and compiler, and the same data of every
//! dependency. So two builds give the same `TypeId` of `plinth_core::Registration` only when
//! plinth-core and its whole dependency graph (serde, toml, inventory, …) were resolved
//! identically — what the version and backend fields cannot see. It catches nothing outside
//! plinth-core's graph (interface crates such as plinth-builtin-plugins are checked where
//! they are used: a typed lookup of an instance is a `TypeId` comparison and fails with a
//! lookup error when the crates differ), nor `RUSTFLAGS` that change code but not types, nor
//! a crate compiled outside cargo with a hand-made `-C metadata`.

use std::any::TypeId;
use std::fmt;

/// The facts of one build, as `(field, value)` pairs in a fixed order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    fields: Vec<(String, String)>,
}

/// One field that differs between the host's fingerprint and a library's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldMismatch {
    /// The field name, e.g. `rustc`.
    pub field: String,
    /// The host's value (empty when the host has no such field).
    pub expected: String,
    /// The library's value (empty when the library has no such field).
    pub found: String,
}

impl fmt::Display for FieldMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &str| {
            if v.is_empty() {
                "(missing)".to_string()
            } else {
                format!("`{v}`")
            }
        };
        write!(
            f,
            "{}: expected {}, found {}",
            self.field,
            show(&self.expected),
            show(&self.found)
        )
    }
}

impl Fingerprint {
    /// The fingerprint of the code calling this: the host's when the host calls it, a
    /// library's when the library's copy of this crate does.
    pub fn current() -> Fingerprint {
        let fields = [
            ("rustc", env!("PLINTH_RUSTC_VERSION").to_string()),
            ("target", env!("PLINTH_TARGET").to_string()),
            ("plinth-core", env!("CARGO_PKG_VERSION").to_string()),
            (
                "plinth-core backend",
                plinth_core::registry::BACKEND.to_string(),
            ),
            (
                "panic",
                if cfg!(panic = "unwind") {
                    "unwind"
                } else {
                    "abort"
                }
                .to_string(),
            ),
            (
                "debug-assertions",
                if cfg!(debug_assertions) { "on" } else { "off" }.to_string(),
            ),
            (
                "plinth-core identity",
                format!("{:?}", TypeId::of::<plinth_core::Registration>()),
            ),
        ];
        Fingerprint {
            fields: fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        }
    }

    /// The fields, in order.
    pub fn fields(&self) -> &[(String, String)] {
        &self.fields
    }

    /// The text form handed across the ABI: one `field: value` line per field.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        for (field, value) in &self.fields {
            text.push_str(field);
            text.push_str(": ");
            text.push_str(value);
            text.push('\n');
        }
        text
    }

    /// Parses the text form. Lines without `": "` are kept whole as a field with no value,
    /// so that garbage still shows up in a mismatch.
    pub fn parse(text: &str) -> Fingerprint {
        let fields = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| match line.split_once(": ") {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (line.to_string(), String::new()),
            })
            .collect();
        Fingerprint { fields }
    }

    /// Every field whose value differs, with `self` as the expected side; fields only one
    /// side has count as differing.
    pub fn mismatches(&self, found: &Fingerprint) -> Vec<FieldMismatch> {
        let get = |fp: &Fingerprint, key: &str| {
            fp.fields
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        let mut out = Vec::new();
        for (field, expected) in &self.fields {
            let found_value = get(found, field).unwrap_or_default();
            if &found_value != expected {
                out.push(FieldMismatch {
                    field: field.clone(),
                    expected: expected.clone(),
                    found: found_value,
                });
            }
        }
        for (field, value) in &found.fields {
            if get(self, field).is_none() {
                out.push(FieldMismatch {
                    field: field.clone(),
                    expected: String::new(),
                    found: value.clone(),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips() {
        let fp = Fingerprint::current();
        assert_eq!(Fingerprint::parse(&fp.to_text()), fp);
        assert!(fp.mismatches(&fp).is_empty());
    }

    #[test]
    fn fields_are_the_parsed_lines_in_order() {
        let parsed = Fingerprint::parse("rustc: 1.95\n\ngarbage\ntarget: x86_64: gnu\n");
        let fields: Vec<(&str, &str)> = parsed
            .fields()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            fields,
            [
                ("rustc", "1.95"),
                ("garbage", ""),
                ("target", "x86_64: gnu")
            ]
        );
    }

    #[test]
    fn mismatches_name_field_expected_and_found() {
        let host = Fingerprint::parse("rustc: 1.95\ntarget: x86_64\n");
        // (library text, expected mismatch lines)
        let cases: &[(&str, &[&str])] = &[
            ("rustc: 1.95\ntarget: x86_64\n", &[]),
            (
                "rustc: 1.80\ntarget: x86_64\n",
                &["rustc: expected `1.95`, found `1.80`"],
            ),
            (
                "rustc: 1.95\n",
                &["target: expected `x86_64`, found (missing)"],
            ),
            (
                "rustc: 1.95\ntarget: x86_64\nextra: 1\n",
                &["extra: expected (missing), found `1`"],
            ),
            (
                "garbage",
                &[
                    "rustc: expected `1.95`, found (missing)",
                    "target: expected `x86_64`, found (missing)",
                    "garbage: expected (missing), found (missing)",
                ],
            ),
        ];
        for (library, expected) in cases {
            let got: Vec<String> = host
                .mismatches(&Fingerprint::parse(library))
                .iter()
                .map(ToString::to_string)
                .collect();
            assert_eq!(&got, expected, "library fingerprint {library:?}");
        }
    }
}
