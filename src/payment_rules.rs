//! Which payment methods an order may be paid with: the store's defaults
//! (`[payments]`), a drop's overrides, and the rules of cash on delivery and
//! interest-free instalments. Pure functions: the store applies them to the
//! locked order when it issues a payment intent.

use rust_decimal::Decimal;
use serde::Deserialize;

use crate::payment::PaymentMethod;

/// Every method the store knows, in the order it shows them.
pub const ALL_METHODS: [PaymentMethod; 7] = [
    PaymentMethod::Alipay,
    PaymentMethod::WechatPay,
    PaymentMethod::MiWallet,
    PaymentMethod::Unionpay,
    PaymentMethod::Huabei,
    PaymentMethod::CashOnDelivery,
    PaymentMethod::Installment,
];

/// The rules one drop's orders are paid under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRules {
    pub methods: Vec<PaymentMethod>,
    /// Cash on delivery is refused for orders above this amount.
    pub cod_max_amount: Decimal,
    /// The interest-free periods offered with `huabei` and `installment`.
    pub installment_periods: Vec<u32>,
}

impl Default for PaymentRules {
    fn default() -> Self {
        Self {
            methods: ALL_METHODS.to_vec(),
            cod_max_amount: Decimal::new(300_000, 2),
            installment_periods: vec![3, 6, 12, 24],
        }
    }
}

/// What a drop changes of the store's rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DropPayments {
    pub methods: Option<Vec<PaymentMethod>>,
    pub cod_max_amount: Option<Decimal>,
}

impl PaymentRules {
    /// The store's rules with a drop's overrides applied.
    pub fn for_drop(&self, drop: &DropPayments) -> PaymentRules {
        PaymentRules {
            methods: drop.methods.clone().unwrap_or_else(|| self.methods.clone()),
            cod_max_amount: drop.cod_max_amount.unwrap_or(self.cod_max_amount),
            installment_periods: self.installment_periods.clone(),
        }
    }
}

/// What is being paid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The whole order.
    Full,
    /// A presale's deposit (the balance comes later).
    Deposit,
    /// A presale's balance, in its window.
    Balance,
}

/// A shopper's choice of how to pay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentChoice {
    pub method: PaymentMethod,
    #[serde(default)]
    pub installments: Option<u32>,
}

/// Why a choice is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChoiceRefused {
    /// The method is not offered for this order (409 `method_not_allowed`).
    MethodNotAllowed(String),
    /// The choice is malformed (400 `invalid_request`).
    Invalid(String),
}

