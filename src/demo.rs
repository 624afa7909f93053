//! The catalog `dropgate serve` uses when no config file is given: a drop
//! that opens about 30 seconds after start, and the Mon/Wed/Fri example.

use jiff::{SignedDuration, Timestamp, Unit};

use crate::config::{Config, ConfigError, SecretSource};

pub const DEMO_DROP: &str = "demo-phone";
pub const DEMO_SKU: &str = "demo-8-256-black";

pub fn config(now: Timestamp) -> Result<Config, ConfigError> {
    let opens = now.round(Unit::Second).unwrap_or(now) + SignedDuration::from_secs(30);
    let closes = opens + SignedDuration::from_hours(2);
    let text = format!(
        r#"
listen = "127.0.0.1:8080"

[[drops]]
id = "{DEMO_DROP}"
product = "Demo Phone"
per_user_limit = 2
pay_within = "15m"
opens_at = "{opens}"
closes_at = "{closes}"

[[drops.skus]]
id = "{DEMO_SKU}"
name = "8GB+256GB Black"
price = "1999.00"
stock = 100

[[drops.skus]]
id = "demo-12-512-white"
name = "12GB+512GB White"
price = "2499.00"
stock = 50

[[drops]]
id = "mi-15-ultra"
product = "Xiaomi 15 Ultra"
per_user_limit = 2
pay_within = "15m"
presale = true
balance_from = "48h"
balance_until = "96h"
schedule = {{ days = ["Mon", "Wed", "Fri"], at = "10:00", time_zone = "Asia/Shanghai", duration = "2h" }}

[[drops.skus]]
id = "mi15u-16-512-black"
name = "16GB+512GB Black"
price = "6499.00"
deposit = "500.00"
stock = 5000
"#
    );
    Config::from_toml(&text, SecretSource::EnvironmentOrDemo)
}
