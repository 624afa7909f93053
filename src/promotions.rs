//! Promotions as operators declare them (the config file's `[[promotions]]`
//! and `POST /admin/v1/promotions`), and the live set the reserve service
//! prices wins with.
//!
//! The live set is in memory and swapped whole, so a reservation reads it
//! without a lock or a store query. Operators' promotions and the ends of
//! any promotion are kept in the order store; every instance rebuilds its
//! set from there once a second (`upkeep`), so a promotion added or ended on
//! one instance applies on all of them within that second.

use std::sync::Arc;

use arc_swap::ArcSwap;
use jiff::Timestamp;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::domain::{InvalidValue, SkuId};
use crate::money::parse_amount;
use crate::pricing::{Promotion, PromotionKind};

/// A promotion as written in the config file or sent by an operator, and
/// as shown back.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    pub id: String,
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<Percent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub off: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skus: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", try_from = "String")]
pub enum Kind {
    PercentOff,
    Student,
    FullReduction,
}

/// By hand so that an unknown kind is refused with the field's name.
impl TryFrom<String> for Kind {
    type Error = String;

    fn try_from(raw: String) -> Result<Self, String> {
        match raw.as_str() {
            "percent_off" => Ok(Kind::PercentOff),
            "student" => Ok(Kind::Student),
            "full_reduction" => Ok(Kind::FullReduction),
            _ => Err(format!(
                "kind {raw:?} is not one of percent_off, student, full_reduction"
            )),
        }
    }
}

/// A percentage: a whole number (`10`) or a decimal string (`"7.5"`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Percent {
    Whole(u32),
    Text(String),
}

