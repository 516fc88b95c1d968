//! The rules an app definition is checked against, whatever its source: the config file and
//! `reload-config` (each value checked where it is read, with its position, then the resolved
//! app as a whole by [`super::app::validate_app`]), the control API (`start --name`,
//! `POST /v1/apps`) and the run-time apps of `state.json`. Each rule is one function with one
//! message, so every source refuses the same thing in the same words; the config's values that
//! obey a rule ([`CommandValue`], [`InstanceCount`], [`EnvTable`]) are read through it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};

use super::units::{scalar_deserialize, EnvValue, Scalar};

/// The most instances one app may have (`instances`, `--instances`).
pub const MAX_INSTANCES: u32 = 256;

/// Why an app definition was refused: every problem found, each a complete message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("app {name:?} is not valid: {}", .problems.join("; "))]
pub struct InvalidApp {
    /// The name as given (possibly itself invalid).
    pub name: String,
    /// One message per problem.
    pub problems: Vec<String>,
}

/// Validates an app name: `[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`, not `all`. `Err` is the message.
pub fn validate_app_name(name: &str) -> Result<(), String> {
    validate_name("app", name)
}

/// Validates the name of an app or a job (`what`), as [`validate_app_name`] does.
pub(super) fn validate_name(what: &str, name: &str) -> Result<(), String> {
    if !is_identifier(name) || !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        Err(format!(
            "invalid {what} name {name:?}: use 1 to 64 letters, digits, `_`, `.` or `-`, \
             starting with a letter or digit"
        ))
    } else if name == "all" {
        Err(format!("the {what} name \"all\" is reserved"))
    } else {
        Ok(())
    }
}

/// Whether `s` is 1 to 64 ASCII letters, digits, `_`, `.` or `-`.
pub(super) fn is_identifier(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// An app's `command`: a program, and no NUL byte in any argument.
pub fn check_command(argv: &[String]) -> Result<(), String> {
    check_argv(argv, r#"["node", "index.js"]"#)
}

/// An argv: a program (the message shows `example` when there is none), no NUL byte anywhere.
pub(crate) fn check_argv(argv: &[String], example: &str) -> Result<(), String> {
    match argv.first() {
        Some(program) if !program.trim().is_empty() => {}
        _ => {
            return Err(format!(
                "command is empty; give the program and its arguments, e.g. {example}"
            ))
        }
    }
    match argv.iter().position(|arg| arg.contains('\0')) {
        Some(i) => Err(format!(
            "command argument {i} ({}) contains a NUL byte, which no program can receive; remove it",
            shown(&argv[i])
        )),
        None => Ok(()),
    }
}

/// A number of instances, from 1 to [`MAX_INSTANCES`].
pub fn check_instances(n: i64) -> Result<u32, String> {
    match u32::try_from(n) {
        Ok(n) if (1..=MAX_INSTANCES).contains(&n) => Ok(n),
        _ => Err(format!(
            "`instances` is {n}: must be from 1 to {MAX_INSTANCES}"
        )),
    }
}

/// An environment variable name: not empty, no `=`, no NUL byte.
pub fn check_env_name(key: &str) -> Result<(), String> {
    if key.is_empty() {
        Err(
            r#"an environment variable name is empty; name it, e.g. NODE_ENV = "production""#
                .into(),
        )
    } else if key.contains('=') {
        Err(format!(
            "environment variable name {} contains `=`, which would end the name there; remove it",
            shown(key)
        ))
    } else if key.contains('\0') {
        Err(format!(
            "environment variable name {} contains a NUL byte; remove it",
            shown(key)
        ))
    } else {
        Ok(())
    }
}

/// An environment variable: a valid name, and no NUL byte in the value.
pub fn check_env(key: &str, value: &str) -> Result<(), String> {
    check_env_name(key)?;
    match value.contains('\0') {
        true => Err(format!(
            "the value of environment variable {key} contains a NUL byte, which no program can \
             receive; remove it"
        )),
        false => Ok(()),
    }
}

/// A resolved working directory: absolute, no NUL byte.
pub fn check_cwd(cwd: &Path) -> Result<(), String> {
    let text = cwd.to_string_lossy();
    if text.contains('\0') {
        Err(format!(
            "`cwd` {} contains a NUL byte; remove it",
            shown(&text)
        ))
    } else if !cwd.is_absolute() {
        Err(format!("`cwd` {} is not an absolute path", shown(&text)))
    } else {
        Ok(())
    }
}

/// `s` quoted, with NUL bytes written as `\0`.
fn shown(s: &str) -> String {
    format!("{:?}", s).replace("\\u{0}", "\\0")
}

/// `instances` as written in the config: an integer checked by [`check_instances`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct InstanceCount(pub u32);

impl Scalar for InstanceCount {
    const EXPECTING: &'static str = "an integer from 1 to 256";
    fn from_text(s: &str) -> Result<Self, String> {
        Err(format!(
            "invalid type: string {s:?}, expected an integer from 1 to {MAX_INSTANCES}"
        ))
    }
    fn from_integer(v: i64) -> Result<Self, String> {
        check_instances(v).map(Self)
    }
}

scalar_deserialize!(InstanceCount);

/// An env table (`env`, `env_<NAME>`): names and values checked by [`check_env`]; numbers and
/// booleans become their TOML spelling.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct EnvTable(pub BTreeMap<String, String>);

impl<'de> Deserialize<'de> for EnvTable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let table = BTreeMap::<String, EnvValue>::deserialize(d)?;
        for (key, value) in &table {
            check_env(key, &value.0).map_err(de::Error::custom)?;
        }
        Ok(Self(table.into_iter().map(|(k, v)| (k, v.0)).collect()))
    }
}

