//! `blk`: exercises a virtio-blk drive. Reads its id (GET_ID) and its whole
//! content (64 KiB requests, up to 16 in flight), reporting an FNV-1a hash of
//! the bytes and the read rate; checks that a read past the end gets IOERR;
//! with `probe.blk.write=1` writes 64 KiB at sector 8 (pattern
//! `byte[i] = i * 13 + 7`), flushes and reads it back (a read-only drive must
//! answer the write with IOERR). `probe.blk.index=N` picks the Nth drive
//! (default 0); `probe.blk.read_limit=BYTES` caps the read (default 256M).

use alloc::format;
use alloc::string::String;
use alloc::vec;

use super::{usage_error, Context, Outcome};
use crate::blk::{VirtioBlk, DEVICE_ID_BLOCK, F_RO, S_OK, T_FLUSH, T_GET_ID, T_IN, T_OUT};
use crate::clock::rdtsc;
use crate::cmdline::{parse_size, parse_u64};
use crate::virtio::candidate_windows;
use crate::virtio::mmio::MmioTransport;

/// Bytes per read request.
const CHUNK: usize = 64 * 1024;
/// Most reads in flight.
const DEPTH: usize = 16;
/// Where the write test writes, in sectors, and how much.
const WRITE_SECTOR: u64 = 8;
const WRITE_BYTES: usize = 64 * 1024;
/// How long one batch of requests may take.
const BATCH_MS: u64 = 10_000;

/// FNV-1a, 64 bits, over `bytes`, continuing from `h`.
pub fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// FNV-1a's starting value.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// The write test's byte at offset `i`.
pub fn write_pattern(i: usize) -> u8 {
    (i as u8).wrapping_mul(13).wrapping_add(7)
}

fn failed(ctx: &Context<'_>, error: String) -> Outcome {
    Outcome {
        json: ctx.json("blk", false).str("error", &error),
        status: 1,
    }
}

