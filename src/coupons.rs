//! Coupon batches as operators define them (`POST /admin/v1/coupons`), and
//! the coupons shoppers claim from them: an amount or a percentage off the
//! order at checkout, above a minimum spend, within a validity window,
//! optionally for some SKUs or for students only.

use jiff::Timestamp;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::domain::{InvalidValue, SkuId};
use crate::money::parse_amount;
use crate::pricing::{CouponKind, CouponTerms};

/// Coupons one batch may hand out at most.
pub const MAX_TOTAL: u64 = 10_000_000;

/// A batch as sent by an operator and shown back.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchDefinition {
    pub id: String,
    pub kind: String,
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_spend: Option<String>,
    pub valid_from: String,
    pub valid_until: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skus: Option<Vec<String>>,
    #[serde(default)]
    pub student_only: bool,
    pub total: u64,
    #[serde(default = "one")]
    pub per_user: u32,
}

fn one() -> u32 {
    1
}

/// A batch, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub id: String,
    pub kind: CouponKind,
    pub min_spend: Decimal,
    pub valid_from: Timestamp,
    pub valid_until: Timestamp,
    pub skus: Option<Vec<SkuId>>,
    pub student_only: bool,
    pub total: u64,
    pub per_user: u32,
}

impl BatchDefinition {
    /// Checks every field; the message names the field at fault.
    pub fn parse(&self) -> Result<Batch, InvalidValue> {
        let field = |name: &str, message: String| InvalidValue(format!("{name} {message}"));
        let id = crate::domain::CouponBatchId::parse(&self.id)?;
        let value = self
            .value
            .parse::<Decimal>()
            .map_err(|_| field("value", format!("{:?} is not a number", self.value)))?;
        let kind = match self.kind.as_str() {
            "amount" => {
                let value = parse_amount(&self.value).map_err(|e| field("value", e.0))?;
                if value.is_zero() {
                    return Err(field("value", "must be above 0.00".into()));
                }
                CouponKind::Amount(value)
            }
            "percent" => {
                if value <= Decimal::ZERO || value >= Decimal::ONE_HUNDRED || value.scale() > 2 {
                    return Err(field(
                        "value",
                        "must be above 0 and below 100, with at most two decimals".into(),
                    ));
                }
                CouponKind::Percent(value)
            }
            other => {
                return Err(field(
                    "kind",
                    format!("{other:?} is not one of amount, percent"),
                ))
            }
        };
        let min_spend = match &self.min_spend {
            Some(raw) => parse_amount(raw).map_err(|e| field("min_spend", e.0))?,
            None => Decimal::ZERO,
        };
        let instant =
            |name: &str, raw: &str| crate::config::parse_instant(raw).map_err(|m| field(name, m));
        let valid_from = instant("valid_from", &self.valid_from)?;
        let valid_until = instant("valid_until", &self.valid_until)?;
        if valid_until <= valid_from {
            return Err(field("valid_until", "must be after valid_from".into()));
        }
        let skus = match &self.skus {
            None => None,
            Some(skus) if skus.is_empty() => {
                return Err(field(
                    "skus",
                    "must name at least one SKU, or be left out".into(),
                ))
            }
            Some(skus) => Some(
                skus.iter()
                    .map(|s| SkuId::parse(s))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| field("skus", e.0))?,
            ),
        };
        if self.total == 0 || self.total > MAX_TOTAL {
            return Err(field("total", format!("must be 1 to {MAX_TOTAL}")));
        }
        if self.per_user == 0 || u64::from(self.per_user) > self.total {
            return Err(field("per_user", "must be 1 to total".into()));
        }
        Ok(Batch {
            id: id.to_string(),
            kind,
            min_spend,
            valid_from,
            valid_until,
            skus,
            student_only: self.student_only,
            total: self.total,
            per_user: self.per_user,
        })
    }
}

/// A batch from an operator's JSON.
pub fn from_json(body: &[u8]) -> Result<(BatchDefinition, Batch), InvalidValue> {
    let definition: BatchDefinition = serde_json::from_slice(body)
        .map_err(|e| InvalidValue(format!("not a coupon batch: {e}")))?;
    let batch = definition.parse()?;
    Ok((definition, batch))
}

