//! The trace of a run and its hash (I9).
//!
//! Every line of a run's trace (the world settings, each input with its time, each effect)
//! is fed to a 64-bit FNV-1a hash, offset basis `0xcbf29ce484222325`, prime
//! `0x100000001b3`, over the line's UTF-8 bytes followed by `\n`. Two runs of one seed must
//! give the same hash; the lines themselves are kept only when asked (`--trace`, or a
//! failing seed's replay), so the hash costs no allocation.
//!
//! ```
//! use persistent_connection_sim::trace::Fnv1a;
//! use std::fmt::Write;
//!
//! let mut h = Fnv1a::new();
//! write!(h, "a").unwrap();
//! assert_eq!(h.finish(), 0xaf63dc4c8601ec8c); // FNV-1a 64 of "a"
//! ```

use std::fmt;

/// 64-bit FNV-1a, fed through [`fmt::Write`] so `Debug` output hashes without allocating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fnv1a(u64);

impl Fnv1a {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    /// The empty hash.
    pub fn new() -> Self {
        Fnv1a(Self::OFFSET)
    }

    /// Adds bytes.
    pub fn write_bytes(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }

    /// The hash so far.
    pub fn finish(&self) -> u64 {
        self.0
    }
}

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a::new()
    }
}

impl fmt::Write for Fnv1a {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.write_bytes(s.as_bytes());
        Ok(())
    }
}

/// A run's trace: always hashed, kept as text only when asked.
#[derive(Debug, Default)]
pub struct Trace {
    hash: Fnv1a,
    text: Option<String>,
    lines: u64,
    off: bool,
}

impl Trace {
    /// A trace that only hashes (`keep = false`) or also keeps its text.
    pub fn new(keep: bool) -> Self {
        Trace {
            hash: Fnv1a::new(),
            text: keep.then(String::new),
            lines: 0,
            off: false,
        }
    }

    /// A trace that formats nothing (its hash stays that of no lines): for drivers that
    /// check determinism another way and cannot afford formatting every step (the fuzzer).
    pub fn off() -> Self {
        Trace {
            off: true,
            ..Trace::new(false)
        }
    }

    /// Appends one line (without its newline).
    pub fn line(&mut self, args: fmt::Arguments<'_>) {
        use fmt::Write;
        if self.off {
            return;
        }
        // Writing into these never fails.
        let _ = self.hash.write_fmt(args);
        self.hash.write_bytes(b"\n");
        if let Some(text) = &mut self.text {
            let _ = text.write_fmt(args);
            text.push('\n');
        }
        self.lines += 1;
    }

    /// The hash of all lines so far.
    pub fn hash(&self) -> u64 {
        self.hash.finish()
    }

    /// The number of lines so far.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// The text, if kept.
    pub fn text(&self) -> Option<&str> {
        self.text.as_deref()
    }
}
