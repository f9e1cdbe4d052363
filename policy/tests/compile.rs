//! Tracepoint policies compiled against this machine's kernel (6.18) as
//! captured in tests/formats: what each argument is read as, and every
//! refusal by path.
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

mod captured;

use captured::kernel;
use policy::compile::{KernelView, Read, compile};
use policy::schema::ArgType;
use policy::tracefs::Format;

fn tracepoint(subsystem: &str, event: &str, args: &str) -> String {
    format!(
        "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: t\nspec:\n  tracepoints:\n  - subsystem: {subsystem}\n    event: {event}\n    args:\n{args}"
    )
}

fn compiled(text: &str) -> Result<policy::compile::Compiled, String> {
    let p = policy::parse(text).map_err(|e| e.to_string())?;
    compile(&p, &kernel()).map_err(|e| e.to_string())
}

#[test]
fn the_recorded_tracepoint_policy_compiles_as_tetragon_reads_it() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/compat/fixtures/tetragon-vm-policies");
    let text = std::fs::read_to_string(dir.join("d-tracepoints.yaml")).unwrap();
    let p = policy::parse(&text).unwrap();
    let c = compile(&p, &kernel()).unwrap();
    let openat = &c.tracepoints[0];
    let got: Vec<(&str, ArgType, Read)> = openat.args.iter().map(|a| (a.field.as_str(), a.arg_type, a.read)).collect();
    assert_eq!(
        got,
        [
            ("__syscall_nr", ArgType::Int32, Read::Scalar { signed: true }),
            ("dfd", ArgType::Int32, Read::Scalar { signed: true }),
            ("filename", ArgType::String, Read::UserString),
            ("flags", ArgType::Int32, Read::Scalar { signed: true }),
            ("mode", ArgType::Uint64, Read::Scalar { signed: false }),
        ]
    );
    assert_eq!((openat.args[2].offset, openat.args[2].size), (24, 8));
    let raw = &c.tracepoints[1];
    assert_eq!((raw.args[0].field.as_str(), raw.args[0].read), ("id", Read::SyscallId));
}

#[test]
fn what_does_not_fit_this_kernel_is_refused_by_path() {
    let cases = [
        (
            tracepoint("syscalls", "sys_enter_nonesuch", "    - index: 4\n"),
            "spec.tracepoints[0].event: this kernel has no such tracepoint",
        ),
        (
            tracepoint("syscalls", "sys_enter_openat", "    - index: 9\n"),
            "spec.tracepoints[0].args[0].index: the tracepoint has 9 fields (0..8)",
        ),
        (
            tracepoint("syscalls", "sys_enter_openat", "    - index: 4\n    - index: 8\n"),
            "spec.tracepoints[0].args[1].type: unknown type:umode_t",
        ),
        (
            tracepoint("syscalls", "sys_enter_openat", "    - index: 5\n      type: string\n"),
            "spec.tracepoints[0].args[0].type: a string needs a pointer or __data_loc field; field dfd is int",
        ),
        (
            tracepoint("syscalls", "sys_enter_openat", "    - index: 6\n      type: int\n"),
            "spec.tracepoints[0].args[0].type: a signed number needs a scalar field; field filename is const char *",
        ),
        (
            tracepoint("syscalls", "sys_enter_openat", "    - index: 6\n      type: char_buf\n      sizeArgIndex: 3\n"),
            "spec.tracepoints[0].args[0].sizeArgIndex: names no argument of this hook",
        ),
        (
            tracepoint("syscalls", "sys_enter_openat", "    - index: 6\n      type: file\n"),
            "spec.tracepoints[0].args[0].type: this type is not supported on tracepoints by Vigil yet",
        ),
    ];
    for (text, want) in cases {
        let got = compiled(&text).unwrap_err();
        assert!(got.starts_with(want), "expected {want:?}, got {got:?}");
    }
    // Fitting ones.
    let ok = compiled(&tracepoint("sched", "sched_process_exec", "    - index: 4\n    - index: 5\n")).unwrap();
    assert_eq!(ok.tracepoints[0].args[0].read, Read::RecordString);
    let ok = compiled(&tracepoint(
        "syscalls",
        "sys_enter_unlinkat",
        "    - index: 5\n      type: fd\n    - index: 6\n      type: string\n",
    ))
    .unwrap();
    assert_eq!(ok.tracepoints[0].args.iter().map(|a| a.read).collect::<Vec<_>>(), [Read::Fd, Read::UserString]);
    let ok = compiled(&tracepoint("raw_syscalls", "sys_enter", "    - index: 5\n")).unwrap();
    assert_eq!(ok.tracepoints[0].args[0].read, Read::Array { count: 6 });
}

