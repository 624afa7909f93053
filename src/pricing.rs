//! Prices: what an order costs, as pure functions of the list price, the
//! promotions live at the win and the coupon chosen at checkout.
//!
//! The rules apply in this order, each rounded half-up to the cent:
//! 1. the list amount: the SKU's price × quantity;
//! 2. the single best percentage that applies — a `percent_off` promotion
//!    (festival sales) or, for a verified student, a `student` one (9折);
//! 3. the single best full reduction (满减) on what step 2 left;
//! 4. the coupon, on what step 3 left (its `min_spend` is checked there);
//!
//! and what is due is never below 0.01.

use jiff::Timestamp;
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

use crate::domain::SkuId;
use crate::money::as_cents_string;

/// The smallest amount an order can ask.
pub const MIN_AMOUNT: Decimal = Decimal::from_parts(1, 0, 0, false, 2);

/// Money rounded to the cent, halves away from zero (half-up for amounts,
/// which are never negative).
pub fn half_up(amount: Decimal) -> Decimal {
    let mut cents = amount.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
    cents.rescale(2);
    cents
}

/// A promotion an operator runs: what it takes off, when, on which SKUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promotion {
    pub id: String,
    pub kind: PromotionKind,
    pub starts_at: Option<Timestamp>,
    pub ends_at: Option<Timestamp>,
    /// The SKUs it applies to; every SKU when `None`.
    pub skus: Option<Vec<SkuId>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromotionKind {
    /// A festival sale: `percent` % off for everyone.
    PercentOff { percent: Decimal },
    /// `percent` % off for shoppers whose token says `student`.
    Student { percent: Decimal },
    /// 满减: `off` off once the amount reaches `threshold`; with `repeat`,
    /// once per whole `threshold` (每满).
    FullReduction {
        threshold: Decimal,
        off: Decimal,
        repeat: bool,
    },
}

impl Promotion {
    /// Live at `now` (both ends included) for `sku`.
    pub fn applies(&self, sku: &SkuId, now: Timestamp) -> bool {
        self.starts_at.is_none_or(|start| start <= now)
            && self.ends_at.is_none_or(|end| now <= end)
            && self.skus.as_ref().is_none_or(|skus| skus.contains(sku))
    }
}

/// How the amount due was reached, as the order shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pricing {
    #[serde(with = "as_cents_string")]
    pub list_amount: Decimal,
    pub discounts: Vec<Discount>,
    #[serde(with = "as_cents_string")]
    pub amount_due: Decimal,
}

/// One discount: `promotion:<id>` or `coupon:<id>`, and what it took off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discount {
    pub source: String,
    #[serde(with = "as_cents_string")]
    pub amount: Decimal,
}

/// What a shopper's coupon takes off at checkout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CouponTerms {
    pub id: String,
    pub kind: CouponKind,
    /// The amount (after promotions) the order must reach.
    pub min_spend: Decimal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CouponKind {
    /// This much off.
    Amount(Decimal),
    /// This percent off.
    Percent(Decimal),
}

/// The price locked at the win: steps 1–3.
pub fn price_at_win(
    unit_price: Decimal,
    quantity: u32,
    sku: &SkuId,
    student: bool,
    promotions: &[Promotion],
    now: Timestamp,
) -> Pricing {
    let list_amount = half_up(unit_price * Decimal::from(quantity));
    let mut pricing = Pricing {
        list_amount,
        discounts: Vec::new(),
        amount_due: list_amount,
    };
    let live = || promotions.iter().filter(|p| p.applies(sku, now));
    let best_percent = live()
        .filter_map(|p| match p.kind {
            PromotionKind::PercentOff { percent } => Some((p, percent)),
            PromotionKind::Student { percent } if student => Some((p, percent)),
            _ => None,
        })
        .max_by(|(a, x), (b, y)| x.cmp(y).then_with(|| b.id.cmp(&a.id)));
    if let Some((promotion, percent)) = best_percent {
        let off = half_up(pricing.amount_due * percent / Decimal::ONE_HUNDRED);
        pricing.take_off(format!("promotion:{}", promotion.id), off);
    }
    let amount = pricing.amount_due;
    let best_reduction = live()
        .filter_map(|p| match p.kind {
            PromotionKind::FullReduction {
                threshold,
                off,
                repeat,
            } => Some((p, full_reduction(amount, threshold, off, repeat))),
            _ => None,
        })
        .filter(|(_, off)| !off.is_zero())
        .max_by(|(a, x), (b, y)| x.cmp(y).then_with(|| b.id.cmp(&a.id)));
    if let Some((promotion, off)) = best_reduction {
        pricing.take_off(format!("promotion:{}", promotion.id), off);
    }
    pricing
}

