//! CPU time and memory of processes, read from `/proc`: where a benchmark's time went.
//!
//! CPU is summed per component (executor, broker, PostgreSQL, this client) over a measured window,
//! so a figure says which process spent it. Linux only; elsewhere every reading is zero and the
//! report says so.

use std::collections::HashMap;

/// Clock ticks per second of `/proc/<pid>/stat`'s times (`getconf CLK_TCK`; 100 on every Linux
/// this runs on, and not readable without libc).
const TICKS_PER_SECOND: f64 = 100.0;

/// utime + stime of one process, in seconds, with its parent.
fn stat(pid: u32) -> Option<(f64, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields are counted after its end.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some(((utime + stime) / TICKS_PER_SECOND, ppid))
}

/// Every process on the machine with its parent.
fn parents() -> HashMap<u32, u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return HashMap::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, stat(pid)?.1)))
        .collect()
}

/// `root` and all its descendants, minus `excluded`.
pub fn tree(root: u32, excluded: &[u32]) -> Vec<u32> {
    let parents = parents();
    let mut members = vec![root];
    let mut index = 0;
    while index < members.len() {
        let parent = members[index];
        members.extend(parents.iter().filter(|(_, p)| **p == parent).map(|(pid, _)| *pid));
        index += 1;
    }
    members.retain(|pid| !excluded.contains(pid));
    members
}

/// CPU seconds used so far by `pids` (processes that already exited count nothing).
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|pid| stat(*pid)).map(|(cpu, _)| cpu).sum()
}

/// A `/proc/<pid>/status` field in bytes (`VmRSS`, `VmHWM`: current and peak resident memory).
pub fn memory_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    let kib: u64 = line[field.len() + 1..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// The machine's memory, in MiB.
pub fn memory_total_mb() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 =
        meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_uses_cpu_and_memory_and_belongs_to_its_parents_tree() {
        let me = std::process::id();
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(30) {
            std::hint::black_box(spin.elapsed());
        }
        assert!(cpu_seconds(&[me]) > 0.0);
        assert!(memory_bytes(me, "VmRSS").unwrap() > 1024 * 1024);
        // Resident now, then the peak: read in this order, the peak cannot be the smaller (other
        // test threads allocate meanwhile).
        let resident = memory_bytes(me, "VmRSS").unwrap();
        assert!(memory_bytes(me, "VmHWM").unwrap() >= resident);
        let (_, parent) = stat(me).unwrap();
        assert!(tree(parent, &[]).contains(&me));
        assert!(!tree(parent, &[me]).contains(&me));
    }
}
