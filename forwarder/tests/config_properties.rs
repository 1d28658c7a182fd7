//! Bounded property tests for `forwarder::config::Config::parse`: it never panics, whatever the
//! text (arbitrary strings, byte and line mutations of the shipped example), and every error it
//! returns reads `file:key: reason`, with a key and a reason.
//!
//! Every block runs at most 256 cases so that the file stays within a few seconds in a debug
//! build; `PROPTEST_CASES` overrides the count for a longer local run.

use std::path::Path;

use forwarder::config::{Config, ConfigError};
use proptest::prelude::*;
use proptest::sample::Index;

const EXAMPLE: &str = include_str!("../../forwarder.example.toml");
const FILE: &str = "conf.d/forwarder.toml";

fn config(cases: u32) -> ProptestConfig {
    let default = ProptestConfig::default();
    ProptestConfig {
        // `PROPTEST_CASES`, when set, wins: for a longer run by hand.
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            default.cases
        } else {
            cases
        },
        // No regression files next to the sources; the failures found so far are pinned as
        // plain tests in this file.
        failure_persistence: None,
        ..default
    }
}

/// Parses `text`; on error, checks the shape of the error.
fn parse(text: &str) -> Result<Option<Config>, TestCaseError> {
    match Config::parse(text, Path::new(FILE)) {
        Ok(c) => Ok(Some(c)),
        Err(e) => {
            check_error(&e)?;
            Ok(None)
        }
    }
}

/// `file:key: reason`, with a key and a reason.
fn check_error(e: &ConfigError) -> Result<(), TestCaseError> {
    let shown = e.to_string();
    prop_assert_eq!(&e.file, FILE);
    prop_assert!(!e.key.is_empty(), "empty key: {:?}", shown);
    prop_assert!(
        !e.key.chars().any(char::is_whitespace),
        "key with whitespace: {:?}",
        shown
    );
    prop_assert!(!e.reason.trim().is_empty(), "empty reason: {:?}", shown);
    prop_assert_eq!(&shown, &format!("{}:{}: {}", e.file, e.key, e.reason));
    prop_assert!(shown.starts_with(&format!("{FILE}:")), "{:?}", shown);
    Ok(())
}

/// Stricter than `check_error`: a reason says what is wrong, not only where (` (line L, column C)`
/// alone is no reason). Kept apart so that the no-panic properties run all their cases.
fn check_reason_has_text(text: &str) -> Result<(), TestCaseError> {
    if let Err(e) = Config::parse(text, Path::new(FILE)) {
        prop_assert!(
            !without_location(&e.reason).trim().is_empty(),
            "a reason with no text but its location: {:?}",
            e.to_string()
        );
    }
    Ok(())
}

/// `reason` without the ` (line L, column C)` that `Config::parse` appends to TOML errors.
fn without_location(reason: &str) -> &str {
    match reason.rfind(" (line ") {
        Some(i) if reason.ends_with(')') && reason[i..].contains(", column ") => &reason[..i],
        _ => reason,
    }
}

/// Text that looks like TOML more often than uniform noise does.
fn toml_noise() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            2 => any::<char>().prop_map(String::from),
            4 => prop::sample::select(vec![
                '[', ']', '{', '}', '=', '"', '\'', ',', '.', '#', '\n', ' ', '\\', '0', '1',
                '-', ':', 'a', 's', 'é', '\u{feff}', '\r', '\t',
            ])
            .prop_map(String::from),
            3 => prop::sample::select(vec![
                "[[service]]\n", "[service.check]\n", "[service.sentinel]\n", "[datapath]\n",
                "[admin]\n", "name = ", "listen = ", "servers = ", "\"127.0.0.1:6379\"",
                "\"[::1]:1\"", "kind = \"tcp-check\"\n", "steps = ", "timeout = ", "\"1s\"",
                "maxconn = ", "\"auto\"", "[\"connect\"]", "\n",
            ])
            .prop_map(String::from),
        ],
        0..80,
    )
    .prop_map(|v| v.concat())
}

