//! A hook's selectors, compiled to what the kernel's selector program
//! evaluates: each filter bound to the position of the argument it reads
//! (as the compiled hook orders them), its operator checked against the
//! argument's type, its values parsed and bounded. String values go to the
//! kernel's LPM trie under a filter number the sensor assigns; here each
//! string filter is numbered within the hook (`strings`), and
//! [`Selectors::numbered`] renumbers them. What Vigil does not evaluate yet
//! is refused by path, never loaded in part.

use node_sensor_common::{
    ACTION_NOPOST, ACTION_OVERRIDE, ACTION_POST, ACTION_SIGKILL, ACTION_SIGNAL, ActionSpec, ArgFilterSpec,
    BinaryFilterSpec, CAPS_EFFECTIVE, CAPS_INHERITABLE, CAPS_PERMITTED, CapabilityFilterSpec, FILTER_INT_VALUES,
    NAMESPACE_VALUES, NS_CGROUP, NS_IPC, NS_MNT, NS_NET, NS_PID, NS_PID_FOR_CHILDREN, NS_TIME, NS_TIME_FOR_CHILDREN,
    NS_USER, NS_UTS, NamespaceChangeSpec, NamespaceFilterSpec, OP_DADDR, OP_DPORT, OP_DPORT_PRIV, OP_FAMILY, OP_GT,
    OP_IN, OP_IN_RANGE, OP_INT_EQUAL, OP_INT_NOT_EQUAL, OP_LT, OP_MASK, OP_NOT_DADDR, OP_NOT_DPORT, OP_NOT_DPORT_PRIV,
    OP_NOT_IN, OP_NOT_IN_RANGE, OP_NOT_POSTFIX, OP_NOT_PREFIX, OP_NOT_SADDR, OP_NOT_SPORT, OP_NOT_SPORT_PRIV,
    OP_POSTFIX, OP_PREFIX, OP_PROTOCOL, OP_SADDR, OP_SPORT, OP_SPORT_PRIV, OP_STATE, OP_STR_EQUAL, OP_STR_NOT_EQUAL,
    PID_FOLLOW_FORKS, PID_NAMESPACE, PidFilterSpec, RATE_SCOPE_GLOBAL, RATE_SCOPE_PROCESS, RATE_SCOPE_THREAD,
    SELECT_NAMESPACES, SELECT_PATHS_SHIFT, SELECT_RETURN, SELECTOR_ACTIONS, SELECTOR_ARG_FILTERS,
    SELECTOR_CAPABILITIES, SELECTOR_NAMESPACES, SELECTOR_PIDS, SELECTORS_PER_HOOK, STACK_KERNEL, STACK_USER,
    STRING_EQUAL_MAX, STRING_KEY_DATA, STRING_POSTFIX_MAX, STRING_PREFIX_MAX, SelectorSet, SelectorSpec, StringKey,
};

use crate::PolicyError;
use crate::compile::{HookArg, Read};
use crate::schema::{
    ActionKind, ArgFilter, ArgOperator, ArgType, BinaryFilter, BinaryOperator, CapabilityFilter, CapabilitySet,
    ChangeFilter, InOperator, NamespaceFilter, NamespaceName, PidFilter, Selector,
};

/// Integer values an operator takes at most (ranges count once each).
const INT_VALUES: usize = 4;

/// A hook's selectors as the kernel takes them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selectors {
    pub set: SelectorSet,
    /// Each string filter's operator and values, by its number in `set`.
    pub strings: Vec<StringFilter>,
    /// Labels of the selectors (for their counters), in order.
    pub labels: Vec<String>,
    /// Where the first `Override` action is, if any: the hook then needs
    /// the override program, which the kernel attaches only to functions
    /// it allows for error injection.
    pub override_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StringFilter {
    pub op: u8,
    pub values: Vec<Vec<u8>>,
}

impl Selectors {
    pub fn is_empty(&self) -> bool {
        self.set.count == 0
    }

    /// The set with string filter `i` numbered `first + i`.
    pub fn numbered(&self, first: u32) -> SelectorSet {
        let mut set = self.set;
        for sel in set.selectors.iter_mut() {
            for f in sel.args.iter_mut().chain(sel.rets.iter_mut()) {
                if f.op >= OP_STR_EQUAL {
                    f.strings += first;
                }
            }
            for b in [&mut sel.binary, &mut sel.parent_binary] {
                if b.op != 0 {
                    b.strings += first;
                }
            }
        }
        set
    }

    /// Every trie key of the string filters, numbered from `first`.
    pub fn keys(&self, first: u32) -> Vec<StringKey> {
        let mut keys = Vec::new();
        for (i, f) in self.strings.iter().enumerate() {
            for v in &f.values {
                keys.push(string_key(first + i as u32, f.op, v));
            }
        }
        keys
    }
}

/// The trie key of value `v` of string filter `filter` (see `StringKey`).
pub fn string_key(filter: u32, op: u8, v: &[u8]) -> StringKey {
    let mut data = [0u8; STRING_KEY_DATA];
    data[..4].copy_from_slice(&filter.to_be_bytes());
    let used = match op {
        // A network: `v` is [family (4 or 6), prefix bits, address...];
        // the key covers the family and the prefix's bits.
        OP_SADDR | OP_NOT_SADDR | OP_DADDR | OP_NOT_DADDR => {
            let (family, bits, address) = (v[0], v[1], &v[2..]);
            data[4] = family;
            data[5..5 + address.len()].copy_from_slice(address);
            return StringKey { prefix_len: 5 * 8 + u32::from(bits), data };
        }
        OP_STR_EQUAL | OP_STR_NOT_EQUAL => {
            data[4..6].copy_from_slice(&(v.len() as u16).to_be_bytes());
            data[6..6 + v.len()].copy_from_slice(v);
            6 + v.len()
        }
        OP_POSTFIX | OP_NOT_POSTFIX => {
            for (d, b) in data[4..].iter_mut().zip(v.iter().rev()) {
                *d = *b;
            }
            4 + v.len()
        }
        _ => {
            data[4..4 + v.len()].copy_from_slice(v);
            4 + v.len()
        }
    };
    StringKey { prefix_len: (used * 8) as u32, data }
}

