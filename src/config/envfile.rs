//! Dotenv files (`env_file`), read by the supervisor at every start of an app.

use std::path::{Path, PathBuf};

/// Why an env file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum EnvFileError {
    /// The file could not be read.
    #[error("cannot read env file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A line is malformed.
    #[error("{}:{line}: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// Reads a dotenv file: `KEY=VALUE` lines, `#` comments, blank lines, an optional `export ` prefix,
/// single-quoted (literal) or double-quoted values (`\n`, `\t`, `\"`, `\\` escapes).
pub fn read_env_file(path: &Path) -> Result<Vec<(String, String)>, EnvFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| EnvFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_env(&text).map_err(|(line, message)| EnvFileError::Syntax {
        path: path.to_owned(),
        line,
        message,
    })
}

/// Parses dotenv text; the error is (1-based line, message).
fn parse_env(text: &str) -> Result<Vec<(String, String)>, (usize, String)> {
    let mut vars = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line
            .strip_prefix("export")
            .filter(|rest| rest.starts_with([' ', '\t']))
            .map_or(line, str::trim_start);
        let parsed = line
            .split_once('=')
            .ok_or_else(|| "expected KEY=VALUE".to_owned())
            .and_then(|(key, value)| {
                let key = key.trim_end();
                let valid = key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                    && key
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
                if !valid {
                    return Err(format!("invalid variable name {key:?}"));
                }
                Ok((key.to_owned(), parse_value(value.trim_start())?))
            });
        vars.push(parsed.map_err(|message| (index + 1, message))?);
    }
    Ok(vars)
}

fn parse_value(value: &str) -> Result<String, String> {
    let (parsed, rest) = if let Some(body) = value.strip_prefix('\'') {
        let end = body.find('\'').ok_or("unterminated single-quoted value")?;
        (body[..end].to_owned(), &body[end + 1..])
    } else if let Some(body) = value.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = body.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated double-quoted value".to_owned()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next().map(|(_, c)| c) {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some('r') => out.push('\r'),
                    Some(c @ ('"' | '\\' | '$')) => out.push(c),
                    Some(c) => out.extend(['\\', c]),
                    None => return Err("unterminated double-quoted value".to_owned()),
                },
                Some((_, c)) => out.push(c),
            }
        };
        (out, &body[end + 1..])
    } else {
        // Unquoted: a `#` after whitespace starts a comment.
        let end = value
            .char_indices()
            .find(|&(i, c)| c == '#' && value[..i].ends_with([' ', '\t']))
            .map_or(value.len(), |(i, _)| i);
        return Ok(value[..end].trim_end().to_owned());
    };
    let rest = rest.trim_start();
    if rest.is_empty() || rest.starts_with('#') {
        Ok(parsed)
    } else {
        Err(format!("unexpected text after the closing quote: {rest:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_dotenv() {
        let text = "# comment\n\nA=1\nexport B = two words # note\nC='lit $X \\n'\n\
                    D=\"x\\ny \\\"q\\\" \\\\\" # c\nE=\nF=a#b\r\nexport_G=3\n";
        assert_eq!(
            parse_env(text).unwrap(),
            pairs(&[
                ("A", "1"),
                ("B", "two words"),
                ("C", "lit $X \\n"),
                ("D", "x\ny \"q\" \\"),
                ("E", ""),
                ("F", "a#b"),
                ("export_G", "3"),
            ])
        );
    }

    #[test]
    fn reports_line_numbers() {
        assert_eq!(
            parse_env("A=1\n\nnot a pair\n"),
            Err((3, "expected KEY=VALUE".to_owned()))
        );
        assert_eq!(
            parse_env("A=\"open\n").unwrap_err(),
            (1, "unterminated double-quoted value".to_owned())
        );
        assert_eq!(parse_env("A='x\n").unwrap_err().0, 1);
        assert!(parse_env("1A=x")
            .unwrap_err()
            .1
            .contains("invalid variable name"));
        assert!(parse_env("A='x' y")
            .unwrap_err()
            .1
            .contains("after the closing quote"));
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        std::fs::write(&path, "OK=1\nbroken\n").unwrap();
        let err = read_env_file(&path).unwrap_err().to_string();
        assert_eq!(err, format!("{}:2: expected KEY=VALUE", path.display()));
        std::fs::write(&path, "OK=1\n").unwrap();
        assert_eq!(read_env_file(&path).unwrap(), pairs(&[("OK", "1")]));
        let missing = read_env_file(&dir.path().join("nope")).unwrap_err();
        assert!(matches!(missing, EnvFileError::Read { .. }));
    }
}