/// Values that stress the validators: wrong types, limits, odd durations and addresses.
fn odd_value() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "\"\"",
            "\" \"",
            "0",
            "-1",
            "1",
            "65535",
            "65536",
            "4294967295",
            "4294967296",
            "9223372036854775807",
            "-9223372036854775808",
            "1.5",
            "nan",
            "inf",
            "true",
            "1979-05-27T07:32:00Z",
            "[]",
            "{}",
            "[1, \"a\"]",
            "\"auto\"",
            "\"Auto\"",
            "\"0s\"",
            "\"0\"",
            "\"1ns\"",
            "\"1s 1s\"",
            "\"99999999999999999999h\"",
            "\"18446744073709551615s\"",
            "\"584942417355y\"",
            "\"25d\"",
            "\"1h 1ns\"",
            "\"-1s\"",
            "\"4 parsecs\"",
            "\"127.0.0.1:0\"",
            "\"0.0.0.0:6379\"",
            "\"[::]:6379\"",
            "\"255.255.255.255:1\"",
            "\"224.0.0.1:1\"",
            "\"[::ffff:127.0.0.1]:6380\"",
            "\"[fe80::1%eth0]:1\"",
            "\"localhost:6379\"",
            "\"127.0.0.1\"",
            "\"10.0.0.0/33\"",
            "\"::/0\"",
            "\"connect\"",
            "[\"connect\", \"connect\"]",
            "[\"send x\"]",
            "[\"connect\", \"expect rstring (\"]",
            "[\"connect\", \"expect binary +0\"]",
            "[\"connect\", \"send \\\\\"]",
            "\"tcp-check\"",
            "\"redis-master\"",
            "\"keep\"",
            "\"uring\"",
            "\"é\u{0301}\"",
            "\"\\u0000\"",
            "'''multi\nline'''",
            "\"\"\"\n\"\"\"",
        ])
        .prop_map(String::from),
        any::<i64>().prop_map(|n| n.to_string()),
        "\"[ -~]{0,20}\"".prop_map(|s| s.replace('\\', "/")),
    ]
}

const KEYS: [&str; 37] = [
    "mode",
    "workers",
    "sockmap_sessions",
    "listen",
    "token",
    "user",
    "group",
    "name",
    "share_listen",
    "servers",
    "allow",
    "maxconn",
    "maxconn_per_source",
    "on_master_change",
    "log_sessions",
    "timeout",
    "connect",
    "client",
    "server",
    "queue",
    "drain",
    "kind",
    "steps",
    "interval",
    "fastinter",
    "downinter",
    "rise",
    "fall",
    "password",
    "addresses",
    "master_name",
    "quorum",
    "max_servers",
    "service",
    "datapath",
    "bogus",
    "service.check.rise",
];

const HEADERS: [&str; 9] = [
    "[datapath]",
    "[admin]",
    "[process]",
    "[[service]]",
    "[service.check]",
    "[service.sentinel]",
    "[service.timeout]",
    "[service]",
    "[[service.check]]",
];

