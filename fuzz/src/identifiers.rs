//! The validators every request's names go through: the input, as text, is checked as a
//! namespace name, a digest, an ingest ref, a snapshot key, a label, a lease id and an event
//! topic.
//!
//! Properties: no panic; a namespace name is accepted exactly when containerd's rule
//! (`identifiers.Validate`: at most 76 characters of `[A-Za-z0-9]+([._-][A-Za-z0-9]+)*`),
//! written out again here, accepts it; an accepted digest reads back as itself and parses
//! again to the same value.

use plinth_builtin_plugins::content::{Digest, validate_ref, validate_stored_ref};
use plinth_builtin_plugins::events::validate_topic;
use plinth_builtin_plugins::leases::validate_lease;
use plinth_builtin_plugins::namespaces::{Labels, validate_identifier, validate_label};
use plinth_builtin_plugins::snapshots::validate_key;

/// Runs one input.
pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let accepted = validate_identifier("namespace", &text).is_ok();
    assert_eq!(
        accepted,
        containerd_identifier(&text),
        "namespace {text:?}: plinthd and containerd's rule disagree"
    );
    if let Ok(digest) = Digest::parse(&text) {
        assert_eq!(digest.as_str(), text, "a digest that does not read back");
        assert_eq!(Digest::parse(digest.as_str()).ok(), Some(digest.clone()));
        assert_eq!(digest.hex().len(), 64);
    }
    let _ = validate_ref(&text);
    let _ = validate_stored_ref(&text);
    let _ = validate_key("key", &text);
    let _ = validate_topic(&text);
    let (key, value) = text.split_once('=').unwrap_or((&text, ""));
    let _ = validate_label(key, value);
    let labels: Labels = [(key.to_string(), value.to_string())].into();
    let _ = validate_lease(&text, &labels);
}

/// containerd's `identifiers.Validate`, from its documented rule.
fn containerd_identifier(name: &str) -> bool {
    if name.is_empty() || name.len() > 76 {
        return false;
    }
    name.split(['.', '_', '-'])
        .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric()))
}
