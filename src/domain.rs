//! Checked values that cross the edge of the system.
//!
//! Every identifier and quantity a shopper or operator sends is parsed here,
//! once; the core only ever sees values that passed these checks.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a value was refused; the message is shown to whoever sent it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

/// True for the characters allowed in every identifier: `[A-Za-z0-9_.-]`.
fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

fn check_identifier(kind: &str, raw: &str) -> Result<(), InvalidValue> {
    if raw.is_empty() || raw.len() > 64 || !raw.chars().all(is_id_char) {
        return Err(InvalidValue(format!(
            "{kind} must be 1-64 characters of [A-Za-z0-9_.-], got {raw:?}"
        )));
    }
    Ok(())
}

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
                check_identifier($kind, raw)?;
                Ok(Self(raw.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(&raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

identifier!(
    /// A shopper's account id, the `sub` claim of their token.
    UserId,
    "user id"
);
identifier!(
    /// The id of a drop in the catalog.
    DropId,
    "drop id"
);
identifier!(
    /// The id of a SKU within a drop.
    SkuId,
    "sku id"
);
identifier!(
    /// The id of a promotion (the config file's or an operator's).
    PromotionId,
    "promotion id"
);
identifier!(
    /// The id of a batch of coupons.
    CouponBatchId,
    "coupon batch id"
);

/// One round of a drop: `<drop id>@<when it opens>` (`schedule::Round`
/// names them), the key of stock, limits, orders and Redis keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RoundId(String);

impl RoundId {
    /// The round of `drop` that opens at `stamp` (an identifier itself).
    pub fn new(drop: &DropId, stamp: &str) -> Self {
        Self(format!("{drop}@{stamp}"))
    }

    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let checked = raw.split_once('@').is_some_and(|(drop, stamp)| {
            check_identifier("drop id", drop).is_ok() && check_identifier("round", stamp).is_ok()
        });
        if !checked {
            return Err(InvalidValue(format!(
                "a round id is <drop id>@<identifier>, got {raw:?}"
            )));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The drop this round belongs to.
    pub fn drop_part(&self) -> &str {
        self.0.split('@').next().unwrap_or(&self.0)
    }
}

impl fmt::Display for RoundId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RoundId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// Units in one reservation: at least one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Quantity(u32);

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(i64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl Quantity {
    pub fn new(units: i64) -> Result<Self, InvalidValue> {
        match u32::try_from(units) {
            Ok(n) if n >= 1 => Ok(Self(n)),
            _ => Err(InvalidValue(format!(
                "quantity must be a whole number of at least 1, got {units}"
            ))),
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

/// A client's `Idempotency-Key`: 1–64 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        if raw.is_empty() || raw.len() > 64 || !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidValue(
                "Idempotency-Key must be 1-64 visible ASCII characters".into(),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The id of an order: a UUIDv7, so ids sort by creation time.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct OrderId(String);

impl<'de> Deserialize<'de> for OrderId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl OrderId {
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }

    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        uuid::Uuid::parse_str(raw)
            .map(|u| Self(u.to_string()))
            .map_err(|_| InvalidValue(format!("{raw:?} is not an order id")))
    }

    /// Wraps an id read back from the order store, which only holds ids we made.
    pub(crate) fn from_store(raw: String) -> Self {
        Self(raw)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_round_id_is_a_drop_id_and_an_identifier_around_one_at_sign() {
        let round = RoundId::parse("mi-15@20261127T020000Z").unwrap();
        assert_eq!(round.drop_part(), "mi-15");
        assert_eq!(
            RoundId::new(&DropId::parse("mi-15").unwrap(), "20261127T020000Z"),
            round
        );
        for bad in ["", "mi-15", "@x", "mi-15@", "a@b@c", "a b@c", "dg:{x}@y"] {
            assert!(RoundId::parse(bad).is_err(), "{bad:?}");
        }
    }

    use super::*;

    #[test]
    fn identifiers_accept_the_documented_alphabet_only() {
        assert!(UserId::parse("alice_01.x-y").is_ok());
        assert!(UserId::parse("").is_err());
        assert!(UserId::parse(&"a".repeat(65)).is_err());
        assert!(UserId::parse("al ice").is_err());
        assert!(UserId::parse("ałice").is_err());
    }

    #[test]
    fn quantity_must_be_positive() {
        assert!(Quantity::new(0).is_err());
        assert!(Quantity::new(-3).is_err());
        assert_eq!(Quantity::new(2).unwrap().get(), 2);
        assert!(Quantity::new(i64::MAX).is_err());
    }

    #[test]
    fn idempotency_keys_are_visible_ascii() {
        assert!(IdempotencyKey::parse("k-1:abc").is_ok());
        assert!(IdempotencyKey::parse("with space").is_err());
        assert!(IdempotencyKey::parse("").is_err());
    }
}
