//! Token usage and its cost, in integers only.
//!
//! A price of `$X` per million tokens is `X` microdollars per token. Prices are kept in
//! **picodollars per token** (`X × 10⁶`), parsed from the profile's decimal text with at
//! most six decimal places, so every price the profile can write is exact. A request's
//! cost is summed in picodollars (in `u128`, no overflow) and **rounded once, half up, to
//! whole microdollars** — the unit of `ai_requests.cost_microdollars`.
//!
//! Token classes follow Anthropic's convention, which the other providers' reports are
//! converted to: `input` is input read neither from nor into the prompt cache; cache reads
//! and cache writes are counted (and priced) separately; `output` includes reasoning
//! ("thinking") tokens.

use std::fmt;

/// Picodollars per token for each class of token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Price {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
}

/// Tokens as the provider reported them; `None` where it reported nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: Option<u64>,
    pub output: Option<u64>,
    pub cache_read: Option<u64>,
    pub cache_write: Option<u64>,
}

impl Usage {
    /// Usage from a report whose input count includes the tokens read from cache (OpenAI's
    /// formats): Warden counts those apart, as `cache_read`.
    pub fn cache_included(input: Option<u64>, cached: Option<u64>, output: Option<u64>) -> Usage {
        Usage {
            input: input.map(|i| i.saturating_sub(cached.unwrap_or(0))),
            output,
            cache_read: cached,
            cache_write: None,
        }
    }

    /// Takes every count `later` reports (providers report cumulative counts).
    pub fn merge(&mut self, later: Usage) {
        self.input = later.input.or(self.input);
        self.output = later.output.or(self.output);
        self.cache_read = later.cache_read.or(self.cache_read);
        self.cache_write = later.cache_write.or(self.cache_write);
    }

    /// True when the provider reported no count at all.
    pub fn is_empty(&self) -> bool {
        self.input.is_none()
            && self.output.is_none()
            && self.cache_read.is_none()
            && self.cache_write.is_none()
    }

    /// Every token the provider processed (for token budgets).
    pub fn total(&self) -> u64 {
        [self.input, self.output, self.cache_read, self.cache_write]
            .iter()
            .map(|t| t.unwrap_or(0))
            .fold(0u64, u64::saturating_add)
    }

    /// All input tokens, cached or not (what OpenAI calls `prompt_tokens`).
    pub fn prompt_total(&self) -> u64 {
        [self.input, self.cache_read, self.cache_write]
            .iter()
            .map(|t| t.unwrap_or(0))
            .fold(0u64, u64::saturating_add)
    }
}

/// The cost of `usage` at `price`, in whole microdollars (rounded half up); `None` when
/// the provider reported no tokens.
pub fn cost_microdollars(usage: &Usage, price: &Price) -> Option<i64> {
    if usage.is_empty() {
        return None;
    }
    let part =
        |tokens: Option<u64>, price: u64| u128::from(tokens.unwrap_or(0)) * u128::from(price);
    let picodollars = part(usage.input, price.input)
        + part(usage.output, price.output)
        + part(usage.cache_read, price.cache_read)
        + part(usage.cache_write, price.cache_write);
    let micro = (picodollars + 500_000) / 1_000_000;
    Some(i64::try_from(micro).unwrap_or(i64::MAX))
}