#[derive(Debug, Clone)]
enum LineEdit {
    Delete(Index),
    Duplicate(Index),
    Swap(Index, Index),
    /// Replace the value of a `key = value` line.
    Value(Index, String),
    /// Replace the key of a `key = value` line.
    Key(Index, &'static str),
    /// Insert a `key = value` line.
    InsertPair(Index, &'static str, String),
    InsertHeader(Index, &'static str),
}

fn line_edit() -> impl Strategy<Value = LineEdit> {
    let key = prop::sample::select(KEYS.to_vec());
    prop_oneof![
        1 => any::<Index>().prop_map(LineEdit::Delete),
        1 => any::<Index>().prop_map(LineEdit::Duplicate),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| LineEdit::Swap(a, b)),
        3 => (any::<Index>(), odd_value()).prop_map(|(i, v)| LineEdit::Value(i, v)),
        1 => (any::<Index>(), key.clone()).prop_map(|(i, k)| LineEdit::Key(i, k)),
        2 => (any::<Index>(), key, odd_value()).prop_map(|(i, k, v)| LineEdit::InsertPair(i, k, v)),
        1 => (any::<Index>(), prop::sample::select(HEADERS.to_vec()))
            .prop_map(|(i, h)| LineEdit::InsertHeader(i, h)),
    ]
}

/// `(key, value)` of a `key = value  # comment` line (the comment dropped with the value).
fn split_pair(line: &str) -> Option<(&str, &str)> {
    let (k, v) = line.split_once('=')?;
    (!k.trim().is_empty() && !k.trim_start().starts_with('[')).then_some((k, v))
}

fn apply_line_edits(text: &str, edits: &[LineEdit]) -> String {
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    for e in edits {
        if lines.is_empty() {
            lines.push(String::new());
        }
        let n = lines.len();
        match e {
            LineEdit::Delete(i) => {
                lines.remove(i.index(n));
            }
            LineEdit::Duplicate(i) => {
                let i = i.index(n);
                let l = lines[i].clone();
                lines.insert(i, l);
            }
            LineEdit::Swap(a, b) => lines.swap(a.index(n), b.index(n)),
            LineEdit::Value(i, v) => {
                // The nearest `key = value` line at or after i, wrapping around.
                let start = i.index(n);
                if let Some(j) = (0..n)
                    .map(|d| (start + d) % n)
                    .find(|&j| split_pair(&lines[j]).is_some())
                {
                    let k = split_pair(&lines[j]).map(|(k, _)| k.to_string()).unwrap();
                    lines[j] = format!("{k}= {v}");
                }
            }
            LineEdit::Key(i, key) => {
                let start = i.index(n);
                if let Some(j) = (0..n)
                    .map(|d| (start + d) % n)
                    .find(|&j| split_pair(&lines[j]).is_some())
                {
                    let v = split_pair(&lines[j]).map(|(_, v)| v.to_string()).unwrap();
                    lines[j] = format!("{key} ={v}");
                }
            }
            LineEdit::InsertPair(i, k, v) => lines.insert(i.index(n + 1), format!("{k} = {v}")),
            LineEdit::InsertHeader(i, h) => lines.insert(i.index(n + 1), (*h).to_string()),
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

#[derive(Debug, Clone)]
enum ByteEdit {
    Flip(Index, u8),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    Truncate(Index),
}

fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    prop_oneof![
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| ByteEdit::Flip(i, b)),
        (
            any::<Index>(),
            prop_oneof![
                prop::collection::vec(any::<u8>(), 1..4),
                prop::sample::select(vec![
                    &b"\""[..],
                    b"'",
                    b"[",
                    b"]",
                    b"=",
                    b"\n",
                    b"#",
                    b",",
                    b"\\",
                    b"\xc3\xa9",
                    b"\xe2\x82\xac",
                    b"\xf0\x9d\x84\x9e",
                    b"0",
                    b"9999999999",
                    b"\r",
                ])
                .prop_map(<[u8]>::to_vec),
            ],
        )
            .prop_map(|(i, b)| ByteEdit::Insert(i, b)),
        (any::<Index>(), 1usize..8).prop_map(|(i, n)| ByteEdit::Delete(i, n)),
        any::<Index>().prop_map(ByteEdit::Truncate),
    ]
}

/// Byte edits, then invalid UTF-8 replaced by U+FFFD (`parse` takes text).
fn apply_byte_edits(text: &str, edits: &[ByteEdit]) -> String {
    let mut b = text.as_bytes().to_vec();
    for e in edits {
        match e {
            ByteEdit::Flip(i, x) if !b.is_empty() => {
                let i = i.index(b.len());
                b[i] = *x;
            }
            ByteEdit::Insert(i, x) => {
                let i = i.index(b.len() + 1);
                b.splice(i..i, x.iter().copied());
            }
            ByteEdit::Delete(i, n) if !b.is_empty() => {
                let i = i.index(b.len());
                let end = (i + n).min(b.len());
                b.drain(i..end);
            }
            ByteEdit::Truncate(i) if !b.is_empty() => {
                let i = i.index(b.len());
                b.truncate(i);
            }
            _ => {}
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

/// The smallest failing inputs found: toml 0.8 gives some syntax errors an empty message (a lone
/// CR, a key with no value at the end of the file, a control character in a comment), and the
/// error then reads `conf.d/forwarder.toml:-:  (line 1, column 1)`: a location, no reason.
#[test]
fn pinned_toml_errors_without_a_message_still_have_a_reason() {
    for text in ["\r", "a =", "[datapath]\nworkers = ", "# x\u{0}"] {
        let e = Config::parse(text, Path::new(FILE)).expect_err(text);
        assert!(
            !without_location(&e.reason).trim().is_empty(),
            "{text:?} -> {:?}: no reason, only a location",
            e.to_string()
        );
    }
}

#[test]
fn the_example_parses() {
    Config::parse(EXAMPLE, Path::new(FILE)).expect("forwarder.example.toml is valid");
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn never_panics_on_arbitrary_strings(text in any::<String>()) {
        parse(&text)?;
    }

    #[test]
    fn never_panics_on_toml_like_noise(text in toml_noise()) {
        parse(&text)?;
    }

    #[test]
    fn never_panics_on_byte_mutations_of_the_example(
        edits in prop::collection::vec(byte_edit(), 1..6),
    ) {
        parse(&apply_byte_edits(EXAMPLE, &edits))?;
    }

    #[test]
    fn never_panics_on_line_mutations_of_the_example(
        edits in prop::collection::vec(line_edit(), 1..5),
    ) {
        parse(&apply_line_edits(EXAMPLE, &edits))?;
    }

    #[test]
    fn never_panics_on_a_prefix_of_the_example(cut in any::<Index>()) {
        let mut end = cut.index(EXAMPLE.len() + 1);
        while !EXAMPLE.is_char_boundary(end) {
            end -= 1;
        }
        parse(&EXAMPLE[..end])?;
    }

    /// Comments, blank lines and trailing whitespace between lines change nothing.
    #[test]
    fn comments_and_blank_lines_keep_the_example_valid(
        inserts in prop::collection::vec(
            (
                any::<Index>(),
                prop_oneof![
                    Just(String::new()),
                    "[ \t]{1,4}",
                    "#[ -~]{0,30}",
                    "[ \t]{0,2}# [ -~]{0,20}",
                ],
            ),
            1..8,
        ),
    ) {
        let mut lines: Vec<String> = EXAMPLE.lines().map(String::from).collect();
        for (i, l) in inserts {
            let i = i.index(lines.len() + 1);
            // Inside a multi-line value a comment is still fine in TOML; in the example every
            // value is on one line.
            lines.insert(i, l);
        }
        let text = lines.join("\n");
        let got = parse(&text)?;
        prop_assert!(got.is_some(), "{:?} no longer parses: {:?}", text,
            Config::parse(&text, Path::new(FILE)).err().map(|e| e.to_string()));
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn every_reason_says_what_is_wrong_arbitrary_strings(text in any::<String>()) {
        check_reason_has_text(&text)?;
    }

    #[test]
    fn every_reason_says_what_is_wrong_toml_like_noise(text in toml_noise()) {
        check_reason_has_text(&text)?;
    }

    #[test]
    fn every_reason_says_what_is_wrong_mutated_example(
        bytes in prop::collection::vec(byte_edit(), 1..6),
        lines in prop::collection::vec(line_edit(), 0..3),
        cut in any::<Index>(),
    ) {
        check_reason_has_text(&apply_byte_edits(EXAMPLE, &bytes))?;
        check_reason_has_text(&apply_line_edits(EXAMPLE, &lines))?;
        let mut end = cut.index(EXAMPLE.len() + 1);
        while !EXAMPLE.is_char_boundary(end) {
            end -= 1;
        }
        check_reason_has_text(&EXAMPLE[..end])?;
    }
}