/// An argv: an array of strings, or one string split shell-words style. Never empty.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct CommandValue(pub Vec<String>);

impl<'de> Deserialize<'de> for CommandValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_argv(d, check_command).map(Self)
    }
}

/// Reads an argv written as [`CommandValue`] is, then checks it with `check` (whose `Err` is the
/// message), so that every problem is reported at the value.
pub(crate) fn deserialize_argv<'de, D: Deserializer<'de>>(
    d: D,
    check: fn(&[String]) -> Result<(), String>,
) -> Result<Vec<String>, D::Error> {
    struct Argv(fn(&[String]) -> Result<(), String>);

    impl Argv {
        fn checked<E: de::Error>(self, argv: Vec<String>) -> Result<Vec<String>, E> {
            (self.0)(&argv).map_err(E::custom)?;
            Ok(argv)
        }
    }

    impl<'de> Visitor<'de> for Argv {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an array of strings or a command string")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<String>, E> {
            let argv = shell_words::split(v)
                .map_err(|e| E::custom(format!("cannot split command {v:?}: {e}")))?;
            self.checked(argv)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut argv = Vec::new();
            while let Some(arg) = seq.next_element::<String>()? {
                argv.push(arg);
            }
            self.checked(argv)
        }
    }

    d.deserialize_any(Argv(check))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_and_their_messages() {
        assert!(check_command(&[]).unwrap_err().contains("command is empty"));
        assert!(check_command(&[" ".into()]).is_err());
        let nul = check_command(&["sleep".into(), "1\0".into()]).unwrap_err();
        assert!(
            nul.contains("argument 1") && nul.contains("\"1\\0\""),
            "{nul}"
        );
        assert_eq!(check_instances(1), Ok(1));
        assert_eq!(check_instances(256), Ok(256));
        for bad in [0, -1, 257, 4_000_000_000, i64::MAX] {
            let e = check_instances(bad).unwrap_err();
            assert!(
                e.contains("from 1 to 256") && e.contains(&bad.to_string()),
                "{e}"
            );
        }
        assert!(check_env_name("").unwrap_err().contains("empty"));
        assert!(check_env_name("A=B").unwrap_err().contains("`=`"));
        assert!(check_env_name("A\0").unwrap_err().contains("NUL"));
        assert!(check_env("A", "x\0y")
            .unwrap_err()
            .contains("value of environment variable A"));
        assert!(check_env("NODE_ENV", "production").is_ok());
        assert!(check_cwd(Path::new("rel")).is_err());
        assert!(check_cwd(Path::new("/srv/a\0b"))
            .unwrap_err()
            .contains("NUL"));
        assert!(check_cwd(Path::new("/srv")).is_ok());
    }
}
