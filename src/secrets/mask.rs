//! Masking secret values in job output as it streams.

use super::{MASK, MASK_MIN};

/// Masks secret values in a byte stream that arrives in pieces: a value split across pieces
/// is still masked, because a tail that could start a value is held back until the next piece
/// (or the end) says whether it does.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    /// Longest first, so the longest value at a position wins.
    values: Vec<Vec<u8>>,
    /// Which bytes start a value (256 entries once built).
    first: Vec<bool>,
}

impl Masker {
    /// A masker for `values` (those shorter than [`MASK_MIN`] are not masked).
    pub fn new<I: IntoIterator<Item = Vec<u8>>>(values: I) -> Self {
        // Without its trailing newline, a masked key leaves the line break after it in place.
        let mut v: Vec<Vec<u8>> = values
            .into_iter()
            .map(|mut v| {
                while v.last().is_some_and(|b| matches!(b, b'\n' | b'\r')) {
                    v.pop();
                }
                v
            })
            .filter(|v| v.len() >= MASK_MIN)
            .collect();
        // A multi-line value (a key) also masks line by line: output often shows one line.
        let lines: Vec<Vec<u8>> = v
            .iter()
            .flat_map(|x| x.split(|b| *b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l).to_vec()))
            .filter(|l| l.len() >= 16)
            .collect();
        v.extend(lines);
        v.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        v.dedup();
        let mut first = vec![false; 256];
        for x in &v {
            first[usize::from(x[0])] = true;
        }
        Self { values: v, first }
    }

    /// Whether there is nothing to mask.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Takes what can be emitted from `buf`, masked, leaving in it a tail that may start a
    /// value; with `last`, everything.
    pub fn take(&self, buf: &mut Vec<u8>, last: bool) -> Vec<u8> {
        if self.values.is_empty() {
            return std::mem::take(buf);
        }
        let mut out = Vec::with_capacity(buf.len());
        let mut i = 0;
        'scan: while i < buf.len() {
            if self.first.get(usize::from(buf[i])).copied().unwrap_or(false) {
                let rest = &buf[i..];
                // A longer value may still match here: wait for the bytes that decide.
                if !last && self.values.iter().any(|v| v.len() > rest.len() && v.starts_with(rest)) {
                    break;
                }
                for v in &self.values {
                    if rest.starts_with(v) {
                        out.extend_from_slice(MASK.as_bytes());
                        i += v.len();
                        continue 'scan;
                    }
                }
            }
            out.push(buf[i]);
            i += 1;
        }
        buf.drain(..i);
        out
    }

    /// Masks a whole text.
    pub fn text(&self, s: &str) -> String {
        let mut buf = s.as_bytes().to_vec();
        String::from_utf8_lossy(&self.take(&mut buf, true)).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_split_across_pieces_are_masked_and_short_ones_are_not() {
        let m = Masker::new([b"hunter2-secret".to_vec(), b"abc".to_vec(), b"hunter".to_vec()]);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for piece in ["token=hun", "ter2-sec", "ret abc hunte", "r end hun"] {
            buf.extend_from_slice(piece.as_bytes());
            out.extend(m.take(&mut buf, false));
        }
        out.extend(m.take(&mut buf, true));
        assert_eq!(String::from_utf8(out).expect("utf8"), "token=******** abc ******** end hun");
    }

    #[test]
    fn any_split_of_the_stream_masks_as_the_whole_does() {
        let m = Masker::new([b"abcdabce".to_vec(), b"abcd".to_vec(), b"xyzxyz".to_vec(), b"zzzz".to_vec()]);
        let text = b"abcdabcdabce xyzxyzxyz zzzzz abcabcdab abcdabcexyzxy".to_vec();
        let whole = m.take(&mut text.clone(), true);
        let mut seed = 7u64;
        for _ in 0..2_000 {
            let mut buf = Vec::new();
            let mut out = Vec::new();
            let mut at = 0;
            while at < text.len() {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let n = 1 + (seed >> 33) as usize % 6;
                let end = (at + n).min(text.len());
                buf.extend_from_slice(&text[at..end]);
                out.extend(m.take(&mut buf, false));
                at = end;
            }
            out.extend(m.take(&mut buf, true));
            assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&whole));
        }
    }

    #[test]
    fn a_key_is_masked_whole_and_line_by_line() {
        let key = "-----BEGIN KEY-----\nAAAABBBBCCCCDDDDEEEE\n-----END KEY-----\n";
        let m = Masker::new([key.as_bytes().to_vec()]);
        assert_eq!(m.text(&format!("x{key}y")), "x********\ny");
        assert_eq!(m.text("line AAAABBBBCCCCDDDDEEEE"), "line ********");
    }
}