/// What a selector's filters read: the hook's arguments in record order,
/// and its return value (after them).
pub struct HookShape<'a> {
    pub args: &'a [HookArg],
    pub ret: Option<&'a HookArg>,
    /// The hook's kind, as refusals name it.
    pub kind: &'static str,
    /// For `host_ns`.
    pub kernel: &'a dyn crate::compile::KernelView,
}

/// Compiles `selectors` (at `at`, e.g. `spec.tracepoints[0].selectors`).
pub fn compile(at: &str, selectors: &[Selector], shape: &HookShape<'_>) -> Result<Selectors, PolicyError> {
    let mut out = Selectors::default();
    if selectors.len() > SELECTORS_PER_HOOK {
        return Err(PolicyError::at(at, format!("at most {SELECTORS_PER_HOOK} selectors")));
    }
    for (i, s) in selectors.iter().enumerate() {
        let here = format!("{at}[{i}]");
        out.set.selectors[i] = selector(&here, s, shape, &mut out.strings)?;
        if out.override_at.is_none()
            && let Some(k) = s.match_actions.iter().position(|a| a.action == ActionKind::Override)
        {
            out.override_at = Some(format!("{here}.matchActions[{k}]"));
        }
        out.labels.push(s.label.clone().unwrap_or_default());
    }
    out.set.count = selectors.len() as u32;
    if selectors.iter().any(|s| !s.match_namespaces.is_empty() || !s.match_namespace_changes.is_empty()) {
        out.set.flags |= SELECT_NAMESPACES;
    }
    if shape.ret.is_some() {
        out.set.flags |= SELECT_RETURN;
    }
    for sel in &out.set.selectors[..selectors.len()] {
        let filters = sel.args[..sel.nargs as usize].iter().chain(&sel.rets[..sel.nrets as usize]);
        for f in filters.filter(|f| f.path != 0) {
            out.set.flags |= 1 << (SELECT_PATHS_SHIFT + u32::from(f.arg));
        }
    }
    Ok(out)
}

fn selector(
    at: &str,
    s: &Selector,
    shape: &HookShape<'_>,
    strings: &mut Vec<StringFilter>,
) -> Result<SelectorSpec, PolicyError> {
    let unsupported = [("matchData", !s.match_data.is_empty())];
    if let Some((field, _)) = unsupported.iter().find(|(_, given)| *given) {
        return Err(PolicyError::at(format!("{at}.{field}"), "not supported by Vigil yet"));
    }
    let mut spec = SelectorSpec::default();
    if s.match_args.len() > SELECTOR_ARG_FILTERS {
        return Err(PolicyError::at(format!("{at}.matchArgs"), format!("at most {SELECTOR_ARG_FILTERS} entries")));
    }
    for (j, f) in s.match_args.iter().enumerate() {
        let here = format!("{at}.matchArgs[{j}]");
        let (position, arg) = entry_arg(&here, f, shape.args)?;
        spec.args[j] = arg_filter(&here, f, position, arg, strings)?;
    }
    spec.nargs = s.match_args.len() as u8;
    if !s.match_return_args.is_empty() {
        let Some(ret) = shape.ret else {
            return Err(PolicyError::at(
                format!("{at}.matchReturnArgs"),
                "the hook has no return value (return: true)",
            ));
        };
        if s.match_return_args.len() > SELECTOR_ARG_FILTERS {
            return Err(PolicyError::at(
                format!("{at}.matchReturnArgs"),
                format!("at most {SELECTOR_ARG_FILTERS} entries"),
            ));
        }
        for (j, f) in s.match_return_args.iter().enumerate() {
            let here = format!("{at}.matchReturnArgs[{j}]");
            if f.index != 0 || !f.args.is_empty() {
                return Err(PolicyError::at(format!("{here}.index"), "the return value is index 0"));
            }
            spec.rets[j] = arg_filter(&here, f, shape.args.len(), ret, strings)?;
        }
        spec.nrets = s.match_return_args.len() as u8;
    }
    if let Some(f) = s.match_pids.first() {
        if s.match_pids.len() > 1 {
            return Err(PolicyError::at(format!("{at}.matchPIDs"), "at most 1 entry in Vigil yet"));
        }
        spec.pids = pid_filter(&format!("{at}.matchPIDs[0]"), f)?;
    }
    if let Some(f) = s.match_binaries.first() {
        spec.binary = binary_filter(&format!("{at}.matchBinaries[0]"), f, strings)?;
    }
    if let Some(f) = s.match_parent_binaries.first() {
        let here = format!("{at}.matchParentBinaries[0]");
        if f.follow_children {
            return Err(PolicyError::at(format!("{here}.followChildren"), "is for matchBinaries"));
        }
        spec.parent_binary = binary_filter(&here, f, strings)?;
    }
    if let Some(f) = s.match_namespace_changes.first() {
        if s.match_namespace_changes.len() > 1 {
            return Err(PolicyError::at(format!("{at}.matchNamespaceChanges"), "at most 1 entry"));
        }
        spec.namespace_change = namespace_change(&format!("{at}.matchNamespaceChanges[0]"), f)?;
    }
    if let Some(f) = s.match_capability_changes.first() {
        if s.match_capability_changes.len() > 1 {
            return Err(PolicyError::at(format!("{at}.matchCapabilityChanges"), "at most 1 entry in Vigil yet"));
        }
        let here = format!("{at}.matchCapabilityChanges[0]");
        if f.is_namespace_capability {
            return Err(PolicyError::at(format!("{here}.isNamespaceCapability"), "is for matchCapabilities"));
        }
        spec.capability_change = capability_filter(&here, f)?;
    }
    if s.match_namespaces.len() > SELECTOR_NAMESPACES {
        return Err(PolicyError::at(
            format!("{at}.matchNamespaces"),
            format!("at most {SELECTOR_NAMESPACES} entries in Vigil yet"),
        ));
    }
    for (j, f) in s.match_namespaces.iter().enumerate() {
        spec.namespaces[j] = namespace_filter(&format!("{at}.matchNamespaces[{j}]"), f, shape.kernel)?;
    }
    spec.nnamespaces = s.match_namespaces.len() as u8;
    if s.match_capabilities.len() > SELECTOR_CAPABILITIES {
        return Err(PolicyError::at(
            format!("{at}.matchCapabilities"),
            format!("at most {SELECTOR_CAPABILITIES} entries in Vigil yet"),
        ));
    }
    for (j, f) in s.match_capabilities.iter().enumerate() {
        spec.capabilities[j] = capability_filter(&format!("{at}.matchCapabilities[{j}]"), f)?;
    }
    spec.ncapabilities = s.match_capabilities.len() as u8;
    let (list, n) = actions(&format!("{at}.matchActions"), &s.match_actions, shape)?;
    spec.actions = list;
    spec.nactions = n;
    if !s.match_return_actions.is_empty() && shape.ret.is_none() {
        return Err(PolicyError::at(format!("{at}.matchReturnActions"), "the hook has no return value (return: true)"));
    }
    let (list, n) = actions(&format!("{at}.matchReturnActions"), &s.match_return_actions, shape)?;
    spec.ret_actions = list;
    spec.nret_actions = n;
    Ok(spec)
}

