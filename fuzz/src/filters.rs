//! containerd's filter syntax (`labels."a.b"==c,name~=^x`, `or` between sets): the input,
//! one filter per line, is parsed as a list call's filters are, and what parses is matched
//! against an object with a name, labels, a topic and a namespace.
//!
//! Properties: no panic; a refusal says something; parsing is a function (the same input
//! parses to the same verdict on the same object twice).

use plinth_builtin_plugins::filters::FilterSet;

/// Runs one input.
pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let filters: Vec<&str> = text.split('\n').collect();
    match FilterSet::parse_all(&filters) {
        Ok(set) => {
            let first = set.matches(field);
            let again = FilterSet::parse_all(&filters).expect("parsed once, parses again");
            assert_eq!(
                again.matches(field),
                first,
                "the same filters, another verdict"
            );
        }
        Err(error) => assert!(!error.to_string().is_empty(), "a refusal that says nothing"),
    }
}

/// The object matched: an image's fields, an event's and a label or two.
fn field(path: &[String]) -> Option<String> {
    match path.first().map(String::as_str)? {
        "name" => Some("docker.io/library/busybox:latest".into()),
        "topic" => Some("/images/create".into()),
        "namespace" => Some("default".into()),
        "target" => match path.get(1).map(String::as_str)? {
            "mediatype" => Some("application/vnd.oci.image.manifest.v1+json".into()),
            "digest" => Some(format!("sha256:{}", "ab".repeat(32))),
            _ => None,
        },
        "labels" => match path.get(1).map(String::as_str)? {
            "a.b" => Some("c".into()),
            "containerd.io/gc.root" => Some(String::new()),
            key if key.len() < 4 => Some(key.repeat(2)),
            _ => None,
        },
        _ => None,
    }
}
