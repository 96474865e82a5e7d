//! Counting strings in a running VM's guest RAM, read from outside the guest: the mapping of
//! `/proc/PID/maps` that is exactly the guest's memory size (anonymous, read-write), read
//! through `/proc/PID/mem`. The interception tests use it to show a secret's value never
//! entered the guest while its placeholder did.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

/// Read size; patterns straddling two reads are still counted.
const CHUNK: usize = 1 << 20;

/// (start, end) of the anonymous read-write mappings of `maps` text that are `bytes` long.
pub fn ram_mappings(maps: &str, bytes: u64) -> Vec<(u64, u64)> {
    maps.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let range = f.next()?;
            let perms = f.next()?;
            let path = f.nth(3);
            let (a, b) = range.split_once('-')?;
            let (a, b) = (
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            );
            (perms.starts_with("rw") && path.is_none() && b - a == bytes).then_some((a, b))
        })
        .collect()
}

/// How often each pattern occurs in `src` (read to its end).
pub fn count_in(mut src: impl Read, patterns: &[&[u8]]) -> std::io::Result<Vec<usize>> {
    let keep = patterns
        .iter()
        .map(|p| p.len())
        .max()
        .unwrap_or(1)
        .saturating_sub(1);
    let mut counts = vec![0; patterns.len()];
    let mut buf = Vec::with_capacity(CHUNK + keep);
    let mut chunk = vec![0u8; CHUNK];
    loop {
        let n = src.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        // Count matches that start before the kept tail; the tail waits for the next read.
        let limit = buf.len().saturating_sub(keep);
        for (c, p) in counts.iter_mut().zip(patterns) {
            *c += buf.windows(p.len()).take(limit).filter(|w| w == p).count();
        }
        buf.drain(..limit);
    }
    for (c, p) in counts.iter_mut().zip(patterns) {
        *c += buf.windows(p.len()).filter(|w| w == p).count();
    }
    Ok(counts)
}

/// Counts each pattern in the guest RAM of VMM process `pid` whose guest has `mib` MiB.
pub fn count_in_guest(pid: u32, mib: u64, patterns: &[&[u8]]) -> Result<Vec<usize>, String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|e| format!("/proc/{pid}/maps: {e}"))?;
    let ranges = ram_mappings(&maps, mib << 20);
    if ranges.is_empty() {
        return Err(format!("process {pid} has no {mib} MiB read-write mapping"));
    }
    let mut mem =
        File::open(format!("/proc/{pid}/mem")).map_err(|e| format!("/proc/{pid}/mem: {e}"))?;
    let mut total = vec![0; patterns.len()];
    for (a, b) in ranges {
        mem.seek(SeekFrom::Start(a)).map_err(|e| e.to_string())?;
        let counts = count_in((&mut mem).take(b - a), patterns).map_err(|e| e.to_string())?;
        for (t, c) in total.iter_mut().zip(counts) {
            *t += c;
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_mapping_is_picked_by_size() {
        let maps = "7f0000000000-7f0010000000 rw-p 00000000 00:00 0 \n\
                    7f0010000000-7f0020000000 rw-p 00000000 08:01 42 /file\n\
                    7f0020000000-7f0020001000 rw-p 00000000 00:00 0 [heap]\n";
        assert_eq!(
            ram_mappings(maps, 256 << 20),
            vec![(0x7f0000000000, 0x7f0010000000)]
        );
    }

    #[test]
    fn patterns_across_reads_are_counted_once() {
        let mut data = vec![0u8; CHUNK * 2 + 10];
        let p = b"needle-value";
        for at in [0, CHUNK - 5, CHUNK * 2 - 2] {
            data[at..at + p.len()].copy_from_slice(p);
        }
        let counts = count_in(&data[..], &[p, b"absent"]).unwrap();
        assert_eq!(counts, vec![3, 0]);
    }
}
