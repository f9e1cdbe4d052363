//! The sensor's user-space work per exec, without a kernel or a wakeup:
//! fork, exec and exit records of short-lived processes fed to the
//! pipeline (decode, process cache, conversion, bus) in reads of 30
//! records, as a 10 ms read of a storm at 1,000 execs/s brings, and every
//! event taken off the bus and encoded, as a `GetEvents` client's stream
//! sends it. Against `exec_storm`'s sensor CPU per exec, what is left is
//! the cost of waking up, of the gRPC stream and of the kernel's side.
//!
//! Then the heap a cached process takes, exactly: N processes forked and
//! exec'd but not ended, the bytes allocated (and not freed) by the
//! pipeline counted by this bench's allocator, divided by N.
//!
//! `cargo bench -p node-sensor --bench pipeline_records [-- EXECS]`
#![allow(clippy::unwrap_used, reason = "a benchmark: a panic ends the run with its reason")]

#[allow(dead_code, reason = "each bench uses part of what the benches share")]
mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use events::bus::{EventBus, Subscription};
use node_sensor::clock::Clock;
use node_sensor::pipeline::Pipeline;
use node_sensor::privileges::Collect;
use node_sensor::stats::SensorStats;
use node_sensor_common::{CloneRecord, ExecRecord, ExitRecord, KIND_CLONE, KIND_EXEC, KIND_EXIT, RecordHeader};
use prost::Message;
use proto::tetragon::get_events_response::Event;
use tokio_stream::Stream;

/// The system allocator, counting the bytes held (requested sizes; what
/// an allocator rounds up to is not counted).
struct Counting;

static HELD: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed to the system allocator as it came.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: as the caller's contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: as the caller's contract.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HELD.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        // SAFETY: as the caller's contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Processes per read of the ring buffer (three records each).
const PER_READ: usize = 10;
const PARENT_PID: u32 = 1000;

fn bytes_of<T>(v: &T) -> Vec<u8> {
    // SAFETY: T is a repr(C) record of integers and byte arrays; its bytes
    // are read for its own size.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }.to_vec()
}

fn exec(pid: u32, ppid: u32, ktime: u64, args: &str) -> Vec<u8> {
    // SAFETY: all-zero is a valid ExecRecord.
    let mut r: ExecRecord = unsafe { std::mem::zeroed() };
    r.header = RecordHeader { kind: KIND_EXEC, flags: 0, ktime };
    (r.pid, r.tid, r.ppid) = (pid, pid, ppid);
    r.start_boottime = ktime;
    let filename = b"/usr/bin/true";
    r.filename[..filename.len()].copy_from_slice(filename);
    r.filename_len = filename.len() as u32;
    let args = format!("/usr/bin/true\0{args}\0");
    r.args[..args.len()].copy_from_slice(args.as_bytes());
    r.args_len = args.len() as u32;
    let cwd = b"bench\0tmp\0";
    r.cwd[..cwd.len()].copy_from_slice(cwd);
    r.cwd_len = cwd.len() as u32;
    r.nspid = pid;
    bytes_of(&r)
}

/// One short-lived process: its fork, its exec and its exit.
fn process(pid: u32, ktime: u64, i: usize) -> [Vec<u8>; 3] {
    let clone = CloneRecord {
        header: RecordHeader { kind: KIND_CLONE, flags: 0, ktime },
        pid,
        ppid: PARENT_PID,
        start_boottime: ktime,
        parent_start_boottime: 1,
        exec_seq: 1,
        nspid: pid,
    };
    let exit = ExitRecord {
        header: RecordHeader { kind: KIND_EXIT, flags: 0, ktime: ktime + 2 },
        pid,
        tid: pid,
        exit_code: 0,
        _pad: 0,
        start_boottime: ktime,
    };
    [bytes_of(&clone), exec(pid, PARENT_PID, ktime + 1, &format!("bench-{i}")), bytes_of(&exit)]
}

