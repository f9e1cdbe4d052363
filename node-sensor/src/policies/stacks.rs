//! Stack traces as Tetragon's events carry them (`kernel_stack_trace`,
//! `user_stack_trace` on `process_kprobe`): each return address as a symbol
//! and the offset into it; the user stack's also with the module (the file
//! mapped there). Kernel symbols come from `/proc/kallsyms`, read once, on
//! the first stack; user symbols from the ELF file each address falls in,
//! found through the thread's `/proc/<tid>/maps` while it lives (a
//! process gone by then has no user frames). The addresses themselves are
//! shown only with `--expose-stack-addresses`, as in Tetragon. A user
//! address in a file without symbols for it keeps its module and file
//! offset, with no symbol (Tetragon leaves such frames out).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use object::{Object, ObjectSegment, ObjectSymbol, SymbolKind};
use parking_lot::Mutex;
use proto::tetragon::StackTraceEntry;

/// Largest ELF file read for its symbols.
const MAX_MODULE_BYTES: u64 = 256 << 20;
/// Function symbols kept across every cached module; past it the cache
/// starts over.
const MAX_CACHED_SYMBOLS: usize = 1 << 20;
/// Modules whose symbols are kept at once.
const MAX_CACHED_MODULES: usize = 64;
/// Longest `/proc/<tid>/maps` read.
const MAX_MAPS_BYTES: u64 = 8 << 20;

/// Text symbols of the kernel, sorted by address.
struct KernelSymbols {
    addrs: Vec<u64>,
    /// (start, length) of each name in `names`.
    spans: Vec<(u32, u32)>,
    names: String,
}

impl KernelSymbols {
    fn parse(text: &str) -> Result<KernelSymbols, String> {
        let mut entries: Vec<(u64, &str)> = Vec::new();
        for line in text.lines() {
            let mut f = line.split_whitespace();
            let (Some(addr), Some(kind), Some(name)) = (f.next(), f.next(), f.next()) else { continue };
            if !matches!(kind, "t" | "T" | "w" | "W") {
                continue;
            }
            if let Ok(addr) = u64::from_str_radix(addr, 16) {
                entries.push((addr, name));
            }
        }
        if entries.iter().all(|(a, _)| *a == 0) {
            return Err("/proc/kallsyms shows no addresses (kernel.kptr_restrict, or no CAP_SYSLOG)".into());
        }
        entries.sort_unstable_by_key(|(a, _)| *a);
        let mut out = KernelSymbols { addrs: Vec::new(), spans: Vec::new(), names: String::new() };
        for (addr, name) in entries {
            out.addrs.push(addr);
            out.spans.push((out.names.len() as u32, name.len() as u32));
            out.names.push_str(name);
        }
        Ok(out)
    }

    /// The symbol `addr` is in, and the offset into it.
    fn lookup(&self, addr: u64) -> Option<(&str, u64)> {
        let i = self.addrs.partition_point(|a| *a <= addr).checked_sub(1)?;
        let (start, len) = self.spans[i];
        let name = self.names.get(start as usize..(start + len) as usize)?;
        Some((name, addr - self.addrs[i]))
    }
}

/// One ELF file's function symbols and how its file offsets map to its
/// addresses.
#[derive(Default)]
struct ModuleSymbols {
    /// (file offset, file end, address) of each loadable segment.
    segments: Vec<(u64, u64, u64)>,
    /// (address, size, name), sorted by address.
    functions: Vec<(u64, u64, String)>,
}

impl ModuleSymbols {
    fn read(path: &Path) -> ModuleSymbols {
        let Ok(meta) = std::fs::metadata(path) else { return ModuleSymbols::default() };
        if meta.len() > MAX_MODULE_BYTES {
            return ModuleSymbols::default();
        }
        let Ok(data) = std::fs::read(path) else { return ModuleSymbols::default() };
        let Ok(file) = object::File::parse(&*data) else { return ModuleSymbols::default() };
        let segments = file
            .segments()
            .map(|s| {
                let (start, size) = s.file_range();
                (start, start + size, s.address())
            })
            .collect();
        let mut functions: Vec<(u64, u64, String)> = file
            .symbols()
            .chain(file.dynamic_symbols())
            .filter(|s| s.kind() == SymbolKind::Text && s.address() != 0)
            .filter_map(|s| Some((s.address(), s.size(), s.name().ok()?.to_owned())))
            .collect();
        functions.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        functions.dedup_by_key(|f| f.0);
        ModuleSymbols { segments, functions }
    }

