//! Selectors compiled against captured tracepoint formats: what the kernel
//! is given for each filter (argument position, width, sign, values), and
//! every refusal by path.
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

mod captured;

use node_sensor_common::*;
use policy::compile::compile;
use policy::select::{Mode, mode_of};

/// `sys_enter_unlinkat` with dfd (int32), pathname (string), flag (int32
/// here unless `flag_type` says otherwise), and `selectors`.
fn unlinkat(flag_type: &str, selectors: &str) -> String {
    unlinkat_typed("int32", flag_type, selectors)
}

/// As [`unlinkat`], with dfd read as `dfd_type` (`fd`: its file's path).
fn unlinkat_typed(dfd_type: &str, flag_type: &str, selectors: &str) -> String {
    format!(
        "apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: t
spec:
  tracepoints:
  - subsystem: syscalls
    event: sys_enter_unlinkat
    args:
    - index: 5
      type: {dfd_type}
    - index: 6
      type: string
    - index: 7
      type: {flag_type}
    selectors:
{selectors}"
    )
}

fn compiled(text: &str) -> Result<policy::compile::Compiled, String> {
    let p = policy::parse(text).map_err(|e| e.to_string())?;
    compile(&p, &captured::kernel()).map_err(|e| e.to_string())
}

fn filter(args: &str) -> ArgFilterSpec {
    let c = compiled(&unlinkat("int32", &format!("    - matchArgs:\n{args}"))).unwrap();
    let s = &c.tracepoints[0].selectors;
    assert_eq!(s.set.count, 1);
    assert_eq!(s.set.selectors[0].nargs, 1);
    s.set.selectors[0].args[0]
}

#[test]
fn integers_are_cut_to_their_type_and_compared_signed_as_it_is() {
    let f = filter("      - index: 5\n        operator: Equal\n        values: [\"-100\", \"0x10\"]\n");
    assert_eq!((f.op, f.arg, f.shift, f.signed, f.nvalues), (OP_INT_EQUAL, 0, 32, 1, 2));
    assert_eq!(&f.values[..2], &[(-100i64) as u64, 16]);
    // "Greater than any" is greater than the least.
    let f = filter("      - index: 7\n        operator: GT\n        values: [\"5\", \"-3\", \"9\"]\n");
    assert_eq!((f.op, f.arg, f.nvalues, f.values[0]), (OP_GT, 2, 1, (-3i64) as u64));
    let f = filter("      - index: 7\n        operator: Mask\n        values: [\"0x100\", \"0x200\"]\n");
    assert_eq!((f.op, f.nvalues, f.values[0]), (OP_MASK, 1, 0x300));
    let f = filter("      - index: 7\n        operator: NotInRange\n        values: [\"1:10\", \"-5:-1\"]\n");
    assert_eq!((f.op, f.nvalues), (OP_NOT_IN_RANGE, 4));
    assert_eq!(&f.values[..4], &[1, 10, (-5i64) as u64, (-1i64) as u64]);
}

#[test]
fn strings_become_trie_keys_numbered_per_filter() {
    let text = unlinkat(
        "int32",
        "    - matchArgs:\n      - index: 6\n        operator: Postfix\n        values: [\".log\"]\n      matchBinaries:\n      - operator: In\n        values: [\"/bin/rm\", \"/bin/unlink\"]\n",
    );
    let c = compiled(&text).unwrap();
    let s = &c.tracepoints[0].selectors;
    assert_eq!(s.strings.len(), 2);
    assert_eq!(s.set.selectors[0].args[0].op, OP_POSTFIX);
    assert_eq!(s.set.selectors[0].binary.op, OP_STR_EQUAL);
    // Numbered from 40 for this hook: 40 and 41.
    let set = s.numbered(40);
    assert_eq!((set.selectors[0].args[0].strings, set.selectors[0].binary.strings), (40, 41));
    let keys = s.keys(40);
    assert_eq!(keys.len(), 3);
    assert_eq!(&keys[0].data[..8], &[0, 0, 0, 40, b'g', b'o', b'l', b'.']);
    assert_eq!(&keys[1].data[..6], &[0, 0, 0, 41, 0, 7]);
    assert!(c.tracepoints[0].spec(9).flags & HOOK_SELECT != 0);
}

