//! Tracepoint policies compiled against this machine's kernel through its
//! tracefs (mounted by the sensor's code if it is not): the recorded
//! Tetragon policy reads what Tetragon read; a tracepoint the kernel lacks
//! or a name that would leave tracefs is none. Root.
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

mod common;

use node_sensor::tracefs::Tracefs;
use policy::compile::{KernelView, Read, compile};
use policy::schema::ArgType;

#[test]
fn the_recorded_tracepoint_policy_compiles_against_this_kernel() {
    require_kernel!();
    let tracefs = Tracefs::open().unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/compat/fixtures/tetragon-vm-policies");
    let p = policy::parse(&std::fs::read_to_string(dir.join("d-tracepoints.yaml")).unwrap()).unwrap();
    let c = compile(&p, &tracefs).unwrap();
    let openat: Vec<(&str, ArgType, Read)> =
        c.tracepoints[0].args.iter().map(|a| (a.field.as_str(), a.arg_type, a.read)).collect();
    assert_eq!(openat[0], ("__syscall_nr", ArgType::Int32, Read::Scalar { signed: true }));
    assert_eq!(openat[2], ("filename", ArgType::String, Read::UserString));
    assert_eq!(c.tracepoints[1].args[0].read, Read::SyscallId);
    assert_eq!(tracefs.tracepoint_format("syscalls", "sys_enter_nonesuch").unwrap(), None);
    assert_eq!(tracefs.tracepoint_format("..", "..").unwrap(), None, "names stay inside tracefs");
    assert_eq!(tracefs.tracepoint_format("syscalls/../sched", "sched_process_exec").unwrap(), None);
}