/// The argument a `matchArgs` entry reads: `args: [i]` is a position in
/// the hook's `args` (and wins), `index` the declared argument's index.
fn entry_arg<'a>(at: &str, f: &ArgFilter, args: &'a [HookArg]) -> Result<(usize, &'a HookArg), PolicyError> {
    if let Some(&p) = f.args.first() {
        if f.args.len() > 1 {
            return Err(PolicyError::at(format!("{at}.args"), "one argument per filter in Vigil yet"));
        }
        return args
            .get(p as usize)
            .map(|a| (p as usize, a))
            .ok_or_else(|| PolicyError::at(format!("{at}.args"), "past the declared arguments"));
    }
    args.iter()
        .position(|a| a.index == f.index)
        .map(|p| (p, &args[p]))
        .ok_or_else(|| PolicyError::at(format!("{at}.index"), "no declared argument has this index"))
}

/// How a filter sees an argument.
enum Class {
    Int {
        signed: bool,
        size: u32,
    },
    Bytes,
    /// A file, path, descriptor or binprm: compared as the path events
    /// show (`/etc/passwd`).
    Path,
    Sock,
    Other(&'static str),
}

fn class_of(arg: &HookArg) -> Class {
    match arg.read {
        // The type's width where it has one: an int32 in a syscall's
        // 8-byte slot compares as 32 bits, as events show it.
        Read::Scalar { signed } => Class::Int {
            signed: signed || signed_type(arg.arg_type),
            size: crate::compile::int_size(arg.arg_type).unwrap_or(arg.size).clamp(1, 8),
        },
        Read::SyscallId => Class::Int { signed: false, size: 8 },
        Read::UserString | Read::KernelString | Read::RecordString => Class::Bytes,
        Read::UserBuffer { .. } | Read::KernelBuffer { .. } | Read::Array { .. } => Class::Bytes,
        Read::File | Read::Path | Read::Bprm | Read::Fd => Class::Path,
        Read::Sock => Class::Sock,
        Read::Cred => Class::Other("credentials"),
        Read::Nothing => Class::Other("nop"),
    }
}

/// Types whose values compare signed (uprobes read every integer raw).
fn signed_type(t: ArgType) -> bool {
    use ArgType::*;
    matches!(t, Int | Int8 | Sint8 | Int16 | Sint16 | Int32 | Sint32 | Long | Int64 | Sint64)
}

fn arg_filter(
    at: &str,
    f: &ArgFilter,
    position: usize,
    arg: &HookArg,
    strings: &mut Vec<StringFilter>,
) -> Result<ArgFilterSpec, PolicyError> {
    use ArgOperator::*;
    let op_at = format!("{at}.operator");
    let mut spec = ArgFilterSpec { arg: position as u8, ..Default::default() };
    let takes_no_values = matches!(f.operator, SPortPriv | DPortPriv | NotSportPriv | NotDPortPriv);
    if f.values.is_empty() && !takes_no_values {
        return Err(PolicyError::at(format!("{at}.values"), "at least one value"));
    }
    match class_of(arg) {
        Class::Int { signed, size } => {
            spec.shift = (64 - 8 * size) as u8;
            spec.signed = u8::from(signed);
            spec.op = match f.operator {
                Equal => OP_INT_EQUAL,
                NotEqual => OP_INT_NOT_EQUAL,
                GreaterThan | GT => OP_GT,
                LessThan | LT => OP_LT,
                Mask => OP_MASK,
                InRange => OP_IN_RANGE,
                NotInRange => OP_NOT_IN_RANGE,
                Prefix | NotPrefix | Postfix | NotPostfix => {
                    return Err(PolicyError::at(op_at, "a string operator, and the argument is an integer"));
                }
                _ => return Err(PolicyError::at(op_at, "not supported by Vigil yet on an integer argument")),
            };
            if f.values.len() > INT_VALUES {
                return Err(PolicyError::at(format!("{at}.values"), format!("at most {INT_VALUES} values")));
            }
            let mut n = 0;
            for (k, v) in f.values.iter().enumerate() {
                let here = format!("{at}.values[{k}]");
                if matches!(spec.op, OP_IN_RANGE | OP_NOT_IN_RANGE) {
                    let (lo, hi) =
                        v.split_once(':').ok_or_else(|| PolicyError::at(&here, "a range is min:max, both included"))?;
                    let (lo, hi) = (int_value(&here, lo, signed, size)?, int_value(&here, hi, signed, size)?);
                    let ordered = if signed { (lo as i64) <= (hi as i64) } else { lo <= hi };
                    if !ordered {
                        return Err(PolicyError::at(&here, "the range's min is above its max"));
                    }
                    spec.values[n] = lo;
                    spec.values[n + 1] = hi;
                    n += 2;
                } else {
                    spec.values[n] = int_value(&here, v, signed, size)?;
                    n += 1;
                }
            }
            debug_assert!(n <= FILTER_INT_VALUES);
            // "Any value" folds to one for these: the least for GT, the
            // greatest for LT, the union of the bits for Mask.
            let values = &spec.values[..n];
            let folded = match spec.op {
                OP_GT if signed => values.iter().map(|&v| v as i64).min().map(|v| v as u64),
                OP_GT => values.iter().copied().min(),
                OP_LT if signed => values.iter().map(|&v| v as i64).max().map(|v| v as u64),
                OP_LT => values.iter().copied().max(),
                OP_MASK => Some(values.iter().fold(0, |a, v| a | v)),
                _ => None,
            };
            if let Some(v) = folded {
                spec.values = [0; FILTER_INT_VALUES];
                spec.values[0] = v;
                n = 1;
            }
            spec.nvalues = n as u8;
        }
        class @ (Class::Bytes | Class::Path) => {
            let what = if matches!(class, Class::Path) { "a path" } else { "a string" };
            let (op, max) = match f.operator {
                Equal => (OP_STR_EQUAL, STRING_EQUAL_MAX),
                NotEqual => (OP_STR_NOT_EQUAL, STRING_EQUAL_MAX),
                Prefix => (OP_PREFIX, STRING_PREFIX_MAX),
                NotPrefix => (OP_NOT_PREFIX, STRING_PREFIX_MAX),
                Postfix => (OP_POSTFIX, STRING_POSTFIX_MAX),
                NotPostfix => (OP_NOT_POSTFIX, STRING_POSTFIX_MAX),
                GreaterThan | GT | LessThan | LT | Mask | InRange | NotInRange => {
                    return Err(PolicyError::at(op_at, format!("an integer operator, and the argument is {what}")));
                }
                _ => return Err(PolicyError::at(op_at, format!("not supported by Vigil yet on {what} argument"))),
            };
            spec.op = op;
            spec.path = u8::from(matches!(class, Class::Path));
            spec.strings = string_filter(at, op, max, &f.values, strings)?;
        }
        Class::Sock => sock_filter(at, f, &mut spec, strings)?,
        Class::Other(what) => {
            return Err(PolicyError::at(op_at, format!("filters on {what} are not supported by Vigil yet")));
        }
    }
    Ok(spec)
}

/// A socket operator's values: port ranges, networks, or protocol,
/// family and state numbers or names.
fn sock_filter(
    at: &str,
    f: &ArgFilter,
    spec: &mut ArgFilterSpec,
    strings: &mut Vec<StringFilter>,
) -> Result<(), PolicyError> {
    use ArgOperator::*;
    let (op, kind) = match f.operator {
        SPort => (OP_SPORT, SockValues::Ports),
        NotSPort => (OP_NOT_SPORT, SockValues::Ports),
        DPort => (OP_DPORT, SockValues::Ports),
        NotDPort => (OP_NOT_DPORT, SockValues::Ports),
        SPortPriv => (OP_SPORT_PRIV, SockValues::None),
        NotSportPriv => (OP_NOT_SPORT_PRIV, SockValues::None),
        DPortPriv => (OP_DPORT_PRIV, SockValues::None),
        NotDPortPriv => (OP_NOT_DPORT_PRIV, SockValues::None),
        SAddr => (OP_SADDR, SockValues::Networks),
        NotSAddr => (OP_NOT_SADDR, SockValues::Networks),
        DAddr => (OP_DADDR, SockValues::Networks),
        NotDAddr => (OP_NOT_DADDR, SockValues::Networks),
        Protocol => (OP_PROTOCOL, SockValues::Names(PROTOCOLS)),
        Family => (OP_FAMILY, SockValues::Names(FAMILIES)),
        State => (OP_STATE, SockValues::Names(TCP_STATES)),
        _ => {
            return Err(PolicyError::at(
                format!("{at}.operator"),
                "on a socket: SPort, DPort, SAddr, DAddr (and their Not forms), the Priv port forms, Protocol, \
                 Family or State",
            ));
        }
    };
    spec.op = op;
    let limit = FILTER_INT_VALUES / 2;
    match kind {
        SockValues::None => {
            if !f.values.is_empty() {
                return Err(PolicyError::at(format!("{at}.values"), "this operator takes no values"));
            }
        }
        SockValues::Ports => {
            if f.values.len() > limit {
                return Err(PolicyError::at(format!("{at}.values"), format!("at most {limit} ports or ranges")));
            }
            for (k, v) in f.values.iter().enumerate() {
                let here = format!("{at}.values[{k}]");
                let port = |t: &str| {
                    t.trim().parse::<u16>().map_err(|_| PolicyError::at(&here, "a port (0 to 65535) or lo:hi"))
                };
                let (lo, hi) = match v.split_once(':') {
                    Some((lo, hi)) => (port(lo)?, port(hi)?),
                    None => (port(v)?, port(v)?),
                };
                if lo > hi {
                    return Err(PolicyError::at(&here, "the range's low port is above its high one"));
                }
                spec.values[2 * k] = u64::from(lo);
                spec.values[2 * k + 1] = u64::from(hi);
            }
            spec.nvalues = (2 * f.values.len()) as u8;
        }
        SockValues::Names(names) => {
            if f.values.len() > limit {
                return Err(PolicyError::at(format!("{at}.values"), format!("at most {limit} values")));
            }
            for (k, v) in f.values.iter().enumerate() {
                let v = v.trim();
                let number = v.parse::<u64>().ok().or_else(|| names.iter().find(|(n, _)| *n == v).map(|(_, x)| *x));
                spec.values[k] = number.ok_or_else(|| {
                    PolicyError::at(format!("{at}.values[{k}]"), format!("a number or one of {}", name_list(names)))
                })?;
            }
            spec.nvalues = f.values.len() as u8;
        }
        SockValues::Networks => {
            let mut kept = Vec::with_capacity(f.values.len());
            for (k, v) in f.values.iter().enumerate() {
                kept.push(network(&format!("{at}.values[{k}]"), v)?);
            }
            strings.push(StringFilter { op, values: kept });
            spec.strings = strings.len() as u32 - 1;
        }
    }
    Ok(())
}

enum SockValues {
    None,
    Ports,
    Networks,
    Names(&'static [(&'static str, u64)]),
}

