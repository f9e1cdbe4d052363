//! The checks Tetragon makes after parsing (CRD rules and the sensors'
//! own), each naming the field's path. Sections refer to
//! POLICY-REFERENCE.md.

use crate::PolicyError;
use crate::schema::{ActionKind, Arg, ArgType, Kind, Selector, TracingPolicy};

const API_VERSION: &str = "cilium.io/v1alpha1";
/// Argument positions a kprobe or uprobe reads (section 3).
const MAX_ARG_INDEX: u32 = 4;
/// `args` and `data` together.
const MAX_ARGS: usize = 5;
const MAX_SELECTORS: usize = 5;
const MAX_ACTIONS: usize = 3;
const MAX_TAGS: usize = 16;
const MAX_MESSAGE: usize = 256;
/// `sizeArgIndex` is 1-based, at most 15.
const MAX_SIZE_ARG_INDEX: u32 = 15;

type Checked = Result<(), PolicyError>;

pub fn check(p: &TracingPolicy) -> Checked {
    if p.api_version != API_VERSION {
        return Err(PolicyError::at("apiVersion", format!("must be {API_VERSION}")));
    }
    check_name(&p.metadata.name)?;
    let spec = &p.spec;
    if p.kind == Kind::TracingPolicyNamespaced && spec.host_selector.is_some() {
        return Err(PolicyError::at("spec.hostSelector", "a TracingPolicyNamespaced may not set it"));
    }
    crate::scope::Scope::of(p)?;
    // Known to Tetragon, not built in Vigil yet: refused by name rather
    // than loaded in part.
    for (field, present) in [
        ("spec.fentries", spec.fentries.is_some()),
        ("spec.lsmhooks", spec.lsmhooks.is_some()),
        ("spec.usdts", spec.usdts.is_some()),
        ("spec.lists", spec.lists.is_some()),
        ("spec.enforcers", spec.enforcers.is_some()),
        ("spec.selectorsMacros", spec.selectors_macros.is_some()),
        ("spec.hostSelector", spec.host_selector.is_some()),
        ("spec.loader", spec.loader == Some(true)),
    ] {
        if present {
            return Err(PolicyError::at(field, "not supported by Vigil yet"));
        }
    }
    if spec.kprobes.is_empty() && spec.tracepoints.is_empty() && spec.uprobes.is_empty() {
        return Err(PolicyError::at("spec", "no hooks: give kprobes, tracepoints or uprobes"));
    }
    for (i, k) in spec.kprobes.iter().enumerate() {
        let at = format!("spec.kprobes[{i}]");
        if k.call.is_empty() {
            return Err(PolicyError::at(format!("{at}.call"), "required"));
        }
        if k.call.starts_with("list:") {
            return Err(PolicyError::at(format!("{at}.call"), "lists are not supported by Vigil yet"));
        }
        check_common(&at, &k.args, &k.data, k.message.as_deref(), &k.tags, &k.selectors, Hook::Kprobe)?;
        check_return(&at, k.is_return, k.return_arg.as_ref())?;
    }
    for (i, t) in spec.tracepoints.iter().enumerate() {
        let at = format!("spec.tracepoints[{i}]");
        if t.subsystem.is_empty() || t.event.is_empty() {
            let field = if t.subsystem.is_empty() { "subsystem" } else { "event" };
            return Err(PolicyError::at(format!("{at}.{field}"), "required"));
        }
        check_common(&at, &t.args, &[], t.message.as_deref(), &t.tags, &t.selectors, Hook::Tracepoint)?;
    }
    for (i, u) in spec.uprobes.iter().enumerate() {
        let at = format!("spec.uprobes[{i}]");
        if u.path.is_empty() {
            return Err(PolicyError::at(format!("{at}.path"), "required"));
        }
        let given = [!u.symbols.is_empty(), !u.offsets.is_empty(), !u.addrs.is_empty()];
        match given.iter().filter(|g| **g).count() {
            0 => return Err(PolicyError::at(&at, "give symbols, offsets or addrs")),
            1 => {}
            _ => return Err(PolicyError::at(&at, "symbols, offsets and addrs exclude each other")),
        }
        if !u.ref_ctr_offsets.is_empty() && u.ref_ctr_offsets.len() != u.symbols.len().max(u.offsets.len()) {
            return Err(PolicyError::at(format!("{at}.refCtrOffsets"), "must match symbols or offsets in length"));
        }
        if !u.binary_digests.is_empty() {
            return Err(PolicyError::at(format!("{at}.binaryDigests"), "not supported by Vigil yet"));
        }
        check_common(&at, &u.args, &u.data, u.message.as_deref(), &u.tags, &u.selectors, Hook::Uprobe)?;
        check_return(&at, u.is_return, u.return_arg.as_ref())?;
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hook {
    Kprobe,
    Tracepoint,
    Uprobe,
}

/// `metadata.name`: a DNS subdomain (it becomes `policy_name`).
fn check_name(name: &str) -> Checked {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(PolicyError::at(
            "metadata.name",
            "must be a DNS subdomain (lower-case letters, digits, '-' and '.', at most 253)",
        ))
    }
}

fn check_common(
    at: &str,
    args: &[Arg],
    data: &[Arg],
    message: Option<&str>,
    tags: &[String],
    selectors: &[Selector],
    hook: Hook,
) -> Checked {
    if hook != Hook::Tracepoint && args.len() + data.len() > MAX_ARGS {
        return Err(PolicyError::at(format!("{at}.args"), format!("args and data together: at most {MAX_ARGS}")));
    }
    if !data.is_empty() {
        return Err(PolicyError::at(format!("{at}.data"), "not supported by Vigil yet"));
    }
    for (j, a) in args.iter().enumerate() {
        check_arg(&format!("{at}.args[{j}]"), a, hook)?;
    }
    if let Some(m) = message
        && m.chars().count() < 2
    {
        return Err(PolicyError::at(format!("{at}.message"), "at least 2 characters"));
    }
    if let Some(m) = message
        && m.chars().count() > MAX_MESSAGE
    {
        return Err(PolicyError::at(format!("{at}.message"), format!("at most {MAX_MESSAGE} characters")));
    }
    if tags.len() > MAX_TAGS {
        return Err(PolicyError::at(format!("{at}.tags"), format!("at most {MAX_TAGS} tags")));
    }
    for (j, t) in tags.iter().enumerate() {
        if !(2..=128).contains(&t.chars().count()) {
            return Err(PolicyError::at(format!("{at}.tags[{j}]"), "2 to 128 characters"));
        }
    }
    if selectors.len() > MAX_SELECTORS {
        return Err(PolicyError::at(format!("{at}.selectors"), format!("at most {MAX_SELECTORS} selectors")));
    }
    for (j, s) in selectors.iter().enumerate() {
        check_selector(&format!("{at}.selectors[{j}]"), s, args)?;
    }
    Ok(())
}

fn check_arg(at: &str, a: &Arg, hook: Hook) -> Checked {
    let ty = format!("{at}.type");
    if hook != Hook::Tracepoint && a.index > MAX_ARG_INDEX {
        return Err(PolicyError::at(format!("{at}.index"), format!("at most {MAX_ARG_INDEX}")));
    }
    match (a.arg_type, hook) {
        (ArgType::ConstBuf, _) => return Err(PolicyError::at(ty, "const_buf cannot be given; it is derived")),
        (ArgType::Auto, Hook::Kprobe | Hook::Uprobe) => {
            return Err(PolicyError::at(ty, "required for kprobes and uprobes (auto is for tracepoints)"));
        }
        (ArgType::Syscall64, Hook::Kprobe | Hook::Uprobe) => {
            return Err(PolicyError::at(ty, "syscall64 is for tracepoints only"));
        }
        _ => {}
    }
    if a.size_arg_index > MAX_SIZE_ARG_INDEX {
        return Err(PolicyError::at(format!("{at}.sizeArgIndex"), format!("at most {MAX_SIZE_ARG_INDEX}")));
    }
    let buffer = matches!(a.arg_type, ArgType::CharBuf | ArgType::CharIovec);
    if a.size_arg_index > 0 && !buffer {
        return Err(PolicyError::at(format!("{at}.sizeArgIndex"), "only for char_buf and char_iovec"));
    }
    if a.return_copy && !buffer {
        return Err(PolicyError::at(format!("{at}.returnCopy"), "only for char_buf and char_iovec"));
    }
    if a.max_data && (a.arg_type != ArgType::CharBuf || a.return_copy) {
        return Err(PolicyError::at(format!("{at}.maxData"), "only for char_buf, and not with returnCopy"));
    }
    if a.source.is_some() {
        return Err(PolicyError::at(format!("{at}.source"), "only on data entries"));
    }
    for (field, given) in [("resolve", a.resolve.is_some()), ("btfType", a.btf_type.is_some())] {
        if given {
            return Err(PolicyError::at(format!("{at}.{field}"), "not supported by Vigil yet"));
        }
    }
    Ok(())
}

fn check_return(at: &str, is_return: bool, arg: Option<&Arg>) -> Checked {
    match (is_return, arg) {
        (true, None) => Err(PolicyError::at(format!("{at}.returnArg"), "required with return: true")),
        (true, Some(a)) => check_arg(&format!("{at}.returnArg"), a, Hook::Kprobe),
        (false, _) => Ok(()),
    }
}

fn check_selector(at: &str, s: &Selector, args: &[Arg]) -> Checked {
    for (j, f) in s.match_args.iter().enumerate() {
        let declared = args.iter().any(|a| a.index == f.index);
        let by_position = f.args.iter().all(|&i| (i as usize) < args.len());
        if f.args.is_empty() && !declared {
            return Err(PolicyError::at(format!("{at}.matchArgs[{j}].index"), "no declared argument has this index"));
        }
        if !by_position {
            return Err(PolicyError::at(format!("{at}.matchArgs[{j}].args"), "past the declared arguments"));
        }
    }
    if s.match_args.len() + s.match_data.len() > MAX_ARGS {
        return Err(PolicyError::at(format!("{at}.matchArgs"), format!("matchArgs and matchData: at most {MAX_ARGS}")));
    }
    if s.match_binaries.len() > 1 {
        return Err(PolicyError::at(format!("{at}.matchBinaries"), "at most 1 entry"));
    }
    if s.match_parent_binaries.len() > 1 {
        return Err(PolicyError::at(format!("{at}.matchParentBinaries"), "at most 1 entry"));
    }
    if !s.macros.is_empty() {
        return Err(PolicyError::at(format!("{at}.macros"), "not supported by Vigil yet"));
    }
    if s.match_workloads.is_some() {
        return Err(PolicyError::at(format!("{at}.matchWorkloads"), "not supported by Vigil yet"));
    }
    for (field, actions) in [("matchActions", &s.match_actions), ("matchReturnActions", &s.match_return_actions)] {
        if actions.len() > MAX_ACTIONS {
            return Err(PolicyError::at(format!("{at}.{field}"), format!("at most {MAX_ACTIONS} actions")));
        }
        for (j, a) in actions.iter().enumerate() {
            let here = format!("{at}.{field}[{j}]");
            if matches!(a.action, ActionKind::GetUrl | ActionKind::DnsLookup) {
                return Err(PolicyError::at(
                    format!("{here}.action"),
                    "GetUrl and DnsLookup are out of scope in Vigil",
                ));
            }
            if a.action != ActionKind::Post
                && (a.rate_limit.is_some() || a.kernel_stack_trace || a.user_stack_trace || a.ima_hash)
            {
                return Err(PolicyError::at(
                    &here,
                    "rateLimit, kernelStackTrace, userStackTrace and imaHash go with Post only",
                ));
            }
            if a.action == ActionKind::Signal && a.arg_sig.is_none() {
                return Err(PolicyError::at(format!("{here}.argSig"), "required for Signal"));
            }
        }
    }
    Ok(())
}
