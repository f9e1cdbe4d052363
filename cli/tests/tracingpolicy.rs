//! `vigil tracingpolicy validate`: each file's verdict, problems by path,
//! exit 1 when any is refused.
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

use std::path::Path;

#[test]
fn validate_names_each_files_verdict_and_fails_on_a_refusal() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/compat/fixtures/tetragon-vm-policies");
    let vigil = env!("CARGO_BIN_EXE_vigil");
    let ok = std::process::Command::new(vigil)
        .args(["tracingpolicy", "validate"])
        .arg(fixtures.join("a-exec-elf-begin.yaml"))
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(
        String::from_utf8_lossy(&ok.stdout)
            .ends_with("a-exec-elf-begin.yaml: ok (process-exec-elf-begin TracingPolicy)\n")
    );

    let dir = std::env::temp_dir().join(format!("vigil-tp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    let text = std::fs::read_to_string(fixtures.join("b-file-permission.yaml")).unwrap();
    std::fs::write(&bad, text.replace("type: \"int\" # 0x04", "type: \"innt\" # 0x04")).unwrap();
    let out = std::process::Command::new(vigil)
        .args(["tracingpolicy", "validate"])
        .arg(fixtures.join("c-tcp-connect.yaml"))
        .arg(&bad)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.yaml: spec.kprobes[0].args[1].type: unknown variant, expected one of"), "{stderr}");
    assert!(!stderr.contains("innt"), "the given value is not echoed: {stderr}");
    assert!(stderr.contains("1 of 2 policies refused"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("c-tcp-connect.yaml: ok (connect TracingPolicy)"));
}