const PROTOCOLS: &[(&str, u64)] = &[
    ("IPPROTO_IP", 0),
    ("IPPROTO_ICMP", 1),
    ("IPPROTO_TCP", 6),
    ("IPPROTO_UDP", 17),
    ("IPPROTO_ICMPV6", 58),
    ("IPPROTO_SCTP", 132),
    ("IPPROTO_RAW", 255),
];
const FAMILIES: &[(&str, u64)] = &[("AF_UNIX", 1), ("AF_INET", 2), ("AF_INET6", 10), ("AF_NETLINK", 16)];
const TCP_STATES: &[(&str, u64)] = &[
    ("TCP_ESTABLISHED", 1),
    ("TCP_SYN_SENT", 2),
    ("TCP_SYN_RECV", 3),
    ("TCP_FIN_WAIT1", 4),
    ("TCP_FIN_WAIT2", 5),
    ("TCP_TIME_WAIT", 6),
    ("TCP_CLOSE", 7),
    ("TCP_CLOSE_WAIT", 8),
    ("TCP_LAST_ACK", 9),
    ("TCP_LISTEN", 10),
    ("TCP_CLOSING", 11),
    ("TCP_NEW_SYN_RECV", 12),
];

fn name_list(names: &[(&str, u64)]) -> String {
    names.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}

