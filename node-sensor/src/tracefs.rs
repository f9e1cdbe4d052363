//! The kernel's tracepoints as the policy compiler sees them: their format
//! files in tracefs, which the sensor mounts at /sys/kernel/tracing if no
//! tracefs is there (or at the older /sys/kernel/debug/tracing).

use std::path::{Path, PathBuf};

use policy::compile::KernelView;
use policy::tracefs::Format;

const TRACEFS_MAGIC: i64 = 0x7472_6163;
const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";
/// Largest format file read (they are about 1 KiB).
const MAX_FORMAT_BYTES: u64 = 64 << 10;

/// This kernel's tracefs.
pub struct Tracefs {
    root: PathBuf,
}

impl Tracefs {
    /// Finds tracefs, mounting it at /sys/kernel/tracing if none is found.
    pub fn open() -> Result<Tracefs, String> {
        for root in [TRACEFS, DEBUGFS_TRACING] {
            if crate::mounts::fs_type(Path::new(root)) == Some(TRACEFS_MAGIC) {
                return Ok(Tracefs { root: root.into() });
            }
        }
        crate::mounts::mount(c"tracefs", Path::new(TRACEFS))?;
        Ok(Tracefs { root: TRACEFS.into() })
    }

    /// A tracefs at `root` (tests).
    pub fn at(root: PathBuf) -> Tracefs {
        Tracefs { root }
    }
}

/// A subsystem or event name: what tracefs directories are named, and
/// nothing that could leave the events directory.
fn plain_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl KernelView for Tracefs {
    fn tracepoint_format(&self, subsystem: &str, event: &str) -> Result<Option<Format>, String> {
        if !plain_name(subsystem) || !plain_name(event) {
            return Ok(None);
        }
        let path = self.root.join("events").join(subsystem).join(event).join("format");
        let text = match std::fs::File::open(&path) {
            Ok(f) => {
                use std::io::Read;
                let mut text = String::new();
                f.take(MAX_FORMAT_BYTES).read_to_string(&mut text).map_err(|e| format!("{}: {e}", path.display()))?;
                text
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        Format::parse(&text).map(Some).map_err(|e| format!("{}: {e}", path.display()))
    }
}
