//! What the fault hook does, parsed from its one-line form (`loss=5,reorder=5,dup=1,seed=7`),
//! and the
//! seeded generator that decides, frame by frame, whether it does it.
//!
//! The generator is a xorshift64* sequence: tiny, deterministic for a seed, and good enough to
//! spread faults evenly; it is not for anything that needs unpredictability.

use std::fmt;
use std::str::FromStr;

/// The seed used when the spec names none.
const DEFAULT_SEED: u64 = 1;

/// How often one direction's frames are perturbed, in whole percent per frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultRates {
    /// Percentage of frames held back and delivered after the next frame (0–100).
    pub reorder_pct: u8,
    /// Percentage of frames delivered twice (0–100).
    pub dup_pct: u8,
    /// Percentage of frames lost (0–100).
    pub loss_pct: u8,
}

impl fmt::Display for FaultRates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.loss_pct != 0 {
            write!(f, "loss {}% ", self.loss_pct)?;
        }
        write!(f, "reorder {}% dup {}%", self.reorder_pct, self.dup_pct)
    }
}

/// What the fault hook does: rates per direction and the generator's seed.
///
/// One-line form: comma-separated `key=value` items. `loss=PCT`, `reorder=PCT` and `dup=PCT`
/// set both directions; `tx_loss`, `tx_reorder`, `tx_dup` (guest → host) and `rx_loss`,
/// `rx_reorder`, `rx_dup` (host → guest) set one, overriding what comes before them;
/// `seed=N` seeds the generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultSpec {
    /// Rates for frames the guest sends.
    pub tx: FaultRates,
    /// Rates for frames sent to the guest.
    pub rx: FaultRates,
    /// Seed of the generator; the same seed and traffic give the same faults.
    pub seed: u64,
}

impl FaultSpec {
    /// The same rates both ways.
    pub fn both_ways(reorder_pct: u8, dup_pct: u8, seed: u64) -> Self {
        let rates = FaultRates {
            reorder_pct,
            dup_pct,
            loss_pct: 0,
        };
        FaultSpec {
            tx: rates,
            rx: rates,
            seed,
        }
    }
}

impl Default for FaultSpec {
    fn default() -> Self {
        FaultSpec::both_ways(0, 0, DEFAULT_SEED)
    }
}

impl fmt::Display for FaultSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.tx == self.rx {
            write!(f, "{} seed {}", self.tx, self.seed)
        } else {
            write!(
                f,
                "guest to host {}, host to guest {}, seed {}",
                self.tx, self.rx, self.seed
            )
        }
    }
}

/// Why a fault spec could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultSpecError {
    /// An item is not `key=value`, or the key is unknown.
    #[error("bad fault spec item {item:?} in {spec:?}: expected comma-separated loss=PCT, reorder=PCT, dup=PCT, their tx_ and rx_ forms (tx_loss=PCT, rx_dup=PCT, ...) or seed=N (e.g. loss=5,reorder=5,dup=1,seed=7)")]
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
        key: String,
        /// The value as written.
        value: String,
        /// What the value must be.
        expected: &'static str,
    },
    /// The spec names no fault at all.
    #[error("empty fault spec {spec:?}: name at least one rate, e.g. reorder=5,dup=2,seed=7")]
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
            let (key, value) = (key.trim(), value.trim());
            let bad_value = |expected| FaultSpecError::Value {
                spec: s.to_string(),
                key: key.to_string(),
                value: value.to_string(),
                expected,
            };
            if key == "seed" {
                spec.seed = value
                    .parse()
                    .map_err(|_| bad_value("expected a whole number from 0 to 2^64-1"))?;
                continue;
            }
            let (dirs, kind) = match key.split_once('_') {
                Some(("tx", kind)) => ((true, false), kind),
                Some(("rx", kind)) => ((false, true), kind),
                Some(_) => return Err(bad_item()),
                None => ((true, true), key),
            };
            let pct = value
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= 100)
                .ok_or_else(|| bad_value("expected a whole percentage from 0 to 100"))?;
            for (on, rates) in [(dirs.0, &mut spec.tx), (dirs.1, &mut spec.rx)] {
                if !on {
                    continue;
                }
                match kind {
                    "reorder" => rates.reorder_pct = pct,
                    "dup" => rates.dup_pct = pct,
                    "loss" => rates.loss_pct = pct,
                    _ => return Err(bad_item()),
                }
            }
            named_fault = true;
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
        assert_eq!(s, FaultSpec::both_ways(5, 2, 7));
        assert_eq!(s.to_string(), "reorder 5% dup 2% seed 7");
        let s: FaultSpec = " dup=100 ".parse().unwrap();
        assert_eq!(s, FaultSpec::both_ways(0, 100, DEFAULT_SEED));
        let s: FaultSpec = "loss=4,reorder=5,dup=2,tx_reorder=0,rx_dup=3,rx_loss=1"
            .parse()
            .unwrap();
        assert_eq!(
            (s.tx, s.rx),
            (
                FaultRates {
                    reorder_pct: 0,
                    dup_pct: 2,
                    loss_pct: 4,
                },
                FaultRates {
                    reorder_pct: 5,
                    dup_pct: 3,
                    loss_pct: 1,
                }
            )
        );
        assert_eq!(
            s.to_string(),
            "guest to host loss 4% reorder 0% dup 2%, host to guest loss 1% reorder 5% dup 3%, seed 1"
        );
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
        let e = "up_dup=3".parse::<FaultSpec>().unwrap_err().to_string();
        assert!(e.contains("\"up_dup=3\""), "{e}");
        let e = "tx_drop=3".parse::<FaultSpec>().unwrap_err().to_string();
        assert!(e.contains("\"tx_drop=3\""), "{e}");
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
