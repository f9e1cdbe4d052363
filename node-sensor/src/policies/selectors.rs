//! The kernel's side of hooks' selectors: each hook's compiled selectors
//! (`SELECTORS`), their string values (`STRINGS`, numbered per filter
//! across all hooks) and their action counters (`ACTION_COUNTS`, per CPU).
//! A hook's entries go in before it is attached and out after it is
//! detached; a failed install leaves nothing behind.

use std::collections::HashMap;

use aya::Ebpf;
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuHashMap, PerCpuValues};
use node_sensor_common::{
    ActionCounts, BINARY_SIZE, Binary, COUNTS_PER_SELECTOR, SELECT_MONITOR, SELECTORS_PER_HOOK, STRING_KEY_DATA,
    SelectorSet, StringKey,
};
use policy::select::Selectors;

/// What one hook has in the maps, to take it out again.
struct Installed {
    set: SelectorSet,
    keys: Vec<StringKey>,
}

pub struct SelectorMaps {
    selectors: BpfHashMap<MapData, u32, SelectorSet>,
    counts: PerCpuHashMap<MapData, u32, ActionCounts>,
    strings: LpmTrie<MapData, [u8; STRING_KEY_DATA], u8>,
    /// The next string filter's number (numbers are not reused: 2^32
    /// filters outlast any sensor).
    next_filter: u32,
    installed: HashMap<u32, Installed>,
}

/// One selector's counts, as `TracingPolicyActionCounters` has them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SelectorCounts {
    pub post: u64,
    pub signal: u64,
    pub monitor_signal: u64,
    pub nopost: u64,
    /// Held back by a `rateLimit` (Tetragon's counters have no such field).
    pub rate_limited: u64,
    pub overrides: u64,
    pub monitor_overrides: u64,
}

impl SelectorMaps {
    /// Takes the maps out of the object; `None` names the missing one.
    pub fn take(ebpf: &mut Ebpf) -> Result<SelectorMaps, String> {
        let mut take = |name: &str| ebpf.take_map(name).ok_or_else(|| format!("BPF map `{name}` is missing"));
        let selectors = take("SELECTORS")?;
        let counts = take("ACTION_COUNTS")?;
        let strings = take("STRINGS")?;
        Ok(SelectorMaps {
            selectors: BpfHashMap::try_from(selectors).map_err(|e| format!("BPF map `SELECTORS`: {e}"))?,
            counts: PerCpuHashMap::try_from(counts).map_err(|e| format!("BPF map `ACTION_COUNTS`: {e}"))?,
            strings: LpmTrie::try_from(strings).map_err(|e| format!("BPF map `STRINGS`: {e}"))?,
            next_filter: 0,
            installed: HashMap::new(),
        })
    }

    /// Puts hook `id`'s selectors in, in `monitor` mode or not.
    pub fn install(&mut self, id: u32, selectors: &Selectors, monitor: bool) -> Result<(), String> {
        let first = self.next_filter;
        let filters = u32::try_from(selectors.strings.len()).map_err(|_| "too many string filters".to_owned())?;
        self.next_filter = self.next_filter.checked_add(filters).ok_or("string filter numbers are used up")?;
        let mut set = selectors.numbered(first);
        set.flags = mode_flags(set.flags, monitor);
        let mut installed = Installed { set, keys: Vec::new() };
        let result = self.fill(id, selectors.keys(first), &mut installed);
        if result.is_err() {
            self.clear(id, &installed);
        } else {
            self.installed.insert(id, installed);
        }
        result
    }

