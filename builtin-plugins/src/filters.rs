//! containerd's filter syntax, used by `Plugins`, content `List` and snapshot `List`.
//!
//! A filter is a comma-separated list of selectors that must all match; a request carries a
//! list of filters of which any may match (an empty list matches everything).
//!
//! ```text
//! selectors := selector ("," selector)*
//! selector  := fieldpath [operator value]        (no operator: the field is present)
//! fieldpath := field ("." field)*
//! field     := quoted | [A-Za-z0-9_]+
//! operator  := "==" | "!=" | "~="                 ("~=" is a regular expression)
//! value     := quoted | a run of characters other than whitespace and ","
//! quoted    := "…" (or /…/ and |…| after "~=") with Go-style escapes
//! ```
//!
//! Examples: `type==io.containerd.grpc.v1`, `id~=^snap`, `labels."my.label"==x,kind!=view`.

use std::fmt;

/// A parsed filter list: matches when any of its filters matches.
#[derive(Debug, Clone, Default)]
pub struct FilterSet {
    any: Vec<Vec<Selector>>,
}

#[derive(Debug, Clone)]
struct Selector {
    fieldpath: Vec<String>,
    operator: Operator,
}

#[derive(Debug, Clone)]
enum Operator {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(regex_lite::Regex),
}

/// A filter that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter {input:?} at position {position}: {message}")]
pub struct FilterError {
    /// The filter text.
    pub input: String,
    /// Byte offset of the problem.
    pub position: usize,
    /// What is wrong.
    pub message: String,
}

impl FilterSet {
    /// Parses every filter of a request.
    ///
    /// # Errors
    /// The first filter that does not parse, with the position of the problem.
    pub fn parse_all<S: AsRef<str>>(filters: &[S]) -> Result<FilterSet, FilterError> {
        let mut any = Vec::new();
        for filter in filters {
            let text = filter.as_ref();
            if text.is_empty() {
                // An empty filter matches everything, as in containerd.
                any.push(Vec::new());
                continue;
            }
            any.push(
                Parser {
                    input: text,
                    position: 0,
                }
                .selectors()?,
            );
        }
        Ok(FilterSet { any })
    }

    /// Whether the object, seen through `field`, matches. `field` returns the value of a field
    /// path and whether it is present: owned, or borrowed from the object (a `&str` or a
    /// `Cow`) where matching runs often, as it does for every event and every subscriber.
    pub fn matches<S: AsRef<str>>(&self, field: impl Fn(&[String]) -> Option<S>) -> bool {
        if self.any.is_empty() {
            return true;
        }
        self.any
            .iter()
            .any(|all| all.iter().all(|s| s.matches(&field)))
    }
}

impl Selector {
    fn matches<S: AsRef<str>>(&self, field: &impl Fn(&[String]) -> Option<S>) -> bool {
        let value = field(&self.fieldpath);
        let value = value.as_ref().map(AsRef::as_ref);
        match &self.operator {
            Operator::Present => value.is_some(),
            Operator::Equal(wanted) => value == Some(wanted.as_str()),
            // As containerd: a missing field compares as the empty string.
            Operator::NotEqual(wanted) => value.unwrap_or("") != wanted,
            Operator::Matches(re) => re.is_match(value.unwrap_or("")),
        }
    }
}

struct Parser<'a> {
    input: &'a str,
    position: usize,
}

impl fmt::Debug for Parser<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Parser at {} of {:?}", self.position, self.input)
    }
}

