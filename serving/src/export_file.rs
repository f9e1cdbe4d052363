//! The export file (`--export-filename`) with Tetragon's rotation flags:
//! past `--export-file-max-size-mb`, or every
//! `--export-file-rotation-interval`, the file is renamed to
//! `NAME-YYYY-MM-DDTHH-MM-SS.mmm.EXT` (UTC; `.gz` with
//! `--export-file-compress`, done off the writer's thread) and a new one
//! opened under the name; backups past `--export-file-max-backups` are
//! deleted, oldest first. Rotation happens between lines, so no line is
//! split, and a reader following the file by name (fluent-bit's tail,
//! vector's file source) reads each line once. A write that fails leaves
//! no partial line behind (the file is cut back to its last whole line).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::log_limit::LogLimit;

/// Held while a backup is compressed and the backups pruned.
static COMPRESSING: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

/// How often a failing rotation logs that it fails.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// When and how the file rotates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate before a line would take the file past this many bytes (0: never).
    pub max_bytes: u64,
    /// Rotated files kept.
    pub max_backups: usize,
    /// Gzip rotated files.
    pub compress: bool,
    /// Rotate a file this old (if it holds anything).
    pub interval: Option<Duration>,
}

impl Default for Rotation {
    /// Tetragon's defaults: 10 MB, 5 backups, no compression, no interval.
    fn default() -> Self {
        Rotation { max_bytes: 10 << 20, max_backups: 5, compress: false, interval: None }
    }
}

impl Rotation {
    /// From Tetragon's flags: a size in MB (at least 1), backups kept, a
    /// rotation interval (`0` for none, or seconds with an optional `s`,
    /// `m` or `h`), compression. An error names the flag.
    pub fn from_flags(
        max_size_mb: u64,
        max_backups: usize,
        interval: &str,
        compress: bool,
    ) -> Result<Rotation, (&'static str, String)> {
        if max_size_mb == 0 {
            return Err(("export-file-max-size-mb", "must be at least 1".into()));
        }
        let interval = parse_interval(interval).map_err(|e| ("export-file-rotation-interval", e))?;
        Ok(Rotation { max_bytes: max_size_mb.saturating_mul(1 << 20), max_backups, compress, interval })
    }
}

/// `0` (none), `90`, `90s`, `15m`, `1h`.
fn parse_interval(text: &str) -> Result<Option<Duration>, String> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], c),
        _ => (text, 's'),
    };
    let n: u64 =
        number.parse().map_err(|_| "expected a whole number of seconds, or with s, m or h (1h)".to_string())?;
    let seconds = match unit {
        's' => n,
        'm' => n.saturating_mul(60),
        'h' => n.saturating_mul(3600),
        _ => return Err("the unit is s, m or h".into()),
    };
    Ok((seconds > 0).then(|| Duration::from_secs(seconds)))
}

pub struct RotatingFile {
    path: PathBuf,
    file: File,
    /// Bytes in the file: where its last whole line ends.
    written: u64,
    opened: Instant,
    rotation: Rotation,
    failing: LogLimit,
    /// When the last backup's name says it was made (Unix nanoseconds).
    last_backup: i128,
}

