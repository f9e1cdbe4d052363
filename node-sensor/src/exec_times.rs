//! The exec-time map, one per kernel. Every sensor's exec program reads an
//! image's exec time from it or records it there, so sensors that share a
//! kernel (kind nodes, tests) name each image alike. Maps are global to
//! the kernel but reachable across mount namespaces only by id, so the
//! loader finds the oldest live map of this name and layout and pins it in
//! its own BPF filesystem, where the object loader picks it up.

use std::path::Path;

use aya::maps::{MapData, MapInfo, MapType, loaded_maps};

/// The map's name in the kernel (15 characters at most) and its layout.
pub const MAP_NAME: &str = "VIGIL_EXECT_V1";
const KEY_SIZE: u32 = std::mem::size_of::<node_sensor_common::ExecTimeKey>() as u32;
const VALUE_SIZE: u32 = std::mem::size_of::<u64>() as u32;
/// `statfs` magic of the BPF filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The id of the oldest live exec-time map on this kernel, if any.
pub fn oldest() -> Option<u32> {
    loaded_maps()
        .filter_map(Result::ok)
        .filter(|m| {
            m.name_as_str() == Some(MAP_NAME)
                && m.key_size() == KEY_SIZE
                && m.value_size() == VALUE_SIZE
                && matches!(m.map_type(), Ok(MapType::LruHash))
        })
        .map(|m| m.id())
        .min()
}

/// The id of the map pinned at `pin`.
pub fn pinned_id(pin: &Path) -> Option<u32> {
    MapInfo::from_pin(pin).ok().map(|m| m.id())
}

/// Makes `pin` name the oldest live exec-time map (or nothing, when there
/// is none, so the loader creates and pins one), on a BPF filesystem
/// mounted at `pin`'s grandparent if none is there.
pub fn prepare(pin: &Path) -> Result<(), String> {
    let dir = pin.parent().ok_or("the pin path has no directory")?;
    let fs_root = dir.parent().ok_or("the pin directory has no parent")?;
    if !is_bpf_fs(fs_root) {
        mount_bpf_fs(fs_root)?;
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    match std::fs::remove_file(pin) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("removing the old pin {}: {e}", pin.display())),
    }
    if let Some(id) = oldest() {
        let map = MapData::from_id(id).map_err(|e| format!("opening exec-time map {id}: {e}"))?;
        if let Err(e) = map.pin(pin) {
            // A sensor starting at the same moment pinned first: fine,
            // whichever map it pinned (the loader settles on the oldest).
            if pinned_id(pin).is_none() {
                return Err(format!("pinning exec-time map {id} at {}: {e}", pin.display()));
            }
        }
    }
    Ok(())
}

fn is_bpf_fs(path: &Path) -> bool {
    crate::mounts::fs_type(path) == Some(BPF_FS_MAGIC)
}

/// Mounts a BPF filesystem at `at`, as Tetragon does where none is mounted.
fn mount_bpf_fs(at: &Path) -> Result<(), String> {
    crate::mounts::mount(c"bpf", at)
}
