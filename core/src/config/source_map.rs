//! Where each key of a config came from: file, line and column, kept across imports.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use toml::de::{DeTable, DeValue};

/// A place in a config file. Lines and columns count from 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file.
    pub file: Arc<PathBuf>,
    /// Line, from 1.
    pub line: usize,
    /// Column in characters, from 1.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// Turns byte offsets of one file into lines and columns.
#[derive(Debug, Clone)]
pub(crate) struct LineIndex {
    file: Arc<PathBuf>,
    text: Arc<str>,
    line_starts: Vec<usize>,
}

impl LineIndex {
    pub(crate) fn new(file: &Path, text: &str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex {
            file: Arc::new(file.to_path_buf()),
            text: Arc::from(text),
            line_starts,
        }
    }

    pub(crate) fn location(&self, offset: usize) -> Location {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let start = self.line_starts[line - 1];
        let column = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count())
            + 1;
        Location {
            file: self.file.clone(),
            line,
            column,
        }
    }

    pub(crate) fn file_location(&self) -> Location {
        Location {
            file: self.file.clone(),
            line: 1,
            column: 1,
        }
    }
}

/// The key and value locations of every path in a merged config. A later file's entry
/// replaces an earlier one, as its value does.
#[derive(Debug, Clone, Default)]
pub(crate) struct SourceMap {
    entries: HashMap<Vec<String>, (Location, Location)>,
    files: Vec<Location>,
}

impl SourceMap {
    /// Records every key of one parsed file.
    pub(crate) fn add_file(&mut self, index: &LineIndex) {
        self.files.push(index.file_location());
        let Ok(table) = DeTable::parse(&index.text) else {
            return;
        };
        let mut path = Vec::new();
        self.walk_table(index, table.get_ref(), &mut path);
    }

    fn walk_table(&mut self, index: &LineIndex, table: &DeTable<'_>, path: &mut Vec<String>) {
        for (key, value) in table {
            path.push(key.get_ref().to_string());
            self.record(index, path, key.span(), value.span());
            self.walk_value(index, value.get_ref(), path);
            path.pop();
        }
    }

    fn walk_value(&mut self, index: &LineIndex, value: &DeValue<'_>, path: &mut Vec<String>) {
        match value {
            DeValue::Table(table) => self.walk_table(index, table, path),
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    path.push(i.to_string());
                    self.record(index, path, item.span(), item.span());
                    self.walk_value(index, item.get_ref(), path);
                    path.pop();
                }
            }
            _ => {}
        }
    }

    fn record(
        &mut self,
        index: &LineIndex,
        path: &[String],
        key: Range<usize>,
        value: Range<usize>,
    ) {
        self.entries.insert(
            path.to_vec(),
            (index.location(key.start), index.location(value.start)),
        );
    }

    /// Moves the entries under `from` to `to` (used when migration renames a plugin section).
    pub(crate) fn rename_prefix(&mut self, from: &[String], to: &[String]) {
        let moved: Vec<_> = self
            .entries
            .iter()
            .filter(|(k, _)| k.starts_with(from))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (key, value) in moved {
            self.entries.remove(&key);
            let mut renamed = to.to_vec();
            renamed.extend_from_slice(&key[from.len()..]);
            self.entries.insert(renamed, value);
        }
    }

    /// Takes every entry of `other`, replacing its own.
    pub(crate) fn merge(&mut self, other: SourceMap) {
        self.entries.extend(other.entries);
        self.files.extend(other.files);
    }

    /// Where the key at `path` is written, or the closest enclosing key that is.
    pub(crate) fn key(&self, path: &[String]) -> Option<Location> {
        self.find(path).map(|(k, _)| k)
    }

    /// Where the value at `path` is written, or the closest enclosing key that is.
    pub(crate) fn value(&self, path: &[String]) -> Option<Location> {
        self.find(path).map(|(_, v)| v)
    }

    /// Where the value at exactly `path` is written, if a file writes it (no fallback: a
    /// value that came from elsewhere, e.g. the command line, has no place in a file).
    pub(crate) fn exact_value(&self, path: &[String]) -> Option<Location> {
        self.entries.get(path).map(|(_, v)| v.clone())
    }

    fn find(&self, path: &[String]) -> Option<(Location, Location)> {
        (0..=path.len())
            .rev()
            .find_map(|n| self.entries.get(&path[..n]).cloned())
            .or_else(|| self.files.first().map(|f| (f.clone(), f.clone())))
    }
}
