#![doc = include_str!("../guide.md")]

/// The repository README's example, compiled as a doctest so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct Readme;
