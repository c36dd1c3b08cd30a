//! `tally-server`: serve tally over HTTP, or manage its API keys.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use tally::{EngineConfig, Tally};
use tally_server::{config, AppState, Server, ServerConfig};

/// mimalloc: a request allocates and frees many small buffers on several threads, where glibc's
/// allocator cost a sixth of the server's time (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tally-server",
    version,
    about = "tally as a service: the native API, the Syft accounting API, the seeds' cost calls"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Open (or recover) the data directory and serve (the default).
    Serve(ServeArgs),
    /// Manage API keys (the server must not be running on the directory).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
        #[command(flatten)]
        common: ServeArgs,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key; prints its secret once.
    Create {
        /// `admin` or `service`.
        #[arg(long)]
        scope: String,
        /// For a service key: the app (revenue account name) it is bound to.
        #[arg(long)]
        app: Option<String>,
        /// A label.
        #[arg(long, default_value = "")]
        label: String,
        /// Lifetime in seconds.
        #[arg(long)]
        expires_in_s: Option<u64>,
    },
    /// List keys (never their secrets).
    List,
    /// Revoke a key by id.
    Revoke {
        /// The key's id.
        id: u64,
    },
}

#[derive(Args, Clone, Default)]
struct ServeArgs {
    /// A TOML file of settings (see README: Configuration).
    #[arg(long, env = "TALLY_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// The data directory. Default ./tally-data.
    #[arg(long, env = "TALLY_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// Where to listen. Default 127.0.0.1:8080.
    #[arg(long, env = "TALLY_LISTEN", global = true)]
    listen: Option<String>,
    /// A file holding the admin key (else TALLY_ADMIN_KEY, else one generated in the data dir).
    #[arg(long, env = "TALLY_ADMIN_KEY_FILE", global = true)]
    admin_key_file: Option<PathBuf>,
    /// `text` or `json`.
    #[arg(long, env = "TALLY_LOG_FORMAT", global = true)]
    log_format: Option<String>,
    /// Let Syft's `user/create` be called without the admin key.
    #[arg(long, env = "TALLY_OPEN_SIGNUP", global = true)]
    open_signup: Option<bool>,
    /// `data` (fdatasync, the default) or `none` (benchmarks only: not durable).
    #[arg(long, env = "TALLY_SYNC", global = true)]
    sync: Option<String>,
    /// Keep the ledger in PostgreSQL at this libpq connection string (e.g.
    /// `host=/run/postgresql dbname=tally`) instead of the data directory.
    #[arg(long, env = "TALLY_POSTGRES", global = true)]
    postgres: Option<String>,
    /// The PostgreSQL ledger's schema. Default `tally`.
    #[arg(long, env = "TALLY_PG_SCHEMA", global = true)]
    pg_schema: Option<String>,
    /// This node's name among the nodes sharing the PostgreSQL schema. Default `tally`.
    #[arg(long, env = "TALLY_PG_NODE", global = true)]
    pg_node: Option<String>,
    /// The PostgreSQL shard leases' length in ms. Default 5,000.
    #[arg(long, env = "TALLY_PG_LEASE_MS", global = true)]
    pg_lease_ms: Option<u64>,
    /// Exit with status 75 once the ledger's store fail-stops (for a supervisor to restart
    /// the server). Default false.
    #[arg(long, env = "TALLY_EXIT_ON_STORAGE_FAILURE", global = true)]
    exit_on_storage_failure: Option<bool>,
    /// The URL other nodes forward requests for this node's shards to. Default: `http://`
    /// and the bound address, when the listen address names one IP.
    #[arg(long, env = "TALLY_ADVERTISE", global = true)]
    advertise: Option<String>,
}

fn settings(args: &ServeArgs) -> anyhow::Result<ServerConfig> {
    let mut c = match &args.config {
        Some(path) => ServerConfig::from_toml_file(path).map_err(anyhow::Error::msg)?,
        None => ServerConfig::default(),
    };
    if let Some(d) = &args.data_dir {
        c.data_dir = d.clone();
    }
    if let Some(l) = &args.listen {
        c.listen = l.clone();
    }
    if let Some(f) = &args.log_format {
        c.log_format = f.clone();
    }
    if let Some(o) = args.open_signup {
        c.open_signup = o;
    }
    if let Some(s) = &args.sync {
        c.sync = config::parse_sync(s).map_err(anyhow::Error::msg)?;
    }
    if let Some(p) = &args.postgres {
        c.postgres = Some(p.clone());
    }
    if let Some(s) = &args.pg_schema {
        c.pg_schema = s.clone();
    }
    if let Some(n) = &args.pg_node {
        c.pg_node = n.clone();
    }
    if let Some(ms) = args.pg_lease_ms {
        c.pg_lease_ms = ms;
    }
    if let Some(exit) = args.exit_on_storage_failure {
        c.exit_on_storage_failure = exit;
    }
    if let Some(url) = &args.advertise {
        c.advertise = Some(url.clone());
    }
    if c.log_format != "text" && c.log_format != "json" {
        bail!(
            "log format must be `text` or `json`, not {:?}",
            c.log_format
        );
    }
    Ok(c)
}