impl Definition {
    /// Checks every field; the message names the field at fault.
    pub fn parse(&self) -> Result<Promotion, InvalidValue> {
        let id = crate::domain::PromotionId::parse(&self.id)?;
        let field = |name: &str, message: String| InvalidValue(format!("{name} {message}"));
        let money = |name: &str, raw: &Option<String>| -> Result<Decimal, InvalidValue> {
            let raw = raw
                .as_deref()
                .ok_or_else(|| field(name, "is required for this kind".into()))?;
            let amount = parse_amount(raw).map_err(|e| field(name, e.0))?;
            if amount.is_zero() {
                return Err(field(name, "must be above 0.00".into()));
            }
            Ok(amount)
        };
        let percent = || -> Result<Decimal, InvalidValue> {
            let percent = match &self.percent {
                None => return Err(field("percent", "is required for this kind".into())),
                Some(Percent::Whole(n)) => Decimal::from(*n),
                Some(Percent::Text(raw)) => raw
                    .parse::<Decimal>()
                    .map_err(|_| field("percent", format!("{raw:?} is not a number")))?,
            };
            if percent <= Decimal::ZERO || percent >= Decimal::ONE_HUNDRED || percent.scale() > 2 {
                return Err(field(
                    "percent",
                    "must be above 0 and below 100, with at most two decimals".into(),
                ));
            }
            Ok(percent)
        };
        let only = |name: &str, set: bool| {
            if set {
                Err(field(
                    name,
                    format!("does not apply to kind {:?}", self.kind),
                ))
            } else {
                Ok(())
            }
        };
        let kind = match self.kind {
            Kind::PercentOff | Kind::Student => {
                only("threshold", self.threshold.is_some())?;
                only("off", self.off.is_some())?;
                only("repeat", self.repeat.is_some())?;
                let percent = percent()?;
                if self.kind == Kind::Student {
                    PromotionKind::Student { percent }
                } else {
                    PromotionKind::PercentOff { percent }
                }
            }
            Kind::FullReduction => {
                only("percent", self.percent.is_some())?;
                let threshold = money("threshold", &self.threshold)?;
                let off = money("off", &self.off)?;
                if off >= threshold {
                    return Err(field("off", "must be below the threshold".into()));
                }
                PromotionKind::FullReduction {
                    threshold,
                    off,
                    repeat: self.repeat.unwrap_or(false),
                }
            }
        };
        let instant = |name: &str, raw: &Option<String>| {
            raw.as_deref()
                .map(|raw| crate::config::parse_instant(raw).map_err(|m| field(name, m)))
                .transpose()
        };
        let starts_at = instant("starts_at", &self.starts_at)?;
        let ends_at = instant("ends_at", &self.ends_at)?;
        if let (Some(start), Some(end)) = (starts_at, ends_at) {
            if end <= start {
                return Err(field("ends_at", "must be after starts_at".into()));
            }
        }
        let skus = match &self.skus {
            None => None,
            Some(skus) if skus.is_empty() => {
                return Err(field(
                    "skus",
                    "must name a SKU, or be left out for all".into(),
                ))
            }
            Some(skus) => Some(
                skus.iter()
                    .map(|s| SkuId::parse(s))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        Ok(Promotion {
            id: id.as_str().to_owned(),
            kind,
            starts_at,
            ends_at,
            skus,
        })
    }
}

/// Parses an operator's definition sent as JSON.
pub fn from_json(body: &[u8]) -> Result<(Definition, Promotion), InvalidValue> {
    let definition: Definition = serde_json::from_slice(body)
        .map_err(|e| InvalidValue(format!("not a promotion definition: {e}")))?;
    let promotion = definition.parse()?;
    Ok((definition, promotion))
}

/// One stored row of the `promotions` table: an operator's promotion (with
/// its definition) or only the end of one declared in a config file.
#[derive(Debug, Clone)]
pub struct StoredPromotion {
    pub id: String,
    pub definition: Option<String>,
    pub ended_at: Option<Timestamp>,
}

/// The promotions in force on this instance.
pub struct LivePromotions {
    /// From the config file: every instance declares its own.
    declared: Vec<(Definition, Promotion)>,
    live: ArcSwap<Vec<Promotion>>,
    definitions: ArcSwap<Vec<Definition>>,
}

impl LivePromotions {
    pub fn new(declared: Vec<(Definition, Promotion)>) -> Self {
        let live = declared.iter().map(|(_, p)| p.clone()).collect();
        let definitions = declared.iter().map(|(d, _)| d.clone()).collect();
        Self {
            declared,
            live: ArcSwap::from_pointee(live),
            definitions: ArcSwap::from_pointee(definitions),
        }
    }

    /// What a reservation prices with: no lock, no copy.
    pub fn live(&self) -> arc_swap::Guard<Arc<Vec<Promotion>>> {
        self.live.load()
    }

    /// The definitions in force, as operators list them.
    pub fn definitions(&self) -> Arc<Vec<Definition>> {
        self.definitions.load_full()
    }

    pub fn contains(&self, id: &str) -> bool {
        self.live.load().iter().any(|p| p.id == id)
    }

    /// Rebuilds the set from the config file's promotions and the stored
    /// rows: declared ones not ended, then operators' ones not ended. A
    /// stored definition that no longer parses is left out and logged.
    pub fn rebuild(&self, stored: &[StoredPromotion]) {
        let ended = |id: &str| stored.iter().any(|s| s.id == id && s.ended_at.is_some());
        let mut in_force: Vec<(Definition, Promotion)> = self
            .declared
            .iter()
            .filter(|(_, p)| !ended(&p.id))
            .cloned()
            .collect();
        for row in stored.iter().filter(|s| s.ended_at.is_none()) {
            let Some(json) = &row.definition else {
                continue;
            };
            match from_json(json.as_bytes()) {
                Ok(parsed) if !in_force.iter().any(|(_, p)| p.id == parsed.1.id) => {
                    in_force.push(parsed)
                }
                Ok(_) => {}
                Err(e) => tracing::error!(promotion = %row.id, error = %e,
                    "a stored promotion no longer passes the checks"),
            }
        }
        let live: Vec<Promotion> = in_force.iter().map(|(_, p)| p.clone()).collect();
        if **self.live.load() != live {
            self.live.store(Arc::new(live));
            self.definitions
                .store(Arc::new(in_force.into_iter().map(|(d, _)| d).collect()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(json: &str) -> Result<Promotion, String> {
        from_json(json.as_bytes()).map(|(_, p)| p).map_err(|e| e.0)
    }

    #[test]
    fn each_kind_parses_with_its_own_fields() {
        let festival = parsed(
            r#"{"id": "mi-fan", "kind": "percent_off", "percent": 10,
                "starts_at": "2026-04-16T00:00:00+08:00", "ends_at": "2026-05-08T23:59:59+08:00",
                "skus": ["black"]}"#,
        )
        .unwrap();
        assert_eq!(
            festival.kind,
            PromotionKind::PercentOff {
                percent: Decimal::from(10)
            }
        );
        assert_eq!(festival.skus, Some(vec![SkuId::parse("black").unwrap()]));
        let student = parsed(r#"{"id": "s", "kind": "student", "percent": "7.5"}"#).unwrap();
        assert_eq!(
            student.kind,
            PromotionKind::Student {
                percent: "7.5".parse().unwrap()
            }
        );
        let reduction = parsed(
            r#"{"id": "m", "kind": "full_reduction", "threshold": "1000.00", "off": "100.00",
                "repeat": true}"#,
        )
        .unwrap();
        assert_eq!(
            reduction.kind,
            PromotionKind::FullReduction {
                threshold: "1000.00".parse().unwrap(),
                off: "100.00".parse().unwrap(),
                repeat: true
            }
        );
    }

    #[test]
    fn bad_definitions_say_which_field_is_wrong() {
        let cases = [
            (r#"{"id": "x", "kind": "percent_off"}"#, "percent"),
            (
                r#"{"id": "x", "kind": "percent_off", "percent": 0}"#,
                "percent",
            ),
            (
                r#"{"id": "x", "kind": "percent_off", "percent": 100}"#,
                "percent",
            ),
            (
                r#"{"id": "x", "kind": "percent_off", "percent": "1.005"}"#,
                "percent",
            ),
            (
                r#"{"id": "x", "kind": "student", "percent": 10, "off": "1.00"}"#,
                "off",
            ),
            (
                r#"{"id": "x", "kind": "full_reduction", "off": "1.00"}"#,
                "threshold",
            ),
            (
                r#"{"id": "x", "kind": "full_reduction", "threshold": "100.00", "off": "100.00"}"#,
                "off",
            ),
            (
                r#"{"id": "x", "kind": "full_reduction", "threshold": "100.00", "off": "10.00", "percent": 5}"#,
                "percent",
            ),
            (
                r#"{"id": "x", "kind": "percent_off", "percent": 5, "starts_at": "2026-05-01T00:00:00Z", "ends_at": "2026-05-01T00:00:00Z"}"#,
                "ends_at",
            ),
            (
                r#"{"id": "x", "kind": "percent_off", "percent": 5, "starts_at": "tomorrow"}"#,
                "starts_at",
            ),
            (
                r#"{"id": "x", "kind": "percent_off", "percent": 5, "skus": []}"#,
                "skus",
            ),
            (
                r#"{"id": "x y", "kind": "percent_off", "percent": 5}"#,
                "id",
            ),
            (r#"{"id": "x", "kind": "bogof", "percent": 5}"#, "kind"),
            (
                r#"{"id": "x", "kind": "percent_off", "percent": 5, "colour": "red"}"#,
                "colour",
            ),
        ];
        for (json, field) in cases {
            let message = parsed(json).unwrap_err();
            assert!(message.contains(field), "{json}: {message}");
        }
    }

    #[test]
    fn the_live_set_drops_ended_promotions_and_adds_stored_ones() {
        let declared = from_json(br#"{"id": "618", "kind": "percent_off", "percent": 5}"#).unwrap();
        let promotions = LivePromotions::new(vec![declared]);
        assert!(promotions.contains("618"));
        let operator = StoredPromotion {
            id: "flash".into(),
            definition: Some(r#"{"id": "flash", "kind": "student", "percent": 10}"#.into()),
            ended_at: None,
        };
        promotions.rebuild(std::slice::from_ref(&operator));
        assert!(promotions.contains("618") && promotions.contains("flash"));
        let end_of_618 = StoredPromotion {
            id: "618".into(),
            definition: None,
            ended_at: Some(Timestamp::UNIX_EPOCH),
        };
        promotions.rebuild(&[operator, end_of_618]);
        assert!(!promotions.contains("618") && promotions.contains("flash"));
        assert_eq!(promotions.definitions().len(), 1);
    }
}
