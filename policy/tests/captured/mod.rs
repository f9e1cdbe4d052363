//! This machine's kernel (6.18) as the compile tests see it: the
//! tracepoint format files captured in tests/formats.

use std::path::PathBuf;

use policy::compile::KernelView;
use policy::tracefs::Format;

/// The captured format files, by `subsystem-event`.
pub struct Captured(pub PathBuf);

impl KernelView for Captured {
    fn tracepoint_format(&self, subsystem: &str, event: &str) -> Result<Option<Format>, String> {
        match std::fs::read_to_string(self.0.join(format!("{subsystem}-{event}"))) {
            Ok(text) => Format::parse(&text).map(Some).map_err(|e| e.to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }
}

pub fn kernel() -> Captured {
    Captured(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/formats"))
}
