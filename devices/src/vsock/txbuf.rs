//! A connection's guest → host overflow buffer: a ring of at most `capacity` bytes, allocated
//! the first time the host socket does not take a packet at once (most connections never
//! need it), holding only bytes the device already credited to the guest.

use crate::net::iov::GuestIov;

/// Bytes from the guest that the host socket has not taken yet.
#[derive(Debug, Default)]
pub struct TxBuf {
    data: Vec<u8>,
    capacity: usize,
    head: usize,
    len: usize,
}

impl TxBuf {
    /// An empty buffer that will hold at most `capacity` bytes (nothing allocated yet).
    pub fn new(capacity: usize) -> Self {
        Self {
            data: Vec::new(),
            capacity,
            head: 0,
            len: 0,
        }
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes that still fit.
    pub fn room(&self) -> usize {
        self.capacity - self.len
    }

    /// Copies `n` bytes at offset `off` of `src` to the end; returns how many fit (the
    /// caller checked [`Self::room`], so all of them).
    pub fn push_from(&mut self, src: &GuestIov, off: usize, n: usize) -> usize {
        let n = n.min(self.room());
        if n == 0 {
            return 0;
        }
        if self.data.len() < self.capacity {
            self.data.resize(self.capacity, 0);
        }
        let tail = (self.head + self.len) % self.capacity;
        let first = n.min(self.capacity - tail);
        let got = src.read_at(off, &mut self.data[tail..tail + first]);
        let mut copied = got;
        if got == first && first < n {
            copied += src.read_at(off + first, &mut self.data[..n - first]);
        }
        self.len += copied;
        copied
    }

    /// The held bytes in order, as up to two slices.
    pub fn slices(&self) -> (&[u8], &[u8]) {
        if self.len == 0 {
            return (&[], &[]);
        }
        let end = self.head + self.len;
        if end <= self.capacity {
            (&self.data[self.head..end], &[])
        } else {
            (&self.data[self.head..], &self.data[..end - self.capacity])
        }
    }

    /// Drops the first `n` held bytes (sent).
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.len);
        self.len -= n;
        self.head = if self.len == 0 {
            0
        } else {
            (self.head + n) % self.capacity
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_wrap_around_and_come_out_in_order() {
        let mut src: Vec<u8> = (0..=255).collect();
        let mut iov = GuestIov::with_capacity(1);
        iov.push(src.as_mut_ptr(), src.len());
        let mut b = TxBuf::new(10);
        assert_eq!(b.push_from(&iov, 0, 7), 7);
        b.consume(5);
        assert_eq!(b.room(), 8);
        assert_eq!(b.push_from(&iov, 100, 8), 8);
        let (x, y) = b.slices();
        let all: Vec<u8> = x.iter().chain(y).copied().collect();
        assert_eq!(all, vec![5, 6, 100, 101, 102, 103, 104, 105, 106, 107]);
        assert_eq!(b.push_from(&iov, 0, 1), 0, "full");
        b.consume(10);
        assert!(b.is_empty());
        assert_eq!(b.slices(), (&[][..], &[][..]));
        drop(iov);
    }
}