impl Parser<'_> {
    fn error(&self, message: impl Into<String>) -> FilterError {
        FilterError {
            input: self.input.to_string(),
            position: self.position,
            message: message.into(),
        }
    }

    fn skip_space(&mut self) {
        while let Some(c) = self.peek() {
            if !c.is_whitespace() {
                break;
            }
            self.position += c.len_utf8();
        }
    }

    fn peek(&self) -> Option<char> {
        self.input[self.position..].chars().next()
    }

    fn selectors(&mut self) -> Result<Vec<Selector>, FilterError> {
        let mut all = vec![self.selector()?];
        loop {
            self.skip_space();
            match self.peek() {
                None => return Ok(all),
                Some(',') => {
                    self.position += 1;
                    all.push(self.selector()?);
                }
                Some(c) => {
                    return Err(self.error(format!("unexpected {c:?}; expected \",\" or the end")));
                }
            }
        }
    }

    fn selector(&mut self) -> Result<Selector, FilterError> {
        let mut fieldpath = vec![self.field()?];
        loop {
            self.skip_space();
            if self.peek() == Some('.') {
                self.position += 1;
                fieldpath.push(self.field()?);
            } else {
                break;
            }
        }
        self.skip_space();
        let operator = match self.peek() {
            None | Some(',') => {
                return Ok(Selector {
                    fieldpath,
                    operator: Operator::Present,
                });
            }
            Some('=' | '!' | '~') => {
                let start = self.position;
                while matches!(self.peek(), Some('=' | '!' | '~')) {
                    self.position += 1;
                }
                let op = &self.input[start..self.position];
                if !matches!(op, "==" | "!=" | "~=") {
                    self.position = start;
                    return Err(
                        self.error(format!("unsupported operator {op:?}; use ==, != or ~="))
                    );
                }
                op.to_string()
            }
            Some(c) => {
                return Err(self.error(format!(
                    "unexpected {c:?}; expected an operator (==, != or ~=)"
                )));
            }
        };
        let value = self.value(operator == "~=")?;
        let operator = match operator.as_str() {
            "==" => Operator::Equal(value),
            "!=" => Operator::NotEqual(value),
            _ => Operator::Matches(
                regex_lite::Regex::new(&value)
                    .map_err(|e| self.error(format!("bad regular expression {value:?}: {e}")))?,
            ),
        };
        Ok(Selector {
            fieldpath,
            operator,
        })
    }

    fn field(&mut self) -> Result<String, FilterError> {
        self.skip_space();
        match self.peek() {
            Some('"') => self.quoted('"'),
            Some(c) if c.is_ascii_alphanumeric() || c == '_' => {
                let start = self.position;
                while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || c == '_') {
                    self.position += 1;
                }
                Ok(self.input[start..self.position].to_string())
            }
            Some(c) => Err(self.error(format!(
                "unexpected {c:?}; expected a field name or a quoted string"
            ))),
            None => Err(self.error("unexpected end; expected a field name")),
        }
    }

    fn value(&mut self, alternative_quotes: bool) -> Result<String, FilterError> {
        self.skip_space();
        match self.peek() {
            Some('"') => self.quoted('"'),
            Some(q @ ('/' | '|')) if alternative_quotes => self.quoted(q),
            Some(',') | None => Err(self.error("missing value after the operator")),
            Some(_) => {
                let start = self.position;
                while let Some(c) = self.peek() {
                    if c == ',' || c.is_whitespace() {
                        break;
                    }
                    self.position += c.len_utf8();
                }
                Ok(self.input[start..self.position].to_string())
            }
        }
    }

    fn quoted(&mut self, quote: char) -> Result<String, FilterError> {
        let start = self.position;
        self.position += quote.len_utf8();
        let mut out = String::new();
        loop {
            let Some(c) = self.peek() else {
                self.position = start;
                return Err(self.error("quoted string not terminated"));
            };
            self.position += c.len_utf8();
            if c == quote {
                return Ok(out);
            }
            if c == '\n' {
                self.position = start;
                return Err(self.error("quoted string not terminated"));
            }
            if c != '\\' {
                out.push(c);
                continue;
            }
            let Some(e) = self.peek() else { continue };
            self.position += e.len_utf8();
            match e {
                'a' => out.push('\u{7}'),
                'b' => out.push('\u{8}'),
                'f' => out.push('\u{c}'),
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                'v' => out.push('\u{b}'),
                '\\' | '"' | '\'' | '/' | '|' => {
                    // For regular expressions, keep the escape of the quote character's
                    // meaning-free escapes intact.
                    if quote != '"' && e == '\\' {
                        out.push('\\');
                    }
                    out.push(e);
                }
                'x' | 'u' | 'U' => {
                    let n = match e {
                        'x' => 2,
                        'u' => 4,
                        _ => 8,
                    };
                    let digits = self
                        .input
                        .get(self.position..self.position + n)
                        .unwrap_or("");
                    let code = u32::from_str_radix(digits, 16)
                        .ok()
                        .filter(|_| digits.len() == n)
                        .and_then(char::from_u32)
                        .ok_or_else(|| self.error("illegal numeric escape sequence"))?;
                    self.position += n;
                    out.push(code);
                }
                other if quote != '"' => {
                    // In /regex/ quoting, unknown escapes belong to the regex.
                    out.push('\\');
                    out.push(other);
                }
                other => return Err(self.error(format!("illegal escape sequence \\{other}"))),
            }
        }
    }
}