/// `blk`: see the module documentation.
pub fn blk(ctx: &Context<'_>) -> Outcome {
    let index = match ctx.cmdline.get("probe.blk.index").map(parse_u64) {
        None => 0,
        Some(Some(i)) => i,
        Some(None) => {
            return usage_error(ctx, "blk", String::from("probe.blk.index needs a number"))
        }
    };
    let limit = match ctx.cmdline.get("probe.blk.read_limit").map(parse_size) {
        None => 256 << 20,
        Some(Some(b)) => b,
        Some(None) => {
            return usage_error(
                ctx,
                "blk",
                String::from("probe.blk.read_limit needs a byte count, e.g. 1M"),
            )
        }
    };
    let write = ctx.cmdline.get("probe.blk.write") == Some("1");
    let mut found = 0;
    let mut transport = None;
    for window in candidate_windows(&ctx.cmdline) {
        match MmioTransport::probe(window, DEVICE_ID_BLOCK) {
            Ok(Some(t)) if found == index => {
                transport = Some(t);
                break;
            }
            Ok(Some(_)) => found += 1,
            Ok(None) => {}
            Err(e) => return failed(ctx, format!("{e}")),
        }
    }
    let Some(transport) = transport else {
        return failed(
            ctx,
            format!("no virtio-blk device number {index} (found {found})"),
        );
    };
    let base = transport.base();
    let mut dev = match VirtioBlk::new(transport) {
        Ok(d) => d,
        Err(e) => return failed(ctx, format!("{e}")),
    };
    let ro = dev.features() & F_RO != 0;
    let deadline = || rdtsc() + ctx.clock.ns_to_ticks(BATCH_MS * 1_000_000);

    // Buffers the device writes are handed over as `as_mut_ptr` addresses.
    let mut id_buf = [0u8; 20];
    let id_status = dev.run(
        T_GET_ID,
        0,
        Some((id_buf.as_mut_ptr() as u64, 20, true)),
        deadline(),
    );
    let id_len = id_buf.iter().position(|&b| b == 0).unwrap_or(20);
    let id = String::from_utf8_lossy(&id_buf[..id_len]).into_owned();

    // The whole drive (up to the limit), DEPTH requests at a time, hashed in order.
    let total = (dev.capacity() * 512).min(limit) / CHUNK as u64 * CHUNK as u64;
    let depth = DEPTH.min(dev.slots());
    let mut buf = vec![0u8; depth * CHUNK];
    let mut hash = FNV_OFFSET;
    let mut read_ok = true;
    let start = rdtsc();
    let mut offset = 0u64;
    while offset < total && read_ok {
        let n = ((total - offset) / CHUNK as u64).min(depth as u64) as usize;
        for i in 0..n {
            let addr = buf.as_mut_ptr() as u64 + (i * CHUNK) as u64;
            let sector = (offset + (i * CHUNK) as u64) / 512;
            dev.submit(i, T_IN, sector, Some((addr, CHUNK as u32, true)));
        }
        dev.kick();
        let end = deadline();
        let mut done = 0;
        while done < n {
            match dev.poll() {
                Some((_, status)) => {
                    read_ok &= status == S_OK;
                    done += 1;
                }
                None if rdtsc() > end => {
                    return failed(ctx, format!("reads timed out at {offset}"))
                }
                None => core::hint::spin_loop(),
            }
        }
        hash = fnv1a(hash, &buf[..n * CHUNK]);
        offset += (n * CHUNK) as u64;
    }
    let read_ns = ctx.clock.ticks_to_ns(rdtsc() - start).max(1);

    let mut sector_buf = vec![0u8; 512];
    let oob = dev.run(
        T_IN,
        dev.capacity(),
        Some((sector_buf.as_mut_ptr() as u64, 512, true)),
        deadline(),
    );

    let mut ok = id_status == Some(S_OK) && read_ok && oob == Some(1);
    let mut wrote = None;
    if write {
        let data: vec::Vec<u8> = (0..WRITE_BYTES).map(write_pattern).collect();
        let w = dev.run(
            T_OUT,
            WRITE_SECTOR,
            Some((data.as_ptr() as u64, WRITE_BYTES as u32, false)),
            deadline(),
        );
        let f = dev.run(T_FLUSH, 0, None, deadline());
        let mut back = vec![0u8; WRITE_BYTES];
        let r = dev.run(
            T_IN,
            WRITE_SECTOR,
            Some((back.as_mut_ptr() as u64, WRITE_BYTES as u32, true)),
            deadline(),
        );
        let verify = r == Some(S_OK) && back == data;
        ok &= f == Some(S_OK);
        ok &= if ro {
            w == Some(1)
        } else {
            w == Some(S_OK) && verify
        };
        wrote = Some((w, f, verify));
    }
    let status = |s: Option<u8>| s.map_or(255, u64::from);
    let mut json = ctx
        .json("blk", ok)
        .u64("window", base)
        .str("id", &id)
        .u64("id_status", status(id_status))
        .u64("capacity", dev.capacity())
        .bool("ro", ro)
        .bool("read_ok", read_ok)
        .u64("read_bytes", offset)
        .u64("read_fnv", hash)
        .u64("read_ns", read_ns)
        .f64(
            "read_mib_s",
            offset as f64 / 1048576.0 / (read_ns as f64 / 1e9),
            1,
        )
        .u64("oob_status", status(oob));
    if let Some((w, f, verify)) = wrote {
        json = json
            .u64("write_status", status(w))
            .u64("flush_status", status(f))
            .bool("verify", verify);
    }
    Outcome {
        json: json.u64("kicks", dev.kicks),
        status: if ok { 0 } else { 1 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_values() {
        assert_eq!(fnv1a(FNV_OFFSET, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(
            fnv1a(fnv1a(FNV_OFFSET, b"fo"), b"obar"),
            fnv1a(FNV_OFFSET, b"foobar")
        );
    }
}