/// An address or CIDR as a network key's value: [family, bits, address].
fn network(at: &str, text: &str) -> Result<Vec<u8>, PolicyError> {
    let bad = || PolicyError::at(at, "an IPv4 or IPv6 address, or a CIDR (10.0.0.0/8, fd00::/8)");
    let (address, bits) = match text.trim().split_once('/') {
        Some((a, b)) => (a, Some(b.parse::<u8>().map_err(|_| bad())?)),
        None => (text.trim(), None),
    };
    let address: std::net::IpAddr = address.parse().map_err(|_| bad())?;
    let (family, bytes) = match address {
        std::net::IpAddr::V4(a) => (4u8, a.octets().to_vec()),
        std::net::IpAddr::V6(a) => (6u8, a.octets().to_vec()),
    };
    let max = (bytes.len() * 8) as u8;
    let bits = bits.unwrap_or(max);
    if bits > max {
        return Err(PolicyError::at(at, format!("at most /{max} for this address")));
    }
    let mut out = vec![family, bits];
    out.extend(bytes);
    Ok(out)
}

/// Adds a string filter's values; returns its number within the hook.
fn string_filter(
    at: &str,
    op: u8,
    max: usize,
    values: &[String],
    strings: &mut Vec<StringFilter>,
) -> Result<u32, PolicyError> {
    let mut kept = Vec::with_capacity(values.len());
    for (k, v) in values.iter().enumerate() {
        // Tetragon trims a trailing NUL from a string value.
        let v = v.strip_suffix('\0').unwrap_or(v);
        if v.is_empty() && op != OP_STR_EQUAL && op != OP_STR_NOT_EQUAL {
            return Err(PolicyError::at(format!("{at}.values[{k}]"), "an empty prefix or suffix matches everything"));
        }
        if v.len() > max {
            return Err(PolicyError::at(format!("{at}.values[{k}]"), format!("at most {max} bytes for this operator")));
        }
        kept.push(v.as_bytes().to_vec());
    }
    strings.push(StringFilter { op, values: kept });
    Ok(strings.len() as u32 - 1)
}

