//! The keys the daemon's own config structs know, read from their serde definitions, so that
//! "did you mean" hints for top-level keys cannot drift from the structs.

use serde::Deserialize;
use serde::de::{self, Visitor};

use super::{Config, DebugConfig, GrpcConfig, ProxyPlugin};

/// The field names (after renames) of the struct `T` as serde sees them, including those
/// skipped when serialising (`plugin_dir` when `None`).
pub(crate) fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let mut capture = FieldCapture { fields: &[] };
    // The capture always fails (it has no data); it only records what the struct asked for.
    let _ = T::deserialize(&mut capture);
    capture.fields
}

/// The known keys of the table at `parent` in the top level of a config (`[]` for the top
/// level itself, `["grpc"]`, `["proxy_plugins", "<name>"]`), or `None` where the keys are
/// free (`[timeouts]`, `[plugins]`).
pub(crate) fn known_keys(parent: &[String]) -> Option<&'static [&'static str]> {
    let parent: Vec<&str> = parent.iter().map(String::as_str).collect();
    match parent.as_slice() {
        [] => Some(fields_of::<Config>()),
        ["grpc"] => Some(fields_of::<GrpcConfig>()),
        ["debug"] => Some(fields_of::<DebugConfig>()),
        ["proxy_plugins", _] => Some(fields_of::<ProxyPlugin>()),
        _ => None,
    }
}

/// A deserializer with no data that records the field list of the struct it is asked for.
struct FieldCapture {
    fields: &'static [&'static str],
}

/// The error of [`FieldCapture`]: it never has data.
#[derive(Debug)]
struct Captured;

impl std::fmt::Display for Captured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("field names captured")
    }
}

impl std::error::Error for Captured {}

impl de::Error for Captured {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Captured
    }
}

impl<'de> de::Deserializer<'de> for &mut FieldCapture {
    type Error = Captured;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Captured> {
        Err(Captured)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Captured> {
        self.fields = fields;
        Err(Captured)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_is_known_even_when_not_serialised() {
        let top = fields_of::<Config>();
        let serialised = toml::Table::try_from(Config::default()).unwrap();
        for key in serialised.keys() {
            assert!(top.contains(&key.as_str()), "{key}");
        }
        // Skipped when None, still a key.
        assert!(top.contains(&"plugin_dir"));
        // Renamed fields by their config name.
        assert!(fields_of::<ProxyPlugin>().contains(&"type"));
        assert!(fields_of::<ProxyPlugin>().contains(&"platform"));
        // Every section with its own struct is a field of the top level.
        for section in ["grpc", "debug", "proxy_plugins"] {
            assert!(top.contains(&section), "{section}");
        }
    }
}
