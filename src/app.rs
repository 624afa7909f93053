//! The running application: what every request handler and background task
//! shares, and how it is put together from the configuration.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::admission::Admission;
use crate::auth::TokenVerifier;
use crate::catalog::{Catalog, LiveCatalog};
use crate::clock::Clock;
use crate::config::{drop_from_json, Config, Secrets, ServerSettings};
use crate::domain::RoundId;
use crate::engine::{
    EmbeddedEngine, EngineError, InventoryEngine, Redis, RedisEngine, RedisOrderWriter,
};
use crate::promotions::LivePromotions;
use crate::sold_out::SoldOutMarks;
use crate::store::{OrderStore, StoreError};
use crate::waiting_room::memory::MemoryQueues;
use crate::waiting_room::redis::RedisQueues;
use crate::waiting_room::tickets::Tickets;
use crate::waiting_room::QueueBackend;

/// Where orders are kept, from `--database`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    Sqlite(PathBuf),
    Postgres(String),
}

/// Which inventory engine decides reservations, from `--redis`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineChoice {
    Embedded,
    Redis { url: String },
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Unsupported(String),
    #[error("order store: {0}")]
    Store(#[from] StoreError),
    #[error("Redis: {0}")]
    Redis(#[from] EngineError),
}

impl Database {
    /// Parses `sqlite://PATH` or `postgres://…` (also `postgresql://…`).
    pub fn parse(url: &str) -> Result<Self, StartError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Database::Postgres(url.to_owned()));
        }
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(StartError::Unsupported(
                    "--database sqlite:// needs a file path".into(),
                ));
            }
            return Ok(Database::Sqlite(PathBuf::from(path)));
        }
        Err(StartError::Unsupported(format!(
            "--database {url:?}: expected sqlite://PATH or postgres://…"
        )))
    }
}

pub struct App {
    catalog: LiveCatalog,
    pub engine: Arc<dyn InventoryEngine>,
    pub store: OrderStore,
    pub clock: Arc<dyn Clock>,
    pub tokens: TokenVerifier,
    pub secrets: Secrets,
    pub settings: ServerSettings,
    pub admission: Admission,
    /// SKUs the engine said are sold out, refused here without asking it again.
    pub sold_out: SoldOutMarks,
    /// One permit per open connection. Past `max_connections` a connection
    /// gets a 503 and is closed, so a flood cannot exhaust file descriptors
    /// or memory; the permits in use are the open-connections gauge.
    pub connections: Arc<Semaphore>,
    /// In Redis mode, the task that moves winners from Redis into the store.
    pub redis_writer: Option<RedisOrderWriter>,
    /// The promotions wins are priced with.
    pub promotions: LivePromotions,
    /// The store's payment rules (`[payments]`); drops may override them.
    pub payments: crate::payment_rules::PaymentRules,
    /// Where order events are pushed (`[[webhooks]]`).
    pub webhooks: Vec<crate::webhooks::Webhook>,
    /// The waiting rooms of queued drops: in memory with the embedded
    /// engine, in Redis (shared by every instance) with the Redis one.
    pub queues: Arc<dyn QueueBackend>,
    pub queue_tickets: Tickets,
    /// The admit rates of queues that name none.
    pub queue_rates: crate::waiting_room::auto_rate::AutoRates,
    /// What `GET /api/v1/drops` serves, rendered again only when it changed.
    pub drop_views: crate::http::views::RenderedViews,
    /// Reserve outcomes and latencies per drop, for the operator page.
    pub reserve_tally: crate::reserve_tally::ReserveTally,
    /// Each queued drop's figures as its last admission step left them.
    pub queue_figures: crate::waiting_room::QueueFigures,
}

