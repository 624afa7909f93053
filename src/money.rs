//! Money: CNY amounts as `Decimal` with two places, never floating point.

use rust_decimal::Decimal;

use crate::domain::InvalidValue;

/// The one currency dropgate sells in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Currency {
    #[serde(rename = "CNY")]
    Cny,
}

impl Currency {
    pub fn as_str(self) -> &'static str {
        match self {
            Currency::Cny => "CNY",
        }
    }
}

/// Parses a price such as `"6499.00"`: not negative, at most two decimals.
pub fn parse_amount(raw: &str) -> Result<Decimal, InvalidValue> {
    let amount: Decimal = raw
        .trim()
        .parse()
        .map_err(|_| InvalidValue(format!("{raw:?} is not a decimal amount")))?;
    if amount.is_sign_negative() {
        return Err(InvalidValue(format!("{raw:?} is negative")));
    }
    if amount.normalize().scale() > 2 {
        return Err(InvalidValue(format!(
            "{raw:?} has more than two decimal places"
        )));
    }
    Ok(with_cents(amount))
}

/// The amount with exactly two decimal places, as it is shown and stored.
pub fn with_cents(amount: Decimal) -> Decimal {
    let mut amount = amount.round_dp(2);
    amount.rescale(2);
    amount
}

/// `serde` adapter: an amount as a string with two decimals.
pub mod as_cents_string {
    use rust_decimal::Decimal;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(amount: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::with_cents(*amount).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        let raw = String::deserialize(d)?;
        super::parse_amount(&raw).map_err(serde::de::Error::custom)
    }
}

/// `serde` adapter: an optional amount, as `as_cents_string` when present.
pub mod option_cents {
    use rust_decimal::Decimal;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(amount: &Option<Decimal>, s: S) -> Result<S::Ok, S::Error> {
        match amount {
            Some(amount) => super::as_cents_string::serialize(amount, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|raw| super::parse_amount(&raw).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_keep_two_places() {
        assert_eq!(parse_amount("6499").unwrap().to_string(), "6499.00");
        assert_eq!(parse_amount("0.5").unwrap().to_string(), "0.50");
        assert_eq!(parse_amount("12.340").unwrap().to_string(), "12.34");
        assert!(parse_amount("1.234").is_err());
        assert!(parse_amount("-1.00").is_err());
        assert!(parse_amount("abc").is_err());
    }
}
