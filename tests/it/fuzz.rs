//! Property tests ("fuzzing" without a nightly toolchain) of the three decoders that take input
//! from outside: the config parser, the control API request bodies and queries, and the fleet
//! protocol's engine frames. Each starts from the seed corpus in `tests/corpus/` (every seed is
//! also checked unmutated), mutates it, and adds arbitrary text; the property is that the decoder
//! never panics and that its error says where or answers the peer.
//!
//! The number of cases per property is small so that `cargo test` stays fast; set
//! `CITRUS_FUZZ_CASES` (e.g. 50000, about a minute) for a longer run. A failing case is printed shrunk; add it to
//! the corpus as a file once fixed.

use std::path::{Path, PathBuf};

use citrus::config::{Config, ConfigError};
use citrus::control::{AddApp, DeployRequest, LogsQuery, ReloadRequest, RollbackRequest};
use citrus::fleet::protocol::{parse_engine, ProtocolError};
use citrus::sys::serve::json_object;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};

/// Cases per property in the short run (`cargo test`).
const SHORT_RUN_CASES: u32 = 500;

/// Where config texts are said to come from (never read: `Config::parse` takes the text).
const CONFIG_PATH: &str = "/nonexistent/citrus-fuzz/citrusd.toml";

fn runner() -> TestRunner {
    let cases = std::env::var("CITRUS_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SHORT_RUN_CASES);
    TestRunner::new(RunnerConfig {
        cases,
        // No regression files written into the source tree; failures are printed instead.
        failure_persistence: None,
        ..RunnerConfig::default()
    })
}

/// The seeds of `tests/corpus/<dir>`, sorted by file name, as (file name, text).
fn corpus(dir: &str) -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(dir);
    let mut seeds: Vec<(String, String)> = std::fs::read_dir(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .map(|entry| {
            let file: PathBuf = entry.unwrap().path();
            let text = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
            (
                file.file_name().unwrap().to_string_lossy().into_owned(),
                text,
            )
        })
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no seeds in {}", path.display());
    seeds
}

/// Pieces worth inserting: the syntax of TOML, JSON and query strings, numbers at the edges of
/// the integer types, durations and sizes, and characters that are not ASCII.
const TOKENS: &[&str] = &[
    "[",
    "]",
    "[[",
    "]]",
    "{",
    "}",
    "=",
    ",",
    ":",
    "\"",
    "'",
    "'''",
    "\"\"\"",
    "\\",
    "\\u0000",
    "\\uD800",
    "\n",
    "\r\n",
    "\t",
    " ",
    "#",
    ".",
    "-",
    "+",
    "&",
    "?",
    "%",
    "%00",
    "%ff",
    "0",
    "-1",
    "1e999",
    "-0",
    "0x10",
    "1_000",
    "4294967296",
    "18446744073709551616",
    "9223372036854775807",
    "-9223372036854775808",
    "1.5",
    "nan",
    "inf",
    "true",
    "false",
    "null",
    "\u{0}",
    "é",
    "😀",
    "\u{202e}",
    "\"s\"",
    "[]",
    "{}",
    "\"3650d\"",
    "\"3651d\"",
    "\"1ms\"",
    "\"10M\"",
    "\"0\"",
    "\"\"",
    "apps.",
    "[apps.a]",
    "[defaults]",
    "[daemon]",
    "[jobs.j]",
    "[apps.a.deploy]",
    "command = [\"x\"]",
    "instances = ",
    "\"type\"",
    "\"id\"",
    "\"app\"",
    "\"domain\"",
    "\"newKey\"",
    "\"commitId\"",
    "\"ref\"",
    "\"to\"",
    "\"name\"",
    "\"command\"",
    "\"instances\"",
    "\"cwd\"",
    "\"dry_run\"",
    "lines=",
    "follow=",
    "stream=",
];

/// One edit of a seed. Positions are `Index`es, scaled to the text's length when applied.
#[derive(Clone, Debug)]
enum Edit {
    Delete(Index, u8),
    Insert(Index, String),
    Replace(Index, u8, String),
    /// Copies a span to another place (repeats keys, tables, brackets).
    Duplicate(Index, u8, Index),
    Truncate(Index),
}

fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(TOKENS).prop_map(str::to_owned),
        1 => any::<char>().prop_map(String::from),
        1 => "\\PC{0,6}",
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        any::<(Index, u8)>().prop_map(|(at, n)| Edit::Delete(at, n % 16)),
        (any::<Index>(), piece()).prop_map(|(at, s)| Edit::Insert(at, s)),
        (any::<(Index, u8)>(), piece()).prop_map(|((at, n), s)| Edit::Replace(at, n % 8, s)),
        any::<(Index, u8, Index)>().prop_map(|(at, n, to)| Edit::Duplicate(at, n, to)),
        any::<Index>().prop_map(Edit::Truncate),
    ]
}