/// What the kernel program is handed for the recorded policy: per
/// argument, where the field lies and how it is read.
#[test]
fn the_kernel_spec_names_each_fields_place_and_reading() {
    use node_sensor_common::{ArgSpec, READ_SCALAR, READ_USER_STRING};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/compat/fixtures/tetragon-vm-policies");
    let p = policy::parse(&std::fs::read_to_string(dir.join("d-tracepoints.yaml")).unwrap()).unwrap();
    let c = compile(&p, &kernel()).unwrap();
    let spec = c.tracepoints[0].spec(7);
    assert_eq!((spec.hook_id, spec.nargs), (7, 5));
    let scalar = |offset, size| ArgSpec { offset, size, read: READ_SCALAR, ..Default::default() };
    assert_eq!(
        spec.args,
        [
            scalar(8, 4),
            scalar(16, 8),
            ArgSpec { offset: 24, size: 8, read: READ_USER_STRING, ..Default::default() },
            scalar(32, 8),
            scalar(40, 8),
        ]
    );
    assert_eq!(
        c.tracepoints[0].id,
        Format::parse(&std::fs::read_to_string(kernel().0.join("syscalls-sys_enter_openat")).unwrap()).unwrap().id
    );
}

#[test]
fn more_arguments_than_the_kernel_program_reads_are_refused() {
    let six = "    - index: 4\n".repeat(6);
    assert_eq!(
        compiled(&tracepoint("syscalls", "sys_enter_openat", &six)).unwrap_err(),
        "spec.tracepoints[0].args: at most 5 arguments on a tracepoint"
    );
}

/// A kernel whose BTF has two functions: `security_bprm_creds_from_file`
/// and the openat syscall wrapper.
struct Functions;

impl KernelView for Functions {
    fn tracepoint_format(&self, _: &str, _: &str) -> Result<Option<Format>, String> {
        Ok(None)
    }

    fn function(&self, name: &str) -> Result<Option<policy::compile::Function>, String> {
        use policy::compile::{Function, Param, ParamKind};
        let param = |name: &str, c_type: &str, kind| Param { name: name.into(), c_type: c_type.into(), kind };
        Ok(match name {
            "security_bprm_creds_from_file" => Some(Function {
                params: vec![
                    param("bprm", "struct linux_binprm *", ParamKind::Pointer { to: "linux_binprm".into() }),
                    param("file", "const struct file *", ParamKind::Pointer { to: "file".into() }),
                ],
            }),
            "file_and_cred" => Some(Function {
                params: vec![
                    param("file", "struct file *", ParamKind::Pointer { to: "file".into() }),
                    param("cred", "const struct cred *", ParamKind::Pointer { to: "cred".into() }),
                ],
            }),
            "commit_creds" => {
                Some(Function { params: vec![param("new", "struct cred *", ParamKind::Pointer { to: "cred".into() })] })
            }
            "ksys_fchown" => Some(Function {
                params: vec![
                    param("fd", "unsigned int", ParamKind::Int { size: 4 }),
                    param("user", "uid_t", ParamKind::Int { size: 4 }),
                    param("group", "gid_t", ParamKind::Int { size: 4 }),
                ],
            }),
            "__x64_sys_write" | "__x64_sys_openat" => Some(Function {
                params: vec![param("regs", "const struct pt_regs *", ParamKind::Pointer { to: "pt_regs".into() })],
            }),
            _ => None,
        })
    }
}

#[test]
fn kprobes_read_registers_and_syscalls_read_their_saved_registers() {
    use node_sensor_common::{NO_INDIRECT, READ_BPRM, READ_FILE, READ_NOTHING, READ_SCALAR, READ_USER_STRING};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/compat/fixtures/tetragon-vm-policies");
    let seed = policy::parse(&std::fs::read_to_string(dir.join("a-exec-elf-begin.yaml")).unwrap()).unwrap();
    let c = compile(&seed, &Functions).unwrap();
    let k = &c.kprobes[0];
    assert_eq!(
        (k.call.as_str(), k.symbol.as_str()),
        ("security_bprm_creds_from_file", "security_bprm_creds_from_file")
    );
    let spec = k.spec(3);
    assert_eq!((spec.args[0].read, spec.args[1].read), (READ_NOTHING, READ_FILE));
    assert_eq!((spec.args[1].offset, spec.args[1].indirect), (104, NO_INDIRECT), "the second argument: rsi");
    let bprm = seed_with(&seed_text(), "type: \"nop\"", "type: \"linux_binprm\"");
    assert_eq!(compile(&bprm, &Functions).unwrap().kprobes[0].spec(1).args[0].read, READ_BPRM);

    // syscall: true (the default): the arch wrapper, its arguments in the
    // pt_regs its first argument points to; the fourth in r10, not rcx.
    let openat = policy::parse(
        "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: o\nspec:\n  kprobes:\n  - call: sys_openat\n    args:\n    - index: 1\n      type: string\n    - index: 3\n      type: uint32\n",
    )
    .unwrap();
    let k = &compile(&openat, &Functions).unwrap().kprobes[0];
    assert_eq!(k.symbol, "__x64_sys_openat");
    let spec = k.spec(1);
    assert_eq!((spec.args[0].read, spec.args[0].offset, spec.args[0].indirect), (READ_USER_STRING, 104, 112));
    assert_eq!((spec.args[1].read, spec.args[1].offset, spec.args[1].size), (READ_SCALAR, 56, 4));
}

