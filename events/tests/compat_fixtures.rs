//! The compact formatter and the filters against what the real `tetra`
//! printed and passed (`tests/compat/fixtures`).
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

use events::compact::{CompactOptions, render};
use proto::json::from_json_line;
use proto::tetragon::GetEventsResponse;
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/compat/fixtures").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn has_sys_admin(case: &Value) -> bool {
    case["event"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|v| v.get("process"))
        .filter_map(|p| p.pointer("/cap/effective"))
        .any(|e| e.as_array().unwrap().iter().any(|c| c == "CAP_SYS_ADMIN"))
}

fn without_caps(case: &Value) -> Value {
    let mut e = case["event"].clone();
    for v in e.as_object_mut().unwrap().values_mut() {
        if let Some(p) = v.get_mut("process").and_then(Value::as_object_mut) {
            p.remove("cap");
        }
    }
    e
}

/// The fixture text Vigil must print for case `i`. Where tetra's
/// capability quirk (README) makes it print a trailer for 22+ effective
/// capabilities rather than for CAP_SYS_ADMIN, Vigil's line is the one tetra
/// printed for the twin case that differs only in capabilities and whose
/// trailer agrees with CAP_SYS_ADMIN being effective.
fn expected_case(cases: &[Value], i: usize) -> &Value {
    let case = &cases[i];
    let printed_trailer = case["compact"].as_str().unwrap().contains("🛑 CAP_SYS_ADMIN");
    if printed_trailer == has_sys_admin(case) {
        return case;
    }

    (cases
        .iter()
        .find(|c| {
            without_caps(c) == without_caps(case)
                && has_sys_admin(c) == has_sys_admin(case)
                && c["compact"].as_str().unwrap().contains("🛑 CAP_SYS_ADMIN") == has_sys_admin(c)
        })
        .unwrap_or_else(|| panic!("case {i}: no twin case for the capability quirk"))) as _
}

#[test]
fn compact_output_is_byte_identical_in_every_mode() {
    let cases = fixture("compact-cases.json");
    let cases = cases.as_array().unwrap();
    assert_eq!(cases.len(), 80);
    let mut quirk_cases = 0;
    for (i, case) in cases.iter().enumerate() {
        let event: GetEventsResponse = from_json_line(&case["event"].to_string()).unwrap();
        let want = expected_case(cases, i);
        if !std::ptr::eq(want, case) {
            quirk_cases += 1;
        }
        for (column, opts) in [
            ("compact", CompactOptions { color: false, timestamps: false }),
            ("compact_color", CompactOptions { color: true, timestamps: false }),
            ("compact_timestamps", CompactOptions { color: false, timestamps: true }),
        ] {
            let mut want = want[column].as_str().unwrap().to_owned();
            if column == "compact_timestamps" && !std::ptr::eq(expected_case(cases, i), case) {
                // The twin's timestamp is its own; keep this event's.
                let own = case[column].as_str().unwrap();
                want = format!("{}{}", &own[..31], &want[31..]);
            }
            let got = render(&event, opts).map(|l| l + "\n").unwrap_or_default();
            assert_eq!(got, want, "case {i} column {column}");
        }
    }
    // Exactly the two kinds of events the README names differ from tetra.
    assert_eq!(quirk_cases, 4);
}

#[test]
fn seed_compact_text_matches() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/compat/fixtures");
    let events = std::fs::read_to_string(path.join("seed-events.jsonl")).unwrap();
    let want = std::fs::read_to_string(path.join("seed-events.compact.txt")).unwrap();
    let got: String = events
        .lines()
        .filter_map(|l| render(&from_json_line(l).unwrap(), CompactOptions::default()))
        .map(|l| l + "\n")
        .collect();
    assert_eq!(got, want);
}

/// `tetra getevents -o compact` over real Tetragon's policy events: our
/// lines are tetra's, byte for byte.
#[test]
fn vm_policy_compact_text_matches() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/compat/fixtures/tetragon-vm-policies");
    let mut cases: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.strip_suffix(".events.jsonl").map(str::to_owned))
        .collect();
    cases.sort();
    assert_eq!(cases.len(), 9);
    let mut bad = Vec::new();
    for case in cases {
        let events = std::fs::read_to_string(dir.join(format!("{case}.events.jsonl"))).unwrap();
        let want = std::fs::read_to_string(dir.join(format!("{case}.compact.txt"))).unwrap();
        let got: String = events
            .lines()
            .filter_map(|l| render(&from_json_line(l).unwrap(), CompactOptions::default()))
            .map(|l| l + "\n")
            .collect();
        for (i, (g, w)) in got.lines().zip(want.lines()).enumerate() {
            // The one known difference: tetra's syscall table spells rseq's
            // arguments as the kernel's SYSCALL_DEFINE does (u32), ours as
            // include/linux/syscalls.h does (uint32_t).
            if g != w && g.replace("uint32_t", "u32") != w {
                bad.push(format!("{case} line {}:\n ours:   {g}\n theirs: {w}", i + 1));
            }
        }
        assert_eq!(got.lines().count(), want.lines().count(), "{case}: line count");
    }
    assert!(bad.is_empty(), "{} lines differ:\n{}", bad.len(), bad.join("\n"));
}
