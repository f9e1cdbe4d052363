//! Tetragon's own policies (the recorded fixtures) load; bad input is
//! refused whole, naming the field by its path.
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

use std::path::Path;

use policy::schema::{ArgType, Kind};

fn fixture(name: &str) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/compat/fixtures/tetragon-vm-policies");
    std::fs::read_to_string(dir.join(name)).unwrap()
}

#[test]
fn the_recorded_policies_load_with_tetragons_defaults() {
    for name in [
        "a-exec-elf-begin.yaml",
        "b-file-permission.yaml",
        "c-tcp-connect.yaml",
        "d-tracepoints.yaml",
        "e-openat-return-sigkill.yaml",
        "e2-openat-matchreturnargs.yaml",
        "f-uprobe-bash.yaml",
        "f2-uprobe-bash-swapped.yaml",
    ] {
        policy::parse(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let seed = policy::parse(&fixture("a-exec-elf-begin.yaml")).unwrap();
    assert_eq!((seed.kind, seed.metadata.name.as_str()), (Kind::TracingPolicy, "process-exec-elf-begin"));
    let k = &seed.spec.kprobes[0];
    assert_eq!((k.call.as_str(), k.syscall, k.is_return), ("security_bprm_creds_from_file", false, false));
    assert_eq!(
        k.args.iter().map(|a| (a.index, a.arg_type)).collect::<Vec<_>>(),
        [(0, ArgType::Nop), (1, ArgType::File)]
    );
    // A kprobe is a syscall unless it says otherwise.
    let e = policy::parse(&fixture("e-openat-return-sigkill.yaml")).unwrap();
    assert!(e.spec.kprobes[0].syscall && e.spec.kprobes[0].is_return);
    let d = policy::parse(&fixture("d-tracepoints.yaml")).unwrap();
    assert_eq!(d.spec.tracepoints[0].args[0].arg_type, ArgType::Auto, "type defaults to auto");
}

#[test]
fn hooks_vigil_does_not_build_yet_are_refused_by_name() {
    let e = policy::parse(&fixture("g-lsm-file-open.yaml")).unwrap_err();
    assert_eq!(e.to_string(), "spec.lsmhooks: not supported by Vigil yet");
}

const BASE: &str = "apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: p
spec:
  kprobes:
  - call: fd_install
    syscall: false
    args:
    - index: 0
      type: int
    - index: 1
      type: file
";

/// BASE with `from` replaced by `to`; the error it gets.
fn refused(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "{from:?} not in the base policy");
    policy::parse(&BASE.replacen(from, to, 1)).unwrap_err().to_string()
}

#[test]
fn bad_input_names_the_field_by_its_path() {
    policy::parse(BASE).unwrap();
    let cases = [
        ("      type: file", "      type: filez", "spec.kprobes[0].args[1].type: unknown variant"),
        ("      type: file", "      type: File", "spec.kprobes[0].args[1].type: unknown variant"),
        ("    syscall: false", "    syscal: false", "spec.kprobes[0]: unknown field"),
        ("    - index: 1", "    - index: -1", "spec.kprobes[0].args[1].index: invalid type: integer, expected u32"),
        ("    - index: 1", "    - index: 5", "spec.kprobes[0].args[1].index: at most 4"),
        ("      type: int", "      type: auto", "spec.kprobes[0].args[0].type: required for kprobes"),
        ("kind: TracingPolicy", "kind: TracingPolicyX", "kind: unknown variant"),
        ("apiVersion: cilium.io/v1alpha1", "apiVersion: v1", "apiVersion: must be cilium.io/v1alpha1"),
        ("  name: p", "  name: P_", "metadata.name: must be a DNS subdomain"),
        ("  - call: fd_install", "  - call: list:x", "spec.kprobes[0].call: lists are not supported"),
        (
            "    syscall: false",
            "    syscall: false\n    return: true",
            "spec.kprobes[0].returnArg: required with return: true",
        ),
        (
            "    syscall: false",
            "    syscall: false\n    selectors:\n    - matchActions:\n      - action: sigkill",
            "spec.kprobes[0].selectors[0].matchActions[0].action: unknown variant",
        ),
        (
            "    syscall: false",
            "    syscall: false\n    selectors:\n    - matchActions:\n      - action: GetUrl",
            "spec.kprobes[0].selectors[0].matchActions[0].action: GetUrl and DnsLookup are out of scope",
        ),
        (
            "    syscall: false",
            "    syscall: false\n    selectors:\n    - matchArgs:\n      - index: 3\n        operator: Equal\n        values: [\"1\"]",
            "spec.kprobes[0].selectors[0].matchArgs[0].index: no declared argument has this index",
        ),
        (
            "    syscall: false",
            "    syscall: false\n    selectors:\n    - matchArgs:\n      - index: 0\n        operator: eq",
            "spec.kprobes[0].selectors[0].matchArgs[0].operator: unknown variant",
        ),
        ("    syscall: false", "    syscall: false\n    message: x", "spec.kprobes[0].message: at least 2 characters"),
        ("    syscall: false", "    syscall: nope", "spec.kprobes[0].syscall: invalid type"),
    ];
    for (from, to, want) in cases {
        let got = refused(from, to);
        assert!(got.starts_with(want), "{to:?}: expected {want:?}, got {got:?}");
        assert!(!got.contains(" at line "), "positions point into the peer's text: {got}");
    }
    let empty = policy::parse("apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: p\nspec: {}\n");
    assert_eq!(empty.unwrap_err().to_string(), "spec: no hooks: give kprobes, tracepoints or uprobes");
    let huge = "#".repeat(policy::MAX_POLICY_BYTES + 1);
    assert!(policy::parse(&huge).unwrap_err().to_string().starts_with("(document): "));
}
