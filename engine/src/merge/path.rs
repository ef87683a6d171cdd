//! Which instruction set the CPU merge uses ([`MergePath`]) and the runtime
//! detection that decides which paths this CPU may run.
//!
//! Detection goes through `is_x86_feature_detected!`, which caches the CPUID
//! answer after the first call, so asking again is one atomic load. Builds for
//! other architectures (32-bit x86 included) compile the scalar path only and
//! report the SIMD paths as unavailable.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// An implementation of the merge kernels. Every path gives bit-identical pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MergePath {
    /// A plain byte-at-a-time loop: the portable fallback and the baseline the
    /// SIMD paths are measured against.
    Scalar,
    /// 32-byte AVX2 loads and stores with overlapping tails.
    Avx2,
    /// 64-byte AVX-512 loads and stores with byte-masked tails (needs
    /// AVX-512F and AVX-512BW).
    Avx512,
}

impl MergePath {
    /// Every path, slowest first.
    pub const ALL: [MergePath; 3] = [MergePath::Scalar, MergePath::Avx2, MergePath::Avx512];

    /// True when this CPU can run the path.
    pub fn is_available(self) -> bool {
        match self {
            MergePath::Scalar => true,
            MergePath::Avx2 => has_avx2(),
            MergePath::Avx512 => has_avx512(),
        }
    }

    /// The fastest path this CPU can run.
    pub fn best_available() -> MergePath {
        Self::ALL
            .into_iter()
            .rev()
            .find(|path| path.is_available())
            .unwrap_or(MergePath::Scalar)
    }

    /// The paths this CPU can run, slowest first.
    pub fn available() -> Vec<MergePath> {
        Self::ALL
            .into_iter()
            .filter(|path| path.is_available())
            .collect()
    }

    /// Short lower-case name: `scalar`, `avx2` or `avx512`.
    pub fn name(self) -> &'static str {
        match self {
            MergePath::Scalar => "scalar",
            MergePath::Avx2 => "avx2",
            MergePath::Avx512 => "avx512",
        }
    }

    /// Why the path cannot run here, or `Ok` when it can.
    pub fn check_available(self) -> Result<()> {
        if self.is_available() {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!(
                "merge path {self} is not supported by this CPU"
            )))
        }
    }
}

impl fmt::Display for MergePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for MergePath {
    type Err = Error;

    /// Parses the names [`MergePath::name`] gives (case-insensitive).
    fn from_str(text: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|path| path.name().eq_ignore_ascii_case(text.trim()))
            .ok_or_else(|| Error::InvalidArgument(format!("unknown merge path {text:?}")))
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
}

#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
}

#[cfg(not(target_arch = "x86_64"))]
fn has_avx2() -> bool {
    false
}

#[cfg(not(target_arch = "x86_64"))]
fn has_avx512() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalar_is_always_available() {
        assert!(MergePath::Scalar.is_available());
        assert!(MergePath::available().contains(&MergePath::Scalar));
    }

    #[test]
    fn best_available_is_available_and_the_fastest() {
        let best = MergePath::best_available();
        assert!(best.is_available());
        assert_eq!(MergePath::available().last().copied(), Some(best));
    }

    #[test]
    fn names_round_trip() {
        for path in MergePath::ALL {
            assert_eq!(path.name().parse::<MergePath>().ok(), Some(path));
            assert_eq!(path.to_string(), path.name());
        }
        assert_eq!("AVX2".parse::<MergePath>().ok(), Some(MergePath::Avx2));
        assert!(matches!(
            "sse9".parse::<MergePath>(),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn availability_check_agrees_with_is_available() {
        for path in MergePath::ALL {
            assert_eq!(path.check_available().is_ok(), path.is_available());
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_needs_avx2_too_on_every_real_cpu() {
        // Every CPU with AVX-512BW also has AVX2; best_available relies on the
        // order of ALL, so an inversion would pick a path that is not the best.
        if MergePath::Avx512.is_available() {
            assert!(MergePath::Avx2.is_available());
        } else {
            eprintln!("skipping AVX-512 ordering check: not supported on this CPU");
        }
    }
}