/// Whether `choice` may pay `order_amount` (the whole order's amount: the
/// cap of cash on delivery is on the order, not on one instalment of it) at
/// `stage`.
pub fn check_choice(
    rules: &PaymentRules,
    choice: PaymentChoice,
    order_amount: Decimal,
    stage: Stage,
) -> Result<(), ChoiceRefused> {
    let method = choice.method;
    if !rules.methods.contains(&method) {
        return Err(ChoiceRefused::MethodNotAllowed(format!(
            "{} is not offered for this drop",
            method.as_str()
        )));
    }
    if method == PaymentMethod::CashOnDelivery {
        // Paid at the door means paid whole: a presale's deposit and
        // balance go through the gateway.
        if stage != Stage::Full {
            return Err(ChoiceRefused::MethodNotAllowed(
                "a presale is not paid on delivery".into(),
            ));
        }
        if order_amount > rules.cod_max_amount {
            return Err(ChoiceRefused::MethodNotAllowed(format!(
                "cash on delivery is offered up to {} only",
                rules.cod_max_amount
            )));
        }
    }
    let takes_periods = matches!(method, PaymentMethod::Huabei | PaymentMethod::Installment);
    match choice.installments {
        Some(_) if !takes_periods => Err(ChoiceRefused::Invalid(format!(
            "{} has no instalments",
            method.as_str()
        ))),
        Some(n) if !rules.installment_periods.contains(&n) => Err(ChoiceRefused::Invalid(format!(
            "installments must be one of {:?}",
            rules.installment_periods
        ))),
        None if method == PaymentMethod::Installment => Err(ChoiceRefused::Invalid(format!(
            "installment needs installments, one of {:?}",
            rules.installment_periods
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn choice(method: PaymentMethod, installments: Option<u32>) -> PaymentChoice {
        PaymentChoice {
            method,
            installments,
        }
    }

    fn amount(raw: &str) -> Decimal {
        raw.parse().unwrap()
    }

    #[test]
    fn cash_on_delivery_stops_at_the_cap_and_never_pays_a_presale() {
        let rules = PaymentRules::default();
        let cod = choice(PaymentMethod::CashOnDelivery, None);
        assert_eq!(
            check_choice(&rules, cod, amount("3000.00"), Stage::Full),
            Ok(())
        );
        assert!(matches!(
            check_choice(&rules, cod, amount("3000.01"), Stage::Full),
            Err(ChoiceRefused::MethodNotAllowed(_))
        ));
        assert!(matches!(
            check_choice(&rules, cod, amount("100.00"), Stage::Deposit),
            Err(ChoiceRefused::MethodNotAllowed(_))
        ));
        assert!(matches!(
            check_choice(&rules, cod, amount("100.00"), Stage::Balance),
            Err(ChoiceRefused::MethodNotAllowed(_))
        ));
    }

    #[test]
    fn instalments_take_an_offered_period_with_a_method_that_has_them() {
        let rules = PaymentRules::default();
        let due = amount("6499.00");
        for (method, installments, ok) in [
            (PaymentMethod::Installment, Some(12), true),
            (PaymentMethod::Huabei, Some(3), true),
            (PaymentMethod::Huabei, None, true),
            (PaymentMethod::Installment, None, false),
            (PaymentMethod::Installment, Some(5), false),
            (PaymentMethod::Alipay, Some(3), false),
        ] {
            let checked = check_choice(&rules, choice(method, installments), due, Stage::Full);
            assert_eq!(
                checked.is_ok(),
                ok,
                "{method:?} {installments:?}: {checked:?}"
            );
            if !ok {
                assert!(matches!(checked, Err(ChoiceRefused::Invalid(_))));
            }
        }
    }

    #[test]
    fn a_drop_overrides_methods_and_the_cap_but_keeps_the_periods() {
        let defaults = PaymentRules::default();
        let drop = DropPayments {
            methods: Some(vec![PaymentMethod::Alipay, PaymentMethod::CashOnDelivery]),
            cod_max_amount: Some(amount("2000.00")),
        };
        let rules = defaults.for_drop(&drop);
        assert_eq!(rules.installment_periods, defaults.installment_periods);
        assert!(matches!(
            check_choice(
                &rules,
                choice(PaymentMethod::WechatPay, None),
                amount("1.00"),
                Stage::Full
            ),
            Err(ChoiceRefused::MethodNotAllowed(_))
        ));
        assert!(matches!(
            check_choice(
                &rules,
                choice(PaymentMethod::CashOnDelivery, None),
                amount("2500.00"),
                Stage::Full
            ),
            Err(ChoiceRefused::MethodNotAllowed(_))
        ));
        assert_eq!(defaults.for_drop(&DropPayments::default()), defaults);
    }

    proptest! {
        /// Cash on delivery is allowed exactly when it is offered, the
        /// amount is within the cap, and the whole order is being paid.
        #[test]
        fn cash_on_delivery_is_allowed_exactly_within_its_rules(
            cents in 1i64..1_000_000,
            cap_cents in 1i64..1_000_000,
            offered in any::<bool>(),
            stage in prop_oneof![Just(Stage::Full), Just(Stage::Deposit), Just(Stage::Balance)],
        ) {
            let mut rules = PaymentRules { cod_max_amount: Decimal::new(cap_cents, 2), ..PaymentRules::default() };
            if !offered {
                rules.methods.retain(|m| *m != PaymentMethod::CashOnDelivery);
            }
            let due = Decimal::new(cents, 2);
            let allowed = check_choice(&rules, choice(PaymentMethod::CashOnDelivery, None), due, stage).is_ok();
            prop_assert_eq!(allowed, offered && cents <= cap_cents && stage == Stage::Full);
        }
    }
}