    /// The function at file offset `at`, and the offset into it.
    fn lookup(&self, at: u64) -> Option<(&str, u64)> {
        let &(start, _, addr) = self.segments.iter().find(|(s, e, _)| (*s..*e).contains(&at))?;
        let vaddr = addr + (at - start);
        let i = self.functions.partition_point(|f| f.0 <= vaddr).checked_sub(1)?;
        let (fstart, size, name) = &self.functions[i];
        // A sized symbol ends where it says; an unsized one reaches the next.
        (*size == 0 || vaddr < fstart + size).then(|| (name.as_str(), vaddr - fstart))
    }
}

/// One line of `/proc/<tid>/maps` that maps a file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mapping {
    start: u64,
    end: u64,
    offset: u64,
    /// (device, inode): the file's identity, for the cache.
    file: (String, u64),
    path: String,
}

fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (range, _perms, offset, dev, inode) = (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
            let path: Vec<&str> = f.collect();
            let path = path.join(" ");
            if !path.starts_with('/') {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            Some(Mapping {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                offset: u64::from_str_radix(offset, 16).ok()?,
                file: (dev.to_owned(), inode.parse().ok()?),
                path,
            })
        })
        .collect()
}

#[derive(Default)]
struct ModuleCache {
    modules: HashMap<(String, u64), std::sync::Arc<ModuleSymbols>>,
    symbols: usize,
}

pub struct Symbolizer {
    procfs: PathBuf,
    expose_addresses: bool,
    kernel: OnceLock<Result<KernelSymbols, String>>,
    modules: Mutex<ModuleCache>,
}

impl Symbolizer {
    pub fn new(procfs: &Path, expose_addresses: bool) -> Symbolizer {
        Symbolizer {
            procfs: procfs.to_owned(),
            expose_addresses,
            kernel: OnceLock::new(),
            modules: Mutex::new(ModuleCache::default()),
        }
    }

    fn address(&self, addr: u64) -> u64 {
        if self.expose_addresses { addr } else { 0 }
    }

    /// The kernel stack's frames with their symbols (frames no symbol
    /// covers are left out, as Tetragon does).
    pub fn kernel_trace(&self, frames: &[u64]) -> Vec<StackTraceEntry> {
        // Every hook hit comes here: kallsyms is read only for the first
        // stack there is.
        if frames.is_empty() {
            return Vec::new();
        }
        let symbols = self.kernel.get_or_init(|| {
            let text = std::fs::read_to_string(self.procfs.join("kallsyms")).map_err(|e| e.to_string())?;
            let parsed = KernelSymbols::parse(&text);
            if let Err(e) = &parsed {
                tracing::warn!(error = %e, "kernel stack traces will have no frames");
            }
            parsed
        });
        let Ok(symbols) = symbols else { return Vec::new() };
        frames
            .iter()
            .filter(|a| **a != 0)
            .filter_map(|&addr| {
                let (symbol, offset) = symbols.lookup(addr)?;
                Some(StackTraceEntry {
                    address: self.address(addr),
                    offset,
                    symbol: symbol.to_owned(),
                    module: String::new(),
                })
            })
            .collect()
    }