/// Values worth putting on the right of a TOML `key =`: every type, and the edges of the units
/// (durations, sizes, signals, counts) the schema accepts.
const TOML_VALUES: &[&str] = &[
    "\"\"",
    "\"x\"",
    "\"0\"",
    "0",
    "-1",
    "1",
    "256",
    "257",
    "4294967296",
    "9223372036854775807",
    "1.5",
    "nan",
    "inf",
    "true",
    "false",
    "[]",
    "[\"\"]",
    "[\"/bin/true\", \"\\u0000\"]",
    "{}",
    "{ A = \"1\" }",
    "{ \"=\" = \"x\" }",
    "{ \"\" = 1 }",
    "\"0s\"",
    "\"1ms\"",
    "\"3650d\"",
    "\"3651d\"",
    "\"99999999999999999999d\"",
    "\"1h30m\"",
    "\"1x\"",
    "\"10M\"",
    "\"1G\"",
    "\"4K\"",
    "\"18446744073709551616K\"",
    "\"TERM\"",
    "\"SIGKILL\"",
    "\"NOPE\"",
    "99",
    "\"*/5 * * * *\"",
    "\"* * *\"",
    "\"61 * * * *\"",
    "\"../../x\"",
    "\"/\"",
    "\"relative\"",
    "\"tcp://127.0.0.1:0\"",
    "\"tcp://[::1]:99999\"",
    "\"unix:\"",
    "\"http://127.0.0.1:1/x\"",
    "{ http = \"ftp://x\" }",
    "{ tcp = \"nope\" }",
    "{ notify = true }",
    "[\"a\", \"a\"]",
    "\"always\"",
    "\"never\"",
    "\"on-failure\"",
    "\"all\"",
    "\"health\"",
    "\"save\"",
];

/// A line-level edit of a TOML seed: keeps the syntax mostly valid so that the schema and the
/// validator, not only the TOML parser, see the input.
#[derive(Clone, Debug)]
enum LineEdit {
    /// Replaces the value of a `key = value` line.
    Value(Index, &'static str),
    /// Moves a `key = value` line (from any seed) into another table.
    Move(Index, Index),
    Delete(Index),
    Duplicate(Index),
}

fn line_edit() -> impl Strategy<Value = LineEdit> {
    prop_oneof![
        4 => (any::<Index>(), proptest::sample::select(TOML_VALUES))
            .prop_map(|(at, v)| LineEdit::Value(at, v)),
        2 => any::<(Index, Index)>().prop_map(|(from, to)| LineEdit::Move(from, to)),
        1 => any::<Index>().prop_map(LineEdit::Delete),
        1 => any::<Index>().prop_map(LineEdit::Duplicate),
    ]
}

/// Applies line edits to a TOML text; `pool` supplies the lines `Move` copies.
fn mutate_lines(seed: &str, pool: &[String], edits: &[LineEdit]) -> String {
    let mut lines: Vec<String> = seed.lines().map(str::to_owned).collect();
    let assignments: Vec<&str> = pool
        .iter()
        .flat_map(|t| t.lines())
        .filter(|l| l.contains(" = "))
        .collect();
    for edit in edits {
        if lines.is_empty() {
            break;
        }
        match edit {
            LineEdit::Value(at, value) => {
                let i = at.index(lines.len());
                if let Some((key, _)) = lines[i].split_once(" = ") {
                    lines[i] = format!("{key} = {value}");
                }
            }
            LineEdit::Move(from, to) if !assignments.is_empty() => {
                let line = assignments[from.index(assignments.len())].to_owned();
                lines.insert(to.index(lines.len() + 1), line);
            }
            LineEdit::Move(..) => {}
            LineEdit::Delete(at) => {
                lines.remove(at.index(lines.len()));
            }
            LineEdit::Duplicate(at) => {
                let i = at.index(lines.len());
                lines.insert(i, lines[i].clone());
            }
        }
    }
    lines.join("\n")
}

/// Applies the edits to `seed`, on character boundaries.
fn mutate(seed: &str, edits: &[Edit]) -> String {
    let mut text: Vec<char> = seed.chars().collect();
    for edit in edits {
        let len = text.len();
        let at = |i: &Index| if len == 0 { 0 } else { i.index(len + 1) };
        match edit {
            Edit::Delete(i, n) => {
                let start = at(i);
                let end = (start + *n as usize).min(len);
                text.drain(start..end);
            }
            Edit::Insert(i, s) => {
                let start = at(i);
                text.splice(start..start, s.chars());
            }
            Edit::Replace(i, n, s) => {
                let start = at(i);
                let end = (start + *n as usize).min(len);
                text.splice(start..end, s.chars());
            }
            Edit::Duplicate(i, n, to) => {
                let start = at(i);
                let end = (start + *n as usize).min(len);
                let copy: Vec<char> = text[start..end].to_vec();
                let to = at(to);
                text.splice(to..to, copy);
            }
            Edit::Truncate(i) => text.truncate(at(i)),
        }
    }
    text.into_iter().collect()
}

/// Small JSON values of every type, with the keys the decoders look for.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::{json, Value};
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        proptest::sample::select(json_words()).prop_map(|s| json!(s)),
        piece().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::vec((proptest::sample::select(JSON_KEYS), inner), 0..4).prop_map(
                |kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            ),
        ]
    })
}

