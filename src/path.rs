//! Secret paths and version numbers, parsed once at the edge.
//!
//! Everything past the HTTP and CLI boundary takes a [`SecretPath`] or a
//! [`Version`], never a raw string, so authorization, storage, the AEAD
//! associated data and the logs all see the same canonical value.
//!
//! Grammar: `tfy-secret/<seg>/<seg>/...` with at least one segment after the
//! root; a segment is 1-128 bytes of `A-Z a-z 0-9 . _ - @ + = , ~` and never
//! `.` or `..`; the whole path is at most 512 bytes and 16 segments counting
//! the root. One leading `/` is accepted and dropped.

use std::fmt;

/// The fixed mount point of TrueFoundry's Generic Secret Store.
pub const ROOT: &str = "tfy-secret";
/// Longest accepted path, in bytes, root included.
pub const MAX_PATH_BYTES: usize = 512;
/// Most segments in a path, root included.
pub const MAX_SEGMENTS: usize = 16;
/// Longest accepted segment, in bytes.
pub const MAX_SEGMENT_BYTES: usize = 128;

/// Why a path was refused. Messages never echo the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path must start with tfy-secret/")]
    OutsideRoot,
    #[error("path must not be empty")]
    Empty,
    #[error("path is longer than 512 bytes")]
    TooLong,
    #[error("path has more than 16 segments")]
    TooManySegments,
    #[error("path has an empty segment (a doubled or trailing '/')")]
    EmptySegment,
    #[error("path segments must not be '.' or '..'")]
    DotSegment,
    #[error("path segment is longer than 128 bytes")]
    SegmentTooLong,
    #[error("path segments may contain only A-Z a-z 0-9 . _ - @ + = , ~")]
    BadCharacter,
    #[error("the root path tfy-secret holds no value of its own; name a secret below it")]
    IsRoot,
}

/// A validated, canonical secret path below the root, e.g.
/// `tfy-secret/acme/prod/db-password`. The field is private: the only way to
/// get one is [`SecretPath::parse`] (or [`PathArg::parse`]).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretPath(String);

/// What a `path` argument names: the root itself (the integration's
/// validation call) or one secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathArg {
    Root,
    Secret(SecretPath),
}

impl PathArg {
    /// Parses a raw path as sent by a client.
    pub fn parse(raw: &str) -> Result<Self, PathError> {
        let s = raw.strip_prefix('/').unwrap_or(raw);
        if s.is_empty() {
            return Err(if raw.is_empty() {
                PathError::Empty
            } else {
                PathError::OutsideRoot
            });
        }
        if s == ROOT || s == "tfy-secret/" {
            return Ok(PathArg::Root);
        }
        let Some(rest) = s.strip_prefix("tfy-secret/") else {
            return Err(PathError::OutsideRoot);
        };
        if s.len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong);
        }
        let mut count = 1;
        for seg in rest.split('/') {
            count += 1;
            if count > MAX_SEGMENTS {
                return Err(PathError::TooManySegments);
            }
            validate_segment(seg)?;
        }
        Ok(PathArg::Secret(SecretPath(s.to_owned())))
    }

    /// Parses what a person types: a path if it has slashes (or is the
    /// root), else an FQN (`acme:prod:db-password`).
    pub fn parse_name(name: &str) -> Result<Self, PathError> {
        if name.contains('/') || name == ROOT {
            Self::parse(name)
        } else {
            SecretPath::from_fqn(name).map(PathArg::Secret)
        }
    }

    /// The canonical text (`tfy-secret` for the root).
    pub fn as_str(&self) -> &str {
        match self {
            PathArg::Root => ROOT,
            PathArg::Secret(p) => p.as_str(),
        }
    }
}

fn validate_segment(seg: &str) -> Result<(), PathError> {
    if seg.is_empty() {
        return Err(PathError::EmptySegment);
    }
    if seg == "." || seg == ".." {
        return Err(PathError::DotSegment);
    }
    if seg.len() > MAX_SEGMENT_BYTES {
        return Err(PathError::SegmentTooLong);
    }
    if !seg.bytes().all(is_segment_byte) {
        return Err(PathError::BadCharacter);
    }
    Ok(())
}

fn is_segment_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@' | b'+' | b'=' | b',' | b'~')
}

impl SecretPath {
    /// Parses a path that must name a secret (not the root).
    pub fn parse(raw: &str) -> Result<Self, PathError> {
        match PathArg::parse(raw)? {
            PathArg::Root => Err(PathError::IsRoot),
            PathArg::Secret(p) => Ok(p),
        }
    }

