//! Payment gateway notifications: the HMAC signature over the raw body, and
//! the notice it carries.

use hmac::{Hmac, Mac};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::domain::{InvalidValue, OrderId};
use crate::money::parse_amount;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentMethod {
    Alipay,
    WechatPay,
    MiWallet,
    Unionpay,
    Huabei,
    CashOnDelivery,
    Installment,
}

impl PaymentMethod {
    pub fn parse(raw: &str) -> Option<Self> {
        crate::payment_rules::ALL_METHODS
            .into_iter()
            .find(|m| m.as_str() == raw)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PaymentMethod::Alipay => "alipay",
            PaymentMethod::WechatPay => "wechat_pay",
            PaymentMethod::MiWallet => "mi_wallet",
            PaymentMethod::Unionpay => "unionpay",
            PaymentMethod::Huabei => "huabei",
            PaymentMethod::CashOnDelivery => "cash_on_delivery",
            PaymentMethod::Installment => "installment",
        }
    }
}

#[derive(Debug, Clone)]
pub struct PaymentNotice {
    pub order_id: OrderId,
    pub transaction_id: String,
    pub amount: Decimal,
    pub method: PaymentMethod,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoticeBody {
    order_id: String,
    transaction_id: String,
    amount: serde_json::Value,
    method: PaymentMethod,
}

/// The hex HMAC-SHA256 of `body`, as the gateway sends it in `X-Signature`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Checks `X-Signature` in constant time.
pub fn signature_is_valid(secret: &[u8], body: &[u8], signature: Option<&str>) -> bool {
    let Some(Ok(expected)) = signature.map(|s| hex::decode(s.trim())) else {
        return false;
    };
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// A gateway's own id (a transaction, a refund): 1-128 visible ASCII characters.
pub fn check_reference(field: &str, raw: &str) -> Result<(), InvalidValue> {
    if raw.is_empty() || raw.len() > 128 || !raw.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(InvalidValue(format!(
            "{field} must be 1-128 visible ASCII characters"
        )));
    }
    Ok(())
}

pub fn parse_notice(body: &[u8]) -> Result<PaymentNotice, InvalidValue> {
    let raw: NoticeBody =
        serde_json::from_slice(body).map_err(|e| InvalidValue(format!("bad notification: {e}")))?;
    let amount = match &raw.amount {
        serde_json::Value::String(s) => parse_amount(s)?,
        serde_json::Value::Number(n) => parse_amount(&n.to_string())?,
        _ => {
            return Err(InvalidValue(
                "amount must be a decimal string like \"6499.00\"".into(),
            ))
        }
    };
    check_reference("transaction_id", &raw.transaction_id)?;
    Ok(PaymentNotice {
        order_id: OrderId::parse(&raw.order_id)?,
        transaction_id: raw.transaction_id,
        amount,
        method: raw.method,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_with_its_key_and_body() {
        let sig = sign(b"key", b"{\"a\":1}");
        assert!(signature_is_valid(b"key", b"{\"a\":1}", Some(&sig)));
        assert!(!signature_is_valid(b"other", b"{\"a\":1}", Some(&sig)));
        assert!(!signature_is_valid(b"key", b"{\"a\":2}", Some(&sig)));
        assert!(!signature_is_valid(b"key", b"{\"a\":1}", Some("zz")));
        assert!(!signature_is_valid(b"key", b"{\"a\":1}", None));
    }
}