/// Takes every event the bus holds for `sub`, encoding each as a client's
/// stream does; returns (execs, exits).
fn take(sub: &mut Subscription) -> (usize, usize) {
    let mut cx = Context::from_waker(Waker::noop());
    let (mut execs, mut exits) = (0, 0);
    while let Poll::Ready(Some(e)) = Pin::new(&mut *sub).poll_next(&mut cx) {
        let bytes = e.encode_to_vec();
        let event = proto::tetragon::GetEventsResponse::decode(bytes.as_slice()).unwrap();
        match event.event {
            Some(Event::ProcessExec(_)) => execs += 1,
            Some(Event::ProcessExit(_)) => exits += 1,
            _ => {}
        }
    }
    (execs, exits)
}

fn main() {
    let n: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(200_000);
    let bus = EventBus::new("bench", 1 << 20);
    let mut sub = bus.subscribe(events::RequestFilters::default());
    let stats = Arc::new(SensorStats::default());
    let mut pipeline = Pipeline::new("bench", Clock::fixed(0), Collect::default(), 65_536, bus.clone(), stats);
    // The storm's parent, the shell.
    pipeline.handle_batch([exec(PARENT_PID, 1, 1, "parent").as_slice()]);
    assert_eq!(take(&mut sub), (1, 0));

    let records: Vec<[Vec<u8>; 3]> =
        (0..n).map(|i| process(PARENT_PID + 1 + (i % 30_000) as u32, 10 + 10 * i as u64, i)).collect();
    let (mut execs, mut exits) = (0, 0);
    let cpu0 = thread_cpu();
    let start = Instant::now();
    for chunk in records.chunks(PER_READ) {
        pipeline.handle_batch(chunk.iter().flat_map(|p| p.iter().map(Vec::as_slice)));
        let (x, e) = take(&mut sub);
        execs += x;
        exits += e;
    }
    let wall = start.elapsed();
    let cpu = thread_cpu() - cpu0;
    println!("pipeline_records: {n} fork+exec+exit record triples, {PER_READ} processes per read, one subscriber");
    println!("  cpu: {}", support::cpu_model());
    println!("  events        {execs} exec + {exits} exit of {n} + {n} expected");
    println!(
        "  per exec      {:.2} µs of CPU ({:.2} µs wall): decode, cache, convert, publish, and the subscriber's encode (+ the bench's decode to count)",
        cpu * 1e6 / n as f64,
        wall.as_secs_f64() * 1e6 / n as f64
    );
    // A bench that cannot lie: every process was seen start and end.
    assert_eq!((execs, exits), (n, n), "every exec and exit reaches the subscriber");
    cache_heap(n.min(60_000));
}

/// The heap `live` cached processes take: forked and exec'd, not ended.
fn cache_heap(live: usize) {
    let bus = EventBus::new("bench", 1 << 20);
    let mut sub = bus.subscribe(events::RequestFilters::default());
    let stats = Arc::new(SensorStats::default());
    let mut pipeline = Pipeline::new("bench", Clock::fixed(0), Collect::default(), 65_536, bus.clone(), stats.clone());
    pipeline.handle_batch([exec(PARENT_PID, 1, 1, "parent").as_slice()]);
    take(&mut sub);
    let before = HELD.load(Ordering::Relaxed);
    for chunk in (0..live).collect::<Vec<_>>().chunks(PER_READ) {
        let records: Vec<Vec<u8>> = chunk
            .iter()
            .flat_map(|&i| {
                let [clone, exec, _exit] = process(PARENT_PID + 1 + i as u32, 10 + 10 * i as u64, i);
                [clone, exec]
            })
            .collect();
        pipeline.handle_batch(records.iter().map(Vec::as_slice));
        take(&mut sub);
    }
    let held = HELD.load(Ordering::Relaxed) - before;
    let entries = stats.cache_entries.load(Ordering::Relaxed);
    println!(
        "  cache heap    {:.0} bytes per cached process ({} bytes for {live} live processes; cache entries {entries})",
        held as f64 / live as f64,
        held
    );
    assert_eq!(entries as usize, live + 1, "every live process cached (and the parent)");
}

/// This thread's CPU time in seconds.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}