/// An integer value as Tetragon parses one: decimal, `0x` hex, `0` octal,
/// negative for signed arguments; it must fit the argument's `size` bytes
/// (a signed value is kept sign-extended, as the kernel compares it).
fn int_value(at: &str, text: &str, signed: bool, size: u32) -> Result<u64, PolicyError> {
    let t = text.trim();
    let (negative, digits) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let (radix, digits) = if let Some(h) = digits.strip_prefix("0x").or_else(|| digits.strip_prefix("0X")) {
        (16, h)
    } else if digits.len() > 1 && digits.starts_with('0') {
        (8, &digits[1..])
    } else {
        (10, digits)
    };
    let magnitude = u64::from_str_radix(digits, radix)
        .map_err(|_| PolicyError::at(at, "not an integer (decimal, 0x hex or 0 octal)"))?;
    if negative && !signed {
        return Err(PolicyError::at(at, "negative, and the argument is unsigned"));
    }
    let bits = 8 * size.clamp(1, 8);
    let out_of_range = || PolicyError::at(at, format!("out of range for a {bits}-bit argument"));
    if !signed {
        if bits < 64 && magnitude >> bits != 0 {
            return Err(out_of_range());
        }
        return Ok(magnitude);
    }
    // The signed range: -2^(bits-1) ..= 2^(bits-1) - 1.
    let limit = 1u64 << (bits - 1);
    if (negative && magnitude > limit) || (!negative && magnitude >= limit) {
        return Err(out_of_range());
    }
    Ok(if negative { (magnitude as i64).wrapping_neg() as u64 } else { magnitude })
}

fn pid_filter(at: &str, f: &PidFilter) -> Result<PidFilterSpec, PolicyError> {
    if f.values.is_empty() {
        return Err(PolicyError::at(format!("{at}.values"), "at least one pid"));
    }
    if f.values.len() > SELECTOR_PIDS {
        return Err(PolicyError::at(format!("{at}.values"), format!("at most {SELECTOR_PIDS} pids")));
    }
    let mut spec = PidFilterSpec {
        op: match f.operator {
            InOperator::In => OP_IN,
            InOperator::NotIn => OP_NOT_IN,
        },
        flags: if f.is_namespace_pid { PID_NAMESPACE } else { 0 } | if f.follow_forks { PID_FOLLOW_FORKS } else { 0 },
        nvalues: f.values.len() as u8,
        ..Default::default()
    };
    spec.values[..f.values.len()].copy_from_slice(&f.values);
    Ok(spec)
}

fn namespace_filter(
    at: &str,
    f: &NamespaceFilter,
    kernel: &dyn crate::compile::KernelView,
) -> Result<NamespaceFilterSpec, PolicyError> {
    if f.values.is_empty() {
        return Err(PolicyError::at(format!("{at}.values"), "at least one value"));
    }
    if f.values.len() > NAMESPACE_VALUES {
        return Err(PolicyError::at(format!("{at}.values"), format!("at most {NAMESPACE_VALUES} values")));
    }
    let mut spec = NamespaceFilterSpec {
        op: match f.operator {
            InOperator::In => OP_IN,
            InOperator::NotIn => OP_NOT_IN,
        },
        kind: namespace_index(f.namespace) as u8,
        nvalues: f.values.len() as u8,
        ..Default::default()
    };
    for (k, v) in f.values.iter().enumerate() {
        let here = format!("{at}.values[{k}]");
        spec.values[k] = if v == "host_ns" {
            kernel.host_namespace(f.namespace).map_err(|e| PolicyError::at(&here, format!("host_ns: {e}")))?
        } else {
            v.trim().parse::<u32>().map_err(|_| PolicyError::at(&here, "a namespace inode number, or host_ns"))?
        };
    }
    Ok(spec)
}

/// `matchNamespaceChanges`: its values are namespace kinds, as
/// `matchNamespaces` spells them.
fn namespace_change(at: &str, f: &ChangeFilter) -> Result<NamespaceChangeSpec, PolicyError> {
    if f.values.is_empty() {
        return Err(PolicyError::at(format!("{at}.values"), "at least one namespace"));
    }
    let mut kinds = 0u16;
    for (k, v) in f.values.iter().enumerate() {
        let kind: NamespaceName = serde_yaml::from_str(v.trim()).map_err(|_| {
            PolicyError::at(
                format!("{at}.values[{k}]"),
                "a namespace: Uts, Ipc, Mnt, Pid, PidForChildren, Net, Time, TimeForChildren, Cgroup or User",
            )
        })?;
        kinds |= 1 << namespace_index(kind);
    }
    Ok(NamespaceChangeSpec {
        op: match f.operator {
            InOperator::In => OP_IN,
            InOperator::NotIn => OP_NOT_IN,
        },
        _pad: 0,
        kinds,
        _pad2: 0,
    })
}

/// The kernel's `NS_*` index of a namespace kind.
pub fn namespace_index(n: NamespaceName) -> usize {
    use NamespaceName::*;
    match n {
        Uts => NS_UTS,
        Ipc => NS_IPC,
        Mnt => NS_MNT,
        Pid => NS_PID,
        PidForChildren => NS_PID_FOR_CHILDREN,
        Net => NS_NET,
        Time => NS_TIME,
        TimeForChildren => NS_TIME_FOR_CHILDREN,
        Cgroup => NS_CGROUP,
        User => NS_USER,
    }
}

/// Capability names as Tetragon's enum spells them, by number (capability
/// 1 has no `CAP_` prefix there).
pub const CAPABILITY_NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