#[test]
fn bad_selectors_are_refused_by_path() {
    let cases = [
        (
            "    - matchArgs:\n      - index: 6\n        operator: GT\n        values: [\"1\"]\n",
            "spec.tracepoints[0].selectors[0].matchArgs[0].operator: an integer operator, and the argument is a string",
        ),
        (
            "    - matchArgs:\n      - index: 7\n        operator: Equal\n        values: [\"4294967296\"]\n",
            "spec.tracepoints[0].selectors[0].matchArgs[0].values[0]: out of range for a 32-bit argument",
        ),
        (
            "    - matchArgs:\n      - index: 7\n        operator: InRange\n        values: [\"9:1\"]\n",
            "spec.tracepoints[0].selectors[0].matchArgs[0].values[0]: the range's min is above its max",
        ),
        (
            "    - matchArgs:\n      - index: 7\n        operator: Equal\n        values: [\"1\", \"2\", \"3\", \"4\", \"5\"]\n",
            "spec.tracepoints[0].selectors[0].matchArgs[0].values: at most 4 values",
        ),
        (
            "    - matchArgs:\n      - index: 6\n        operator: Postfix\n        values: [\"\"]\n",
            "spec.tracepoints[0].selectors[0].matchArgs[0].values[0]: an empty prefix or suffix matches everything",
        ),
        (
            "    - matchArgs:\n      - index: 6\n        operator: SAddr\n        values: [\"10.0.0.0/8\"]\n",
            "spec.tracepoints[0].selectors[0].matchArgs[0].operator: not supported by Vigil yet on a string argument",
        ),
        (
            "    - matchBinaries:\n      - operator: Prefix\n        followChildren: true\n        values: [\"/usr\"]\n",
            "spec.tracepoints[0].selectors[0].matchBinaries[0].followChildren: goes with In and NotIn only, as in Tetragon",
        ),
        (
            "    - matchActions:\n      - action: Override\n        argError: -1\n",
            "spec.tracepoints[0].selectors[0].matchActions[0].action: Override is for kprobes, not a tracepoint",
        ),
        (
            "    - matchActions:\n      - action: Post\n        rateLimit: 1m\n        rateLimitScope: cluster\n",
            "spec.tracepoints[0].selectors[0].matchActions[0].rateLimitScope: thread, process or global",
        ),
        (
            "    - matchReturnArgs:\n      - index: 0\n        operator: Equal\n        values: [\"0\"]\n",
            "spec.tracepoints[0].selectors[0].matchReturnArgs: the hook has no return value (return: true)",
        ),
        (
            "    - matchNamespaceChanges:\n      - operator: In\n        values: [\"Mount\"]\n",
            "spec.tracepoints[0].selectors[0].matchNamespaceChanges[0].values[0]: a namespace: Uts, Ipc, Mnt, Pid, PidForChildren, Net, Time, TimeForChildren, Cgroup or User",
        ),
        (
            "    - matchNamespaces:\n      - namespace: Pid\n        operator: In\n        values: [\"host_ns\"]\n",
            "spec.tracepoints[0].selectors[0].matchNamespaces[0].values[0]: host_ns: the host's namespaces are not known here",
        ),
        (
            "    - matchNamespaces:\n      - namespace: Net\n        operator: NotIn\n        values: [\"net:[4026531840]\"]\n",
            "spec.tracepoints[0].selectors[0].matchNamespaces[0].values[0]: a namespace inode number, or host_ns",
        ),
        (
            "    - matchActions:\n      - action: Post\n        kernelStackTrace: true\n",
            "spec.tracepoints[0].selectors[0].matchActions[0].kernelStackTrace: stack traces are for kprobes, not a tracepoint",
        ),
        (
            "    - matchActions:\n      - action: Sigkill\n        userStackTrace: true\n",
            "spec.tracepoints[0].selectors[0].matchActions[0]: rateLimit, kernelStackTrace, userStackTrace and imaHash go with Post only",
        ),
        (
            "    - matchCapabilities:\n      - operator: In\n        values: [\"CAP_DAC_OVERRIDE\"]\n",
            "spec.tracepoints[0].selectors[0].matchCapabilities[0].values[0]: not a capability name (CAP_SYS_ADMIN, …; capability 1 is DAC_OVERRIDE)",
        ),
    ];
    for (selectors, expected) in cases {
        let got = compiled(&unlinkat("int32", selectors)).err();
        assert_eq!(got.as_deref(), Some(expected), "for:\n{selectors}");
    }
}

