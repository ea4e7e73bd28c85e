//! Byte layout shared by the wire forms: an 8-byte header
//! `magic[4] ‖ version ‖ params id ‖ log2 N ‖ log2 q`, then little-endian fields.

use super::error::HeError;
use super::params::HeParams;

/// Header length in bytes.
pub(crate) const HEADER_LEN: usize = 8;
const VERSION: u8 = 1;

pub(crate) fn put_header(out: &mut Vec<u8>, magic: &[u8; 4], params: HeParams) {
    out.extend_from_slice(magic);
    out.push(VERSION);
    out.push(params.id());
    out.push(params.polynomial_size().trailing_zeros() as u8);
    out.push(params.modulus_bits() as u8);
}

/// A bounds-checked reader over untrusted bytes.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Self {
            bytes,
            pos: 0,
            what,
        }
    }

    /// Checks magic, version, parameter set, dimension and modulus.
    pub(crate) fn header(
        &mut self,
        magic: &[u8; 4],
        expected: Option<HeParams>,
    ) -> Result<HeParams, HeError> {
        let what = self.what;
        let h = self.take(HEADER_LEN)?;
        if &h[..4] != magic || h[4] != VERSION {
            return Err(HeError::BadHeader { what });
        }
        let params = match (HeParams::from_id(h[5]), expected) {
            (Some(p), None) => p,
            (Some(p), Some(e)) if p == e => p,
            (_, Some(e)) => {
                return Err(HeError::WrongParams {
                    expected: e,
                    got: h[5],
                });
            }
            (None, None) => return Err(HeError::BadHeader { what }),
        };
        let dim = 1usize.checked_shl(u32::from(h[6])).unwrap_or(0);
        if dim != params.polynomial_size() {
            return Err(HeError::WrongDimension {
                expected: params.polynomial_size(),
                got: dim,
            });
        }
        if u32::from(h[7]) != params.modulus_bits() {
            return Err(HeError::WrongModulus {
                expected: params.modulus_bits(),
                got: h[7].into(),
            });
        }
        Ok(params)
    }

    /// The whole input must be exactly `len` bytes.
    pub(crate) fn expect_len(&self, len: usize) -> Result<(), HeError> {
        if self.bytes.len() != len {
            return Err(HeError::WrongSize {
                what: self.what,
                expected: len,
                got: self.bytes.len(),
            });
        }
        Ok(())
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], HeError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let out = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(out)
            }
            None => Err(HeError::WrongSize {
                what: self.what,
                expected: self.pos.saturating_add(n),
                got: self.bytes.len(),
            }),
        }
    }

    pub(crate) fn u32(&mut self) -> Result<u32, HeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, HeError> {
        let b = self.take(8)?;
        let mut w = [0u8; 8];
        w.copy_from_slice(b);
        Ok(u64::from_le_bytes(w))
    }

    pub(crate) fn array32(&mut self) -> Result<[u8; 32], HeError> {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.take(32)?);
        Ok(out)
    }

    /// Remaining bytes.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let out = &self.bytes[self.pos..];
        self.pos = self.bytes.len();
        out
    }
}