    /// Maps a TrueFoundry FQN (`acme:prod:db-password`) to its path
    /// (`tfy-secret/acme/prod/db-password`) by replacing colons with slashes.
    pub fn from_fqn(fqn: &str) -> Result<Self, PathError> {
        if fqn.is_empty() {
            return Err(PathError::Empty);
        }
        let mut raw = String::with_capacity(ROOT.len() + 1 + fqn.len());
        raw.push_str(ROOT);
        raw.push('/');
        raw.push_str(&fqn.replace(':', "/"));
        Self::parse(&raw)
    }

    /// The canonical text, e.g. `tfy-secret/acme/prod/db-password`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The FQN form, e.g. `acme:prod:db-password`.
    pub fn to_fqn(&self) -> String {
        self.0[ROOT.len() + 1..].replace('/', ":")
    }
}

impl fmt::Display for SecretPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SecretPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretPath({})", self.0)
    }
}

/// Why a version was refused. Messages never echo the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    #[error("version must be a positive integer")]
    NotAnInteger,
    #[error("version must be at least 1")]
    NotPositive,
    #[error("version is larger than 9223372036854775807")]
    TooLarge,
}

/// A version number of one secret: 1 ..= 2^63-1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version(u64);

impl Version {
    pub const FIRST: Version = Version(1);
    pub const MAX: u64 = i64::MAX as u64;

    /// Builds a version from a number already known to be in range (from the
    /// store). Out-of-range numbers are refused.
    pub fn new(n: u64) -> Result<Self, VersionError> {
        match n {
            0 => Err(VersionError::NotPositive),
            n if n > Self::MAX => Err(VersionError::TooLarge),
            n => Ok(Version(n)),
        }
    }