impl Batch {
    /// Whether a coupon of this batch may be applied at `now` to `sku`.
    pub fn applies(&self, sku: &SkuId, now: Timestamp) -> bool {
        self.valid_from <= now
            && now < self.valid_until
            && self.skus.as_ref().is_none_or(|skus| skus.contains(sku))
    }

    pub fn terms(&self, coupon_id: &str) -> CouponTerms {
        CouponTerms {
            id: coupon_id.to_owned(),
            kind: self.kind,
            min_spend: self.min_spend,
        }
    }
}

/// A shopper's coupon as they see it.
#[derive(Debug, Clone, Serialize)]
pub struct CouponView {
    pub id: String,
    pub batch: BatchDefinition,
    /// `available`, `used` (on `order_id`), or `expired`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    pub claimed_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(json: &str) -> Result<Batch, String> {
        from_json(json.as_bytes()).map(|(_, b)| b).map_err(|e| e.0)
    }

    const GOOD: &str = r#"{"id": "student-200", "kind": "amount", "value": "200.00",
        "min_spend": "1000.00", "valid_from": "2026-12-01T00:00:00Z",
        "valid_until": "2026-12-31T00:00:00Z", "student_only": true, "total": 500, "per_user": 1}"#;

    #[test]
    fn a_batch_parses_with_its_defaults() {
        let batch = parsed(GOOD).unwrap();
        assert_eq!(batch.kind, CouponKind::Amount("200.00".parse().unwrap()));
        assert!(batch.student_only);
        let lean = parsed(
            r#"{"id": "p5", "kind": "percent", "value": "5", "valid_from": "2026-12-01T00:00:00Z",
            "valid_until": "2026-12-31T00:00:00Z", "total": 10}"#,
        )
        .unwrap();
        assert_eq!(lean.per_user, 1);
        assert_eq!(lean.min_spend, Decimal::ZERO);
        assert!(lean.skus.is_none());
    }

    #[test]
    fn bad_batches_say_which_field_is_wrong() {
        for (from, to, field) in [
            (r#""kind": "amount""#, r#""kind": "bogof""#, "kind"),
            (r#""value": "200.00""#, r#""value": "0.00""#, "value"),
            (r#""value": "200.00""#, r#""value": "2.005""#, "value"),
            (
                r#""kind": "amount", "value": "200.00""#,
                r#""kind": "percent", "value": "100""#,
                "value",
            ),
            (
                r#""min_spend": "1000.00""#,
                r#""min_spend": "-1""#,
                "min_spend",
            ),
            (
                r#""valid_until": "2026-12-31T00:00:00Z""#,
                r#""valid_until": "2026-11-01T00:00:00Z""#,
                "valid_until",
            ),
            (r#""total": 500"#, r#""total": 0"#, "total"),
            (r#""per_user": 1"#, r#""per_user": 501"#, "per_user"),
            (r#""id": "student-200""#, r#""id": "has space""#, "id"),
            (
                r#""total": 500"#,
                r#""total": 500, "colour": "red""#,
                "colour",
            ),
        ] {
            let json = GOOD.replace(from, to);
            assert_ne!(json, GOOD, "{from}");
            let message = parsed(&json).unwrap_err();
            assert!(message.contains(field), "{json}: {message}");
        }
    }

    #[test]
    fn a_coupon_applies_in_its_window_to_its_skus() {
        let mut batch = parsed(GOOD).unwrap();
        let sku = SkuId::parse("phone").unwrap();
        let inside: Timestamp = "2026-12-10T00:00:00Z".parse().unwrap();
        assert!(batch.applies(&sku, inside));
        assert!(!batch.applies(&sku, batch.valid_until));
        assert!(!batch.applies(&sku, "2026-11-30T23:59:59Z".parse().unwrap()));
        batch.skus = Some(vec![SkuId::parse("other").unwrap()]);
        assert!(!batch.applies(&sku, inside));
    }
}
