//! The program the uprobe test hooks: it calls `vigil_marked_call` three
//! times with (-1, 0, 1) and its first argument.
use std::ffi::{CString, c_char};

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn vigil_marked_call(n: i32, text: *const c_char) -> i32 {
    std::hint::black_box(text);
    n + 1
}

fn main() {
    let marker = CString::new(std::env::args().nth(1).unwrap_or_default()).unwrap_or_default();
    for n in -1..=1 {
        std::hint::black_box(vigil_marked_call(std::hint::black_box(n), marker.as_ptr()));
    }
}