/// What 满减 takes off `amount`.
fn full_reduction(amount: Decimal, threshold: Decimal, off: Decimal, repeat: bool) -> Decimal {
    if threshold <= Decimal::ZERO || amount < threshold {
        return Decimal::ZERO;
    }
    let times = if repeat {
        (amount / threshold).floor()
    } else {
        Decimal::ONE
    };
    half_up(off * times)
}

/// Why a coupon does not apply to an order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CouponRefused {
    #[error("the order must reach {min_spend} after promotions to use this coupon")]
    BelowMinSpend { min_spend: Decimal },
}

/// Step 4: the win's pricing with `coupon` applied (any earlier coupon
/// replaced).
pub fn with_coupon(pricing: &Pricing, coupon: &CouponTerms) -> Result<Pricing, CouponRefused> {
    let mut priced = without_coupon(pricing);
    let amount = priced.amount_due;
    if amount < coupon.min_spend {
        return Err(CouponRefused::BelowMinSpend {
            min_spend: coupon.min_spend,
        });
    }
    let off = match coupon.kind {
        CouponKind::Amount(value) => half_up(value),
        CouponKind::Percent(percent) => half_up(amount * percent / Decimal::ONE_HUNDRED),
    };
    priced.take_off(format!("coupon:{}", coupon.id), off);
    Ok(priced)
}

/// The pricing without its coupon, as it was at the win.
pub fn without_coupon(pricing: &Pricing) -> Pricing {
    let mut priced = Pricing {
        list_amount: pricing.list_amount,
        discounts: Vec::with_capacity(pricing.discounts.len()),
        amount_due: pricing.list_amount,
    };
    for discount in &pricing.discounts {
        if !discount.source.starts_with("coupon:") {
            priced.take_off(discount.source.clone(), discount.amount);
        }
    }
    priced
}

impl Pricing {
    /// A price with no discount.
    pub fn at_list(amount: Decimal) -> Self {
        Self {
            list_amount: amount,
            discounts: Vec::new(),
            amount_due: amount,
        }
    }