    /// The user stack's frames of thread `tid` of process `pid`, while it
    /// lives: each with its module, and its symbol where the file has one.
    pub fn user_trace(&self, pid: u32, tid: u32, frames: &[u64]) -> Vec<StackTraceEntry> {
        if frames.is_empty() {
            return Vec::new();
        }
        let maps_path = self.procfs.join(pid.to_string()).join("task").join(tid.to_string()).join("maps");
        let Some(text) = read_bounded(&maps_path, MAX_MAPS_BYTES) else { return Vec::new() };
        let maps = parse_maps(&text);
        frames
            .iter()
            .filter(|a| **a != 0)
            .filter_map(|&addr| {
                let m = maps.iter().find(|m| (m.start..m.end).contains(&addr))?;
                let at = addr - m.start + m.offset;
                let module = self.module(pid, m);
                let (symbol, offset) = match module.lookup(at) {
                    Some((name, offset)) => (name.to_owned(), offset),
                    None => (String::new(), at),
                };
                Some(StackTraceEntry { address: self.address(addr), offset, symbol, module: m.path.clone() })
            })
            .collect()
    }

    /// The symbols of the file `m` maps, read through the process's root
    /// (its mount namespace's view), cached by device and inode.
    fn module(&self, pid: u32, m: &Mapping) -> std::sync::Arc<ModuleSymbols> {
        if let Some(found) = self.modules.lock().modules.get(&m.file) {
            return found.clone();
        }
        let path = self.procfs.join(pid.to_string()).join("root").join(m.path.trim_start_matches('/'));
        let read = std::sync::Arc::new(ModuleSymbols::read(&path));
        let mut cache = self.modules.lock();
        if cache.modules.len() >= MAX_CACHED_MODULES || cache.symbols + read.functions.len() > MAX_CACHED_SYMBOLS {
            *cache = ModuleCache::default();
        }
        cache.symbols += read.functions.len();
        cache.modules.insert(m.file.clone(), read.clone());
        read
    }
}

fn read_bounded(path: &Path, max: u64) -> Option<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path).ok()?.take(max).read_to_string(&mut text).ok()?;
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_addresses_resolve_to_the_symbol_below_them() {
        let text = "ffffffff81000000 T _stext\nffffffff81000100 t helper\nffffffff81000200 D data\n\
                    ffffffff81000300 T do_unlinkat\nffffffffc0000000 t mod_fn\t[ext4]\n";
        let k = KernelSymbols::parse(text).unwrap();
        assert_eq!(k.lookup(0xffff_ffff_8100_0310), Some(("do_unlinkat", 0x10)));
        assert_eq!(k.lookup(0xffff_ffff_8100_0250), Some(("helper", 0x150)), "data symbols are not functions");
        assert_eq!(k.lookup(0xffff_ffff_c000_0008), Some(("mod_fn", 8)));
        assert_eq!(k.lookup(0x10), None);
        assert!(KernelSymbols::parse("0000000000000000 T _stext\n").is_err(), "hidden addresses");
    }

    #[test]
    fn this_process_resolves_its_own_frames() {
        let s = Symbolizer::new(Path::new("/proc"), true);
        let maps = parse_maps(&std::fs::read_to_string("/proc/self/maps").unwrap());
        assert!(maps.iter().any(|m| m.path.contains("libc")), "{maps:?}");
        // An address inside libc's `getpid`, found through its symbols.
        let getpid = libc::getpid as *const () as usize as u64;
        let tid = std::fs::read_link("/proc/thread-self").unwrap();
        let tid: u32 = tid.file_name().unwrap().to_str().unwrap().parse().unwrap();
        let trace = s.user_trace(std::process::id(), tid, &[getpid + 1, 0]);
        assert_eq!(trace.len(), 1, "{trace:?}");
        assert!(trace[0].module.contains("libc"), "{:?}", trace[0]);
        assert!(trace[0].symbol.contains("getpid"), "{:?}", trace[0]);
        assert_eq!((trace[0].offset, trace[0].address), (1, getpid + 1));
        // Addresses hidden unless exposed; a thread gone gives nothing.
        let hidden = Symbolizer::new(Path::new("/proc"), false);
        assert_eq!(hidden.user_trace(std::process::id(), tid, &[getpid])[0].address, 0);
        assert!(hidden.user_trace(u32::MAX, u32::MAX, &[getpid]).is_empty());
    }
}
