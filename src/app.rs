//! The running application: what every request handler and background task
//! shares, and how it is put together from the configuration.

use std::path::PathBuf;
use std::sync::Arc;

use crate::auth::TokenVerifier;
use crate::catalog::Catalog;
use crate::clock::Clock;
use crate::config::{Config, Limits, Secrets, ServerSettings};
use crate::engine::{EmbeddedEngine, InventoryEngine};
use crate::store::{OrderStore, StoreError};

/// Where orders are kept, from `--database`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    Sqlite(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Unsupported(String),
    #[error("order store: {0}")]
    Store(#[from] StoreError),
}

impl Database {
    /// Parses `sqlite://PATH`; PostgreSQL arrives with the Redis engine.
    pub fn parse(url: &str) -> Result<Self, StartError> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(StartError::Unsupported(
                    "--database sqlite:// needs a file path".into(),
                ));
            }
            return Ok(Database::Sqlite(PathBuf::from(path)));
        }
        Err(StartError::Unsupported(format!(
            "--database {url:?}: only sqlite://PATH is supported in this version"
        )))
    }
}

pub struct App {
    pub catalog: Catalog,
    pub engine: Arc<dyn InventoryEngine>,
    pub store: OrderStore,
    pub clock: Arc<dyn Clock>,
    pub tokens: TokenVerifier,
    pub secrets: Secrets,
    pub settings: ServerSettings,
    pub limits: Limits,
}

impl App {
    /// Opens the order store, rebuilds the engine from it, and is ready to serve.
    pub async fn open(
        config: Config,
        database: &Database,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, StartError> {
        let Database::Sqlite(path) = database;
        let store = OrderStore::open_sqlite(path)?;
        let engine = EmbeddedEngine::open(store.clone(), clock.clone()).await?;
        Ok(Arc::new(Self {
            catalog: config.catalog,
            engine: Arc::new(engine),
            store,
            clock,
            tokens: TokenVerifier::new(&config.auth.jwt_secret),
            secrets: config.auth,
            settings: config.server,
            limits: config.limits,
        }))
    }
}
