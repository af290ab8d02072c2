//! Merging config tables as containerd merges imported files, and Go-style durations.

use std::time::Duration;

/// Merges an imported file's table over `into`: scalars override, top-level lists append
/// without duplicates, tables (`[plugins]`, `[grpc]`, …) merge deeply, lists inside them are
/// replaced.
pub(crate) fn merge_top_level(into: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Array(existing)), toml::Value::Array(added)) => {
                for item in added {
                    if !existing.contains(&item) {
                        existing.push(item);
                    }
                }
            }
            (Some(toml::Value::Table(existing)), toml::Value::Table(added)) => {
                deep_merge(existing, added);
            }
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

/// Merges `from` over `into`: tables merge key by key, everything else (lists included) is
/// replaced.
pub(crate) fn deep_merge(into: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(existing)), toml::Value::Table(added)) => {
                deep_merge(existing, added);
            }
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

/// Parses a Go-style duration: a sequence of numbers with units `ns`, `us`/`µs`, `ms`, `s`,
/// `m`, `h`, e.g. `"1m30s"`, `"1.5s"`, `"250ms"`; `"0"` alone is zero.
///
/// # Errors
/// A message saying what is wrong with the text.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err("empty duration; write e.g. \"5s\"".to_string());
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_len == 0 {
            return Err(format!("expected a number at {rest:?}; write e.g. \"5s\""));
        }
        let number: f64 = rest[..number_len]
            .parse()
            .map_err(|_| format!("bad number {:?}", &rest[..number_len]))?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => {
                return Err(format!(
                    "missing unit after {number}; use ns, us, ms, s, m or h"
                ));
            }
            other => return Err(format!("unknown unit {other:?}; use ns, us, ms, s, m or h")),
        };
        total += number * seconds;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let cases: &[(&str, Option<Duration>)] = &[
            ("0", Some(Duration::ZERO)),
            ("5s", Some(Duration::from_secs(5))),
            ("1m30s", Some(Duration::from_secs(90))),
            ("250ms", Some(Duration::from_millis(250))),
            ("1.5h", Some(Duration::from_secs(5400))),
            ("10", None),
            ("", None),
            ("5 s", None),
            ("s", None),
            ("3d", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration(text).ok(), *expected, "{text:?}");
        }
    }
}
