//! `vigil getevents` flags pass exactly the events the real `tetra` passed
//! (`tests/compat/fixtures/filter-cases.json`), and stdin mode behaves.
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

use std::io::Write;
use std::process::{Command, Stdio};

use clap::Parser;
use proto::json::from_json_line;
use serde_json::Value;
use vigil_cli::args::{Cli, Command as Sub};
use vigil_cli::getevents::LocalFilter;
use vigil_cli::request;

fn fixtures_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/compat/fixtures")
}

#[test]
fn flags_pass_exactly_what_tetra_passed() {
    let text = std::fs::read_to_string(fixtures_dir().join("filter-cases.json")).unwrap();
    let fixture: Value = serde_json::from_str(&text).unwrap();
    let events: Vec<_> =
        fixture["events"].as_array().unwrap().iter().map(|e| from_json_line(&e.to_string()).unwrap()).collect();
    assert_eq!(events.len(), 60);
    let cases = fixture["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 15);
    for case in cases {
        let flags: Vec<&str> = case["flags"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
        let argv = ["vigil", "getevents"].into_iter().chain(flags.iter().copied());
        let Sub::GetEvents(args) = Cli::try_parse_from(argv).unwrap().command else { panic!("not getevents") };
        let built = request::build(&args);
        if let Some(err) = case.get("expect_error").and_then(Value::as_str) {
            assert_eq!(built.unwrap_err().to_string(), err, "{flags:?}");
            continue;
        }
        let filter = LocalFilter::new(&built.unwrap()).unwrap();
        let passed: Vec<u64> = events
            .iter()
            .enumerate()
            .filter(|(_, e)| filter.apply((*e).clone()).is_some())
            .map(|(i, _)| i as u64)
            .collect();
        let want: Vec<u64> =
            case["passing_event_indexes"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!(passed, want, "flags {flags:?}");
    }
}

fn run_cli(args: &[&str], stdin: &str) -> (String, String, bool) {
    run_cli_bytes(args, stdin.as_bytes())
}

fn run_cli_bytes(args: &[&str], stdin: &[u8]) -> (String, String, bool) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap(), out.status.success())
}

#[test]
fn stdin_seed_events_print_as_the_seed_shows() {
    let events = std::fs::read_to_string(fixtures_dir().join("seed-events.jsonl")).unwrap();
    let want = std::fs::read_to_string(fixtures_dir().join("seed-events.compact.txt")).unwrap();
    let (out, err, ok) = run_cli(&["getevents", "-o", "compact", "--color", "never"], &events);
    assert!(ok, "{err}");
    assert_eq!(out, want);
    // The seed's own filter: namespace default, pod xwing.
    let (out, _, ok) = run_cli(&["getevents", "-o", "compact", "--namespace", "default", "--pod", "xwing"], &events);
    assert!(ok);
    assert_eq!(out.lines().count(), 3);
}

#[test]
fn a_line_of_invalid_utf8_is_named_and_the_rest_still_print() {
    let events = std::fs::read_to_string(fixtures_dir().join("seed-events.jsonl")).unwrap();
    let lines: Vec<&str> = events.lines().collect();
    let mut input = Vec::new();
    input.extend_from_slice(lines[0].as_bytes());
    input.extend_from_slice(b"\n{\"node_name\":\"\xff\xfe\"}\n");
    for l in &lines[1..] {
        input.extend_from_slice(l.as_bytes());
        input.push(b'\n');
    }
    let (out, err, ok) = run_cli_bytes(&["getevents", "-o", "json"], &input);
    assert!(!ok, "bad input must make the exit status non-zero");
    assert!(err.contains("line 2: not valid UTF-8 (at byte 14)"), "{err}");
    assert_eq!(out.lines().count(), lines.len(), "every other line still prints: {out}");
}

#[test]
fn malformed_stdin_lines_are_named_and_skipped() {
    let events = std::fs::read_to_string(fixtures_dir().join("seed-events.jsonl")).unwrap();
    let mut lines: Vec<&str> = events.lines().collect();
    lines.insert(1, "{not json");
    let input = lines.join("\n") + "\n";
    let (out, err, ok) = run_cli(&["getevents", "-o", "json"], &input);
    assert!(!ok, "bad input must make the exit status non-zero");
    assert!(err.contains("line 2: invalid event JSON"), "{err}");
    assert_eq!(out.lines().count(), 3, "the other lines still print");
    // JSON output carries the same content as the input lines.
    for (ours, theirs) in out.lines().zip(events.lines()) {
        let ours: Value = serde_json::from_str(ours).unwrap();
        let theirs: Value = serde_json::from_str(theirs).unwrap();
        assert!(ours == theirs, "re-encoded event differs");
    }
}

#[test]
fn bad_flags_fail_with_a_named_error() {
    let (_, err, ok) = run_cli(&["getevents", "-e", "PROCESS_EXEC,PROCESS_EXIT"], "");
    assert!(!ok);
    assert!(err.contains("invalid argument for -e: one event type per flag"), "{err}");
    let (_, err, ok) = run_cli(&["getevents", "--process", "("], "");
    assert!(!ok);
    assert!(err.contains("binary_regex"), "{err}");
    let (_, err, ok) = run_cli(&["getevents", "--server-address", "nonsense"], "");
    assert!(!ok);
    assert!(err.contains("invalid server address \"nonsense\""), "{err}");
}