fn admin_key(args: &ServeArgs, c: &ServerConfig) -> anyhow::Result<String> {
    if let Some(path) = &args.admin_key_file {
        let key = std::fs::read_to_string(path)
            .with_context(|| format!("reading the admin key file {}", path.display()))?;
        let key = key.trim().to_owned();
        if key.len() < 16 {
            bail!(
                "the admin key in {} is shorter than 16 characters",
                path.display()
            );
        }
        return Ok(key);
    }
    if let Ok(key) = std::env::var("TALLY_ADMIN_KEY") {
        if key.len() < 16 {
            bail!("TALLY_ADMIN_KEY is shorter than 16 characters");
        }
        return Ok(key);
    }
    let path = c.data_dir.join("admin.key");
    match std::fs::read_to_string(&path) {
        Ok(key) => Ok(key.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = tally_server::auth::new_secret(0).replacen("tk_0_", "tka_", 1);
            config::write_private(&path, key.as_bytes()).map_err(anyhow::Error::msg)?;
            eprintln!("generated an admin key in {} (mode 0600)", path.display());
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

async fn open(args: &ServeArgs) -> anyhow::Result<(AppState, ServerConfig)> {
    let c = settings(args)?;
    std::fs::create_dir_all(&c.data_dir)
        .with_context(|| format!("creating {}", c.data_dir.display()))?;
    let key = admin_key(args, &c)?;
    let engine_config = EngineConfig::default();
    let limits = engine_config.limits.clone();
    let store: std::sync::Arc<dyn tally::Store> = match &c.postgres {
        Some(url) => {
            let mut config = tally::PgConfig::new(url.clone(), c.pg_schema.clone());
            config.limits = limits;
            config.node = c.pg_node.clone();
            config.lease_ttl = std::time::Duration::from_millis(c.pg_lease_ms);
            config.renew_every = config.lease_ttl / 5;
            let (store, recovery) =
                tokio::task::spawn_blocking(move || tally::PgStore::open(config))
                    .await?
                    .with_context(|| {
                        format!("opening the ledger in PostgreSQL schema {}", c.pg_schema)
                    })?;
            tracing::info!(?recovery, schema = %c.pg_schema, "ledger open in PostgreSQL");
            std::sync::Arc::new(store)
        }
        None => {
            let mut config = tally::DurableConfig::new(c.data_dir.join("ledger"));
            config.limits = limits;
            // The ledger's journal follows `sync` too (it was always synced before).
            config.sync = c.sync;
            let (store, recovery) =
                tokio::task::spawn_blocking(move || tally::DurableStore::open(config))
                    .await?
                    .with_context(|| format!("opening the ledger in {}", c.data_dir.display()))?;
            tracing::info!(?recovery, "ledger open");
            std::sync::Arc::new(store)
        }
    };
    let tally = Tally::open(store, engine_config)
        .await
        .context("opening the engine")?;
    let state = AppState::open(tally, &c.data_dir, c.clone(), &key)
        .await
        .map_err(anyhow::Error::msg)?;
    Ok((state, c))
}

fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => serve(cli.serve).await,
        Some(Command::Serve(args)) => serve(args).await,
        Some(Command::Keys { command, common }) => keys(common, command).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let c = settings(&args)?;
    init_logs(&c.log_format);
    let (state, c) = open(&args).await?;
    let tally = state.tally.clone();
    let server = Server::bind(state)
        .await
        .with_context(|| format!("binding {}", c.listen))?;
    let addr = server.local_addr()?;
    tracing::info!(%addr, data_dir = %c.data_dir.display(), "tally-server listening");
    println!("tally-server listening on http://{addr}");
    let watch = c.exit_on_storage_failure;
    let failed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = {
        let failed = failed.clone();
        async move {
            tokio::select! {
                () = signal() => {}
                () = storage_failure(tally), if watch => {
                    failed.store(true, std::sync::atomic::Ordering::Release);
                }
            }
        }
    };
    let ran = server.run(stop).await;
    if failed.load(std::sync::atomic::Ordering::Acquire) {
        tracing::error!(result = ?ran.err(), "the ledger's store fail-stopped: exiting (75) for a restart");
        std::process::exit(75);
    }
    ran.map_err(anyhow::Error::msg)?;
    tracing::info!("tally-server stopped");
    Ok(())
}

/// Returns once the ledger's store is fail-stopped (checked every 100 ms).
async fn storage_failure(tally: tally::Tally) {
    loop {
        if let Some(reason) = tally.storage_failed() {
            tracing::error!(%reason, "the ledger's store fail-stopped");
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn keys(args: ServeArgs, command: KeysCommand) -> anyhow::Result<()> {
    let (state, _) = open(&args).await?;
    let result = match command {
        KeysCommand::Create {
            scope,
            app,
            label,
            expires_in_s,
        } => tally_server::v1::make_key(&state, &scope, app.as_deref(), &label, expires_in_s)
            .await
            .map(|(secret, key)| {
                println!("{}", serde_json::json!({"secret": secret, "key": tally_server::v1::key_json(&state, &key)}));
            })
            .map_err(|e| anyhow::anyhow!(e.message)),
        KeysCommand::List => {
            for k in state.registry.keys() {
                println!("{}", tally_server::v1::key_json(&state, &k));
            }
            Ok(())
        }
        KeysCommand::Revoke { id } => match state.registry.revoke_key(id).await {
            Ok(true) => {
                println!("revoked key {id}");
                Ok(())
            }
            Ok(false) => Err(anyhow::anyhow!("no key {id}")),
            Err(e) => Err(anyhow::anyhow!(e.message)),
        },
    };
    tally_server::serve::shutdown_state(state)
        .await
        .map_err(anyhow::Error::msg)?;
    result
}
