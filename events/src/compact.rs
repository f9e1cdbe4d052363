//! `tetra getevents -o compact`: one line per event, byte-identical to the
//! real `tetra` (see `tests/compat/fixtures/compact-cases.json`), except
//! that the `🛑 CAP_SYS_ADMIN` trailer is printed exactly when
//! CAP_SYS_ADMIN is effective (tetra tests list positions, not values).

use std::fmt::Write as _;

use proto::Timestamp;
use proto::tetragon::get_events_response::Event;
use proto::tetragon::{
    CapabilitiesType, GetEventsResponse, KprobeArgument, Process, ProcessKprobe, ProcessTracepoint, ThrottleType,
    kprobe_argument::Arg,
};

/// Column the capability trailer is padded to, counting bytes like tetra.
const CAPS_PAD: usize = 120;

/// ANSI colours as `fatih/color` writes them.
#[derive(Clone, Copy)]
enum Color {
    Red = 31,
    Green = 32,
    Yellow = 33,
    Blue = 34,
    Magenta = 35,
    Cyan = 36,
}

/// How to render lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactOptions {
    pub color: bool,
    pub timestamps: bool,
}

struct Painter(bool);

impl Painter {
    fn paint(&self, c: Color, s: &str) -> String {
        if self.0 { format!("\x1b[{}m{s}\x1b[0m", c as u8) } else { s.to_owned() }
    }
}

/// Go's `unicode.IsPrint` for the characters that matter here: controls,
/// and invisible format characters, are not printable.
fn is_print(c: char) -> bool {
    !c.is_control()
        && !matches!(c, '\u{00ad}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{2064}' | '\u{feff}')
}

/// tetra quotes a value (Go `strconv.Quote`) when it holds whitespace or
/// an unprintable character, so every field stays one shell-like word.
pub fn quote_if_needed(s: &str) -> String {
    if !s.chars().any(|c| c.is_whitespace() || !is_print(c)) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{07}' => out.push_str("\\a"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{0b}' => out.push_str("\\v"),
            c if c == ' ' || is_print(c) => out.push(c),
            c if (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if (c as u32) < 0x10000 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out.push('"');
    out
}

/// Go's `fmt` `%*s`: right-aligns `s` in `width` characters (runes).
fn pad_left(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if n >= width { s.to_owned() } else { format!("{}{s}", " ".repeat(width - n)) }
}

fn cap_trailer(line: String, caps: &str) -> String {
    if caps.is_empty() {
        return line;
    }
    let padding = CAPS_PAD.saturating_sub(line.len());
    format!("{line} {}", pad_left(caps, padding))
}

struct Line<'a> {
    p: Painter,
    node: &'a str,
}

impl Line<'_> {
    fn head(&self, icon: &str, word: &str) -> String {
        self.p.paint(Color::Blue, &format!("{icon} {word:<7}"))
    }

    /// `source binary` and the capability trailer text.
    fn process_info(&self, process: &Process) -> (String, String) {
        let source = match &process.pod {
            Some(pod) => format!("{}/{}", pod.namespace, pod.name),
            None => self.node.to_owned(),
        };
        let source = self.p.paint(Color::Green, &quote_if_needed(&source));
        let binary = self.p.paint(Color::Magenta, &quote_if_needed(&process.binary));
        let admin = CapabilitiesType::CapSysAdmin as i32;
        let has_admin = process.cap.as_ref().is_some_and(|c| c.effective.contains(&admin));
        let caps = self.p.paint(Color::Magenta, if has_admin { "🛑 CAP_SYS_ADMIN" } else { "" });
        (format!("{source} {binary}"), caps)
    }

    fn args(&self, process: &Process) -> String {
        self.p.paint(Color::Cyan, &quote_if_needed(&process.arguments))
    }
}

fn arg(args: &[KprobeArgument], i: usize) -> Option<&Arg> {
    args.get(i).and_then(|a| a.arg.as_ref())
}

fn file_path(args: &[KprobeArgument], i: usize) -> Option<&str> {
    match arg(args, i)? {
        Arg::FileArg(f) => Some(&f.path),
        _ => None,
    }
}

fn string_arg(args: &[KprobeArgument], i: usize) -> &str {
    match arg(args, i) {
        Some(Arg::StringArg(s)) => s,
        _ => "",
    }
}

fn int_arg(args: &[KprobeArgument], i: usize) -> i32 {
    match arg(args, i) {
        Some(Arg::IntArg(v)) => *v,
        _ => 0,
    }
}