/// The value of `labels.<key>` in `labels`, as containerd reads it: the rest of the field
/// path joined with `.`, so `labels.a.b` and `labels."a.b"` both name the label `a.b`.
pub fn label_field(
    path: &[String],
    labels: &std::collections::BTreeMap<String, String>,
) -> Option<String> {
    match path {
        [first, rest @ ..] if first == "labels" => map_field(rest, labels),
        _ => None,
    }
}

/// The value of the key a field path's remaining `segments` name in `map` (the segments
/// joined with dots: `labels.a.b` is key `a.b`); none for no segments.
pub fn map_field(
    segments: &[String],
    map: &std::collections::BTreeMap<String, String>,
) -> Option<String> {
    match segments {
        [] => None,
        // The common case, looked up without building the key.
        [key] => map.get(key).cloned(),
        _ => map.get(&segments.join(".")).cloned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(path: &[String]) -> Option<String> {
        let path: Vec<&str> = path.iter().map(String::as_str).collect();
        match path.as_slice() {
            ["type"] => Some("io.containerd.grpc.v1".to_string()),
            ["id"] => Some("introspection".to_string()),
            ["labels", "a.b"] => Some("x y".to_string()),
            ["labels", "empty"] => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn filter_table() {
        // (filters, matches the object?) — None means a parse error.
        let cases: &[(&[&str], Option<bool>)] = &[
            (&[], Some(true)),
            (&[""], Some(true)),
            (&["type==io.containerd.grpc.v1"], Some(true)),
            (&["type==io.containerd.content.v1"], Some(false)),
            (
                &["type == io.containerd.grpc.v1 , id==introspection"],
                Some(true),
            ),
            (&["type==io.containerd.grpc.v1,id==version"], Some(false)),
            (&["id==version", "id==introspection"], Some(true)),
            (&["id!=version"], Some(true)),
            (&["missing!=x"], Some(true)),
            (&["missing==x"], Some(false)),
            (&["id~=^intro"], Some(true)),
            (&["id~=/spec+tion$/"], Some(true)),
            (&["id~=|^x|"], Some(false)),
            (&["labels.\"a.b\"==\"x y\""], Some(true)),
            (&["labels.\"a.b\""], Some(true)),
            (&["labels.empty"], Some(true)),
            (&["labels.nope"], Some(false)),
            (&["type=io"], None),
            (&["type==="], None),
            (&["type=="], None),
            (&["id~=("], None),
            (&["labels.\"open"], None),
            (&["==x"], None),
            (&["type==a b"], None),
        ];
        for (filters, expected) in cases {
            let parsed = FilterSet::parse_all(filters);
            assert_eq!(
                parsed.as_ref().ok().map(|f| f.matches(object)),
                *expected,
                "{filters:?}: {parsed:?}"
            );
        }
    }

    #[test]
    fn label_paths_join_their_segments_with_dots() {
        let labels: std::collections::BTreeMap<String, String> =
            [("a", "1"), ("a.b", "2"), ("a.b.c", "3")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let cases: &[(&[&str], Option<&str>)] = &[
            (&["labels", "a"], Some("1")),
            (&["labels", "a.b"], Some("2")),
            (&["labels", "a", "b"], Some("2")),
            (&["labels", "a", "b.c"], Some("3")),
            (&["labels", "nope"], None),
            (&["labels"], None),
            (&["annotations", "a"], None),
        ];
        for (path, expected) in cases {
            let path: Vec<String> = path.iter().map(|s| s.to_string()).collect();
            assert_eq!(
                label_field(&path, &labels).as_deref(),
                *expected,
                "{path:?}"
            );
        }
    }

    #[test]
    fn error_says_where() {
        let error = FilterSet::parse_all(&["type=io"]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "filter \"type=io\" at position 4: unsupported operator \"=\"; use ==, != or ~="
        );
    }
}