    fn fill(&mut self, id: u32, keys: Vec<StringKey>, installed: &mut Installed) -> Result<(), String> {
        for key in keys {
            self.strings
                .insert(&Key::new(key.prefix_len, key.data), 1, 0)
                .map_err(|e| format!("adding a string value to BPF map `STRINGS`: {e}"))?;
            installed.keys.push(key);
        }
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| format!("counting CPUs: {e}"))?;
        let zeros =
            PerCpuValues::try_from(vec![ActionCounts::default(); cpus]).map_err(|e| format!("action counters: {e}"))?;
        self.counts.insert(id, zeros, 0).map_err(|e| format!("adding to BPF map `ACTION_COUNTS`: {e}"))?;
        self.selectors.insert(id, installed.set, 0).map_err(|e| format!("adding to BPF map `SELECTORS`: {e}"))?;
        Ok(())
    }

    fn clear(&mut self, id: u32, installed: &Installed) {
        // Missing entries are what a failed install did not reach.
        let _ = self.selectors.remove(&id);
        let _ = self.counts.remove(&id);
        for key in &installed.keys {
            let _ = self.strings.remove(&Key::new(key.prefix_len, key.data));
        }
    }

    /// Takes hook `id`'s selectors out (a hook without any: a no-op).
    pub fn remove(&mut self, id: u32) {
        if let Some(installed) = self.installed.remove(&id) {
            self.clear(id, &installed);
        }
    }

    /// Switches hook `id` between enforcing and monitoring.
    pub fn set_monitor(&mut self, id: u32, monitor: bool) -> Result<(), String> {
        let Some(installed) = self.installed.get_mut(&id) else {
            return Ok(());
        };
        installed.set.flags = mode_flags(installed.set.flags, monitor);
        self.selectors.insert(id, installed.set, 0).map_err(|e| format!("updating BPF map `SELECTORS`: {e}"))
    }

    /// Hook `id`'s counts per selector, summed over CPUs (empty for a
    /// hook without selectors).
    pub fn counts(&self, id: u32) -> Vec<SelectorCounts> {
        let Some(installed) = self.installed.get(&id) else {
            return Vec::new();
        };
        let mut out = vec![SelectorCounts::default(); (installed.set.count as usize).min(SELECTORS_PER_HOOK)];
        if let Ok(per_cpu) = self.counts.get(&id, 0) {
            for cpu in per_cpu.iter() {
                for (s, c) in out.iter_mut().enumerate() {
                    let at = |k: usize| cpu.counts[s * COUNTS_PER_SELECTOR + k];
                    c.post += at(node_sensor_common::COUNT_POST);
                    c.signal += at(node_sensor_common::COUNT_SIGNAL);
                    c.monitor_signal += at(node_sensor_common::COUNT_MONITOR_SIGNAL);
                    c.nopost += at(node_sensor_common::COUNT_NOPOST);
                    c.rate_limited += at(node_sensor_common::COUNT_RATE_LIMITED);
                    c.overrides += at(node_sensor_common::COUNT_OVERRIDE);
                    c.monitor_overrides += at(node_sensor_common::COUNT_MONITOR_OVERRIDE);
                }
            }
        }
        out
    }
}

fn mode_flags(flags: u32, monitor: bool) -> u32 {
    if monitor { flags | SELECT_MONITOR } else { flags & !SELECT_MONITOR }
}

/// `BPF_NOEXIST`: add, never replace.
const BPF_NOEXIST: u64 = 1;

/// Puts the binaries of the processes running now into `BINARIES` (the
/// exec program keeps it from then on), so `matchBinaries` knows them: each
/// one's executable link, as the process cache reads it. An entry the exec
/// or fork program made meanwhile is newer and stays. Returns how many went
/// in.
pub fn seed_binaries(ebpf: &mut Ebpf, proc_root: &std::path::Path) -> Result<usize, String> {
    let map = ebpf.map_mut("BINARIES").ok_or("BPF map `BINARIES` is missing")?;
    let mut binaries: BpfHashMap<&mut MapData, u32, Binary> =
        BpfHashMap::try_from(map).map_err(|e| format!("BPF map `BINARIES`: {e}"))?;
    let entries = std::fs::read_dir(proc_root).map_err(|e| format!("{}: {e}", proc_root.display()))?;
    let mut added = 0;
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        // Kernel threads have no executable; a process may be gone.
        let Ok(exe) = std::fs::read_link(entry.path().join("exe")) else {
            continue;
        };
        let exe = exe.as_os_str().as_encoded_bytes();
        let exe = exe.strip_suffix(b" (deleted)").unwrap_or(exe);
        let mut b = Binary {
            len: 0,
            _pad: 0,
            path: [0; BINARY_SIZE],
            caps: caps_now(&entry.path()),
            namespaces: crate::privileges::read_ns_inums(proc_root, pid),
        };
        // As the kernel keeps it: at most BINARY_SIZE - 1 bytes.
        let n = exe.len().min(BINARY_SIZE - 1);
        b.path[..n].copy_from_slice(&exe[..n]);
        b.len = n as u32;
        if binaries.insert(pid, b, BPF_NOEXIST).is_ok() {
            added += 1;
        }
    }
    Ok(added)
}

/// A process's capabilities as `/proc/PID/status` has them (effective,
/// inheritable, permitted, as the kernel's `Binary::caps`); 0 where
/// unreadable.
fn caps_now(process: &std::path::Path) -> [u64; 3] {
    let status = std::fs::read_to_string(process.join("status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    [field("CapEff:"), field("CapInh:"), field("CapPrm:")]
}