fn size_arg(args: &[KprobeArgument], i: usize) -> u64 {
    match arg(args, i) {
        Some(Arg::SizeArg(v)) => *v,
        _ => 0,
    }
}

/// Strips an architecture's syscall-wrapper prefix (`__x64_sys_write` →
/// `sys_write`).
fn cut_syscall_prefix(name: &str) -> &str {
    for prefix in ["__x64_", "__ia32_", "__arm64_", "__riscv_", "__se_", "__do_"] {
        if let Some(rest) = name.strip_prefix(prefix) {
            return rest;
        }
    }
    name
}

fn kprobe_line(l: &Line<'_>, k: &ProcessKprobe, process: &Process) -> String {
    let (info, caps) = l.process_info(process);
    let cyan = |s: &str| l.p.paint(Color::Cyan, s);
    let sock = |i: usize| match arg(&k.args, i) {
        Some(Arg::SockArg(s)) => cyan(&format!("tcp {}:{} -> {}:{}", s.saddr, s.sport, s.daddr, s.dport)),
        _ => cyan("tcp :0 -> :0"),
    };
    let line = match cut_syscall_prefix(&k.function_name) {
        "sys_write" | "sys_read" => {
            let (icon, word) = if k.function_name.ends_with("write") { ("📝", "write") } else { ("📚", "read") };
            let file = file_path(&k.args, 0).map(cyan).unwrap_or_default();
            let bytes = if k.args.len() > 2 { cyan(&format!("{} bytes", size_arg(&k.args, 2))) } else { String::new() };
            format!("{} {info} {file} {bytes}", l.head(icon, word))
        }
        "fd_install" => {
            let file = file_path(&k.args, 1).map(cyan).unwrap_or_default();
            format!("{} {info} {file}", l.head("📬", "open"))
        }
        "sys_openat" | "sys_open" => {
            let word = if k.function_name.ends_with("openat") { "openat" } else { "open" };
            let file = if k.args.len() > 1 { cyan(string_arg(&k.args, 1)) } else { String::new() };
            format!("{} {info} {file}", l.head("📬️", word))
        }
        "sys_close" => {
            let file = file_path(&k.args, 0).map(cyan).unwrap_or_default();
            format!("{} {info} {file}", l.head("📪", "close"))
        }
        "sys_mount" | "sys_pivot_root" => {
            let word = if k.function_name.ends_with("mount") { "mount" } else { "pivot_root" };
            let src = if !k.args.is_empty() { cyan(string_arg(&k.args, 0)) } else { String::new() };
            let dst = if k.args.len() > 1 { cyan(string_arg(&k.args, 1)) } else { String::new() };
            format!("{} {info} {src} {dst}", l.head("💾", word))
        }
        "sys_setuid" => {
            let uid = if !k.args.is_empty() { cyan(&int_arg(&k.args, 0).to_string()) } else { String::new() };
            format!("{} {info} {uid}", l.head("🔑", "setuid"))
        }
        "sys_clock_settime" => format!("{} {info}", l.head("⏰", "clock_settime")),
        "proc_exec_connector" => format!("{} {info}", l.head("🔧", "proc_exec_connector")),
        "sys_setns" => {
            let ns = match int_arg(&k.args, 1) {
                0 => "any",
                0x0200_0000 => "cgroup",
                0x0800_0000 => "ipc",
                0x4000_0000 => "net",
                0x0002_0000 => "mnt",
                0x2000_0000 => "pid",
                0x80 => "time",
                0x1000_0000 => "user",
                0x0400_0000 => "uts",
                _ => "",
            };
            format!("{} {info} {ns}", l.head("🔧", "setns"))
        }
        // As tetra: with two arguments, the first's file path (empty if it
        // is no file) and the mask or protection from the second.
        "security_file_permission" if k.args.len() > 1 => {
            let (icon, word) = match int_arg(&k.args, 1) {
                0x02 => ("📝", "write"),
                0x04 => ("📚", "read"),
                _ => ("❓", "security_file_permission"),
            };
            format!("{} {info} {}", l.head(icon, word), cyan(file_path(&k.args, 0).unwrap_or_default()))
        }
        "security_mmap_file" if k.args.len() > 1 => {
            let prot = match arg(&k.args, 1) {
                Some(Arg::UintArg(p)) => *p,
                _ => 0,
            };
            let mut tag = "mmap-".to_owned();
            for (bit, c) in [(0x01, 'r'), (0x02, 'w'), (0x04, 'x')] {
                if prot & bit != 0 {
                    tag.push(c);
                }
            }
            format!("{} {info} {}", l.head("📝", &tag), cyan(file_path(&k.args, 0).unwrap_or_default()))
        }
        "security_path_truncate" if !k.args.is_empty() => {
            let path = match arg(&k.args, 0) {
                Some(Arg::PathArg(p)) => p.path.as_str(),
                _ => "",
            };
            format!("{} {info} {}", l.head("📝", "truncate"), cyan(path))
        }
        "security_file_permission" | "security_mmap_file" | "security_path_truncate" => {
            format!("{} {info} ", l.head("❓", cut_syscall_prefix(&k.function_name)))
        }
        "tcp_connect" => format!("{} {info} {}", l.head("🔌", "connect"), sock(0)),
        "tcp_close" => format!("{} {info} {}", l.head("\u{1F9F9}", "close"), sock(0)),
        "tcp_sendmsg" => {
            format!("{} {info} {} bytes {}", l.head("📤", "sendmsg"), sock(0), int_arg(&k.args, 1))
        }
        _ => format!("{} {info} {}", l.head("❓", "syscall"), k.function_name),
    };
    cap_trailer(line, &caps)
}