fn capability_filter(at: &str, f: &CapabilityFilter) -> Result<CapabilityFilterSpec, PolicyError> {
    if f.values.is_empty() {
        return Err(PolicyError::at(format!("{at}.values"), "at least one capability"));
    }
    let mut mask = 0u64;
    for (k, v) in f.values.iter().enumerate() {
        let upper = v.trim().to_ascii_uppercase();
        let bit = CAPABILITY_NAMES.iter().position(|n| *n == upper).ok_or_else(|| {
            PolicyError::at(
                format!("{at}.values[{k}]"),
                "not a capability name (CAP_SYS_ADMIN, …; capability 1 is DAC_OVERRIDE)",
            )
        })?;
        mask |= 1 << bit;
    }
    Ok(CapabilityFilterSpec {
        op: match f.operator {
            InOperator::In => OP_IN,
            InOperator::NotIn => OP_NOT_IN,
        },
        set: match f.set {
            CapabilitySet::Effective => CAPS_EFFECTIVE,
            CapabilitySet::Inheritable => CAPS_INHERITABLE,
            CapabilitySet::Permitted => CAPS_PERMITTED,
        },
        namespace_only: u8::from(f.is_namespace_capability),
        _pad: [0; 5],
        mask,
    })
}

fn binary_filter(at: &str, f: &BinaryFilter, strings: &mut Vec<StringFilter>) -> Result<BinaryFilterSpec, PolicyError> {
    if f.follow_children && !matches!(f.operator, BinaryOperator::In | BinaryOperator::NotIn) {
        return Err(PolicyError::at(format!("{at}.followChildren"), "goes with In and NotIn only, as in Tetragon"));
    }
    // Tetragon ignores a filter with no values.
    if f.values.is_empty() {
        return Ok(BinaryFilterSpec::default());
    }
    let (op, max) = match f.operator {
        BinaryOperator::In => (OP_STR_EQUAL, STRING_EQUAL_MAX),
        BinaryOperator::NotIn => (OP_STR_NOT_EQUAL, STRING_EQUAL_MAX),
        BinaryOperator::Prefix => (OP_PREFIX, STRING_PREFIX_MAX),
        BinaryOperator::NotPrefix => (OP_NOT_PREFIX, STRING_PREFIX_MAX),
        BinaryOperator::Postfix => (OP_POSTFIX, STRING_POSTFIX_MAX),
        BinaryOperator::NotPostfix => (OP_NOT_POSTFIX, STRING_POSTFIX_MAX),
    };
    let strings = string_filter(at, op, max, &f.values, strings)?;
    Ok(BinaryFilterSpec { op, follow: u8::from(f.follow_children), _pad: [0; 2], strings })
}

/// A `rateLimit` as Tetragon reads it: an integer with an optional unit,
/// `s` (the default), `m` or `h`, upper or lower case; in milliseconds,
/// capped at 2^32 - 1.
fn rate_limit_ms(at: &str, text: &str) -> Result<u32, PolicyError> {
    let t = text.trim();
    let (digits, unit_ms) = match t.chars().last() {
        Some('s' | 'S') => (&t[..t.len() - 1], 1_000u64),
        Some('m' | 'M') => (&t[..t.len() - 1], 60_000),
        Some('h' | 'H') => (&t[..t.len() - 1], 3_600_000),
        _ => (t, 1_000),
    };
    let n: u64 = digits.parse().map_err(|_| PolicyError::at(at, "an integer with an optional s, m or h"))?;
    if n == 0 {
        return Err(PolicyError::at(at, "at least 1"));
    }
    Ok(n.saturating_mul(unit_ms).min(u64::from(u32::MAX)) as u32)
}

fn actions(
    at: &str,
    list: &[crate::schema::Action],
    shape: &HookShape<'_>,
) -> Result<([ActionSpec; SELECTOR_ACTIONS], u8), PolicyError> {
    let mut out = [ActionSpec::default(); SELECTOR_ACTIONS];
    if list.len() > SELECTOR_ACTIONS {
        return Err(PolicyError::at(at, format!("at most {SELECTOR_ACTIONS} actions")));
    }
    for (k, a) in list.iter().enumerate() {
        let here = format!("{at}[{k}]");
        let rate_ms = match &a.rate_limit {
            Some(text) => rate_limit_ms(&format!("{here}.rateLimit"), text)?,
            None => 0,
        };
        let rate_scope = match a.rate_limit_scope.as_deref() {
            None | Some("thread") => RATE_SCOPE_THREAD,
            Some("process") => RATE_SCOPE_PROCESS,
            Some("global") => RATE_SCOPE_GLOBAL,
            Some(_) => {
                return Err(PolicyError::at(format!("{here}.rateLimitScope"), "thread, process or global"));
            }
        };
        if a.rate_limit_scope.is_some() && a.rate_limit.is_none() {
            return Err(PolicyError::at(format!("{here}.rateLimitScope"), "goes with rateLimit"));
        }
        let stacks =
            if a.kernel_stack_trace { STACK_KERNEL } else { 0 } | if a.user_stack_trace { STACK_USER } else { 0 };
        if stacks != 0 {
            // (`validate` refused them on actions other than Post.) Tetragon's
            // events carry stacks on kprobes only.
            let field = if a.kernel_stack_trace { "kernelStackTrace" } else { "userStackTrace" };
            if shape.kind != "kprobe" {
                return Err(PolicyError::at(
                    format!("{here}.{field}"),
                    format!("stack traces are for kprobes, not a {}", shape.kind),
                ));
            }
        }
        if a.ima_hash {
            return Err(PolicyError::at(format!("{here}.imaHash"), "not supported by Vigil yet"));
        }
        out[k] = match a.action {
            ActionKind::Post => ActionSpec { kind: ACTION_POST, rate_ms, rate_scope, stacks, ..Default::default() },
            ActionKind::NoPost => ActionSpec { kind: ACTION_NOPOST, ..Default::default() },
            ActionKind::Sigkill => ActionSpec { kind: ACTION_SIGKILL, signal: 9, ..Default::default() },
            ActionKind::Signal => {
                let signal = a.arg_sig.unwrap_or(0);
                if !(1..=64).contains(&signal) {
                    return Err(PolicyError::at(format!("{here}.argSig"), "a signal number, 1 to 64"));
                }
                ActionSpec { kind: ACTION_SIGNAL, signal, ..Default::default() }
            }
            ActionKind::Override if shape.kind != "kprobe" => {
                return Err(PolicyError::at(
                    format!("{here}.action"),
                    format!("Override is for kprobes, not a {}", shape.kind),
                ));
            }
            ActionKind::Override if at.ends_with("matchReturnActions") => {
                return Err(PolicyError::at(
                    format!("{here}.action"),
                    "Override acts at the call's entry: it goes in matchActions",
                ));
            }
            ActionKind::Override => {
                let error =
                    a.arg_error.ok_or_else(|| PolicyError::at(format!("{here}.argError"), "required for Override"))?;
                ActionSpec { kind: ACTION_OVERRIDE, signal: error as u32, ..Default::default() }
            }
            ActionKind::GetUrl | ActionKind::DnsLookup => {
                return Err(PolicyError::at(
                    format!("{here}.action"),
                    "GetUrl and DnsLookup are out of scope in Vigil",
                ));
            }
            _ => return Err(PolicyError::at(format!("{here}.action"), "not supported by Vigil yet")),
        };
    }
    Ok((out, list.len() as u8))
}

