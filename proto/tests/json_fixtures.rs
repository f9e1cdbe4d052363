//! Our protojson decodes and re-encodes every fixture event byte for byte
//! as Tetragon's Go protojson wrote it.
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

use proto::json::{from_json_line, to_json_line};

fn shared_fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/compat/fixtures").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[test]
fn compact_case_json_round_trips_byte_for_byte() {
    let cases: serde_json::Value = serde_json::from_str(&shared_fixture("compact-cases.json")).unwrap();
    let cases = cases.as_array().unwrap();
    assert_eq!(cases.len(), 80);
    for (i, case) in cases.iter().enumerate() {
        // The fixture holds the line as printed, newline included.
        let want = case["json"].as_str().unwrap().trim_end_matches('\n');
        let decoded = from_json_line(want).unwrap_or_else(|e| panic!("case {i}: {e}"));
        let got = to_json_line(&decoded);
        if got != want {
            let at = got.bytes().zip(want.bytes()).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
            panic!(
                "case {i} differs at byte {at}:\n ours:   {}\n theirs: {}",
                &got[at.saturating_sub(80)..(at + 80).min(got.len())],
                &want[at.saturating_sub(80)..(at + 80).min(want.len())]
            );
        }
        // The pretty `event` form decodes to the same message.
        let from_event = from_json_line(&case["event"].to_string()).unwrap();
        assert_eq!(from_event, decoded, "case {i}: event vs json column");
    }
}

#[test]
fn vm_export_lines_round_trip() {
    let text = shared_fixture("tetragon-vm-events.jsonl");
    let mut n = 0;
    for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let decoded = from_json_line(line).unwrap_or_else(|e| panic!("line {}: {e}", i + 1));
        let ours: serde_json::Value = serde_json::from_str(&to_json_line(&decoded)).unwrap();
        let theirs: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(ours, theirs, "line {}", i + 1);
        n += 1;
    }
    assert!(n > 10, "only {n} lines");
}

#[test]
fn unknown_fields_are_ignored_and_bad_json_is_an_error() {
    let e = from_json_line(
        r#"{"process_exec":{"process":{"binary":"/bin/x","future_field":1}},"node_name":"n","whatever":2}"#,
    )
    .unwrap();
    assert_eq!(e.node_name, "n");
    assert!(from_json_line(r#"{"process_exec": 5}"#).is_err());
    assert!(from_json_line("not json").is_err());
}

/// Real Tetragon's policy events (kprobe, tracepoint, uprobe, LSM) in
/// Debian's 6.1 kernel: every line decodes and re-encodes byte for byte.
#[test]
fn vm_policy_event_lines_round_trip_byte_for_byte() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/compat/fixtures/tetragon-vm-policies");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".events.jsonl"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 9);
    let mut policy_events = 0;
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy();
        for (i, want) in std::fs::read_to_string(file).unwrap().lines().enumerate() {
            let decoded = from_json_line(want).unwrap_or_else(|e| panic!("{name} line {}: {e}", i + 1));
            let got = to_json_line(&decoded);
            if got != want {
                let at = got.bytes().zip(want.bytes()).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
                panic!(
                    "{name} line {} differs at byte {at}:\n ours:   {}\n theirs: {}",
                    i + 1,
                    &got[at.saturating_sub(80)..(at + 80).min(got.len())],
                    &want[at.saturating_sub(80)..(at + 80).min(want.len())]
                );
            }
            if !want.starts_with(r#"{"process_exec""#) && !want.starts_with(r#"{"process_exit""#) {
                policy_events += 1;
            }
        }
    }
    assert!(policy_events > 30, "only {policy_events} policy events");
}