/// The ABI a syscall number belongs to when the event does not say.
const DEFAULT_ABI: &str = "x64";

/// A raw syscall as tetra prints it: the name from the first argument's
/// number (a `long_arg`, or a `syscall_id` with its ABI), then each of the
/// syscall's declared arguments with the event's value for it, `?` where
/// the event has none; `unknown` for a number the table does not know
/// (only x86-64's is built in).
fn raw_syscall(args: &[KprobeArgument]) -> String {
    let (id, abi) = match arg(args, 0) {
        Some(Arg::LongArg(id)) => (*id, DEFAULT_ABI),
        Some(Arg::SyscallId(s)) => (i64::from(s.id), s.abi.as_str()),
        _ => (-1, DEFAULT_ABI),
    };
    let table = crate::syscalls_x64::SYSCALLS_X64;
    let found = match u32::try_from(id) {
        Ok(id) if abi == DEFAULT_ABI => table.binary_search_by_key(&id, |s| s.nr).ok().map(|i| &table[i]),
        _ => None,
    };
    let Some(syscall) = found else {
        return "unknown".to_owned();
    };
    if syscall.args.is_empty() {
        return syscall.name.to_owned();
    }
    let name = syscall.name;
    let shown: Vec<String> = syscall
        .args
        .iter()
        .enumerate()
        .map(|(j, (ctype, pname))| match arg(args, j + 1) {
            Some(Arg::SizeArg(v)) if ctype.ends_with('*') => format!("{ctype}{pname}=0x{v:x}"),
            Some(Arg::SizeArg(v)) => format!("{ctype} {pname}={v}"),
            _ => format!("{ctype} {pname}=?"),
        })
        .collect();
    format!("{name}({})", shown.join(", "))
}

fn tracepoint_line(l: &Line<'_>, t: &ProcessTracepoint, process: &Process) -> String {
    let (info, caps) = l.process_info(process);
    let line = if t.subsys == "raw_syscalls" && t.event == "sys_enter" {
        format!("{} {info} {}", l.head("☎ ", "syscall"), raw_syscall(&t.args))
    } else {
        format!("{} {info} {} {}", l.head("⁉️", "tracepoint"), t.subsys, t.event)
    };
    cap_trailer(line, &caps)
}

