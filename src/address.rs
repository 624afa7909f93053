//! Delivery addresses: what a shopper may save (mainland China only), the
//! snapshot an order keeps, and the masking of phones for operators.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Addresses one shopper may keep.
pub const MAX_PER_SHOPPER: usize = 20;

/// The 31 province-level divisions of mainland China the store delivers to,
/// as shoppers write them.
pub const REGIONS: [&str; 31] = [
    "北京市",
    "天津市",
    "河北省",
    "山西省",
    "内蒙古自治区",
    "辽宁省",
    "吉林省",
    "黑龙江省",
    "上海市",
    "江苏省",
    "浙江省",
    "安徽省",
    "福建省",
    "江西省",
    "山东省",
    "河南省",
    "湖北省",
    "湖南省",
    "广东省",
    "广西壮族自治区",
    "海南省",
    "重庆市",
    "四川省",
    "贵州省",
    "云南省",
    "西藏自治区",
    "陕西省",
    "甘肃省",
    "青海省",
    "宁夏回族自治区",
    "新疆维吾尔自治区",
];

const MAX_NAME_CHARS: usize = 50;
const MAX_DETAIL_CHARS: usize = 200;

/// Where an order goes: the part of an address an order keeps as its own
/// copy, so a later edit or deletion of the address never changes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    pub name: String,
    pub phone: String,
    pub region: String,
    pub detail: String,
}

/// A saved address, as its owner sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Address {
    pub id: String,
    #[serde(flatten)]
    pub destination: Destination,
    pub default: bool,
    pub created_at: Timestamp,
}

/// A shopper's new address, as sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAddress {
    pub name: String,
    pub phone: String,
    pub region: String,
    pub detail: String,
    #[serde(default)]
    pub default: bool,
}

/// Why an address is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum AddressRefusal {
    /// A field is malformed (400).
    Invalid(String),
    /// Well formed, but outside the mainland regions the store ships to (422).
    Undeliverable(String),
}

impl NewAddress {
    /// Checks every field; a region outside the mainland is undeliverable.
    pub fn check(self) -> Result<(Destination, bool), AddressRefusal> {
        let name = text("name", &self.name, MAX_NAME_CHARS)?;
        let detail = text("detail", &self.detail, MAX_DETAIL_CHARS)?;
        if !is_mainland_mobile(&self.phone) {
            return Err(AddressRefusal::Invalid(
                "phone must be a mainland mobile number: 11 digits, 1 then 3-9".into(),
            ));
        }
        let region = self.region.trim();
        if region.is_empty() {
            return Err(AddressRefusal::Invalid("region is required".into()));
        }
        if !REGIONS.contains(&region) {
            return Err(AddressRefusal::Undeliverable(format!(
                "the store delivers to the 31 mainland province-level regions only, not {region:?}"
            )));
        }
        let destination = Destination {
            name,
            phone: self.phone,
            region: region.to_owned(),
            detail,
        };
        Ok((destination, self.default))
    }
}

/// Trimmed, non-empty, at most `max` characters, no control characters.
fn text(field: &str, raw: &str, max: usize) -> Result<String, AddressRefusal> {
    let trimmed = raw.trim();
    if trimmed.is_empty() || trimmed.chars().count() > max {
        return Err(AddressRefusal::Invalid(format!(
            "{field} must be 1-{max} characters"
        )));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(AddressRefusal::Invalid(format!(
            "{field} must not hold control characters"
        )));
    }
    Ok(trimmed.to_owned())
}

/// `1[3-9]` and nine more digits.
fn is_mainland_mobile(phone: &str) -> bool {
    let bytes = phone.as_bytes();
    bytes.len() == 11
        && bytes[0] == b'1'
        && (b'3'..=b'9').contains(&bytes[1])
        && bytes.iter().all(u8::is_ascii_digit)
}

/// A phone as operators see it: `138****8000`.
pub fn masked_phone(phone: &str) -> String {
    if phone.len() == 11 && phone.is_ascii() {
        format!("{}****{}", &phone[..3], &phone[7..])
    } else {
        "****".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn new(phone: &str, region: &str) -> NewAddress {
        NewAddress {
            name: "张三".into(),
            phone: phone.into(),
            region: region.into(),
            detail: "海淀区清河中街68号".into(),
            default: false,
        }
    }

    #[test]
    fn a_mainland_address_is_kept_trimmed() {
        let mut address = new("13800138000", " 广西壮族自治区 ");
        address.name = "  张三 ".into();
        let (destination, default) = address.check().unwrap();
        assert_eq!(destination.region, "广西壮族自治区");
        assert_eq!(destination.name, "张三");
        assert!(!default);
    }

    #[test]
    fn phones_must_be_mainland_mobiles() {
        for phone in [
            "12800138000",
            "1380013800",
            "138001380000",
            "+8613800138000",
            "1380013800x",
            "",
        ] {
            assert!(
                matches!(
                    new(phone, "北京市").check(),
                    Err(AddressRefusal::Invalid(_))
                ),
                "{phone}"
            );
        }
        for phone in ["13000000000", "19912345678"] {
            assert!(new(phone, "北京市").check().is_ok(), "{phone}");
        }
    }

    #[test]
    fn regions_outside_the_mainland_are_undeliverable() {
        for region in [
            "香港特别行政区",
            "澳门特别行政区",
            "台湾省",
            "Beijing",
            "火星",
        ] {
            assert!(
                matches!(
                    new("13800138000", region).check(),
                    Err(AddressRefusal::Undeliverable(_))
                ),
                "{region}"
            );
        }
        assert_eq!(REGIONS.len(), 31);
        for region in REGIONS {
            assert!(new("13800138000", region).check().is_ok(), "{region}");
        }
    }

    #[test]
    fn names_and_details_are_bounded_and_printable() {
        let mut long = new("13800138000", "北京市");
        long.detail = "路".repeat(201);
        assert!(matches!(long.check(), Err(AddressRefusal::Invalid(_))));
        let mut control = new("13800138000", "北京市");
        control.name = "张\u{7}三".into();
        assert!(matches!(control.check(), Err(AddressRefusal::Invalid(_))));
        let mut blank = new("13800138000", "北京市");
        blank.name = "   ".into();
        assert!(matches!(blank.check(), Err(AddressRefusal::Invalid(_))));
    }

    proptest! {
        #[test]
        fn a_masked_phone_shows_at_most_seven_digits(phone in "1[3-9][0-9]{9}") {
            let masked = masked_phone(&phone);
            prop_assert_eq!(masked.len(), 11);
            prop_assert_eq!(&masked[3..7], "****");
            prop_assert_eq!(&masked[..3], &phone[..3]);
            prop_assert_eq!(&masked[7..], &phone[7..]);
        }
    }
}
