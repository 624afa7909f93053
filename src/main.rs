use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use dropgate::clock::SystemClock;
use dropgate::config::Config;
use dropgate::domain::UserId;
use dropgate::{auth, demo, App, Database, EngineChoice};

/// mimalloc rather than glibc's malloc: under a storm many threads allocate
/// and free small buffers at once, and glibc's arena locks showed in profiles.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A flash-sale reservation server.
#[derive(Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// With no command, `dropgate` serves with these options.
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Serve shoppers (the default when no command is given).
    Serve(ServeArgs),
    /// Print a shopper token (JWT) signed with the configured secret.
    Token(TokenArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Config file (TOML); without one, a demo catalog is served.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on, overriding the config file.
    #[arg(long)]
    listen: Option<String>,
    /// Redis URL for the Redis engine.
    #[arg(long)]
    redis: Option<String>,
    /// Order store: sqlite://PATH (default: sqlite://DATA_DIR/orders.db).
    #[arg(long)]
    database: Option<String>,
    /// Directory for data files.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
}

#[derive(Args)]
struct TokenArgs {
    /// The shopper's user id (the token's `sub`).
    #[arg(long)]
    user: String,
    /// Seconds until the token expires.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
    /// Marks the shopper as a student.
    #[arg(long)]
    student: bool,
    /// Config file whose jwt_secret signs the token.
    #[arg(long)]
    config: Option<PathBuf>,
}

fn load_config(path: Option<&PathBuf>) -> Result<Config, String> {
    match path {
        Some(path) => Config::load(path),
        None => demo::config(jiff::Timestamp::now()),
    }
    .map_err(|e| format!("invalid configuration: {e}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        None => serve(cli.serve).await,
        Some(Command::Serve(args)) => serve(args).await,
        Some(Command::Token(args)) => token(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("dropgate: {message}");
            ExitCode::FAILURE
        }
    }
}

fn token(args: TokenArgs) -> Result<(), String> {
    let config = load_config(args.config.as_ref())?;
    let user = UserId::parse(&args.user).map_err(|e| e.0)?;
    println!(
        "{}",
        auth::mint(&config.auth.jwt_secret, &user, args.ttl, args.student)
    );
    Ok(())
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let is_demo = args.config.is_none();
    let mut config = load_config(args.config.as_ref())?;
    if let Some(listen) = &args.listen {
        config.listen = listen
            .parse()
            .map_err(|_| format!("--listen {listen:?} is not an address"))?;
    }
    config
        .check_exposure()
        .map_err(|e| format!("invalid configuration: {e}"))?;
    let engine = match args.redis {
        Some(url) => EngineChoice::Redis { url },
        None => EngineChoice::Embedded,
    };
    let database = match &args.database {
        Some(url) => Database::parse(url).map_err(|e| e.to_string())?,
        None => Database::Sqlite(args.data_dir.join("orders.db")),
    };
    let listen = config.listen;
    let app = App::open(config, &database, &engine, Arc::new(SystemClock))
        .await
        .map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("dropgate listening on http://{addr}");
    if is_demo {
        print_demo_help(&app, addr);
    }
    dropgate::run(listener, app, shutdown_signal())
        .await
        .map_err(|e| format!("could not flush the order writer: {e}"))?;
    tracing::info!("stopped");
    Ok(())
}

fn print_demo_help(app: &App, addr: std::net::SocketAddr) {
    let drop = app
        .live_catalog()
        .get(demo::DEMO_DROP)
        .expect("the demo has its drop");
    let round = drop.round_at(jiff::Timestamp::now());
    println!(
        "\nDemo catalog (no --config given): drop {:?} opens at {} (in about 30 s).\n\n  \
         Shop:       http://{addr}/         (sign in with any name, buy at the opening, pay in the demo gateway)\n  \
         Operators:  http://{addr}/ops      (admin token: the demo's, shown on the page)\n\n\
         Or with curl:\n\n  \
         TOKEN=$(cargo run --release -- token --user alice)\n  \
         curl -s -X POST http://{addr}/api/v1/drops/{}/reserve \\\n    \
         -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' \\\n    \
         -d '{{\"sku\": \"{}\", \"quantity\": 1}}'\n",
        demo::DEMO_DROP,
        round.opens_at,
        demo::DEMO_DROP,
        demo::DEMO_SKU,
    );
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down: draining requests and flushing orders");
}