impl RotatingFile {
    /// Opens (appending to) the file at `path`.
    pub fn open(path: &Path, rotation: Rotation) -> std::io::Result<RotatingFile> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let written = file.metadata()?.len();
        Ok(RotatingFile {
            path: path.to_owned(),
            file,
            written,
            opened: Instant::now(),
            rotation,
            failing: LogLimit::new(LOG_EVERY),
            last_backup: 0,
        })
    }

    /// Appends one whole line (`line` ends in a newline), rotating first if
    /// it is due. On an error nothing of the line stays in the file.
    pub fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.due(line.len() as u64)
            && let Err(e) = self.rotate()
            && let Some(n) = self.failing.hit()
        {
            // The line goes into the current file: a bigger file, no loss.
            tracing::warn!(path = %self.path.display(), error = %e, failed = n, "export file rotation failed");
        }
        match self.file.write_all(line) {
            Ok(()) => {
                self.written += line.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Cut back to the last whole line (append mode writes at the
                // end, so the cut is where this line began).
                let _ = self.file.set_len(self.written);
                Err(e)
            }
        }
    }

    fn due(&self, next: u64) -> bool {
        if self.written == 0 {
            return false;
        }
        let full = self.rotation.max_bytes > 0 && self.written + next > self.rotation.max_bytes;
        let old = self.rotation.interval.is_some_and(|i| self.opened.elapsed() >= i);
        full || old
    }

    /// Renames the file to its backup name and opens a new one.
    fn rotate(&mut self) -> std::io::Result<()> {
        // Names are to the millisecond and sort by age: each is at least a
        // millisecond after the last one (rotations in one millisecond), and
        // one taken (a restart) moves on, never over a backup.
        let mut at = proto::Timestamp::now().unix_nanos().max(self.last_backup + 1_000_000);
        let mut backup = backup_name(&self.path, &proto::Timestamp::from_unix_nanos(at).to_rfc3339_nanos());
        while backup.exists() || gz_of(&backup).exists() {
            at += 1_000_000;
            backup = backup_name(&self.path, &proto::Timestamp::from_unix_nanos(at).to_rfc3339_nanos());
        }
        std::fs::rename(&self.path, &backup)?;
        self.last_backup = at;
        // Should the new file fail to open, the renamed one stays open
        // and takes the lines: nothing is lost.
        self.file = OpenOptions::new().create(true).append(true).open(&self.path)?;
        self.written = 0;
        self.opened = Instant::now();
        let (path, rotation) = (self.path.clone(), self.rotation);
        if rotation.compress {
            std::thread::spawn(move || {
                // One at a time: a prune never deletes a file being compressed.
                let _one = COMPRESSING.lock();
                if let Err(e) = gzip(&backup) {
                    tracing::warn!(backup = %backup.display(), error = %e, "compressing an export backup failed");
                }
                prune(&path, rotation.max_backups);
            });
        } else {
            prune(&path, rotation.max_backups);
        }
        Ok(())
    }
}

/// `dir/events-2026-11-30T22-13-54.896.jsonl` for `dir/events.jsonl`
/// rotated at 2026-11-30T22:13:54.896…Z.
fn backup_name(path: &Path, rfc3339: &str) -> PathBuf {
    let stamp: String = rfc3339.chars().take(23).map(|c| if c == ':' { '-' } else { c }).collect();
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}-{stamp}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{stamp}"),
    };
    path.with_file_name(name)
}

/// Whether `name` is one of `path`'s backups (compressed or not).
fn is_backup(path: &Path, name: &str) -> bool {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let Some(rest) = name.strip_prefix(&format!("{stem}-")) else { return false };
    let rest = rest.strip_suffix(".gz").unwrap_or(rest);
    let rest = match path.extension() {
        Some(ext) => match rest.strip_suffix(&format!(".{}", ext.to_string_lossy())) {
            Some(r) => r,
            None => return false,
        },
        None => rest,
    };
    // YYYY-MM-DDTHH-MM-SS.mmm
    rest.len() == 23 && rest.as_bytes()[10] == b'T' && rest.chars().all(|c| c.is_ascii_digit() || "-T.".contains(c))
}