#[test]
fn the_mode_is_monitor_only_without_enforcement_and_follows_the_option_with_it() {
    let mode = |selectors: &str, option: &str| {
        let text = unlinkat("int32", selectors).replace("  tracepoints:", &format!("{option}  tracepoints:"));
        mode_of(&policy::parse(&text).unwrap())
    };
    let kill = "    - matchActions:\n      - action: Sigkill\n";
    let post = "    - matchActions:\n      - action: Post\n";
    let monitor = "  options:\n  - name: policy-mode\n    value: monitor\n";
    assert_eq!(mode(kill, ""), Ok(Mode::Enforce));
    assert_eq!(mode(kill, monitor), Ok(Mode::Monitor));
    assert_eq!(mode(post, ""), Ok(Mode::MonitorOnly));
    assert_eq!(mode(post, monitor), Ok(Mode::MonitorOnly));
    let bad = mode(kill, "  options:\n  - name: policy-mode\n    value: audit\n").unwrap_err();
    assert_eq!(bad.to_string(), "spec.options[0].value: policy-mode is enforce or monitor");
}

#[test]
fn namespaces_and_capabilities_become_inode_sets_and_masks() {
    let text = unlinkat(
        "int32",
        "    - matchNamespaces:
      - namespace: Mnt
        operator: NotIn
        values: [\"4026531841\", \"7\"]
      - namespace: User
        operator: In
        values: [\"4026531837\"]
      matchCapabilities:
      - operator: In
        values: [\"cap_sys_admin\", \"DAC_OVERRIDE\"]
      - type: Permitted
        operator: NotIn
        isNamespaceCapability: true
        values: [\"CAP_BPF\"]
",
    );
    let c = compiled(&text).unwrap();
    let s = &c.tracepoints[0].selectors;
    assert!(s.set.flags & SELECT_NAMESPACES != 0, "the program reads the task's namespaces");
    let sel = &s.set.selectors[0];
    assert_eq!(sel.nnamespaces, 2);
    let ns = sel.namespaces[0];
    assert_eq!(
        (ns.op, ns.kind as usize, ns.nvalues, ns.values[..2].to_vec()),
        (OP_NOT_IN, NS_MNT, 2, vec![4026531841, 7])
    );
    assert_eq!((sel.namespaces[1].op, sel.namespaces[1].kind as usize), (OP_IN, NS_USER));
    assert_eq!(sel.ncapabilities, 2);
    let caps = sel.capabilities;
    assert_eq!(
        (caps[0].op, caps[0].set, caps[0].namespace_only, caps[0].mask),
        (OP_IN, CAPS_EFFECTIVE, 0, (1 << 21) | 2)
    );
    assert_eq!(
        (caps[1].op, caps[1].set, caps[1].namespace_only, caps[1].mask),
        (OP_NOT_IN, CAPS_PERMITTED, 1, 1 << 39)
    );
}

/// A kernel with one function, `tcp_connect(struct sock *sk)`.
struct TcpConnect;

impl policy::compile::KernelView for TcpConnect {
    fn tracepoint_format(&self, _: &str, _: &str) -> Result<Option<policy::tracefs::Format>, String> {
        Ok(None)
    }

    fn function(&self, name: &str) -> Result<Option<policy::compile::Function>, String> {
        use policy::compile::{Function, Param, ParamKind};
        Ok((name == "tcp_connect").then(|| Function {
            params: vec![Param {
                name: "sk".into(),
                c_type: "struct sock *".into(),
                kind: ParamKind::Pointer { to: "sock".into() },
            }],
        }))
    }
}

/// A policy on `tcp_connect` with `hook` (YAML lines under the hook).
fn tcp_connect(hook: &str) -> String {
    format!(
        "apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: t
spec:
  kprobes:
  - call: tcp_connect
    syscall: false
{hook}"
    )
}

fn sock_filter(operator: &str, values: &str) -> Result<policy::select::Selectors, String> {
    let text = tcp_connect(&format!(
        "    args:
    - index: 0
      type: sock
    selectors:
    - matchArgs:
      - index: 0
        operator: {operator}
        values: {values}
"
    ));
    let p = policy::parse(&text).map_err(|e| e.to_string())?;
    let c = compile(&p, &TcpConnect).map_err(|e| e.to_string())?;
    Ok(c.kprobes[0].selectors.clone())
}

#[test]
fn a_post_on_a_kprobe_asks_for_its_stacks() {
    let text = tcp_connect(
        "    selectors:
    - matchActions:
      - action: Post
        kernelStackTrace: true
    - matchActions:
      - action: Post
        userStackTrace: true
        kernelStackTrace: true
      - action: Sigkill
",
    );
    let p = policy::parse(&text).unwrap();
    let c = compile(&p, &TcpConnect).unwrap();
    let set = &c.kprobes[0].selectors.set;
    let stacks = |s: usize| set.selectors[s].actions.iter().map(|a| a.stacks).collect::<Vec<_>>();
    assert_eq!(stacks(0), [STACK_KERNEL, 0, 0]);
    assert_eq!(stacks(1), [STACK_KERNEL | STACK_USER, 0, 0]);
}

#[test]
fn socket_operators_become_port_ranges_networks_and_numbers() {
    let s = sock_filter("DPort", "[\"8765\", \"1000:2000\"]").unwrap();
    let f = s.set.selectors[0].args[0];
    assert_eq!((f.op, f.nvalues, &f.values[..4]), (OP_DPORT, 4, &[8765, 8765, 1000, 2000][..]));
    let s = sock_filter("Protocol", "[\"IPPROTO_TCP\", \"17\"]").unwrap();
    let f = s.set.selectors[0].args[0];
    assert_eq!((f.op, f.nvalues, &f.values[..2]), (OP_PROTOCOL, 2, &[6, 17][..]));
    let s = sock_filter("NotDAddr", "[\"127.0.0.0/8\", \"fd00::1\"]").unwrap();
    assert_eq!(s.set.selectors[0].args[0].op, OP_NOT_DADDR);
    let keys = s.keys(3);
    // Family and the network's bits: 5 bytes of header, then 8 or 128 bits.
    assert_eq!((keys[0].prefix_len, &keys[0].data[..6]), (40 + 8, &[0, 0, 0, 3, 4, 127][..]));
    assert_eq!((keys[1].prefix_len, keys[1].data[4]), (40 + 128, 6));
    let s = sock_filter("SPortPriv", "[]").unwrap();
    assert_eq!(s.set.selectors[0].args[0].op, OP_SPORT_PRIV);
    let bad = [
        ("DPort", "[\"70000\"]", "values[0]: a port (0 to 65535) or lo:hi"),
        ("DPort", "[\"9:1\"]", "values[0]: the range's low port is above its high one"),
        ("DAddr", "[\"10.0.0.0/33\"]", "values[0]: at most /32 for this address"),
        ("SAddr", "[\"example.com\"]", "values[0]: an IPv4 or IPv6 address, or a CIDR (10.0.0.0/8, fd00::/8)"),
        ("State", "[\"TCP_NOPE\"]", "values[0]: a number or one of TCP_ESTABLISHED"),
        ("SPortPriv", "[\"1\"]", "values: this operator takes no values"),
        ("Equal", "[\"1\"]", "operator: on a socket: SPort, DPort"),
    ];
    for (operator, values, expected) in bad {
        let e = sock_filter(operator, values).unwrap_err();
        let expected = format!("spec.kprobes[0].selectors[0].matchArgs[0].{expected}");
        assert!(e.starts_with(&expected), "{operator} {values}: {e}");
    }
}

#[test]
fn path_filters_compare_the_path_root_first_and_refuse_integer_operators() {
    let text = |operator: &str| {
        let selectors = format!(
            "    - matchArgs:
      - index: 6
        operator: Postfix
        values: [\".log\"]
      - index: 5
        operator: {operator}
        values: [\"/etc\"]
"
        );
        unlinkat_typed("fd", "int32", &selectors)
    };
    let c = compiled(&text("Prefix")).unwrap();
    let s = &c.tracepoints[0].selectors;
    let (string, path) = (s.set.selectors[0].args[0], s.set.selectors[0].args[1]);
    assert_eq!((string.op, string.arg, string.path), (OP_POSTFIX, 1, 0));
    assert_eq!((path.op, path.arg, path.path), (OP_PREFIX, 0, 1));
    // The selector program writes out the path at position 0 only.
    assert_eq!(s.set.flags >> SELECT_PATHS_SHIFT, 1);
    // The value is the path as events show it, not as the kernel keeps it.
    assert_eq!(s.strings[1].values, vec![b"/etc".to_vec()]);
    assert_eq!(
        compiled(&text("GT")).unwrap_err(),
        "spec.tracepoints[0].selectors[0].matchArgs[1].operator: an integer operator, and the argument is a path"
    );
    assert_eq!(
        compiled(&text("SPort")).unwrap_err(),
        "spec.tracepoints[0].selectors[0].matchArgs[1].operator: not supported by Vigil yet on a path argument"
    );
}
