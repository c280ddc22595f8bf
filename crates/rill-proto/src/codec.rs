//! Minimal little-endian reader and writer for the local wire format.

/// Why a packet could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("packet ends early")]
    Truncated,
    #[error("unknown message tag {0}")]
    UnknownTag(u8),
    #[error("string is not UTF-8")]
    BadUtf8,
    #[error("packet has trailing bytes")]
    TrailingBytes,
    #[error("payload length {declared} does not match the {actual} bytes that follow")]
    LengthMismatch { declared: u64, actual: u64 },
    #[error("a list of {0} entries is longer than allowed")]
    TooMany(u64),
}

/// Appends primitive values to a buffer.
pub struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> Writer<'a> {
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        Self { out }
    }
    pub fn u8(&mut self, v: u8) {
        self.out.push(v);
    }
    pub fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    /// Strings are ids: a `u16` length is plenty.
    pub fn str(&mut self, s: &str) {
        let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
        self.out.extend_from_slice(&len.to_le_bytes());
        self.out.extend_from_slice(&s.as_bytes()[..usize::from(len)]);
    }
    pub fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.out.extend_from_slice(b);
    }
}

/// Reads primitive values from a packet.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }
    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }
    pub fn str(&mut self) -> Result<&'a str, DecodeError> {
        let mut b = [0u8; 2];
        b.copy_from_slice(self.take(2)?);
        let len = usize::from(u16::from_le_bytes(b));
        std::str::from_utf8(self.take(len)?).map_err(|_| DecodeError::BadUtf8)
    }
    pub fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = usize::try_from(self.u64()?).map_err(|_| DecodeError::Truncated)?;
        self.take(len)
    }
    /// Fails if anything is left over.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() { Ok(()) } else { Err(DecodeError::TrailingBytes) }
    }
}
