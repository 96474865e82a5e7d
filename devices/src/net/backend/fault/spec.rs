//! What the fault hook does, parsed from its one-line form (`reorder=5,dup=2,seed=7`), and the
//! seeded generator that decides, frame by frame, whether it does it.
//!
//! The generator is a xorshift64* sequence: tiny, deterministic for a seed, and good enough to
//! spread faults evenly; it is not for anything that needs unpredictability.

use std::fmt;
use std::str::FromStr;

/// The seed used when the spec names none.
const DEFAULT_SEED: u64 = 1;

/// How often the fault hook perturbs frames, in whole percent per frame and direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultSpec {
    /// Percentage of frames held back and delivered after the next frame (0–100).
    pub reorder_pct: u8,
    /// Percentage of frames delivered twice (0–100).
    pub dup_pct: u8,
    /// Seed of the generator; the same seed and traffic give the same faults.
    pub seed: u64,
}

impl Default for FaultSpec {
    fn default() -> Self {
        FaultSpec {
            reorder_pct: 0,
            dup_pct: 0,
            seed: DEFAULT_SEED,
        }
    }
}

impl fmt::Display for FaultSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "reorder {}% dup {}% seed {}",
            self.reorder_pct, self.dup_pct, self.seed
        )
    }
}

/// Why a fault spec could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultSpecError {
    /// An item is not `key=value`, or the key is unknown.
    #[error("bad fault spec item {item:?} in {spec:?}: expected reorder=PCT, dup=PCT or seed=N, comma-separated (e.g. reorder=5,dup=2,seed=7)")]
    Item {
        /// The whole spec.
        spec: String,
        /// The offending item.
        item: String,
    },
    /// A percentage is not a whole number from 0 to 100, or the seed is not a u64.
    #[error("bad fault spec value {key}={value:?} in {spec:?}: {expected}")]
    Value {
        /// The whole spec.
        spec: String,
        /// The key whose value is wrong.
        key: &'static str,
        /// The value as written.
        value: String,
        /// What the value must be.
        expected: &'static str,
    },
    /// The spec names no fault at all.
    #[error("empty fault spec {spec:?}: name at least one of reorder=PCT or dup=PCT (e.g. reorder=5,dup=2,seed=7)")]
    Empty {
        /// The whole spec.
        spec: String,
    },
}

impl FromStr for FaultSpec {
    type Err = FaultSpecError;

    fn from_str(s: &str) -> Result<Self, FaultSpecError> {
        let mut spec = FaultSpec::default();
        let mut named_fault = false;
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let bad_item = || FaultSpecError::Item {
                spec: s.to_string(),
                item: item.to_string(),
            };
            let (key, value) = item.split_once('=').ok_or_else(bad_item)?;
            let value = value.trim();
            let bad_value = |key, expected| FaultSpecError::Value {
                spec: s.to_string(),
                key,
                value: value.to_string(),
                expected,
            };
            let pct = |key| {
                value
                    .parse::<u8>()
                    .ok()
                    .filter(|p| *p <= 100)
                    .ok_or_else(|| bad_value(key, "expected a whole percentage from 0 to 100"))
            };
            match key.trim() {
                "reorder" => {
                    spec.reorder_pct = pct("reorder")?;
                    named_fault = true;
                }
                "dup" => {
                    spec.dup_pct = pct("dup")?;
                    named_fault = true;
                }
                "seed" => {
                    spec.seed = value.parse().map_err(|_| {
                        bad_value("seed", "expected a whole number from 0 to 2^64-1")
                    })?;
                }
                _ => return Err(bad_item()),
            }
        }
        if !named_fault {
            return Err(FaultSpecError::Empty {
                spec: s.to_string(),
            });
        }
        Ok(spec)
    }
}

/// A xorshift64* generator: deterministic for a seed.
#[derive(Debug, Clone)]
pub(super) struct FaultRng(u64);

impl FaultRng {
    /// A generator for `seed` (0, a fixed point of xorshift, is replaced by a constant).
    pub(super) fn new(seed: u64) -> Self {
        FaultRng(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub(super) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// True with probability `pct`/100. Draws nothing when `pct` is 0, so a direction
    /// without faults does not shift the sequence of the others.
    pub(super) fn chance(&mut self, pct: u8) -> bool {
        pct != 0 && (self.next_u64() >> 32) % 100 < u64::from(pct)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        let s: FaultSpec = "reorder=5,dup=2,seed=7".parse().unwrap();
        assert_eq!(
            s,
            FaultSpec {
                reorder_pct: 5,
                dup_pct: 2,
                seed: 7
            }
        );
        assert_eq!(s.to_string(), "reorder 5% dup 2% seed 7");
        let s: FaultSpec = " dup=100 ".parse().unwrap();
        assert_eq!((s.reorder_pct, s.dup_pct, s.seed), (0, 100, DEFAULT_SEED));
    }

    #[test]
    fn bad_specs_name_the_value() {
        let e = "reorder=101".parse::<FaultSpec>().unwrap_err().to_string();
        assert!(
            e.contains("reorder=\"101\"") && e.contains("0 to 100"),
            "{e}"
        );
        let e = "reorder=5,drop=3"
            .parse::<FaultSpec>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"drop=3\""), "{e}");
        let e = "reorder".parse::<FaultSpec>().unwrap_err().to_string();
        assert!(e.contains("\"reorder\""), "{e}");
        let e = "seed=x,dup=1".parse::<FaultSpec>().unwrap_err().to_string();
        assert!(e.contains("seed=\"x\""), "{e}");
        let e = "seed=3".parse::<FaultSpec>().unwrap_err().to_string();
        assert!(e.contains("empty fault spec"), "{e}");
        assert!("".parse::<FaultSpec>().is_err());
    }

    #[test]
    fn chances_follow_the_percentage() {
        let mut rng = FaultRng::new(7);
        let hits = (0..100_000).filter(|_| rng.chance(5)).count();
        assert!((4_500..5_500).contains(&hits), "{hits}");
        assert!((0..1000).all(|_| !rng.chance(0)));
        assert!((0..1000).all(|_| rng.chance(100)));
    }
}
