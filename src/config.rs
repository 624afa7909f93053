//! The configuration file (README, "Configuration"), secrets from the environment, and the
//! checks that stop start-up with a message naming the drop and the field.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::civil::{Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use serde::Deserialize;

use crate::catalog::{Catalog, Drop, Sku};
use crate::domain::{DropId, SkuId};
use crate::money::parse_amount;
use crate::payment::PaymentMethod;
use crate::payment_rules::{DropPayments, PaymentRules};
use crate::presale::BalanceWindow;
use crate::schedule::{Timing, WeeklySchedule};
use crate::shipping::ShipPlan;
use crate::waiting_room::QueueRules;
use crate::webhooks::Webhook;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config is not valid TOML: {0}")]
    Syntax(#[from] toml::de::Error),
    #[error("drop {drop:?}, field `{field}`: {message}")]
    Drop {
        drop: String,
        field: String,
        message: String,
    },
    #[error("field `{field}`: {message}")]
    Field { field: String, message: String },
}

fn drop_error(drop: &str, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Drop {
        drop: drop.to_owned(),
        field: field.into(),
        message: message.into(),
    }
}

fn field_error(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field: field.into(),
        message: message.into(),
    }
}

/// The running server's settings, all checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub auth: Secrets,
    pub limits: Limits,
    pub server: ServerSettings,
    pub catalog: Catalog,
    /// `[[promotions]]`: every instance declares its own; operators add
    /// and end them live.
    pub promotions: Vec<(crate::promotions::Definition, crate::pricing::Promotion)>,
    /// `[payments]`: the methods and their rules, unless a drop overrides them.
    pub payments: PaymentRules,
    /// `[[webhooks]]`: where order events are pushed.
    pub webhooks: Vec<Webhook>,
    /// `[redis]`: how the Redis engine confirms its wins.
    pub redis: RedisSettings,
}

/// `[redis]`: a win is answered only once `WAIT` has it on this many
/// replicas (0: as soon as the master has it), waiting at most the timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisSettings {
    pub replica_acks: u32,
    pub replica_ack_timeout: Duration,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            replica_acks: 0,
            replica_ack_timeout: Duration::from_millis(100),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedisSection {
    replica_acks: Option<i64>,
    replica_ack_timeout: Option<String>,
}

fn parse_redis(section: RedisSection) -> Result<RedisSettings, ConfigError> {
    let defaults = RedisSettings::default();
    let replica_acks = match section.replica_acks {
        None => defaults.replica_acks,
        Some(n) => u32::try_from(n).ok().filter(|n| *n <= 16).ok_or_else(|| {
            field_error("redis.replica_acks", format!("must be 0 to 16, got {n}"))
        })?,
    };
    let replica_ack_timeout = match section.replica_ack_timeout {
        None => defaults.replica_ack_timeout,
        Some(raw) => parse_positive_duration(&raw)
            .and_then(|d| d.try_into().map_err(|_| "out of range".to_string()))
            .map_err(|m| field_error("redis.replica_ack_timeout", m))?,
    };
    Ok(RedisSettings {
        replica_acks,
        replica_ack_timeout,
    })
}

#[derive(Debug, Clone)]
pub struct Secrets {
    pub jwt_secret: String,
    pub admin_token: String,
    pub payment_secret: String,
    /// Signs the carrier's notices (`/api/v1/logistics/notify`).
    pub logistics_secret: String,
    /// Signs waiting-room tickets; needed once a drop has a queue.
    pub queue_secret: Option<String>,
}

// The admission limits live with the admission control that applies them;
// the configuration reads them.
pub use crate::admission::{Limits, MAX_IN_FLIGHT, MAX_RATE};

