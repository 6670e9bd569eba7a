//! Which instruction set wick's CPU kernels (quantized matmuls, activation quantization,
//! attention) run on: chosen once per process from what the CPU reports
//! (`is_x86_feature_detected!`), so a portable x86-64-v3 build still uses AVX-512 where the
//! CPU has it. `WICK_KERNELS=avx512|avx2|scalar` forces a level (tests, benchmarks); a level
//! the CPU lacks falls back to the best it has, with a warning. The choice never changes
//! within a process, so a row's result cannot depend on which kernel a step happened to use.
//! AMX is never used.

use std::sync::OnceLock;

/// A set of kernels, from the portable one up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KernelLevel {
    /// Plain Rust, any CPU.
    Scalar,
    /// AVX2, FMA and F16C (x86-64-v3).
    Avx2,
    /// AVX-512 F/BW/VL with VNNI (`vpdpbusd`), on top of AVX2.
    Avx512,
}

impl KernelLevel {
    /// Every level, lowest first.
    pub const ALL: [KernelLevel; 3] = [KernelLevel::Scalar, KernelLevel::Avx2, KernelLevel::Avx512];

    /// The name `WICK_KERNELS` takes and the logs print.
    pub fn name(self) -> &'static str {
        match self {
            KernelLevel::Scalar => "scalar",
            KernelLevel::Avx2 => "avx2",
            KernelLevel::Avx512 => "avx512",
        }
    }

    /// Parses a `WICK_KERNELS` value.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.name().eq_ignore_ascii_case(s.trim()))
    }

    /// Whether this CPU can run the level.
    pub fn supported(self) -> bool {
        match self {
            KernelLevel::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            KernelLevel::Avx2 => {
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            KernelLevel::Avx512 => {
                KernelLevel::Avx2.supported()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The best level this CPU runs.
    pub fn best() -> Self {
        Self::ALL.into_iter().rev().find(|l| l.supported()).unwrap_or(KernelLevel::Scalar)
    }

    /// Every level this CPU runs (tests run each).
    pub fn available() -> Vec<Self> {
        Self::ALL.into_iter().filter(|l| l.supported()).collect()
    }

    /// The process's level: `WICK_KERNELS` if set and supported, else the best; fixed at the
    /// first call.
    pub fn current() -> Self {
        static LEVEL: OnceLock<KernelLevel> = OnceLock::new();
        *LEVEL.get_or_init(|| {
            let best = Self::best();
            let Ok(forced) = std::env::var("WICK_KERNELS") else { return best };
            match Self::parse(&forced) {
                Some(l) if l.supported() => l,
                Some(l) => {
                    tracing::warn!("WICK_KERNELS={forced}: this CPU cannot run {}; using {}", l.name(), best.name());
                    best
                }
                None => {
                    tracing::warn!("WICK_KERNELS={forced} is not one of avx512, avx2, scalar; using {}", best.name());
                    best
                }
            }
        })
    }
}

impl std::fmt::Display for KernelLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_levels_are_ordered() {
        for l in KernelLevel::ALL {
            assert_eq!(KernelLevel::parse(l.name()), Some(l));
        }
        assert_eq!(KernelLevel::parse(" AVX2 "), Some(KernelLevel::Avx2));
        assert_eq!(KernelLevel::parse("amx"), None);
        assert!(KernelLevel::Scalar < KernelLevel::Avx2 && KernelLevel::Avx2 < KernelLevel::Avx512);
        let avail = KernelLevel::available();
        assert_eq!(avail[0], KernelLevel::Scalar);
        assert_eq!(*avail.last().unwrap(), KernelLevel::best());
        assert!(KernelLevel::current().supported());
        eprintln!("kernel levels on this CPU: {avail:?}; this process runs {}", KernelLevel::current());
    }
}