/// The compact line for `event` without the trailing newline, or `None`
/// for kinds tetra does not print (such as `rate_limit_info`) or events
/// missing their process.
pub fn render(event: &GetEventsResponse, opts: CompactOptions) -> Option<String> {
    let l = Line { p: Painter(opts.color), node: &event.node_name };
    let line = match event.event.as_ref()? {
        Event::ProcessExec(e) => {
            let process = e.process.as_ref()?;
            let (info, caps) = l.process_info(process);
            cap_trailer(format!("{} {info} {}", l.head("🚀", "process"), l.args(process)), &caps)
        }
        Event::ProcessExit(e) => {
            let process = e.process.as_ref()?;
            let (info, caps) = l.process_info(process);
            let status = if e.signal.is_empty() { e.status.to_string() } else { e.signal.clone() };
            let status = l.p.paint(Color::Red, &status);
            cap_trailer(format!("{} {info} {} {status}", l.head("💥", "exit"), l.args(process)), &caps)
        }
        Event::ProcessKprobe(k) => kprobe_line(&l, k, k.process.as_ref()?),
        Event::ProcessTracepoint(t) => tracepoint_line(&l, t, t.process.as_ref()?),
        Event::ProcessUprobe(u) => {
            let (info, caps) = l.process_info(u.process.as_ref()?);
            cap_trailer(format!("{} {info} {} {}", l.head("🕵️", "uprobe"), u.path, u.symbol), &caps)
        }
        Event::ProcessLsm(m) => {
            let (info, caps) = l.process_info(m.process.as_ref()?);
            cap_trailer(format!("{} {info} {}", l.head("🔒", "LSM"), m.function_name), &caps)
        }
        Event::ProcessUsdt(u) => {
            let (info, caps) = l.process_info(u.process.as_ref()?);
            cap_trailer(format!("{} {info} {} {} {}", l.head("🕵️", "usdt"), u.path, u.provider, u.name), &caps)
        }
        Event::ProcessLoader(x) => {
            let (info, caps) = l.process_info(x.process.as_ref()?);
            let buildid: String = x.buildid.iter().map(|b| format!("{b:02x}")).collect();
            let buildid = if buildid.is_empty() { buildid } else { buildid + " " };
            cap_trailer(
                format!("{} {info} {buildid}{}", l.head("🧬", "loader"), l.p.paint(Color::Yellow, &x.path)),
                &caps,
            )
        }
        Event::ProcessThrottle(t) => {
            let kind = match ThrottleType::try_from(t.r#type) {
                Ok(ThrottleType::ThrottleStart) => l.p.paint(Color::Red, "START"),
                Ok(ThrottleType::ThrottleStop) => l.p.paint(Color::Green, "STOP "),
                _ => String::new(),
            };
            format!("{} {kind} {}", l.p.paint(Color::Red, &format!("🧬 {:<7}", "throttle")), t.cgroup)
        }
        Event::Test(_) => "TEST EVENT".to_owned(),
        Event::RateLimitInfo(_) => return None,
    };
    Some(if opts.timestamps {
        let ts = event.time.unwrap_or(Timestamp { seconds: -62_135_596_800, nanos: 0 });
        format!("{} {line}", ts.to_rfc3339_nanos())
    } else {
        line
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_syscall_table_is_ordered_for_its_search() {
        let t = crate::syscalls_x64::SYSCALLS_X64;
        assert!(t.windows(2).all(|w| w[0].nr < w[1].nr));
        assert_eq!(t.iter().find(|s| s.name == "openat").map(|s| s.nr), Some(257));
    }

    #[test]
    fn raw_syscalls_name_their_arguments_as_tetra_does() {
        use proto::tetragon::SyscallId;
        let id = |n| KprobeArgument {
            arg: Some(Arg::SyscallId(SyscallId { id: n, abi: "x64".into() })),
            label: String::new(),
        };
        let size = |v| KprobeArgument { arg: Some(Arg::SizeArg(v)), label: String::new() };
        assert_eq!(raw_syscall(&[id(12)]), "brk(unsigned long brk=?)");
        assert_eq!(raw_syscall(&[id(12), size(4096)]), "brk(unsigned long brk=4096)");
        assert_eq!(
            raw_syscall(&[id(218), size(255)]),
            "set_tid_address(int *tidptr=0xff)",
            "a pointer in hex, no space"
        );
        assert_eq!(raw_syscall(&[id(102)]), "getuid");
        assert_eq!(raw_syscall(&[id(9999)]), "unknown");
        let i386 = KprobeArgument {
            arg: Some(Arg::SyscallId(SyscallId { id: 12, abi: "i386".into() })),
            label: String::new(),
        };
        assert_eq!(raw_syscall(&[i386]), "unknown", "only x86-64's table is built in");
        assert_eq!(raw_syscall(&[]), "unknown");
    }

    #[test]
    fn quoting_matches_go() {
        assert_eq!(quote_if_needed("--version"), "--version");
        assert_eq!(quote_if_needed("quote\"inside"), "quote\"inside");
        assert_eq!(quote_if_needed("unicode-é-ü"), "unicode-é-ü");
        assert_eq!(quote_if_needed("a b"), "\"a b\"");
        assert_eq!(quote_if_needed("tab\there"), "\"tab\\there\"");
        assert_eq!(quote_if_needed("ctrl\x1b[31mred"), "\"ctrl\\x1b[31mred\"");
        assert_eq!(quote_if_needed("-c \"x y\""), "\"-c \\\"x y\\\"\"");
    }
}