/// Keys of the control requests and the engine frames.
const JSON_KEYS: &[&str] = &[
    "type",
    "id",
    "name",
    "command",
    "instances",
    "cwd",
    "ref",
    "to",
    "dry_run",
    "lines",
    "follow",
    "stream",
    "app",
    "action",
    "domain",
    "options",
    "newKey",
    "commitId",
];

/// String values those keys take, valid and not; [`json_words`] adds the command types.
const JSON_WORDS: &[&str] = &[
    "",
    "web",
    "all",
    "../../x",
    "a\u{0}b",
    "start",
    "stop",
    "restart",
    "example.com",
    "EXAMPLE.com.",
    "-bad-.com",
    "a..b",
    "xn--",
    "abcdef1",
    "ABCDEF1",
    "zzz",
    "0123456789abcdef0123456789abcdef01234567",
    "v1.2",
    "refs/heads/main",
    "..",
    "-x",
    "a b",
    "main@{1}",
    "out",
    "err",
    "/bin/true",
    "/",
    "relative",
    "20261206T042200123Z",
];

/// [`JSON_WORDS`] and every engine command type.
fn json_words() -> Vec<&'static str> {
    let types = citrus::fleet::protocol::EngineMessage::TYPES;
    JSON_WORDS.iter().chain(types).copied().collect()
}

/// One structural edit of a JSON seed, at the `Index`-th node in document order.
#[derive(Clone, Debug)]
enum JsonEdit {
    /// Edits the characters of the `Index`-th string value (the values the validators check).
    Text(Index, Vec<Edit>),
    /// Puts one of `JSON_WORDS` in place of the `Index`-th string value.
    Word(Index, &'static str),
    Replace(Index, serde_json::Value),
    Remove(Index),
    Add(Index, &'static str, serde_json::Value),
}

fn json_edit() -> impl Strategy<Value = JsonEdit> {
    prop_oneof![
        3 => (any::<Index>(), proptest::collection::vec(edit(), 1..=3))
            .prop_map(|(at, edits)| JsonEdit::Text(at, edits)),
        3 => (any::<Index>(), proptest::sample::select(json_words()))
            .prop_map(|(at, w)| JsonEdit::Word(at, w)),
        3 => (any::<Index>(), json_value()).prop_map(|(at, v)| JsonEdit::Replace(at, v)),
        1 => any::<Index>().prop_map(JsonEdit::Remove),
        2 => (any::<Index>(), proptest::sample::select(JSON_KEYS), json_value())
            .prop_map(|(at, k, v)| JsonEdit::Add(at, k, v)),
    ]
}

/// One step of a path into a JSON value.
#[derive(Clone)]
enum Step {
    Item(usize),
    Key(String),
}

/// The paths of every node of `value`, in document order (the root first).
fn paths(value: &serde_json::Value, here: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    out.push(here.clone());
    match value {
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                here.push(Step::Item(i));
                paths(item, here, out);
                here.pop();
            }
        }
        serde_json::Value::Object(fields) => {
            for (key, item) in fields {
                here.push(Step::Key(key.clone()));
                paths(item, here, out);
                here.pop();
            }
        }
        _ => {}
    }
}