    /// Parses a version as written in a query string or a JSON string:
    /// decimal digits, optionally followed by a fraction of zeros (`3.0`,
    /// because TrueFoundry's SDK models versions as floats). Zero, signs,
    /// other fractions, exponents and anything else are refused.
    pub fn parse(raw: &str) -> Result<Self, VersionError> {
        let (int, frac) = match raw.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (raw, None),
        };
        if let Some(frac) = frac {
            if frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) {
                return Err(VersionError::NotAnInteger);
            }
            if frac.bytes().any(|b| b != b'0') {
                return Err(VersionError::NotAnInteger);
            }
        }
        if let Some(rest) = int.strip_prefix('-') {
            if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) {
                return Err(VersionError::NotPositive);
            }
            return Err(VersionError::NotAnInteger);
        }
        if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
            return Err(VersionError::NotAnInteger);
        }
        let digits = int.trim_start_matches('0');
        if digits.is_empty() {
            return Err(VersionError::NotPositive);
        }
        if digits.len() > 19 {
            return Err(VersionError::TooLarge);
        }
        let n: u64 = digits.parse().map_err(|_| VersionError::TooLarge)?;
        Self::new(n)
    }

    /// Reads a version from the raw JSON text of a body field: a number
    /// literal or a string, both read by [`Version::parse`] on their literal
    /// text, so `3.0` and `"3"` name version 3 while `3.9999999999999999`
    /// and `1e0` are refused instead of being rounded through a float.
    pub fn from_json_text(raw: &str) -> Result<Self, VersionError> {
        let raw = raw.trim();
        if raw.starts_with('"') {
            let s: String = serde_json::from_str(raw).map_err(|_| VersionError::NotAnInteger)?;
            Self::parse(&s)
        } else {
            Self::parse(raw)
        }
    }

    pub fn get(self) -> u64 {
        self.0
    }

    /// The version as the signed 64-bit integer SQL stores.
    pub fn as_i64(self) -> i64 {
        // Invariant: self.0 <= i64::MAX.
        self.0 as i64
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let ok = [
            ("tfy-secret/a", "tfy-secret/a"),
            (
                "/tfy-secret/acme/prod/db-password",
                "tfy-secret/acme/prod/db-password",
            ),
            (
                "tfy-secret/A.b_c-d@e+f=g,h~i",
                "tfy-secret/A.b_c-d@e+f=g,h~i",
            ),
            ("tfy-secret/...", "tfy-secret/..."),
        ];
        for (raw, canon) in ok {
            assert_eq!(
                SecretPath::parse(raw).map(|p| p.0),
                Ok(canon.to_owned()),
                "{raw}"
            );
        }
        let bad = [
            ("", PathError::Empty),
            ("/", PathError::OutsideRoot),
            ("//tfy-secret/a", PathError::OutsideRoot),
            ("other/a", PathError::OutsideRoot),
            ("tfy-secretx/a", PathError::OutsideRoot),
            ("tfy-secret", PathError::IsRoot),
            ("/tfy-secret/", PathError::IsRoot),
            ("tfy-secret//a", PathError::EmptySegment),
            ("tfy-secret/a/", PathError::EmptySegment),
            ("tfy-secret/a/./b", PathError::DotSegment),
            ("tfy-secret/..", PathError::DotSegment),
            ("tfy-secret/a b", PathError::BadCharacter),
            ("tfy-secret/a\\b", PathError::BadCharacter),
            ("tfy-secret/a\nb", PathError::BadCharacter),
            ("tfy-secret/\u{0430}", PathError::BadCharacter),
        ];
        for (raw, err) in bad {
            assert_eq!(SecretPath::parse(raw), Err(err), "{raw:?}");
        }
    }

    #[test]
    fn path_limits() {
        let seg = "a".repeat(128);
        assert!(SecretPath::parse(&format!("tfy-secret/{seg}")).is_ok());
        assert_eq!(
            SecretPath::parse(&format!("tfy-secret/{seg}a")),
            Err(PathError::SegmentTooLong)
        );
        let fifteen = vec!["s"; 15].join("/");
        assert!(SecretPath::parse(&format!("tfy-secret/{fifteen}")).is_ok());
        assert_eq!(
            SecretPath::parse(&format!("tfy-secret/{fifteen}/s")),
            Err(PathError::TooManySegments)
        );
        // 11 + 3*128 + 3 + n = 512 -> exactly at the limit
        let long = format!(
            "tfy-secret/{seg}/{seg}/{seg}/{}",
            "b".repeat(512 - 11 - 3 * 129)
        );
        assert_eq!(long.len(), 512);
        assert!(SecretPath::parse(&long).is_ok());
        assert_eq!(
            SecretPath::parse(&format!("{long}b")),
            Err(PathError::TooLong)
        );
    }

    #[test]
    fn fqn() {
        let p = SecretPath::from_fqn("acme:prod:db-password").map(|p| p.0);
        assert_eq!(p, Ok("tfy-secret/acme/prod/db-password".to_owned()));
        assert_eq!(SecretPath::from_fqn("a::b"), Err(PathError::EmptySegment));
        assert_eq!(SecretPath::from_fqn(""), Err(PathError::Empty));
        let p = SecretPath::parse("tfy-secret/a/b").map(|p| p.to_fqn());
        assert_eq!(p, Ok("a:b".to_owned()));
    }

    #[test]
    fn versions() {
        for (raw, n) in [("1", 1), ("3", 3), ("3.0", 3), ("03", 3), ("7.000", 7)] {
            assert_eq!(Version::parse(raw), Ok(Version(n)), "{raw}");
        }
        assert_eq!(
            Version::parse("9223372036854775807").map(Version::get),
            Ok(i64::MAX as u64)
        );
        let bad = [
            ("0", VersionError::NotPositive),
            ("0.0", VersionError::NotPositive),
            ("-1", VersionError::NotPositive),
            ("1.5", VersionError::NotAnInteger),
            ("abc", VersionError::NotAnInteger),
            ("", VersionError::NotAnInteger),
            ("1.", VersionError::NotAnInteger),
            (".0", VersionError::NotAnInteger),
            ("+1", VersionError::NotAnInteger),
            ("1e2", VersionError::NotAnInteger),
            ("NaN", VersionError::NotAnInteger),
            (" 1", VersionError::NotAnInteger),
            ("9223372036854775808", VersionError::TooLarge),
            ("18446744073709551616", VersionError::TooLarge),
        ];
        for (raw, err) in bad {
            assert_eq!(Version::parse(raw), Err(err), "{raw:?}");
        }
    }

    #[test]
    fn json_versions() {
        let v = Version::from_json_text;
        assert_eq!(v("2"), Ok(Version(2)));
        assert_eq!(v(" 2 "), Ok(Version(2)));
        assert_eq!(v("2.0"), Ok(Version(2)));
        assert_eq!(v("\"2\""), Ok(Version(2)));
        assert_eq!(v("\"2.0\""), Ok(Version(2)));
        assert_eq!(v("0"), Err(VersionError::NotPositive));
        assert_eq!(v("-3"), Err(VersionError::NotPositive));
        assert_eq!(v("2.5"), Err(VersionError::NotAnInteger));
        assert_eq!(v("3.9999999999999999"), Err(VersionError::NotAnInteger));
        assert_eq!(v("2.0000000000000001"), Err(VersionError::NotAnInteger));
        assert_eq!(v("1e0"), Err(VersionError::NotAnInteger));
        assert_eq!(v("9007199254740993"), Ok(Version(9_007_199_254_740_993)));
        assert_eq!(v("9223372036854775808"), Err(VersionError::TooLarge));
        assert_eq!(v("1e30"), Err(VersionError::NotAnInteger));
        assert_eq!(v("true"), Err(VersionError::NotAnInteger));
        assert_eq!(v("[1]"), Err(VersionError::NotAnInteger));
        assert_eq!(v("\"\\u0031\""), Ok(Version(1)));
    }
}