fn seed_text() -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/compat/fixtures/tetragon-vm-policies");
    std::fs::read_to_string(dir.join("a-exec-elf-begin.yaml")).unwrap()
}

fn seed_with(text: &str, from: &str, to: &str) -> policy::TracingPolicy {
    policy::parse(&text.replace(from, to)).unwrap()
}

#[test]
fn kprobes_that_do_not_fit_the_function_are_refused_by_path() {
    let text = seed_text();
    let refused = |from: &str, to: &str| compile(&seed_with(&text, from, to), &Functions).unwrap_err().to_string();
    assert_eq!(
        refused("security_bprm_creds_from_file", "security_nonesuch"),
        "spec.kprobes[0].call: the kernel's BTF has no such function"
    );
    assert_eq!(refused("index: 1", "index: 2"), "spec.kprobes[0].args[1].index: the function has 2 parameters (0..1)");
    assert_eq!(
        refused("type: \"file\"", "type: \"path\""),
        "spec.kprobes[0].args[1].type: path needs a struct path pointer; parameter file is const struct file *"
    );
    assert_eq!(
        refused("type: \"file\"", "type: \"sock\""),
        "spec.kprobes[0].args[1].type: sock needs a struct sock pointer; parameter file is const struct file *"
    );
    assert_eq!(
        refused("type: \"file\"", "type: \"skb\""),
        "spec.kprobes[0].args[1].type: this type is not supported on kprobes by Vigil yet"
    );
    let returning =
        |ty: &str| format!("    syscall: false\n    return: true\n    returnArg:\n      index: 0\n      type: {ty}\n");
    assert_eq!(
        refused("    syscall: false\n", &returning("string")),
        "spec.kprobes[0].returnArg.type: only integer return values are supported by Vigil yet"
    );
    // An integer return value: read from the return register, the hook
    // flagged for the return probe.
    let ret = seed_with(&text, "    syscall: false\n", &returning("int"));
    let spec = compile(&ret, &Functions).unwrap().kprobes[0].spec(9);
    assert_eq!(spec.flags, node_sensor_common::HOOK_RETURN);
    assert_eq!((spec.ret.read, spec.ret.offset, spec.ret.size), (node_sensor_common::READ_SCALAR, 80, 4));
}

fn kprobe_policy(call: &str, syscall: bool, args: &[(u32, &str)]) -> policy::TracingPolicy {
    let args: String = args.iter().map(|(i, t)| format!("    - index: {i}\n      type: {t}\n")).collect();
    policy::parse(&format!(
        "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: k\nspec:\n  kprobes:\n  - call: {call}\n    syscall: {syscall}\n    args:\n{args}"
    ))
    .unwrap()
}

#[test]
fn descriptors_and_credentials_read_the_objects_they_name() {
    use node_sensor_common::{READ_CRED, READ_FD, READ_SCALAR};
    // A descriptor parameter of a kernel function, and a syscall's.
    let k = &compile(&kprobe_policy("ksys_fchown", false, &[(0, "fd"), (1, "uint32")]), &Functions).unwrap().kprobes[0];
    let spec = k.spec(1);
    assert_eq!((spec.args[0].read, spec.args[0].offset, spec.args[0].size), (READ_FD, 112, 4));
    assert_eq!(spec.args[1].read, READ_SCALAR);
    let k = &compile(&kprobe_policy("sys_write", true, &[(0, "fd"), (2, "size_t")]), &Functions).unwrap().kprobes[0];
    assert_eq!((k.spec(1).args[0].read, k.spec(1).args[0].indirect), (READ_FD, 112), "fd from the saved registers");
    // A credential.
    let k = &compile(&kprobe_policy("commit_creds", false, &[(0, "cred")]), &Functions).unwrap().kprobes[0];
    assert_eq!(k.spec(1).args[0].read, READ_CRED);

    let refused = |p: policy::TracingPolicy| compile(&p, &Functions).unwrap_err().to_string();
    assert_eq!(
        refused(kprobe_policy("commit_creds", false, &[(0, "fd")])),
        "spec.kprobes[0].args[0].type: fd needs an integer parameter (the descriptor number); parameter new is struct cred *"
    );
    assert_eq!(
        refused(kprobe_policy("ksys_fchown", false, &[(0, "cred")])),
        "spec.kprobes[0].args[0].type: cred needs a struct cred pointer; parameter fd is unsigned int"
    );
    // Files and credentials are read by different kprobe programs.
    assert_eq!(
        refused(kprobe_policy("file_and_cred", false, &[(0, "file"), (1, "cred")])),
        "spec.kprobes[0].args: a kprobe reads either sockets and credentials or files, paths and descriptors in Vigil yet, not both"
    );
}
