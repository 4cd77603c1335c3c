//! Wiping secret bytes from memory on the request path, a machine word at a
//! time.
//!
//! `zeroize` clears a `[u8]` with one volatile store per byte, so the
//! compiler can neither remove nor merge them: about 6,000 instructions per
//! read of a 2 KiB value (its plaintext and its response are both wiped),
//! 3% of the server's CPU under read load. Here the aligned middle of a
//! buffer is viewed as `[u64]` (through `zerocopy`, without `unsafe`) and
//! cleared with `zeroize`'s volatile stores of whole words: the same
//! guarantee, an eighth of the stores. Everything else (keys, small
//! credentials) keeps `zeroize` directly.

use zerocopy::FromBytes as _;
use zeroize::Zeroize as _;

/// Zeroes every byte of `buf` with volatile stores the compiler may not
/// remove: the unaligned ends byte by byte, the aligned middle by words.
pub fn bytes(buf: &mut [u8]) {
    let lead = buf
        .as_ptr()
        .align_offset(std::mem::align_of::<u64>())
        .min(buf.len());
    let (head, rest) = buf.split_at_mut(lead);
    let whole = rest.len() - rest.len() % std::mem::size_of::<u64>();
    let (middle, tail) = rest.split_at_mut(whole);
    head.zeroize();
    // Aligned and a whole number of words, so the view always succeeds;
    // if it ever did not, the bytes are still wiped, one at a time.
    if <[u64]>::mut_from_bytes(&mut *middle)
        .map(|words| words.zeroize())
        .is_err()
    {
        middle.zeroize();
    }
    tail.zeroize();
}

/// Zeroes a vector's whole allocation, its spare capacity too (a copy left
/// there by a shorter rewrite), then empties it. Never reallocates.
pub fn vec(v: &mut Vec<u8>) {
    zero_allocation(v);
    v.clear();
}

/// Leaves `v` as long as its capacity, every byte of it zeroed.
fn zero_allocation(v: &mut Vec<u8>) {
    v.resize(v.capacity(), 0);
    bytes(v);
}

/// Zeroes a string's whole allocation and leaves it empty.
pub fn string(s: &mut String) {
    let mut v = std::mem::take(s).into_bytes();
    vec(&mut v);
    // The emptied allocation goes back, so a caller that reuses `s` keeps it.
    if let Ok(empty) = String::from_utf8(v) {
        *s = empty;
    }
}

/// A string (a secret value) whose whole allocation is zeroed when it is
/// dropped: [`zeroize::Zeroizing<String>`] with word-sized stores.
pub struct WipedString(String);

impl WipedString {
    pub fn new(s: String) -> Self {
        WipedString(s)
    }
}

impl std::ops::Deref for WipedString {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// Never the value: a secret in a debug print would reach a log.
impl std::fmt::Debug for WipedString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WipedString({} bytes)", self.0.len())
    }
}

impl Drop for WipedString {
    fn drop(&mut self) {
        string(&mut self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Every byte of every sub-slice, whatever its alignment and length,
        /// and nothing outside it.
        #[test]
        fn bytes_zeroes_exactly_the_slice(len in 0usize..200, start in 0usize..16) {
            let mut buf = vec![0xa5u8; start + len + 16];
            bytes(&mut buf[start..start + len]);
            for (i, b) in buf.iter().enumerate() {
                let inside = (start..start + len).contains(&i);
                prop_assert_eq!(*b == 0, inside, "byte {} of {}..{}", i, start, start + len);
            }
        }

        /// The spare capacity too, in place.
        #[test]
        fn the_whole_allocation_is_zeroed(len in 0usize..300, spare in 0usize..300) {
            let mut v = vec![0x5au8; len + spare];
            v.truncate(len);
            let (ptr, cap) = (v.as_ptr(), v.capacity());
            zero_allocation(&mut v);
            prop_assert_eq!(v.as_ptr(), ptr);
            prop_assert_eq!(v.len(), cap);
            prop_assert!(v.iter().all(|&b| b == 0));
            vec(&mut v);
            prop_assert!(v.is_empty());
            prop_assert_eq!((v.as_ptr(), v.capacity()), (ptr, cap));
        }
    }

    #[test]
    fn a_wiped_string_keeps_its_allocation_and_hides_its_value() {
        let mut s = String::with_capacity(64);
        s.push_str("hunter2");
        let ptr = s.as_ptr();
        string(&mut s);
        assert!(s.is_empty());
        assert_eq!((s.as_ptr(), s.capacity()), (ptr, 64));
        let w = WipedString::new("hunter2".into());
        assert_eq!(&*w, "hunter2");
        assert_eq!(format!("{w:?}"), "WipedString(7 bytes)");
    }
}