/// A policy's mode, as Tetragon has it: one without enforcement actions
/// is monitor-only; one with them enforces unless its `policy-mode`
/// option says `monitor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    Monitor,
    MonitorOnly,
}

/// The option that sets a policy's initial mode.
pub const MODE_OPTION: &str = "policy-mode";

pub fn mode_of(policy: &crate::TracingPolicy) -> Result<Mode, PolicyError> {
    let spec = &policy.spec;
    let selectors = spec
        .kprobes
        .iter()
        .flat_map(|k| &k.selectors)
        .chain(spec.tracepoints.iter().flat_map(|t| &t.selectors))
        .chain(spec.uprobes.iter().flat_map(|u| &u.selectors));
    let enforces = selectors.flat_map(|s| s.match_actions.iter().chain(&s.match_return_actions)).any(|a| {
        matches!(
            a.action,
            ActionKind::Sigkill
                | ActionKind::Signal
                | ActionKind::Override
                | ActionKind::NotifyEnforcer
                | ActionKind::Set
        )
    });
    let mut mode = if enforces { Mode::Enforce } else { Mode::MonitorOnly };
    for (i, o) in spec.options.iter().enumerate() {
        if o.name != MODE_OPTION {
            continue;
        }
        let asked = match o.value.as_str() {
            "enforce" => Mode::Enforce,
            "monitor" => Mode::Monitor,
            _ => return Err(PolicyError::at(format!("spec.options[{i}].value"), "policy-mode is enforce or monitor")),
        };
        if enforces {
            mode = asked;
        }
    }
    Ok(mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_parse_as_tetragon_reads_them() {
        assert_eq!(int_value("v", "0x10", false, 8).unwrap(), 16);
        assert_eq!(int_value("v", "010", false, 8).unwrap(), 8);
        assert_eq!(int_value("v", "0", false, 8).unwrap(), 0);
        assert_eq!(int_value("v", "-1", true, 8).unwrap(), u64::MAX);
        assert_eq!(int_value("v", "-100", true, 4).unwrap(), (-100i64) as u64);
        assert_eq!(int_value("v", "-9223372036854775808", true, 8).unwrap(), 1 << 63);
        assert!(int_value("v", "-1", false, 8).unwrap_err().reason.contains("unsigned"));
        assert!(int_value("v", "12a", false, 8).unwrap_err().reason.contains("not an integer"));
        assert!(int_value("v", "9223372036854775808", true, 8).is_err());
        assert_eq!(int_value("v", "4294967296", false, 4).unwrap_err().reason, "out of range for a 32-bit argument");
        assert!(int_value("v", "-129", true, 1).is_err());
        assert_eq!(int_value("v", "-128", true, 1).unwrap(), (-128i64) as u64);
        assert!(int_value("v", "128", true, 1).is_err());
    }

    #[test]
    fn rate_limits_read_as_tetragon_reads_them() {
        assert_eq!(rate_limit_ms("r", "5"), Ok(5_000));
        assert_eq!(rate_limit_ms("r", "2m"), Ok(120_000));
        assert_eq!(rate_limit_ms("r", "1H"), Ok(3_600_000));
        assert_eq!(rate_limit_ms("r", "100000h"), Ok(u32::MAX));
        assert_eq!(rate_limit_ms("r", "1d").unwrap_err().reason, "an integer with an optional s, m or h");
        assert!(rate_limit_ms("r", "0s").is_err());
    }

    #[test]
    fn keys_carry_the_filter_the_length_and_the_reversed_suffix() {
        let k = string_key(7, OP_STR_EQUAL, b"ab");
        assert_eq!(&k.data[..8], &[0, 0, 0, 7, 0, 2, b'a', b'b']);
        assert_eq!(k.prefix_len, 64);
        let k = string_key(7, OP_PREFIX, b"ab");
        assert_eq!((&k.data[..6], k.prefix_len), (&[0, 0, 0, 7, b'a', b'b'][..], 48));
        let k = string_key(1, OP_NOT_POSTFIX, b"abc");
        assert_eq!(&k.data[4..7], b"cba");
    }
}
