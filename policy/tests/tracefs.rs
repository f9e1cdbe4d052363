//! Tracepoint format files as this machine's kernel (6.18) writes them
//! (captured in tests/formats), parsed, and `type: auto` resolved as
//! Tetragon resolves it (its recorded events for `sys_enter_openat` read
//! index 4, `int __syscall_nr`, as an int).
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

use policy::schema::ArgType;
use policy::tracefs::{Format, FormatError};

fn format(name: &str) -> Format {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/formats").join(name);
    Format::parse(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn fields_are_counted_with_the_common_ones() {
    let openat = format("syscalls-sys_enter_openat");
    assert_eq!(openat.name, "sys_enter_openat");
    let names: Vec<&str> = openat.fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "common_type",
            "common_flags",
            "common_preempt_count",
            "common_pid",
            "__syscall_nr",
            "dfd",
            "filename",
            "flags",
            "mode"
        ]
    );
    let f = &openat.fields[6];
    assert_eq!((f.c_type.as_str(), f.offset, f.size, f.signed), ("const char *", 24, 8, false));
    let raw = format("raw_syscalls-sys_enter");
    assert_eq!((raw.fields[5].name.as_str(), raw.fields[5].array, raw.fields[5].size), ("args", Some(6), 48));
}

#[test]
fn auto_types_follow_size_sign_and_shape() {
    let openat = format("syscalls-sys_enter_openat");
    let auto = |i: usize| openat.fields[i].auto_type();
    assert_eq!(auto(4), Ok(ArgType::Int32), "int __syscall_nr");
    assert_eq!(auto(5), Ok(ArgType::Uint64), "syscall args are stored as 8 unsigned bytes");
    assert_eq!(auto(6), Ok(ArgType::CharBuf), "char * needs an explicit string, or a size");
    assert_eq!(auto(8), Err(FormatError::UnknownType("umode_t".into())));
    assert_eq!(auto(8).unwrap_err().to_string(), "unknown type:umode_t", "Tetragon's words");
    let raw = format("raw_syscalls-sys_enter");
    assert_eq!(raw.fields[4].auto_type(), Ok(ArgType::Int64), "long id");
    assert_eq!(raw.fields[5].auto_type(), Ok(ArgType::ConstBuf), "an array");
    let exec = format("sched-sched_process_exec");
    assert_eq!(exec.fields[4].auto_type(), Ok(ArgType::String), "__data_loc char[]");
    assert_eq!(exec.fields[5].auto_type(), Ok(ArgType::Int32), "pid_t");
}

#[test]
fn a_broken_format_names_its_line() {
    let e = Format::parse("name: x\nID: 1\nformat:\n\tfield:int a;\toffset:zero;\tsize:4;\tsigned:1;\n").unwrap_err();
    assert_eq!(e.to_string(), "line 4: offset is not a number");
    assert_eq!(Format::parse("format:\n").unwrap_err(), FormatError::Header);
}
