//! Config errors: positioned diagnostics, their collection while validating, and "did you mean".

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Why a config file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but is invalid; every problem found, in file order.
    #[error("{}", format_diagnostics(.0))]
    Invalid(Vec<Diagnostic>),
}

/// One problem in a config file, at a 1-based line and column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// The config file, as given.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// Dotted key path, e.g. `apps.api.min_uptime`; empty for syntax errors.
    pub key: String,
    /// What is wrong, and how to fix it where we know.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// One line per diagnostic.
fn format_diagnostics(diagnostics: &[Diagnostic]) -> String {
    let lines: Vec<String> = diagnostics.iter().map(Diagnostic::to_string).collect();
    lines.join("\n")
}

/// Collects diagnostics for one file, turning byte spans into line:column.
pub(crate) struct Diagnostics<'a> {
    text: &'a str,
    file: &'a Path,
    found: Vec<Diagnostic>,
}

impl<'a> Diagnostics<'a> {
    pub fn new(text: &'a str, file: &'a Path) -> Self {
        Self {
            text,
            file,
            found: Vec::new(),
        }
    }

    /// Records a problem at the start of `span`.
    pub fn error(
        &mut self,
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) {
        let (line, column) = line_column(self.text, span.start);
        self.found.push(Diagnostic {
            file: self.file.to_owned(),
            line,
            column,
            key: key.into(),
            // One line per diagnostic, whatever the message looked like.
            message: message.into().replace('\n', "; "),
        });
    }

    /// Records an unknown key, suggesting the closest of `known`.
    pub fn unknown_key(&mut self, span: Range<usize>, path: String, key: &str, known: &[&str]) {
        let message = match suggest(key, known.iter().copied()) {
            Some(close) => format!("unknown key `{key}`; did you mean `{close}`?"),
            // Listing a long set of keys would drown the message.
            None if known.len() <= 8 => {
                format!("unknown key `{key}`; expected one of: {}", known.join(", "))
            }
            None => format!("unknown key `{key}`"),
        };
        self.error(span, path, message);
    }

    /// Whether nothing was recorded so far.
    pub fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    /// `Ok` if nothing was recorded, else every diagnostic so far, in file order.
    pub fn check(&mut self) -> Result<(), ConfigError> {
        match self.found.is_empty() {
            true => Ok(()),
            false => Err(self.take()),
        }
    }

    /// Every diagnostic so far, in file order, as an error.
    pub fn take(&mut self) -> ConfigError {
        let mut found = std::mem::take(&mut self.found);
        found.sort_by_key(|d| (d.line, d.column));
        ConfigError::Invalid(found)
    }
}

/// 1-based line and character column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

/// The candidate closest to `word`, if it is close enough to be a likely typo.
pub(crate) fn suggest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).clamp(1, 3);
    candidates
        .into_iter()
        .map(|c| (levenshtein(&word.to_lowercase(), &c.to_lowercase()), c))
        .filter(|&(distance, _)| distance <= limit)
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, c)| c)
}

/// Edit distance (insertions, deletions, substitutions) between two strings, by characters.
fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let next = (diagonal + usize::from(ca != cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance() {
        assert_eq!(levenshtein("", ""), 0);
        assert_eq!(levenshtein("comand", "command"), 1);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("app", "apps"), 1);
        assert_eq!(levenshtein("abc", ""), 3);
    }

    #[test]
    fn suggestions() {
        let keys = ["command", "cwd", "max_restarts", "restart"];
        assert_eq!(suggest("comand", keys), Some("command"));
        assert_eq!(suggest("max_restart", keys), Some("max_restarts"));
        assert_eq!(suggest("restrat", keys), Some("restart"));
        assert_eq!(suggest("health", keys), None);
        assert_eq!(suggest("app", ["daemon", "defaults", "apps"]), Some("apps"));
    }

    #[test]
    fn positions() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        assert_eq!(line_column(text, 10), (2, 4));
        assert_eq!(line_column(text, 999), (3, 1));
    }

    #[test]
    fn display_is_one_line_each() {
        let d = |key: &str| Diagnostic {
            file: "config/citrusd.toml".into(),
            line: 12,
            column: 14,
            key: key.into(),
            message: "bad".into(),
        };
        let err = ConfigError::Invalid(vec![d("apps.api.min_uptime"), d("")]);
        assert_eq!(
            err.to_string(),
            "config/citrusd.toml:12:14: apps.api.min_uptime: bad\nconfig/citrusd.toml:12:14: bad"
        );
    }
}