impl App {
    /// Opens the order store and the engine (the embedded one rebuilt from
    /// the store), and is ready to serve.
    pub async fn open(
        config: Config,
        database: &Database,
        choice: &EngineChoice,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, StartError> {
        let store = match database {
            Database::Sqlite(path) => OrderStore::open_sqlite(path)?,
            Database::Postgres(url) => OrderStore::open_postgres(url).await?,
        };
        let catalog = LiveCatalog::new(config.catalog);
        let promotions = LivePromotions::new(config.promotions);
        promotions.rebuild(&store.stored_promotions().await?);
        // Operators' drops first: the embedded engine loads their rounds too.
        load_saved_drops(&store, &catalog).await?;
        let max_connections = config.server.max_connections;
        let (engine, redis_writer, queues): (Arc<dyn InventoryEngine>, _, Arc<dyn QueueBackend>) =
            match choice {
                EngineChoice::Embedded => {
                    let rounds = catalog.current_rounds(clock.now());
                    let engine =
                        Arc::new(EmbeddedEngine::open(store.clone(), clock.clone(), rounds).await?);
                    let queues = Arc::new(MemoryQueues::new(engine.clone(), None));
                    (engine, None, queues)
                }
                EngineChoice::Redis { url } => {
                    let redis = Redis::open(url).await?;
                    let engine =
                        RedisEngine::open(&redis, catalog.clone(), store.clone(), config.redis)
                            .await?;
                    // Stable across restarts, so a restarted instance re-reads its
                    // own pending winners at once. Two instances with one name
                    // (same host and listen address) are still safe: a winner
                    // delivered to both is inserted once.
                    let consumer = format!("{}:{}", hostname(), config.listen);
                    let claim_idle = config.server.claim_idle;
                    let fence = engine.master_fence();
                    let writer =
                        RedisOrderWriter::start(&redis, store.clone(), consumer, claim_idle, fence)
                            .await?;
                    let engine: Arc<dyn InventoryEngine> = Arc::new(engine);
                    let queues = Arc::new(RedisQueues::new(
                        redis.connect().await?,
                        engine.clone(),
                        None,
                    ));
                    (engine, Some(writer), queues)
                }
            };
        let app = Arc::new(Self {
            catalog,
            engine,
            store,
            clock,
            tokens: TokenVerifier::new(&config.auth.jwt_secret),
            // Without a queue secret no drop may have a queue (the config
            // and the admin API refuse one): nothing is signed with this.
            queue_tickets: Tickets::new(
                &config
                    .auth
                    .queue_secret
                    .clone()
                    .unwrap_or_else(|| hex::encode(rand::random::<[u8; 32]>())),
            ),
            queues,
            queue_rates: Default::default(),
            drop_views: Default::default(),
            reserve_tally: Default::default(),
            queue_figures: Default::default(),
            secrets: config.auth,
            settings: config.server,
            admission: Admission::new(config.limits),
            sold_out: SoldOutMarks::default(),
            connections: Arc::new(Semaphore::new(max_connections)),
            redis_writer,
            promotions,
            payments: config.payments,
            webhooks: config.webhooks,
        });
        Ok(app)
    }
}

impl App {
    /// Adds the drops operators created (here or on another instance) that
    /// this instance does not have yet.
    pub async fn load_saved_drops(&self) -> Result<(), StoreError> {
        load_saved_drops(&self.store, &self.catalog).await
    }

    /// Picks up promotions operators added or ended (here or on another
    /// instance).
    pub async fn reload_promotions(&self) -> Result<(), StoreError> {
        self.promotions
            .rebuild(&self.store.stored_promotions().await?);
        Ok(())
    }

    /// Has the engine forget the rounds that are over; how many it forgot.
    pub async fn retire_rounds(&self) -> Result<usize, EngineError> {
        let now = self.clock.now();
        let retired = |round: &RoundId| self.catalog.is_retired(round, now);
        self.engine.retire(&retired).await
    }

    /// True while `round` is the one on sale: units given back now can
    /// still sell. After it closes they do not come back.
    pub fn is_on_sale(&self, round: &RoundId) -> bool {
        let now = self.clock.now();
        self.catalog()
            .get(round.drop_part())
            .map(|drop| drop.round_at(now))
            .is_some_and(|r| r.id == *round && r.phase_at(now) == crate::schedule::Phase::Open)
    }

    /// The catalog as it stands now (operators may add drops at any time).
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.snapshot()
    }

    pub fn live_catalog(&self) -> &LiveCatalog {
        &self.catalog
    }

    pub fn open_connections(&self) -> usize {
        self.settings.max_connections - self.connections.available_permits()
    }

    /// Redis mode: won orders the writer could not store and kept aside in
    /// the dead-letter streams (0 in embedded mode, where a win that cannot
    /// be stored is answered 503 instead).
    pub fn dead_letters(&self) -> u64 {
        self.redis_writer
            .as_ref()
            .map_or(0, RedisOrderWriter::dead_letters)
    }

    /// Won orders not yet in the order store: the Redis stream's backlog, or
    /// in embedded mode the jobs queued for the writer's next commit.
    pub fn writer_lag(&self) -> u64 {
        match &self.redis_writer {
            Some(writer) => writer.lag(),
            None => self.store.queued() as u64,
        }
    }
}

async fn load_saved_drops(store: &OrderStore, catalog: &LiveCatalog) -> Result<(), StoreError> {
    for definition in store.saved_drops().await? {
        match drop_from_json(definition.as_bytes()) {
            Ok(drop) if catalog.get(drop.id.as_str()).is_none() => {
                tracing::info!(drop = %drop.id, "drop created by an operator loaded");
                // Lost a race with another loader: it is there either way.
                let _ = catalog.add(drop);
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "a stored drop no longer passes the checks"),
        }
    }
    Ok(())
}

/// Names this instance's order writer in the consumer group.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "dropgate".into())
}
