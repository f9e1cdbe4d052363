//! Tetragon's process `flags` words, in Tetragon's bit order so the
//! joined string reads the same (`execve rootcwd clone`).

pub const EXECVE: u32 = 1 << 0;
pub const PROCFS: u32 = 1 << 1;
pub const TRUNC_FILENAME: u32 = 1 << 2;
pub const TRUNC_ARGS: u32 = 1 << 3;
pub const MISS: u32 = 1 << 5;
pub const NEEDS_AUID: u32 = 1 << 6;
pub const ERROR_FILENAME: u32 = 1 << 7;
pub const ERROR_ARGS: u32 = 1 << 8;
pub const NO_CWD: u32 = 1 << 10;
pub const ROOT_CWD: u32 = 1 << 11;
pub const ERROR_CWD: u32 = 1 << 12;
pub const CLONE: u32 = 1 << 13;
pub const ERROR_CGROUPS: u32 = 1 << 18;
/// A process of a container's init tree: the first process of a new pid
/// namespace and its descendants.
pub const IN_INIT_TREE: u32 = 1 << 25;
/// Vigil: the cwd was deeper than the kernel walk and is cut at the top.
pub const TRUNC_CWD: u32 = 1 << 24;
/// Vigil: the binary, arguments or cwd held bytes that are not UTF-8; they
/// are shown as U+FFFD (Tetragon has no flag for this).
pub const INVALID_UTF8: u32 = 1 << 26;

const NAMES: &[(u32, &str)] = &[
    (EXECVE, "execve"),
    (PROCFS, "procFS"),
    (TRUNC_FILENAME, "truncFilename"),
    (TRUNC_ARGS, "truncArgs"),
    (1 << 4, "taskWalk"),
    (MISS, "miss"),
    (NEEDS_AUID, "needsAUID"),
    (ERROR_FILENAME, "errorFilename"),
    (ERROR_ARGS, "errorArgs"),
    (1 << 9, "needsCWD"),
    (NO_CWD, "nocwd"),
    (ROOT_CWD, "rootcwd"),
    (ERROR_CWD, "errorCWD"),
    (CLONE, "clone"),
    (ERROR_CGROUPS, "errorCgroups"),
    (IN_INIT_TREE, "inInitTree"),
    (TRUNC_CWD, "truncCWD"),
    (INVALID_UTF8, "invalidUTF8"),
];

/// The space-separated flag words.
pub fn to_string(bits: u32) -> String {
    NAMES.iter().filter(|(b, _)| bits & b != 0).map(|(_, n)| *n).collect::<Vec<_>>().join(" ")
}

/// Parses flag words back (for copying a parent's flags to a fork child).
pub fn from_str(s: &str) -> u32 {
    s.split_whitespace().filter_map(|w| NAMES.iter().find(|(_, n)| *n == w)).fold(0, |acc, (b, _)| acc | b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_matches_tetragon() {
        assert_eq!(to_string(CLONE | ROOT_CWD | EXECVE), "execve rootcwd clone");
        assert_eq!(to_string(PROCFS | ROOT_CWD), "procFS rootcwd");
        assert_eq!(from_str("execve rootcwd clone"), CLONE | ROOT_CWD | EXECVE);
        assert_eq!(to_string(0), "");
        assert_eq!(to_string(IN_INIT_TREE | TRUNC_CWD | CLONE | EXECVE), "execve clone inInitTree truncCWD");
    }
}
