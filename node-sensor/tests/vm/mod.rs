//! Kernel-matrix harness: fetches a kernel (Debian's stock 6.1 cloud kernel
//! by default, or `VIGIL_KERNEL_IMAGE=/path/to/vmlinuz|.deb`), packs the
//! sensor, its shared libraries and busybox into an initramfs, boots it under
//! qemu (TCG) and returns the console output.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Everything downloaded or built is kept here between runs.
pub fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("kernel-matrix")
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| format!("{shown}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{shown} failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Name of the newest `linux-image-6.1.0-N-cloud-amd64` package.
fn newest_61_cloud_package() -> Result<String, String> {
    let search = || {
        run(Command::new("apt-cache").args(["search", "--names-only", "^linux-image-6\\.1\\.0-[0-9]+-cloud-amd64$"]))
    };
    let mut list = search()?;
    if list.trim().is_empty() {
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        list = search()?;
    }
    list.lines()
        .filter_map(|l| l.split_whitespace().next())
        .max_by_key(|name| name.split('-').nth(4).and_then(|n| n.parse::<u32>().ok()).unwrap_or(0))
        .map(str::to_owned)
        .ok_or_else(|| "no linux-image-6.1.0-*-cloud-amd64 package in the apt lists".to_owned())
}

fn vmlinuz_from_deb(deb: &Path, into: &Path) -> Result<PathBuf, String> {
    std::fs::create_dir_all(into).map_err(|e| e.to_string())?;
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(into))?;
    let boot = into.join("boot");
    std::fs::read_dir(&boot)
        .map_err(|e| format!("{}: {e}", boot.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        .ok_or_else(|| format!("no vmlinuz in {}", deb.display()))
}

/// The kernel to boot: `VIGIL_KERNEL_IMAGE`, else Debian's newest 6.1 cloud
/// kernel (downloaded once into the cache).
pub fn kernel() -> Result<PathBuf, String> {
    // Tests in one process ask at once: one downloads and unpacks, the
    // others wait for it instead of reading a half-written package.
    static FETCH: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = FETCH.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let cache = cache_dir();
    std::fs::create_dir_all(&cache).map_err(|e| e.to_string())?;
    if let Ok(image) = std::env::var("VIGIL_KERNEL_IMAGE") {
        let image = PathBuf::from(image);
        return if image.extension().is_some_and(|e| e == "deb") {
            vmlinuz_from_deb(&image, &cache.join("user-kernel"))
        } else {
            Ok(image)
        };
    }
    let package = newest_61_cloud_package()?;
    let dir = cache.join(&package);
    if let Ok(found) = vmlinuz_from_deb_cached(&dir) {
        return Ok(found);
    }
    let download = || run(Command::new("apt-get").args(["download", "-qq", &package]).current_dir(&cache));
    if download().is_err() {
        // Stale package lists name versions the mirror no longer has.
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        download()?;
    }
    let deb = std::fs::read_dir(&cache)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_"))))
        .ok_or_else(|| format!("apt-get download {package} left no .deb"))?;
    vmlinuz_from_deb(&deb, &dir)
}

fn vmlinuz_from_deb_cached(dir: &Path) -> Result<PathBuf, String> {
    std::fs::read_dir(dir.join("boot"))
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        .ok_or_else(|| "not cached".into())
}

fn copy_with_parents(src: &Path, root: &Path) -> Result<(), String> {
    let dst = root.join(src.strip_prefix("/").map_err(|e| e.to_string())?);
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
    }
    std::fs::copy(src, &dst).map_err(|e| format!("copy {}: {e}", src.display()))?;
    Ok(())
}

/// Builds the initramfs: busybox, the (debug-stripped) sensor and the
/// `extra` binaries (at their own paths) with the shared libraries `ldd`
/// names, users, and `init`.
pub fn initramfs(sensor: &Path, init_script: &str, extra: &[&str]) -> Result<PathBuf, String> {
    // One directory per image: tests in one process build theirs at once.
    static BUILT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = BUILT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let work = cache_dir().join(format!("initramfs-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let root = work.join("root");
    for d in ["bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "lib", "lib64", "usr/bin", "usr/sbin"] {
        std::fs::create_dir_all(root.join(d)).map_err(|e| e.to_string())?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).map_err(|e| format!("busybox: {e}"))?;
    // For an init script that starts `#!/bin/sh`, as the recorded Tetragon VM's did.
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).map_err(|e| format!("bin/sh: {e}"))?;
    run(Command::new("objcopy").arg("--strip-debug").arg(sensor).arg(root.join("vigil-sensor")))?;
    for binary in extra {
        copy_with_parents(Path::new(binary), &root)?;
    }
    for binary in std::iter::once(sensor).chain(extra.iter().map(Path::new)) {
        let ldd = run(Command::new("ldd").arg(binary))?;
        for lib in ldd.lines().filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/'))) {
            copy_with_parents(Path::new(lib), &root)?;
        }
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nvigil:x:1000:1000:vigil:/tmp:/bin/sh\n")
        .map_err(|e| e.to_string())?;
    std::fs::write(root.join("etc/group"), "root:x:0:\nvigil:x:1000:\n").map_err(|e| e.to_string())?;
    // What both init scripts source: mounts and waits.
    std::fs::write(root.join("vigil-lib.sh"), include_str!("lib.sh")).map_err(|e| e.to_string())?;
    let init = root.join("init");
    std::fs::write(&init, init_script).map_err(|e| e.to_string())?;
    run(Command::new("chmod").arg("755").arg(&init))?;
    let image = work.join("initrd.gz");
    run(Command::new("sh").arg("-c").arg(format!(
        "cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
        root.display(),
        image.display()
    )))?;
    let _ = std::fs::remove_dir_all(&root);
    Ok(image)
}

/// Boots `kernel` with `initrd` under qemu TCG and returns the console text.
pub fn boot(kernel: &Path, initrd: &Path, timeout: Duration) -> Result<String, String> {
    let log = initrd.with_file_name("console.log");
    let console = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "2", "-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet lsm=lockdown,capability,bpf"])
        .stdin(Stdio::null())
        .stdout(console)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("qemu-system-x86_64: {e}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!("VM did not power off within {timeout:?}; console:\n{text}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::fs::read_to_string(&log).map_err(|e| e.to_string())
}