fn node<'a>(value: &'a mut serde_json::Value, path: &[Step]) -> &'a mut serde_json::Value {
    path.iter().fold(value, |v, step| match step {
        Step::Item(i) => &mut v[*i],
        Step::Key(k) => &mut v[k.as_str()],
    })
}

/// Applies JSON edits to a seed that is JSON (others are returned unchanged).
fn mutate_json(seed: &str, edits: &[JsonEdit]) -> String {
    let Ok(mut value) = serde_json::from_str::<serde_json::Value>(seed) else {
        return seed.to_owned();
    };
    for edit in edits {
        let mut all = Vec::new();
        paths(&value, &mut Vec::new(), &mut all);
        let strings: Vec<&Vec<Step>> = all
            .iter()
            .filter(|path| {
                let found = path.iter().fold(&value, |v, step| match step {
                    Step::Item(i) => &v[*i],
                    Step::Key(k) => &v[k.as_str()],
                });
                found.is_string()
            })
            .collect();
        match edit {
            JsonEdit::Text(at, text_edits) if !strings.is_empty() => {
                let path = strings[at.index(strings.len())].clone();
                let target = node(&mut value, &path);
                let text = mutate(target.as_str().unwrap_or_default(), text_edits);
                *target = serde_json::Value::String(text);
            }
            JsonEdit::Word(at, word) if !strings.is_empty() => {
                let path = strings[at.index(strings.len())].clone();
                *node(&mut value, &path) = serde_json::Value::String((*word).to_owned());
            }
            JsonEdit::Text(..) | JsonEdit::Word(..) => {}
            // The root only when it is the only node: a frame that is not an object is dull.
            JsonEdit::Replace(at, new) => {
                let i = if all.len() > 1 {
                    1 + at.index(all.len() - 1)
                } else {
                    0
                };
                *node(&mut value, &all[i]) = new.clone();
            }
            JsonEdit::Remove(at) => {
                let path = &all[at.index(all.len())];
                if let Some((last, parent)) = path.split_last() {
                    match (node(&mut value, parent), last) {
                        (serde_json::Value::Array(items), Step::Item(i)) => {
                            items.remove(*i);
                        }
                        (serde_json::Value::Object(fields), Step::Key(k)) => {
                            fields.remove(k);
                        }
                        _ => {}
                    }
                }
            }
            JsonEdit::Add(at, key, new) => match node(&mut value, &all[at.index(all.len())]) {
                serde_json::Value::Object(fields) => {
                    fields.insert((*key).to_owned(), new.clone());
                }
                serde_json::Value::Array(items) => items.push(new.clone()),
                _ => {}
            },
        }
    }
    value.to_string()
}

/// A seed of `seeds` with 1 to 4 edits (of characters, of TOML lines, or of the JSON tree; a
/// kind that does not fit the seed leaves it nearly whole), or arbitrary text: bytes made text
/// (lossy UTF-8), or characters drawn from the syntax of the format.
fn input(seeds: Vec<String>, format: Format) -> BoxedStrategy<String> {
    let structural = match format {
        Format::Toml { .. } => {
            let pool = seeds.clone();
            (
                proptest::sample::select(seeds.clone()),
                proptest::collection::vec(line_edit(), 1..=4),
            )
                .prop_map(move |(seed, edits)| mutate_lines(&seed, &pool, &edits))
                .boxed()
        }
        Format::Json { .. } => (
            proptest::sample::select(seeds.clone()),
            proptest::collection::vec(json_edit(), 1..=4),
        )
            .prop_map(|(seed, edits)| mutate_json(&seed, &edits))
            .boxed(),
    };
    let (Format::Toml { alphabet } | Format::Json { alphabet }) = format;
    prop_oneof![
        3 => (proptest::sample::select(seeds), proptest::collection::vec(edit(), 1..=4))
            .prop_map(|(seed, edits)| mutate(&seed, &edits)),
        5 => structural,
        1 => proptest::collection::vec(any::<u8>(), 0..512)
            .prop_map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
        1 => alphabet,
    ]
    .boxed()
}