/// Connection-level protections and background-task periods.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Open connections beyond this are answered 503 and closed at once.
    pub max_connections: usize,
    /// A client must finish sending request headers within this time.
    pub header_read_timeout: Duration,
    /// A client must finish sending a request body within this time of the
    /// handler asking for it (408 and the connection closed otherwise).
    pub body_read_timeout: Duration,
    /// Larger request bodies are refused with 413.
    pub max_body_bytes: usize,
    /// How long shutdown waits for in-flight requests before closing them.
    pub shutdown_grace: Duration,
    /// How often the sweeper looks for orders unpaid past `pay_by`.
    pub sweep_interval: Duration,
    /// Redis mode: winners a writer read but never acknowledged for this
    /// long are taken over by another writer (its instance presumably died).
    pub claim_idle: Duration,
    /// Reverse proxies whose `X-Forwarded-For` is believed. From anyone
    /// else the header is ignored, or a client could pick its own address
    /// and slip past the per-address bucket.
    pub trusted_proxies: Vec<IpAddr>,
    /// Order events older than this are deleted (unless a webhook still
    /// has to retry them); None keeps every event.
    pub events_retention: Option<SignedDuration>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            max_body_bytes: 16 * 1024,
            shutdown_grace: Duration::from_secs(10),
            sweep_interval: Duration::from_secs(1),
            claim_idle: Duration::from_secs(30),
            trusted_proxies: Vec::new(),
            events_retention: Some(DEFAULT_EVENTS_RETENTION),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    listen: Option<String>,
    #[serde(default)]
    auth: AuthSection,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    server: ServerSection,
    #[serde(default)]
    drops: Vec<DropSection>,
    #[serde(default)]
    promotions: Vec<crate::promotions::Definition>,
    #[serde(default)]
    payments: PaymentsSection,
    #[serde(default)]
    webhooks: Vec<WebhookSection>,
    #[serde(default)]
    redis: RedisSection,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookSection {
    url: String,
    secret: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PaymentsSection {
    methods: Option<Vec<PaymentMethod>>,
    cod_max_amount: Option<toml::Value>,
    installment_periods: Option<Vec<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthSection {
    jwt_secret: Option<String>,
    admin_token: Option<String>,
    payment_secret: Option<String>,
    logistics_secret: Option<String>,
    queue_secret: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerSection {
    max_connections: Option<usize>,
    header_read_timeout: Option<String>,
    body_read_timeout: Option<String>,
    max_body_bytes: Option<usize>,
    shutdown_grace: Option<String>,
    sweep_interval: Option<String>,
    claim_idle: Option<String>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    /// A duration ("30d"), or "forever".
    events_retention: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DropSection {
    id: String,
    product: String,
    per_user_limit: i64,
    pay_within: String,
    #[serde(default)]
    presale: bool,
    schedule: Option<ScheduleSection>,
    opens_at: Option<String>,
    closes_at: Option<String>,
    #[serde(default)]
    skus: Vec<SkuSection>,
    payment_methods: Option<Vec<PaymentMethod>>,
    cod_max_amount: Option<toml::Value>,
    balance_from: Option<String>,
    balance_until: Option<String>,
    estimated_ship_date: Option<String>,
    ship_within_days: Option<i64>,
    /// Where a one-window drop counts days (a schedule names its own).
    time_zone: Option<String>,
    /// A waiting room with a random draw at the opening.
    queue: Option<QueueSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueueSection {
    opens_before: Option<String>,
    draw_window: Option<String>,
    admit_rate: Option<i64>,
    ticket_ttl: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleSection {
    days: Vec<String>,
    at: String,
    time_zone: String,
    duration: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SkuSection {
    id: String,
    name: String,
    price: toml::Value,
    deposit: Option<toml::Value>,
    stock: i64,
}

/// Where secrets come from when the file leaves them out.
pub enum SecretSource {
    /// Environment variables only (a config file was given).
    Environment,
    /// Environment, else fixed development secrets (the demo, no file given).
    EnvironmentOrDemo,
}

const DEMO_SECRET_WARNING: &str = "demo secret: set it in the config file or the environment";

/// The shortest secret accepted, in bytes: an HS256 key or HMAC key much
/// shorter than its 32-byte output can be guessed offline from one token
/// or one signed notice, and an empty admin token would admit anyone.
pub const MIN_SECRET_BYTES: usize = 32;

/// The development secret of `field`, used by the demo only. Public (it is
/// in this file), so it is refused on any address other machines can reach.
fn demo_secret(field: &str) -> String {
    format!("dropgate-demo-{field}-not-for-production")
}

impl Secrets {
    /// The fields that hold a built-in demo secret, whatever their source.
    pub fn demo_fields(&self) -> Vec<&'static str> {
        [
            ("jwt_secret", &self.jwt_secret),
            ("admin_token", &self.admin_token),
            ("payment_secret", &self.payment_secret),
            ("logistics_secret", &self.logistics_secret),
        ]
        .into_iter()
        .chain(self.queue_secret.as_ref().map(|v| ("queue_secret", v)))
        .filter(|(field, value)| **value == demo_secret(field))
        .map(|(field, _)| field)
        .collect()
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, SecretSource::Environment)
    }

    pub fn from_toml(text: &str, secrets: SecretSource) -> Result<Self, ConfigError> {
        let file: ConfigFile = toml::from_str(text)?;
        let listen = file.listen.as_deref().unwrap_or("127.0.0.1:8080");
        let listen = listen.parse().map_err(|_| {
            field_error(
                "listen",
                format!("{listen:?} is not an address like 127.0.0.1:8080"),
            )
        })?;
        if file.drops.is_empty() {
            return Err(field_error("drops", "at least one drop is needed"));
        }
        let mut seen = HashSet::new();
        let mut drops = Vec::with_capacity(file.drops.len());
        for section in file.drops {
            if !seen.insert(section.id.clone()) {
                return Err(drop_error(&section.id, "id", "two drops have this id"));
            }
            drops.push(parse_drop(section)?);
        }
        let mut promotions: Vec<(_, crate::pricing::Promotion)> = Vec::new();
        for definition in file.promotions {
            let promotion = definition
                .parse()
                .map_err(|e| field_error(format!("promotions.{}", definition.id), e.0))?;
            if promotions.iter().any(|(_, p)| p.id == promotion.id) {
                return Err(field_error(
                    format!("promotions.{}", promotion.id),
                    "two promotions have this id",
                ));
            }
            promotions.push((definition, promotion));
        }
        let auth = resolve_secrets(file.auth, secrets)?;
        if let Some(queued) = drops.iter().find(|d| d.queue.is_some()) {
            if auth.queue_secret.is_none() {
                return Err(field_error(
                    "auth.queue_secret",
                    format!(
                        "missing: drop {:?} has a queue, whose tickets it signs \
                         (set it in the config file or in DROPGATE_QUEUE_SECRET)",
                        queued.id.as_str()
                    ),
                ));
            }
        }
        Ok(Self {
            redis: parse_redis(file.redis)?,
            webhooks: parse_webhooks(file.webhooks)?,
            promotions,
            payments: parse_payments(file.payments)?,
            listen,
            auth,
            limits: check_limits(file.limits)?,
            server: parse_server(file.server)?,
            catalog: Catalog::new(drops),
        })
    }

    /// Refuses to serve the public demo secrets on an address other
    /// machines can reach: anyone could mint tokens or forge payments.
    pub fn check_exposure(&self) -> Result<(), ConfigError> {
        let demo = self.auth.demo_fields();
        if self.listen.ip().is_loopback() || demo.is_empty() {
            return Ok(());
        }
        Err(field_error(
            format!("auth.{}", demo[0]),
            format!(
                "the built-in demo secret cannot be used on {} (not a loopback address): \
                 set it in the config file or the environment",
                self.listen
            ),
        ))
    }
}

fn resolve_secrets(auth: AuthSection, source: SecretSource) -> Result<Secrets, ConfigError> {
    let pick = |field: &str, env: &str, from_file: Option<String>| {
        let from_env = std::env::var(env).ok().filter(|v| !v.is_empty());
        let (value, origin) = match (from_env, from_file) {
            (Some(v), _) => (v, env.to_owned()),
            (None, Some(v)) => (v, "the config file".to_owned()),
            (None, None) => match &source {
                SecretSource::EnvironmentOrDemo => {
                    tracing::warn!(field, "{DEMO_SECRET_WARNING}");
                    return Ok(demo_secret(field));
                }
                SecretSource::Environment => {
                    return Err(field_error(
                        format!("auth.{field}"),
                        format!("missing: set it in the config file or in {env}"),
                    ))
                }
            },
        };
        if value.len() < MIN_SECRET_BYTES {
            return Err(field_error(
                format!("auth.{field}"),
                format!(
                    "from {origin} is {} bytes; at least {MIN_SECRET_BYTES} are needed",
                    value.len()
                ),
            ));
        }
        Ok(value)
    };
    // Optional: only a drop with a queue needs it (checked with the drops).
    let queue_secret = match (&auth.queue_secret, std::env::var("DROPGATE_QUEUE_SECRET")) {
        (None, Err(_)) if matches!(source, SecretSource::Environment) => None,
        _ => Some(pick(
            "queue_secret",
            "DROPGATE_QUEUE_SECRET",
            auth.queue_secret.clone(),
        )?),
    };
    Ok(Secrets {
        queue_secret,
        jwt_secret: pick("jwt_secret", "DROPGATE_JWT_SECRET", auth.jwt_secret)?,
        admin_token: pick("admin_token", "DROPGATE_ADMIN_TOKEN", auth.admin_token)?,
        payment_secret: pick(
            "payment_secret",
            "DROPGATE_PAYMENT_SECRET",
            auth.payment_secret,
        )?,
        logistics_secret: pick(
            "logistics_secret",
            "DROPGATE_LOGISTICS_SECRET",
            auth.logistics_secret,
        )?,
    })
}

fn check_limits(limits: Limits) -> Result<Limits, ConfigError> {
    limits
        .check()
        .map_err(|(field, message)| field_error(format!("limits.{field}"), message))
}

fn parse_server(section: ServerSection) -> Result<ServerSettings, ConfigError> {
    let defaults = ServerSettings::default();
    let duration = |field: &str, raw: Option<String>, default: Duration| match raw {
        None => Ok(default),
        Some(raw) => parse_positive_duration(&raw)
            .and_then(|d| d.try_into().map_err(|_| "out of range".to_string()))
            .map_err(|m| field_error(format!("server.{field}"), m)),
    };
    let events_retention = match section.events_retention.as_deref() {
        None => defaults.events_retention,
        Some("forever") => None,
        Some(raw) => {
            let retention =
                parse_days(raw).map_err(|m| field_error("server.events_retention", m))?;
            if retention < MIN_EVENTS_RETENTION {
                return Err(field_error(
                    "server.events_retention",
                    "must be at least 2 days: webhooks are retried for 24 h",
                ));
            }
            Some(retention)
        }
    };
    let settings = ServerSettings {
        events_retention,
        max_connections: section.max_connections.unwrap_or(defaults.max_connections),
        header_read_timeout: duration(
            "header_read_timeout",
            section.header_read_timeout,
            defaults.header_read_timeout,
        )?,
        body_read_timeout: duration(
            "body_read_timeout",
            section.body_read_timeout,
            defaults.body_read_timeout,
        )?,
        max_body_bytes: section.max_body_bytes.unwrap_or(defaults.max_body_bytes),
        shutdown_grace: duration(
            "shutdown_grace",
            section.shutdown_grace,
            defaults.shutdown_grace,
        )?,
        sweep_interval: duration(
            "sweep_interval",
            section.sweep_interval,
            defaults.sweep_interval,
        )?,
        claim_idle: duration("claim_idle", section.claim_idle, defaults.claim_idle)?,
        trusted_proxies: section
            .trusted_proxies
            .iter()
            .map(|raw| {
                raw.parse().map_err(|_| {
                    field_error(
                        "server.trusted_proxies",
                        format!("{raw:?} is not an IP address"),
                    )
                })
            })
            .collect::<Result<_, _>>()?,
    };
    if settings.max_connections == 0 {
        return Err(field_error("server.max_connections", "must be at least 1"));
    }
    if settings.max_body_bytes == 0 {
        return Err(field_error("server.max_body_bytes", "must be at least 1"));
    }
    Ok(settings)
}

/// Each webhook: an http:// URL, once, and a secret as long as any other.
fn parse_webhooks(sections: Vec<WebhookSection>) -> Result<Vec<Webhook>, ConfigError> {
    let mut hooks: Vec<Webhook> = Vec::with_capacity(sections.len());
    for (i, section) in sections.into_iter().enumerate() {
        let field = |name: &str| format!("webhooks[{i}].{name}");
        let url =
            crate::webhooks::parse_url(&section.url).map_err(|m| field_error(field("url"), m))?;
        if hooks.iter().any(|h| h.url == url) {
            return Err(field_error(field("url"), "two webhooks have this URL"));
        }
        if section.secret.len() < MIN_SECRET_BYTES {
            return Err(field_error(
                field("secret"),
                format!("at least {MIN_SECRET_BYTES} bytes are needed"),
            ));
        }
        hooks.push(Webhook {
            url,
            secret: section.secret,
        });
    }
    Ok(hooks)
}

/// Order events are kept this long unless `server.events_retention` says.
pub const DEFAULT_EVENTS_RETENTION: SignedDuration = SignedDuration::from_hours(24 * 30);
const MIN_EVENTS_RETENTION: SignedDuration = SignedDuration::from_hours(48);

/// Parses a duration that may count days ("30d", "7d 12h"), a day being 24 h.
fn parse_days(raw: &str) -> Result<SignedDuration, String> {
    let wrong = || format!("{raw:?} is not a duration like \"30d\" or \"forever\"");
    let span: jiff::Span = raw.parse().map_err(|_| wrong())?;
    let duration = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|_| wrong())?;
    if duration <= SignedDuration::ZERO {
        return Err(wrong());
    }
    Ok(duration)
}

/// Parses durations such as `"15m"`, `"2h"`, `"1h30m"` or `"500ms"`.
pub fn parse_positive_duration(raw: &str) -> Result<SignedDuration, String> {
    let duration: SignedDuration = raw
        .parse()
        .map_err(|_| format!("{raw:?} is not a duration like \"15m\" or \"2h\""))?;
    if duration <= SignedDuration::ZERO {
        return Err(format!("{raw:?} must be longer than zero"));
    }
    Ok(duration)
}

/// A drop sent as JSON by an operator, in the shape of a `[[drops]]` table,
/// checked exactly like one in the config file.
pub fn drop_from_json(json: &[u8]) -> Result<Drop, ConfigError> {
    let section: DropSection = serde_json::from_slice(json)
        .map_err(|e| field_error("drop", format!("not a drop definition: {e}")))?;
    parse_drop(section)
}

fn parse_payments(section: PaymentsSection) -> Result<PaymentRules, ConfigError> {
    let defaults = PaymentRules::default();
    let err = |field: &str, message: String| field_error(format!("payments.{field}"), message);
    let methods = match section.methods {
        Some(methods) => check_methods(methods).map_err(|m| err("methods", m))?,
        None => defaults.methods,
    };
    let cod_max_amount = match &section.cod_max_amount {
        Some(raw) => parse_money(raw).map_err(|m| err("cod_max_amount", m))?,
        None => defaults.cod_max_amount,
    };
    let installment_periods = match section.installment_periods {
        None => defaults.installment_periods,
        Some(periods) => {
            let mut checked: Vec<u32> = Vec::with_capacity(periods.len());
            for n in periods {
                let period = u32::try_from(n)
                    .ok()
                    .filter(|n| (2..=36).contains(n))
                    .ok_or_else(|| {
                        err(
                            "installment_periods",
                            format!("{n} is not a period of 2 to 36 months"),
                        )
                    })?;
                if checked.contains(&period) {
                    return Err(err(
                        "installment_periods",
                        format!("{period} appears twice"),
                    ));
                }
                checked.push(period);
            }
            if checked.is_empty() {
                return Err(err(
                    "installment_periods",
                    "at least one period is needed".into(),
                ));
            }
            checked
        }
    };
    Ok(PaymentRules {
        methods,
        cod_max_amount,
        installment_periods,
    })
}

/// At least one method, none twice.
fn check_methods(methods: Vec<PaymentMethod>) -> Result<Vec<PaymentMethod>, String> {
    if methods.is_empty() {
        return Err("at least one method is needed".into());
    }
    for (i, method) in methods.iter().enumerate() {
        if methods[..i].contains(method) {
            return Err(format!("{} appears twice", method.as_str()));
        }
    }
    Ok(methods)
}

fn parse_drop(section: DropSection) -> Result<Drop, ConfigError> {
    let name = section.id.clone();
    let err = |field: &str, message: String| drop_error(&name, field, message);
    let id = DropId::parse(&section.id).map_err(|e| err("id", e.0))?;
    if section.product.trim().is_empty() {
        return Err(err("product", "must not be empty".into()));
    }
    let per_user_limit = u32::try_from(section.per_user_limit)
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| {
            err(
                "per_user_limit",
                format!("must be at least 1, got {}", section.per_user_limit),
            )
        })?;
    let pay_within =
        parse_positive_duration(&section.pay_within).map_err(|m| err("pay_within", m))?;
    if pay_within > SignedDuration::from_hours(24 * 30) {
        return Err(err("pay_within", "must not exceed 30 days".into()));
    }
    let shipping = parse_shipping(&section, &err)?;
    let queue = section
        .queue
        .as_ref()
        .map(|q| parse_queue(q, &err))
        .transpose()?;
    let timing = match (section.schedule, section.opens_at, section.closes_at) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            return Err(err(
                "schedule",
                "give either a schedule or opens_at/closes_at, not both".into(),
            ))
        }
        (Some(schedule), None, None) => Timing::Weekly(parse_schedule(schedule, &err)?),
        (None, Some(opens), Some(closes)) => {
            let opens_at = parse_instant(&opens).map_err(|m| err("opens_at", m))?;
            let closes_at = parse_instant(&closes).map_err(|m| err("closes_at", m))?;
            if closes_at <= opens_at {
                return Err(err("closes_at", "must be after opens_at".into()));
            }
            Timing::Window {
                opens_at,
                closes_at,
            }
        }
        (None, None, _) => {
            return Err(err(
                "schedule",
                "a schedule or opens_at/closes_at is needed".into(),
            ))
        }
        (None, Some(_), None) => return Err(err("closes_at", "opens_at needs a closes_at".into())),
    };
    if section.skus.is_empty() {
        return Err(err("skus", "at least one SKU is needed".into()));
    }
    let mut seen = HashSet::new();
    let mut skus = Vec::with_capacity(section.skus.len());
    for (i, sku) in section.skus.into_iter().enumerate() {
        let at = |field: &str| format!("skus[{i}].{field}");
        if !seen.insert(sku.id.clone()) {
            return Err(err(&at("id"), format!("SKU id {:?} appears twice", sku.id)));
        }
        let sku_id = SkuId::parse(&sku.id).map_err(|e| err(&at("id"), e.0))?;
        let price = parse_money(&sku.price).map_err(|m| err(&at("price"), m))?;
        let deposit = match (&sku.deposit, section.presale) {
            (None, false) => None,
            (None, true) => {
                return Err(err(&at("deposit"), "a presale drop needs a deposit".into()))
            }
            (Some(_), false) => {
                return Err(err(
                    &at("deposit"),
                    "only presale drops take a deposit".into(),
                ))
            }
            (Some(raw), true) => {
                let deposit = parse_money(raw).map_err(|m| err(&at("deposit"), m))?;
                if deposit > price {
                    return Err(err(&at("deposit"), "must not exceed the price".into()));
                }
                Some(deposit)
            }
        };
        let stock = u64::try_from(sku.stock).map_err(|_| {
            err(
                &at("stock"),
                format!("must not be negative, got {}", sku.stock),
            )
        })?;
        skus.push(Sku {
            id: sku_id,
            name: sku.name,
            price,
            deposit,
            stock,
        });
    }
    let balance =
        match (section.presale, section.balance_from, section.balance_until) {
            (true, Some(from), Some(until)) => {
                Some(BalanceWindow::parse(&from, &until).map_err(|m| err("balance_from", m))?)
            }
            (true, _, _) => return Err(err(
                "balance_from",
                "a presale drop needs balance_from and balance_until (when the balance is paid)"
                    .into(),
            )),
            (false, None, None) => None,
            (false, _, _) => {
                return Err(err(
                    "balance_from",
                    "only presale drops have a balance window".into(),
                ))
            }
        };
    let payments = DropPayments {
        methods: section
            .payment_methods
            .map(check_methods)
            .transpose()
            .map_err(|m| err("payment_methods", m))?,
        cod_max_amount: section
            .cod_max_amount
            .as_ref()
            .map(parse_money)
            .transpose()
            .map_err(|m| err("cod_max_amount", m))?,
    };
    Ok(Drop {
        id,
        queue,
        payments,
        balance,
        shipping,
        product: section.product,
        per_user_limit,
        pay_within,
        presale: section.presale,
        timing,
        skus,
        round_cache: Default::default(),
    })
}

/// A drop's `queue = { … }`; every field has a default.
fn parse_queue(
    section: &QueueSection,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<QueueRules, ConfigError> {
    let defaults = QueueRules::default();
    let duration = |field: &str, raw: &Option<String>, default, max_hours: i64| {
        let Some(raw) = raw else { return Ok(default) };
        let value = parse_positive_duration(raw).map_err(|m| err(&format!("queue.{field}"), m))?;
        if value > SignedDuration::from_hours(max_hours) {
            return Err(err(
                &format!("queue.{field}"),
                format!("must not exceed {max_hours} hours"),
            ));
        }
        Ok(value)
    };
    let admit_rate = match section.admit_rate {
        None => None,
        Some(rate) => Some(
            u32::try_from(rate)
                .ok()
                .filter(|r| (1..=MAX_RATE).contains(r))
                .ok_or_else(|| {
                    err(
                        "queue.admit_rate",
                        format!("must be 1 to {MAX_RATE} shoppers a second, got {rate}"),
                    )
                })?,
        ),
    };
    Ok(QueueRules {
        opens_before: duration(
            "opens_before",
            &section.opens_before,
            defaults.opens_before,
            24,
        )?,
        draw_window: duration("draw_window", &section.draw_window, defaults.draw_window, 1)?,
        admit_rate,
        ticket_ttl: duration("ticket_ttl", &section.ticket_ttl, defaults.ticket_ttl, 24)?,
    })
}

/// The drop's shipping promise: a fixed date or working days after
/// payment, counted in the drop's time zone.
fn parse_shipping(
    section: &DropSection,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<ShipPlan, ConfigError> {
    let time_zone = match (&section.schedule, &section.time_zone) {
        (Some(_), Some(_)) => {
            return Err(err(
                "time_zone",
                "a scheduled drop counts days in schedule.time_zone".into(),
            ))
        }
        (Some(schedule), None) => TimeZone::get(&schedule.time_zone).map_err(|_| {
            err(
                "schedule.time_zone",
                format!("unknown time zone {:?}", schedule.time_zone),
            )
        })?,
        (None, Some(name)) => TimeZone::get(name)
            .map_err(|_| err("time_zone", format!("unknown time zone {name:?}")))?,
        (None, None) => crate::shipping::default_time_zone(),
    };
    if section.estimated_ship_date.is_some() && section.ship_within_days.is_some() {
        return Err(err(
            "estimated_ship_date",
            "give estimated_ship_date or ship_within_days, not both".into(),
        ));
    }
    let date = match &section.estimated_ship_date {
        None => None,
        Some(raw) => Some(raw.parse().map_err(|_| {
            err(
                "estimated_ship_date",
                format!("{raw:?} is not a date like \"2026-12-15\""),
            )
        })?),
    };
    let within_days = match section.ship_within_days {
        None => crate::shipping::DEFAULT_SHIP_WITHIN_DAYS,
        Some(days) => u32::try_from(days)
            .ok()
            .filter(|d| (1..=60).contains(d))
            .ok_or_else(|| {
                err(
                    "ship_within_days",
                    format!("must be 1 to 60 working days, got {days}"),
                )
            })?,
    };
    Ok(ShipPlan {
        date,
        within_days,
        time_zone,
    })
}

fn parse_schedule(
    section: ScheduleSection,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<WeeklySchedule, ConfigError> {
    let time_zone = TimeZone::get(&section.time_zone).map_err(|_| {
        err(
            "schedule.time_zone",
            format!("unknown time zone {:?}", section.time_zone),
        )
    })?;
    let days = section
        .days
        .iter()
        .map(|d| {
            parse_weekday(d)
                .ok_or_else(|| err("schedule.days", format!("{d:?} is not a day like \"Mon\"")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let at: Time = section.at.parse().map_err(|_| {
        err(
            "schedule.at",
            format!("{:?} is not a local time like \"10:00\"", section.at),
        )
    })?;
    let duration =
        parse_positive_duration(&section.duration).map_err(|m| err("schedule.duration", m))?;
    WeeklySchedule::new(days, at, time_zone, duration)
        .map_err(|e| err(&format!("schedule.{}", e.field()), e.to_string()))
}

fn parse_weekday(raw: &str) -> Option<Weekday> {
    let day = match raw.to_ascii_lowercase().get(..3)? {
        "mon" => Weekday::Monday,
        "tue" => Weekday::Tuesday,
        "wed" => Weekday::Wednesday,
        "thu" => Weekday::Thursday,
        "fri" => Weekday::Friday,
        "sat" => Weekday::Saturday,
        "sun" => Weekday::Sunday,
        _ => return None,
    };
    Some(day)
}

/// Parses an RFC 3339 instant with an offset, e.g. `2026-11-30T10:00:00+08:00`.
pub fn parse_instant(raw: &str) -> Result<Timestamp, String> {
    raw.parse()
        .map_err(|_| format!("{raw:?} is not an RFC 3339 time like \"2026-11-30T10:00:00+08:00\""))
}

/// Prices are written as strings so no binary fraction creeps in.
fn parse_money(value: &toml::Value) -> Result<rust_decimal::Decimal, String> {
    match value {
        toml::Value::String(s) => parse_amount(s).map_err(|e| e.0),
        toml::Value::Integer(n) => parse_amount(&n.to_string()).map_err(|e| e.0),
        other => Err(format!(
            "write amounts as strings like \"6499.00\", got {other}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        listen = "127.0.0.1:8080"
        [auth]
        jwt_secret = "jjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjj"
        admin_token = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        payment_secret = "pppppppppppppppppppppppppppppppppppp"
        logistics_secret = "llllllllllllllllllllllllllllllllllll"
        [limits]
        global_rps = 50000
        [[drops]]
        id = "mi-15-ultra"
        product = "Xiaomi 15 Ultra"
        per_user_limit = 2
        pay_within = "15m"
        presale = true
        balance_from = "48h"
        balance_until = "96h"
        schedule = { days = ["Mon", "Wed", "Fri"], at = "10:00", time_zone = "Asia/Shanghai", duration = "2h" }
        [[drops.skus]]
        id = "mi15u-16-512-black"
        name = "16GB+512GB Black"
        price = "6499.00"
        deposit = "500.00"
        stock = 5000
    "#;

    fn error_of(text: &str) -> String {
        Config::from_toml(text, SecretSource::Environment)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn the_api_example_loads() {
        let config = Config::from_toml(GOOD, SecretSource::Environment).unwrap();
        let drop = config.catalog.get("mi-15-ultra").unwrap();
        assert_eq!(drop.skus[0].stock, 5000);
        assert_eq!(drop.pay_within, SignedDuration::from_mins(15));
        assert_eq!(config.limits.global_rps, 50000);
        assert_eq!(config.limits.per_user_rps, 5);
    }

    #[test]
    fn an_unknown_time_zone_names_drop_and_field() {
        let msg = error_of(&GOOD.replace("Asia/Shanghai", "Mars/Olympus"));
        assert!(
            msg.contains("mi-15-ultra") && msg.contains("schedule.time_zone"),
            "{msg}"
        );
    }

    #[test]
    fn negative_stock_is_refused() {
        let msg = error_of(&GOOD.replace("stock = 5000", "stock = -1"));
        assert!(
            msg.contains("mi-15-ultra") && msg.contains("skus[0].stock"),
            "{msg}"
        );
    }

    #[test]
    fn a_price_with_three_decimals_is_refused() {
        let msg = error_of(&GOOD.replace("\"6499.00\"", "\"6499.001\""));
        assert!(
            msg.contains("skus[0].price") && msg.contains("two decimal"),
            "{msg}"
        );
        let msg = error_of(&GOOD.replace("\"6499.00\"", "6499.5"));
        assert!(msg.contains("skus[0].price"), "{msg}");
    }

    #[test]
    fn duplicate_sku_ids_are_refused() {
        let dup = format!(
            "{GOOD}\n[[drops.skus]]\nid = \"mi15u-16-512-black\"\nname = \"again\"\nprice = \"1.00\"\ndeposit = \"1.00\"\nstock = 1\n"
        );
        let msg = error_of(&dup);
        assert!(msg.contains("skus[1].id") && msg.contains("twice"), "{msg}");
    }

    #[test]
    fn a_schedule_and_a_window_together_are_refused() {
        let both = GOOD.replace(
            "presale = true",
            "presale = true\nopens_at = \"2026-11-30T10:00:00+08:00\"\ncloses_at = \"2026-11-30T12:00:00+08:00\"",
        );
        let msg = error_of(&both);
        assert!(
            msg.contains("mi-15-ultra") && msg.contains("schedule"),
            "{msg}"
        );
    }

    #[test]
    fn no_skus_is_refused() {
        let cut = GOOD.split("[[drops.skus]]").next().unwrap();
        let msg = error_of(cut);
        assert!(msg.contains("mi-15-ultra") && msg.contains("skus"), "{msg}");
    }

    #[test]
    fn no_drops_is_refused() {
        let cut = GOOD.split("[[drops]]").next().unwrap();
        assert!(error_of(cut).contains("drops"));
    }

    #[test]
    fn a_payment_window_beyond_thirty_days_is_refused() {
        let msg = error_of(&GOOD.replace("pay_within = \"15m\"", "pay_within = \"999999h\""));
        assert!(
            msg.contains("mi-15-ultra") && msg.contains("pay_within"),
            "{msg}"
        );
    }

    #[test]
    fn zero_limits_are_refused() {
        let msg = error_of(&GOOD.replace("global_rps = 50000", "global_rps = 0"));
        assert!(msg.contains("limits.global_rps"), "{msg}");
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(
            parse_positive_duration("15m").unwrap(),
            SignedDuration::from_mins(15)
        );
        assert_eq!(
            parse_positive_duration("2h").unwrap(),
            SignedDuration::from_hours(2)
        );
        assert_eq!(
            parse_positive_duration("500ms").unwrap(),
            SignedDuration::from_millis(500)
        );
        assert!(parse_positive_duration("0s").is_err());
        assert!(parse_positive_duration("soon").is_err());
    }

    #[test]
    fn an_empty_or_short_secret_is_refused_naming_the_field() {
        let empty = GOOD.replace("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "");
        let msg = error_of(&empty);
        assert!(
            msg.contains("auth.admin_token") && msg.contains("0 bytes"),
            "{msg}"
        );
        let short = GOOD.replace("jjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjj", "j");
        let msg = error_of(&short);
        assert!(
            msg.contains("auth.jwt_secret") && msg.contains("1 bytes"),
            "{msg}"
        );
        let short = GOOD.replace("pppppppppppppppppppppppppppppppppppp", &"p".repeat(31));
        assert!(error_of(&short).contains("auth.payment_secret"));
    }

    #[test]
    fn events_are_kept_days_or_forever_but_never_less_than_two_days() {
        let with = |server: &str, hooks: &str| {
            let text = GOOD.replace("[limits]", &format!("[server]\n{server}\n[limits]")) + hooks;
            Config::from_toml(&text, SecretSource::Environment)
        };
        let kept = |c: Config| c.server.events_retention.map(|d| d.as_hours());
        assert_eq!(kept(with("", "").unwrap()), Some(24 * 30));
        assert_eq!(
            kept(with("events_retention = \"7d\"", "").unwrap()),
            Some(24 * 7)
        );
        assert_eq!(
            kept(with("events_retention = \"forever\"", "").unwrap()),
            None
        );
        let short = with("events_retention = \"1d\"", "")
            .unwrap_err()
            .to_string();
        assert!(short.contains("server.events_retention"), "{short}");
        let hook = "\n[[webhooks]]\nurl = \"http://127.0.0.1:9000/events\"\nsecret = \"wwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwww\"\n";
        assert_eq!(with("", hook).unwrap().webhooks.len(), 1);
        let twice = with("", &format!("{hook}{hook}")).unwrap_err().to_string();
        assert!(twice.contains("webhooks[1].url"), "{twice}");
        let weak = with(
            "",
            &hook.replace("wwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwww", "short"),
        )
        .unwrap_err();
        assert!(weak.to_string().contains("webhooks[0].secret"), "{weak}");
    }

    #[test]
    fn demo_secrets_are_refused_off_loopback() {
        let cut = GOOD.split("[auth]").next().unwrap().to_owned()
            + GOOD
                .split("[limits]")
                .nth(1)
                .map(|rest| "[limits]".to_owned() + rest)
                .unwrap()
                .as_str();
        let mut demo = Config::from_toml(&cut, SecretSource::EnvironmentOrDemo).unwrap();
        assert_eq!(demo.auth.demo_fields().len(), 5);
        assert!(demo.check_exposure().is_ok(), "loopback is fine");
        demo.listen = "0.0.0.0:8080".parse().unwrap();
        let msg = demo.check_exposure().unwrap_err().to_string();
        assert!(
            msg.contains("auth.jwt_secret") && msg.contains("demo"),
            "{msg}"
        );
        let real = Config::from_toml(
            &GOOD.replace("127.0.0.1:8080", "0.0.0.0:8080"),
            SecretSource::Environment,
        )
        .unwrap();
        assert!(real.check_exposure().is_ok());
    }
}