    /// Takes `off` off what is due, never below [`MIN_AMOUNT`]; records
    /// what was really taken off (nothing when nothing could be).
    fn take_off(&mut self, source: String, off: Decimal) {
        let room = (self.amount_due - MIN_AMOUNT).max(Decimal::ZERO);
        let off = off.min(room);
        if off > Decimal::ZERO {
            self.amount_due = half_up(self.amount_due - off);
            self.discounts.push(Discount {
                source,
                amount: half_up(off),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sku(id: &str) -> SkuId {
        SkuId::parse(id).unwrap()
    }

    fn money(raw: &str) -> Decimal {
        raw.parse().unwrap()
    }

    fn at(raw: &str) -> Timestamp {
        raw.parse().unwrap()
    }

    fn promotion(id: &str, kind: PromotionKind) -> Promotion {
        Promotion {
            id: id.into(),
            kind,
            starts_at: None,
            ends_at: None,
            skus: None,
        }
    }

    fn percent_off(id: &str, percent: &str) -> Promotion {
        promotion(
            id,
            PromotionKind::PercentOff {
                percent: money(percent),
            },
        )
    }

    fn student(id: &str, percent: &str) -> Promotion {
        promotion(
            id,
            PromotionKind::Student {
                percent: money(percent),
            },
        )
    }

    fn full_reduction_of(id: &str, threshold: &str, off: &str, repeat: bool) -> Promotion {
        promotion(
            id,
            PromotionKind::FullReduction {
                threshold: money(threshold),
                off: money(off),
                repeat,
            },
        )
    }

    fn now() -> Timestamp {
        at("2026-06-18T02:00:00Z")
    }

    fn shown(pricing: &Pricing) -> (String, Vec<(String, String)>, String) {
        (
            pricing.list_amount.to_string(),
            pricing
                .discounts
                .iter()
                .map(|d| (d.source.clone(), d.amount.to_string()))
                .collect(),
            pricing.amount_due.to_string(),
        )
    }

    #[test]
    fn without_promotions_the_list_amount_is_due() {
        let p = price_at_win(money("6499.00"), 2, &sku("a"), true, &[], now());
        assert_eq!(shown(&p), ("12998.00".into(), vec![], "12998.00".into()));
    }

    #[test]
    fn the_best_percentage_applies_then_the_best_full_reduction() {
        let promotions = [
            percent_off("618", "5"),
            student("student", "10"),
            full_reduction_of("every-1000-100", "1000.00", "100.00", true),
            full_reduction_of("once-5000-300", "5000.00", "300.00", false),
        ];
        // Student: 10 % beats 5 %; 5849.10 then takes 5 × 100 off.
        let p = price_at_win(money("6499.00"), 1, &sku("a"), true, &promotions, now());
        assert_eq!(
            shown(&p),
            (
                "6499.00".into(),
                vec![
                    ("promotion:student".into(), "649.90".into()),
                    ("promotion:every-1000-100".into(), "500.00".into())
                ],
                "5349.10".into()
            )
        );
        // Not a student: 5 % (324.95), then 6174.05 → 6 × 100 beats 300.
        let p = price_at_win(money("6499.00"), 1, &sku("a"), false, &promotions, now());
        assert_eq!(
            shown(&p).1,
            vec![
                ("promotion:618".into(), "324.95".into()),
                ("promotion:every-1000-100".into(), "600.00".into())
            ]
        );
        assert_eq!(p.amount_due, money("5574.05"));
    }

    #[test]
    fn a_one_tier_full_reduction_takes_off_once() {
        let promotions = [full_reduction_of("tier", "1000.00", "100.00", false)];
        let p = price_at_win(money("999.00"), 3, &sku("a"), false, &promotions, now());
        assert_eq!(p.amount_due, money("2897.00"));
        let p = price_at_win(money("999.00"), 1, &sku("a"), false, &promotions, now());
        assert_eq!(p.amount_due, money("999.00"), "below the threshold");
    }

    #[test]
    fn percentages_round_half_up_to_the_cent() {
        // 0.05 × 10 % = 0.005 → 0.01 (banker's rounding would say 0.00).
        let p = price_at_win(
            money("0.05"),
            1,
            &sku("a"),
            false,
            &[percent_off("x", "10")],
            now(),
        );
        assert_eq!(p.amount_due, money("0.04"));
        // 12.25 × 10 % = 1.225 → 1.23.
        let p = price_at_win(
            money("12.25"),
            1,
            &sku("a"),
            false,
            &[percent_off("x", "10")],
            now(),
        );
        assert_eq!(p.discounts[0].amount, money("1.23"));
    }

    #[test]
    fn promotions_apply_only_in_their_window_and_to_their_skus() {
        let mut festival = percent_off("mi-fan", "10");
        festival.starts_at = Some(at("2026-04-15T16:00:00Z"));
        festival.ends_at = Some(at("2026-05-08T15:59:59Z"));
        festival.skus = Some(vec![sku("black")]);
        let promotions = [festival];
        let due = |sku_id: &str, when: &str| {
            price_at_win(
                money("100.00"),
                1,
                &sku(sku_id),
                false,
                &promotions,
                at(when),
            )
            .amount_due
        };
        assert_eq!(due("black", "2026-04-15T16:00:00Z"), money("90.00"));
        assert_eq!(due("black", "2026-05-08T15:59:59Z"), money("90.00"));
        assert_eq!(due("black", "2026-05-08T16:00:00Z"), money("100.00"));
        assert_eq!(due("black", "2026-04-15T15:59:59Z"), money("100.00"));
        assert_eq!(due("white", "2026-04-20T00:00:00Z"), money("100.00"));
    }

    #[test]
    fn a_student_discount_needs_the_student_claim() {
        let p = price_at_win(
            money("100.00"),
            1,
            &sku("a"),
            false,
            &[student("s", "10")],
            now(),
        );
        assert!(p.discounts.is_empty());
    }

    #[test]
    fn nothing_is_ever_due_below_a_cent() {
        let promotions = [
            percent_off("all", "100"),
            full_reduction_of("big", "1.00", "1000.00", true),
        ];
        let p = price_at_win(money("50.00"), 1, &sku("a"), false, &promotions, now());
        assert_eq!(p.amount_due, MIN_AMOUNT);
        assert_eq!(p.discounts.len(), 1, "no room left for the second");
    }

    #[test]
    fn a_coupon_applies_after_promotions_and_replaces_an_earlier_one() {
        let promotions = [percent_off("618", "10")];
        let p = price_at_win(money("1000.00"), 1, &sku("a"), false, &promotions, now());
        let fifty = CouponTerms {
            id: "c1".into(),
            kind: CouponKind::Amount(money("50.00")),
            min_spend: money("900.00"),
        };
        let with = with_coupon(&p, &fifty).unwrap();
        assert_eq!(with.amount_due, money("850.00"));
        let five_percent = CouponTerms {
            id: "c2".into(),
            kind: CouponKind::Percent(money("5")),
            min_spend: Decimal::ZERO,
        };
        let replaced = with_coupon(&with, &five_percent).unwrap();
        assert_eq!(
            shown(&replaced).1,
            vec![
                ("promotion:618".into(), "100.00".into()),
                ("coupon:c2".into(), "45.00".into())
            ]
        );
        assert_eq!(without_coupon(&replaced), p);
        let too_big = CouponTerms {
            min_spend: money("900.01"),
            ..fifty
        };
        assert_eq!(
            with_coupon(&p, &too_big),
            Err(CouponRefused::BelowMinSpend {
                min_spend: money("900.01")
            })
        );
    }

    fn cents() -> impl Strategy<Value = Decimal> {
        (1i64..2_000_000).prop_map(|c| Decimal::new(c, 2))
    }

    fn any_promotion() -> impl Strategy<Value = Promotion> {
        let percent = (1i64..=100).prop_map(Decimal::from);
        prop_oneof![
            (0u8..8, percent.clone())
                .prop_map(|(i, p)| percent_off(&format!("p{i}"), &p.to_string())),
            (0u8..8, percent).prop_map(|(i, p)| student(&format!("s{i}"), &p.to_string())),
            (0u8..8, cents(), cents(), any::<bool>()).prop_map(|(i, t, o, r)| {
                full_reduction_of(&format!("f{i}"), &t.to_string(), &o.to_string(), r)
            }),
        ]
    }

    fn any_coupon() -> impl Strategy<Value = CouponTerms> {
        (
            prop_oneof![
                cents().prop_map(CouponKind::Amount),
                (1i64..=100).prop_map(|p| CouponKind::Percent(Decimal::from(p)))
            ],
            cents(),
        )
            .prop_map(|(kind, min_spend)| CouponTerms {
                id: "c".into(),
                kind,
                min_spend,
            })
    }

    proptest! {
        /// A discount never raises a price, the amount due is never below a
        /// cent, and the discounts account for the whole difference.
        #[test]
        fn discounts_only_lower_and_add_up(
            price in cents(),
            quantity in 1u32..10,
            student_claim in any::<bool>(),
            promotions in proptest::collection::vec(any_promotion(), 0..6),
            coupon in any_coupon(),
        ) {
            let p = price_at_win(price, quantity, &sku("a"), student_claim, &promotions, now());
            let list = half_up(price * Decimal::from(quantity));
            prop_assert_eq!(p.list_amount, list);
            prop_assert!(p.amount_due <= list && p.amount_due >= MIN_AMOUNT);
            let taken: Decimal = p.discounts.iter().map(|d| d.amount).sum();
            prop_assert_eq!(p.amount_due + taken, list);
            prop_assert!(p.discounts.iter().all(|d| d.amount > Decimal::ZERO));
            prop_assert!(p.discounts.len() <= 2);
            if let Ok(c) = with_coupon(&p, &coupon) {
                prop_assert!(c.amount_due <= p.amount_due && c.amount_due >= MIN_AMOUNT);
                let taken: Decimal = c.discounts.iter().map(|d| d.amount).sum();
                prop_assert_eq!(c.amount_due + taken, list);
                prop_assert_eq!(without_coupon(&c), p.clone());
            } else {
                prop_assert!(p.amount_due < coupon.min_spend);
            }
        }

        /// The documented order: a percentage, if any, comes first and is
        /// the best one that applies; a full reduction is taken on what the
        /// percentage left, and no other applying one would take more.
        #[test]
        fn the_rules_apply_in_the_documented_order(
            price in cents(),
            promotions in proptest::collection::vec(any_promotion(), 0..6),
            student_claim in any::<bool>(),
        ) {
            let p = price_at_win(price, 1, &sku("a"), student_claim, &promotions, now());
            let percents: Vec<Decimal> = promotions.iter().filter_map(|x| match x.kind {
                PromotionKind::PercentOff { percent } => Some(percent),
                PromotionKind::Student { percent } if student_claim => Some(percent),
                _ => None,
            }).collect();
            let mut after_percent = p.list_amount;
            if let Some(best) = percents.iter().max() {
                let off = half_up(p.list_amount * best / Decimal::ONE_HUNDRED)
                    .min(p.list_amount - MIN_AMOUNT);
                if off > Decimal::ZERO {
                    prop_assert_eq!(p.discounts[0].amount, off);
                    after_percent -= off;
                }
            }
            let best_reduction = promotions.iter().filter_map(|x| match x.kind {
                PromotionKind::FullReduction { threshold, off, repeat } =>
                    Some(full_reduction(after_percent, threshold, off, repeat)),
                _ => None,
            }).max().unwrap_or(Decimal::ZERO).min(after_percent - MIN_AMOUNT);
            prop_assert_eq!(p.amount_due, after_percent - best_reduction);
        }
    }
}