/// The seeds' format, which decides the structural edits, and a regex of the characters its
/// syntax uses (for arbitrary text that gets past the first byte).
#[derive(Clone, Copy)]
enum Format {
    Toml { alphabet: &'static str },
    Json { alphabet: &'static str },
}

// --- config --------------------------------------------------------------------------------- //

/// `Config::parse` of `text`: `Ok`, or diagnostics each inside the text. Panics are the failure.
fn check_config(text: &str) -> Result<(), TestCaseError> {
    match Config::parse(text, Path::new(CONFIG_PATH), None) {
        Ok(_) => Ok(()),
        Err(ConfigError::Invalid(diagnostics)) => {
            prop_assert!(
                !diagnostics.is_empty(),
                "an Invalid error without diagnostics"
            );
            let lines: Vec<&str> = text.split('\n').collect();
            for d in &diagnostics {
                prop_assert!(
                    (1..=lines.len()).contains(&d.line),
                    "{d}: line outside the {} lines of the text",
                    lines.len()
                );
                let width = lines[d.line - 1].chars().count();
                prop_assert!(
                    (1..=width + 1).contains(&d.column),
                    "{d}: column outside line {} ({width} characters)",
                    d.line
                );
                prop_assert!(!d.message.is_empty(), "{d}: empty message");
                prop_assert!(!d.message.contains('\n'), "{d}: message over two lines");
            }
            Ok(())
        }
        Err(other) => Err(TestCaseError::fail(format!(
            "parse returned an error other than Invalid: {other}"
        ))),
    }
}

#[test]
fn config_corpus_seeds_are_valid() {
    for (name, text) in corpus("config") {
        if let Err(e) = Config::parse(&text, Path::new(CONFIG_PATH), None) {
            panic!("seed tests/corpus/config/{name} does not parse: {e}");
        }
    }
}

#[test]
fn config_parse_never_panics_and_points_inside_the_text() {
    let seeds: Vec<String> = corpus("config").into_iter().map(|(_, t)| t).collect();
    let strategy = input(
        seeds,
        Format::Toml {
            alphabet: "[\\[\\]{}=\"',.a-z_0-9 \n#-]{0,300}",
        },
    );
    runner().run(&strategy, |text| check_config(&text)).unwrap();
}

// --- control API ---------------------------------------------------------------------------- //

/// Decodes `body` as every control request type the way the daemon does (`json_object`): only
/// an object (or nothing) ever decodes, and a refusal says why. An `AddApp` that decodes also
/// goes through the validator `POST /v1/apps` uses (`Config::runtime_app`).
fn check_control_body(config: &Config, body: &[u8]) -> Result<(), TestCaseError> {
    let object = matches!(body.trim_ascii_start().first(), None | Some(b'{'));
    match json_object::<AddApp>(body) {
        Ok(add) => {
            prop_assert!(object, "a non-object decoded: {:?}", body);
            let (name, command, cwd) = (&add.name, add.command, add.cwd);
            if let Err(invalid) = config.runtime_app(name, command, add.instances, cwd) {
                prop_assert!(!invalid.problems.is_empty(), "refused without a reason");
            }
        }
        Err(message) => prop_assert!(!message.is_empty(), "refused without a reason"),
    }
    for decoded in [
        json_object::<DeployRequest>(body).map(drop),
        json_object::<RollbackRequest>(body).map(drop),
        json_object::<ReloadRequest>(body).map(drop),
        json_object::<LogsQuery>(body).map(drop),
    ] {
        prop_assert!(
            object || decoded.is_err(),
            "a non-object decoded: {:?}",
            body
        );
    }
    Ok(())
}

/// Decodes `query` as the logs query the way the daemon does (axum's `Query`).
fn check_control_query(query: &str) -> Result<(), TestCaseError> {
    // Only the bytes a URI can carry; the HTTP layer refuses the rest before any decoding.
    let Ok(uri) = format!("/v1/apps/web/logs?{query}").parse::<axum::http::Uri>() else {
        return Ok(());
    };
    let _ = axum::extract::Query::<LogsQuery>::try_from_uri(&uri);
    Ok(())
}

fn control_config() -> Config {
    Config::parse(
        "[apps.seed]\ncommand = [\"/bin/true\"]\n",
        Path::new(CONFIG_PATH),
        None,
    )
    .unwrap()
}

#[test]
fn control_corpus_seeds_decode() {
    let config = control_config();
    for (name, text) in corpus("control") {
        let ok = if name.starts_with("add_app") {
            let add: AddApp = json_object(text.as_bytes()).unwrap();
            config
                .runtime_app(&add.name, add.command, add.instances, add.cwd)
                .is_ok()
        } else if name.starts_with("deploy") {
            json_object::<DeployRequest>(text.as_bytes()).is_ok()
        } else if name.starts_with("rollback") {
            json_object::<RollbackRequest>(text.as_bytes()).is_ok()
        } else if name.starts_with("reload") {
            json_object::<ReloadRequest>(text.as_bytes()).is_ok()
        } else if name.starts_with("logs") {
            let uri = format!("/v1/apps/web/logs?{text}").parse().unwrap();
            axum::extract::Query::<LogsQuery>::try_from_uri(&uri).is_ok()
        } else {
            panic!("tests/corpus/control/{name}: name it after its type (add_app-, deploy-, rollback-, reload-, logs-)")
        };
        assert!(ok, "seed tests/corpus/control/{name} does not decode");
    }
}

#[test]
fn control_requests_never_panic() {
    let config = control_config();
    let seeds: Vec<String> = corpus("control").into_iter().map(|(_, t)| t).collect();
    let strategy = input(
        seeds,
        Format::Json {
            alphabet: "[\\[\\]{}:,\"a-z_0-9.=&%?/ -]{0,200}",
        },
    );
    runner()
        .run(&strategy, |text| {
            check_control_body(&config, text.as_bytes())?;
            check_control_query(&text)
        })
        .unwrap();
}

// --- fleet protocol ------------------------------------------------------------------------- //

/// `parse_engine` of `text`: a message that survives a round trip through its own JSON, or an
/// error whose reply is an `error` message carrying the frame's `id` when it had a string one.
fn check_frame(text: &str) -> Result<(), TestCaseError> {
    match parse_engine(text) {
        Ok(message) => {
            let again = serde_json::to_string(&message).unwrap();
            let reparsed = parse_engine(&again);
            prop_assert!(reparsed.is_ok(), "round trip of {}: {:?}", again, reparsed);
            // Floats in `options` included (serde_json's `float_roundtrip`).
            prop_assert_eq!(reparsed.ok(), Some(message), "round trip of {}", again);
        }
        Err(error) => {
            let reply = serde_json::to_value(error.reply()).unwrap();
            prop_assert_eq!(&reply["type"], "error", "reply {}", reply);
            let shown = reply["error"].as_str().unwrap_or_default();
            prop_assert!(!shown.is_empty(), "reply without a reason: {}", reply);
            let sent_id = serde_json::from_str::<serde_json::Value>(text)
                .ok()
                .and_then(|v| v.get("id").and_then(|id| id.as_str()).map(str::to_owned));
            if !matches!(error, ProtocolError::TooLarge { .. }) {
                prop_assert_eq!(
                    reply
                        .get("id")
                        .and_then(|id| id.as_str())
                        .map(str::to_owned),
                    sent_id,
                    "reply {} to {:?}",
                    reply,
                    text
                );
            }
        }
    }
    Ok(())
}

#[test]
fn fleet_corpus_seeds_parse() {
    for (name, text) in corpus("fleet") {
        if let Err(e) = parse_engine(&text) {
            panic!("seed tests/corpus/fleet/{name} does not parse: {e}");
        }
    }
}

#[test]
fn fleet_engine_frames_never_panic_and_errors_carry_a_reply() {
    let seeds: Vec<String> = corpus("fleet").into_iter().map(|(_, t)| t).collect();
    let strategy = input(
        seeds,
        Format::Json {
            alphabet: "[\\[\\]{}:,\"a-zA-Z_0-9. -]{0,200}",
        },
    );
    runner().run(&strategy, |text| check_frame(&text)).unwrap();
}

#[test]
fn fleet_oversized_frame_is_refused_with_a_reply() {
    let text = format!(
        r#"{{"type":"update_agent","id":"u","pad":"{}"}}"#,
        "x".repeat(citrus::fleet::protocol::MAX_FRAME)
    );
    check_frame(&text).unwrap();
    assert!(matches!(
        parse_engine(&text),
        Err(ProtocolError::TooLarge { .. })
    ));
}