/// Parses a non-negative decimal with at most six decimal places into millionths:
/// `"3"` → 3,000,000; `"0.075"` → 75,000. Used for prices (dollars per million tokens →
/// picodollars per token) and for budget amounts (dollars → microdollars).
pub fn parse_decimal(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let bad = || {
        format!(
            "expected a non-negative decimal number such as `3`, `0.30` or `15.00`, found `{text}`"
        )
    };
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() && fraction.is_empty() {
        return Err(bad());
    }
    if !whole.bytes().all(|b| b.is_ascii_digit()) || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    if fraction.len() > 6 {
        return Err(format!(
            "at most 6 decimal places (a millionth of a dollar per million tokens is the smallest step), found `{text}`"
        ));
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let mut millionths: u64 = 0;
    for (i, digit) in fraction.bytes().enumerate() {
        millionths += u64::from(digit - b'0') * 10u64.pow(5 - i as u32);
    }
    whole
        .checked_mul(1_000_000)
        .and_then(|w| w.checked_add(millionths))
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// Microdollars as dollars, for messages (`$1.234567`).
pub struct Dollars(pub i64);

impl fmt::Display for Dollars {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        write!(f, "{sign}${}.{:06}", abs / 1_000_000, abs % 1_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(input: u64, output: u64, cache_read: u64, cache_write: u64) -> Usage {
        Usage {
            input: Some(input),
            output: Some(output),
            cache_read: Some(cache_read),
            cache_write: Some(cache_write),
        }
    }

    #[test]
    fn decimals_parse_exactly() {
        assert_eq!(parse_decimal("3").unwrap(), 3_000_000);
        assert_eq!(parse_decimal("0.075").unwrap(), 75_000);
        assert_eq!(parse_decimal("15.00").unwrap(), 15_000_000);
        assert_eq!(parse_decimal(".5").unwrap(), 500_000);
        assert_eq!(parse_decimal("0.000001").unwrap(), 1);
        for bad in ["", ".", "-1", "1e3", "abc", "1.2.3", " 1 2"] {
            assert!(parse_decimal(bad).is_err(), "{bad}");
        }
        assert!(
            parse_decimal("0.0000001")
                .unwrap_err()
                .contains("at most 6 decimal places")
        );
    }

    #[test]
    fn cost_is_exact_and_rounded_once_half_up() {
        // Claude-like prices: $3 in, $15 out, $0.30 cache read, $3.75 cache write.
        let price = Price {
            input: 3_000_000,
            output: 15_000_000,
            cache_read: 300_000,
            cache_write: 3_750_000,
        };
        // 1000 × 3 + 500 × 15 + 2000 × 0.3 + 100 × 3.75 = 3000 + 7500 + 600 + 375 µ$.
        assert_eq!(
            cost_microdollars(&usage(1000, 500, 2000, 100), &price),
            Some(11_475)
        );
        // $0.075 per million: 7 tokens are 0.525 µ$ → 1; 6 tokens 0.45 µ$ → 0.
        let cheap = Price {
            input: 75_000,
            ..Price::default()
        };
        assert_eq!(cost_microdollars(&usage(7, 0, 0, 0), &cheap), Some(1));
        assert_eq!(cost_microdollars(&usage(6, 0, 0, 0), &cheap), Some(0));
        // Exactly half rounds up: 20 × 0.025 µ$ = 0.5 µ$.
        let quarter = Price {
            input: 25_000,
            ..Price::default()
        };
        assert_eq!(cost_microdollars(&usage(20, 0, 0, 0), &quarter), Some(1));
        // Rounding happens once on the sum, not per class: 0.4 + 0.4 = 0.8 → 1.
        let split = Price {
            input: 400_000,
            output: 400_000,
            ..Price::default()
        };
        assert_eq!(cost_microdollars(&usage(1, 1, 0, 0), &split), Some(1));
        assert_eq!(cost_microdollars(&Usage::default(), &price), None);
        // No overflow at absurd counts.
        assert_eq!(
            cost_microdollars(&usage(u64::MAX, u64::MAX, 0, 0), &price),
            Some(i64::MAX)
        );
    }

    #[test]
    fn usage_merges_cumulative_reports_and_totals() {
        let mut u = Usage {
            input: Some(10),
            output: Some(1),
            ..Usage::default()
        };
        u.merge(Usage {
            output: Some(42),
            ..Usage::default()
        });
        assert_eq!(u.input, Some(10));
        assert_eq!(u.output, Some(42));
        assert_eq!(u.total(), 52);
        assert_eq!(Dollars(1_234_567).to_string(), "$1.234567");
    }
}