/// `path`'s backups, oldest first (their names sort by time).
pub fn backups(path: &Path) -> Vec<PathBuf> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| is_backup(path, &e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

/// Deletes the oldest backups past `keep`.
fn prune(path: &Path, keep: usize) {
    let all = backups(path);
    for old in all.iter().take(all.len().saturating_sub(keep)) {
        if let Err(e) = std::fs::remove_file(old) {
            tracing::warn!(backup = %old.display(), error = %e, "deleting an old export backup failed");
        }
    }
}

fn gz_of(file: &Path) -> PathBuf {
    let mut gz_name = file.as_os_str().to_owned();
    gz_name.push(".gz");
    PathBuf::from(gz_name)
}

/// Replaces `file` with `file.gz`.
fn gzip(file: &Path) -> std::io::Result<()> {
    let gz_path = gz_of(file);
    let mut input = File::open(file)?;
    let output = File::create(&gz_path)?;
    let mut encoder = flate2::write::GzEncoder::new(output, flate2::Compression::default());
    std::io::copy(&mut input, &mut encoder)?;
    encoder.finish()?.sync_all()?;
    std::fs::remove_file(file)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vigil-rotate-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn lines_of(path: &Path) -> Vec<String> {
        let mut text = String::new();
        if path.extension().is_some_and(|e| e == "gz") {
            flate2::read::GzDecoder::new(File::open(path).unwrap()).read_to_string(&mut text).unwrap();
        } else {
            text = std::fs::read_to_string(path).unwrap();
        }
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn flags_as_tetragon_takes_them() {
        let r = Rotation::from_flags(10, 5, "0", false).unwrap();
        assert_eq!(r, Rotation::default());
        assert_eq!(Rotation::from_flags(1, 0, "15m", true).unwrap().interval, Some(Duration::from_secs(900)));
        assert_eq!(Rotation::from_flags(1, 0, "90", true).unwrap().interval, Some(Duration::from_secs(90)));
        assert_eq!(Rotation::from_flags(0, 5, "0", false).unwrap_err().0, "export-file-max-size-mb");
        for bad in ["-1", "1d", "soon", ""] {
            assert_eq!(Rotation::from_flags(1, 5, bad, false).unwrap_err().0, "export-file-rotation-interval", "{bad}");
        }
    }

    #[test]
    fn backup_names_sort_by_time_and_are_recognised() {
        let p = Path::new("/x/events.jsonl");
        let b = backup_name(p, "2026-11-30T22:13:54.896877930Z");
        assert_eq!(b, Path::new("/x/events-2026-11-30T22-13-54.896.jsonl"));
        assert!(is_backup(p, "events-2026-11-30T22-13-54.896.jsonl"));
        assert!(is_backup(p, "events-2026-11-30T22-13-54.896.jsonl.gz"));
        assert!(!is_backup(p, "events.jsonl"));
        assert!(!is_backup(p, "events-copy.jsonl"));
        assert!(!is_backup(p, "other-2026-11-30T22-13-54.896.jsonl"));
    }

    #[test]
    fn lines_are_never_split_and_old_backups_go() {
        let d = dir("size");
        let path = d.join("events.jsonl");
        let rotation = Rotation { max_bytes: 100, max_backups: 2, compress: false, interval: None };
        let mut f = RotatingFile::open(&path, rotation).unwrap();
        for i in 0..40 {
            // Rotations in one millisecond get the next names.
            f.write_line(format!("line-{i:02}-xxxxxxxxxxxxxxxx\n").as_bytes()).unwrap();
        }
        let kept = backups(&path);
        assert_eq!(kept.len(), 2, "{kept:?}");
        // The newest lines are all there, in order, whole, once.
        let mut all: Vec<String> = kept.iter().flat_map(|b| lines_of(b)).collect();
        all.extend(lines_of(&path));
        let first: usize = all[0][5..7].parse().unwrap();
        let expect: Vec<String> = (first..40).map(|i| format!("line-{i:02}-xxxxxxxxxxxxxxxx")).collect();
        assert_eq!(all, expect);
        for b in &kept {
            assert!(std::fs::metadata(b).unwrap().len() <= 100);
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn backups_are_compressed_when_asked() {
        let d = dir("gz");
        let path = d.join("events.jsonl");
        let rotation = Rotation { max_bytes: 50, max_backups: 10, compress: true, interval: None };
        let mut f = RotatingFile::open(&path, rotation).unwrap();
        for i in 0..6 {
            f.write_line(format!("gz-line-{i}-yyyyyyyyyyyyyy\n").as_bytes()).unwrap();
        }
        // Compression runs on its own thread: wait for the .gz files.
        let deadline = Instant::now() + Duration::from_secs(10);
        while backups(&path).iter().any(|b| b.extension().is_none_or(|e| e != "gz")) || backups(&path).len() < 2 {
            assert!(Instant::now() < deadline, "{:?}", backups(&path));
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut all: Vec<String> = backups(&path).iter().flat_map(|b| lines_of(b)).collect();
        all.extend(lines_of(&path));
        assert_eq!(all, (0..6).map(|i| format!("gz-line-{i}-yyyyyyyyyyyyyy")).collect::<Vec<_>>());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_file_as_old_as_the_interval_rotates() {
        let d = dir("interval");
        let path = d.join("events.jsonl");
        let rotation = Rotation { max_bytes: 0, max_backups: 5, compress: false, interval: Some(Duration::ZERO) };
        let mut f = RotatingFile::open(&path, rotation).unwrap();
        f.write_line(b"first\n").unwrap();
        f.write_line(b"second\n").unwrap();
        assert_eq!(backups(&path).len(), 1);
        assert_eq!(lines_of(&path), ["second"]);
        let _ = std::fs::remove_dir_all(&d);
    }
}
