//! The program the `Changes` selector test runs: after its exec it changes
//! what those selectors watch, then unlinks its second argument. `ns`
//! unshares a mount namespace; `caps` gives up root, and with it every
//! capability; `none` changes nothing.
use std::ffi::{CString, c_char};

unsafe extern "C" {
    fn unshare(flags: i32) -> i32;
    fn setresuid(real: u32, effective: u32, saved: u32) -> i32;
    fn unlinkat(dirfd: i32, path: *const c_char, flags: i32) -> i32;
}

const CLONE_NEWNS: i32 = 0x0002_0000;
const AT_FDCWD: i32 = -100;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(path)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: changer ns|caps|none PATH");
        std::process::exit(2);
    };
    let path = CString::new(path.as_bytes()).expect("a path without NUL");
    // SAFETY: plain system calls with valid arguments.
    unsafe {
        let changed = match mode.as_str() {
            "ns" => unshare(CLONE_NEWNS),
            "caps" => setresuid(65534, 65534, 65534),
            _ => 0,
        };
        assert_eq!(changed, 0, "changing {mode}");
        assert_eq!(unlinkat(AT_FDCWD, path.as_ptr(), 0), 0, "unlinking");
    }
}
