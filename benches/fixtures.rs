//! What several benches share: a drop with a weekly schedule (open every
//! day, so a round is always current, and stock for every win a bench
//! makes) and the reserve body's shape.

use std::sync::Arc;

use serde::Deserialize;

use dropgate::catalog::Drop;
use dropgate::config::{Config, SecretSource};

pub const SECRET: &str = "bench-secret-of-at-least-32-bytes-long";
pub const BODY: &[u8] = br#"{"sku": "sku", "quantity": 1}"#;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReserveBody {
    pub sku: String,
    #[allow(dead_code)] // parsed like the server does; not read here
    pub quantity: i64,
}

pub fn bench_drop() -> Arc<Drop> {
    let config = format!(
        r#"
[auth]
jwt_secret = "{SECRET}"
admin_token = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
payment_secret = "pppppppppppppppppppppppppppppppppppp"
logistics_secret = "llllllllllllllllllllllllllllllllllll"
[[drops]]
id = "bench"
product = "Phone"
per_user_limit = 2
pay_within = "15m"
schedule = {{ days = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"], at = "00:00", time_zone = "Asia/Shanghai", duration = "23h59m" }}
[[drops.skus]]
id = "sku"
name = "8GB+256GB"
price = "1999.00"
stock = 1000000000000
"#
    );
    let config = Config::from_toml(&config, SecretSource::Environment).expect("bench config");
    config.catalog.get("bench").expect("the drop").clone()
}
