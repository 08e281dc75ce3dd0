//! The `connstatus` commands (see `docs/operations.md#commands`).

use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgGroup, Parser, Subcommand};
use secrecy::ExposeSecret;

use crate::cache::Cache;
use crate::config::Settings;
use crate::domain::UserId;
use crate::service::warm;
use crate::startup::Application;
use crate::{auth, db, seed, telemetry};

/// connstatus: the connection status between the logged-in user and another.
#[derive(Debug, Parser)]
#[command(name = "connstatus", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service (applies pending migrations first unless
    /// CONNSTATUS_MIGRATE_ON_START=false).
    Serve,
    /// Create the database if missing and apply pending migrations.
    Migrate,
    /// Follow the binary log and refresh the cache for every committed
    /// change of users and user_connections, whoever made it (`serve` runs
    /// this too unless CONNSTATUS_FOLLOW=false). One follower per database
    /// is active at a time; another stands by. Stops on SIGTERM / SIGINT.
    Follow,
    /// Insert a deterministic synthetic social graph.
    Seed {
        /// Number of users (ids 1..=N).
        #[arg(long)]
        users: u64,
        /// Number of pairs with a relation row.
        #[arg(long)]
        connections: u64,
        /// Random seed: the same seed gives the same graph.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Replace existing users and pairs instead of refusing.
        #[arg(long)]
        reset: bool,
    },
    /// Warm the cache from MySQL: every pair (--all), or every pair of some
    /// users. Safe to re-run and to interrupt (Ctrl-C).
    #[command(group(ArgGroup::new("scope").required(true).args(["all", "users_file", "users"])))]
    Warm {
        /// Every pair and every user.
        #[arg(long)]
        all: bool,
        /// A file of user ids (separated by newlines, spaces or commas; `#`
        /// starts a comment) whose pairs are warmed.
        #[arg(long, value_name = "FILE")]
        users_file: Option<std::path::PathBuf>,
        /// User ids whose pairs are warmed, e.g. 1,2,3.
        #[arg(long, value_delimiter = ',', value_parser = parse_user)]
        users: Vec<UserId>,
        /// Also warm each user's pair with these ids, relation or not (so
        /// "no relation" answers are cached too), e.g. the authors of a feed.
        #[arg(long, value_delimiter = ',', value_parser = parse_user, requires = "scope")]
        with: Vec<UserId>,
        /// Rows read per query, and entries written per pipeline.
        #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        chunk: u32,
        /// Pipelines in flight at once.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
        concurrency: u32,
    },
    /// Mint a development HS256 token with the configured secret.
    Token {
        /// The user the token is for.
        #[arg(long, value_parser = parse_user)]
        user: UserId,
        /// How long it is valid (e.g. 30s, 15m, 1h, 7d).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

fn parse_user(text: &str) -> Result<UserId, String> {
    UserId::parse(text).ok_or_else(|| format!("`{text}` is not a user id (1..=2^63-1)"))
}

/// Parses the command line, loads configuration and runs the command.
/// Exit codes: 0 done, 1 the command failed, 2 bad usage or configuration.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(settings.log_format == "json");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::Serve => serve(settings).await,
        Command::Migrate => migrate(&settings).await,
        Command::Follow => follow(&settings).await,
        Command::Seed {
            users,
            connections,
            seed,
            reset,
        } => {
            let spec = seed::Spec {
                users,
                connections,
                seed,
            };
            seed_graph(&settings, spec, reset).await
        }
        Command::Warm {
            all,
            users_file,
            users,
            with,
            chunk,
            concurrency,
        } => {
            let scope = warm_scope(all, users_file.as_deref(), users, with)?;
            let tuning = warm::Tuning {
                chunk: chunk as usize,
                concurrency: concurrency as usize,
                ..warm::Tuning::default()
            };
            warm_cache(&settings, scope, tuning).await
        }
        Command::Token { user, ttl } => token(&settings, user, ttl),
    }
}

async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let applied = db::migrate(&settings.database_url)
        .await
        .map_err(anyhow::Error::msg)?;
    println!("migrations applied: {}", applied.len());
    for version in applied {
        println!("  {version}");
    }
    Ok(())
}

/// What `warm` is asked to warm: everything, or the users named on the
/// command line and in a file.
fn warm_scope(
    all: bool,
    users_file: Option<&std::path::Path>,
    mut users: Vec<UserId>,
    with: Vec<UserId>,
) -> anyhow::Result<warm::Scope> {
    if all {
        return Ok(warm::Scope::All);
    }
    if let Some(path) = users_file {
        users.extend(read_users_file(path)?);
    }
    Ok(warm::Scope::Users { users, with })
}

/// Prints a development HS256 token for `user`.
fn token(settings: &Settings, user: UserId, ttl: Duration) -> anyhow::Result<()> {
    let secret = match (&settings.jwt.jwt_algorithm[..], &settings.jwt.jwt_secret) {
        ("HS256", Some(secret)) => secret.expose_secret().as_bytes().to_vec(),
        _ => anyhow::bail!(
            "`token` mints HS256 tokens: set CONNSTATUS_JWT_ALGORITHM=HS256 and CONNSTATUS_JWT_SECRET"
        ),
    };
    let token = auth::mint_hs256(
        &secret,
        &settings.jwt.jwt_user_claim,
        user,
        ttl,
        settings.jwt.jwt_issuer.as_deref(),
        settings.jwt.jwt_audience.as_deref(),
    )
    .map_err(anyhow::Error::msg)?;
    println!("{token}");
    Ok(())
}

/// Applies pending migrations, unless CONNSTATUS_MIGRATE_ON_START=false.
async fn migrate_on_start(settings: &Settings) -> anyhow::Result<()> {
    if settings.migrate_on_start {
        let applied = db::migrate(&settings.database_url)
            .await
            .map_err(anyhow::Error::msg)?;
        if !applied.is_empty() {
            tracing::info!(count = applied.len(), "migrations applied");
        }
    }
    Ok(())
}

async fn follow(settings: &Settings) -> anyhow::Result<()> {
    use crate::service::follow::{Follower, FollowerStatus, State};
    migrate_on_start(settings).await?;
    let hooks = crate::hooks::Hooks::from_settings(settings).map_err(anyhow::Error::msg)?;
    let status = FollowerStatus::new(State::Starting);
    let follower = Follower::from_settings(settings, hooks, status).map_err(anyhow::Error::msg)?;
    follower.mark_start().await;
    tokio::select! {
        () = follower.run_forever() => {}
        () = crate::startup::wait_for_signal() => tracing::info!("stopped"),
    }
    Ok(())
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    migrate_on_start(&settings).await?;
    let app = Application::build(&settings).await?;
    let host = settings.bind_addr().ip();
    tracing::info!("listening on http://{host}:{}", app.port());
    let admin_host = settings.admin_bind_addr().ip();
    tracing::info!(
        "admin listening on http://{admin_host}:{}",
        app.admin_port()
    );
    app.run_until_stopped().await?;
    tracing::info!("stopped");
    Ok(())
}

async fn seed_graph(settings: &Settings, spec: seed::Spec, reset: bool) -> anyhow::Result<()> {
    db::migrate(&settings.database_url)
        .await
        .map_err(anyhow::Error::msg)?;
    let summary = seed::run(&settings.database_url, spec, reset)
        .await
        .map_err(anyhow::Error::msg)?;
    let [none, pending, rejected, connected] = summary.by_state;
    let pairs = none + pending + rejected + connected;
    println!(
        "seeded {} users and {pairs} pairs (connected {connected}, pending {pending}, \
         pending+rejected {rejected}, none {none}) in {:.1}s ({:.0} pairs/s), seed {}",
        summary.users,
        summary.seconds,
        pairs as f64 / summary.seconds.max(1e-9),
        spec.seed
    );
    println!(
        "skew: user {} has the most pairs ({}); the median user has {}",
        summary.max_degree.0, summary.max_degree.1, summary.median_degree
    );
    // Fresh rows start again at version 1: entries cached from an earlier
    // graph would stay in place (a newer version wins), so they must go.
    let cache = Cache::from_settings(settings).map_err(anyhow::Error::msg)?;
    match cache.purge().await {
        Ok(Some(n)) => println!("cache: removed {n} entries under {}", settings.cache.redis_prefix),
        Ok(None) => println!(
            "cache: not cleared (a cluster is not scanned): set CONNSTATUS_REDIS_PREFIX to a new prefix (now {}) for the instances that serve this graph",
            settings.cache.redis_prefix
        ),
        Err(e) => anyhow::bail!("the graph is in MySQL, but clearing the cache failed ({e}); run seed again once Redis is up"),
    }
    for (other, status) in summary.examples {
        println!(
            "example: user 1 -> user {other}: {}",
            status.as_str().unwrap_or("null")
        );
    }
    Ok(())
}

/// User ids from a file: separated by newlines, spaces or commas; `#` starts
/// a comment. A bad id is an error naming its line.
fn read_users_file(path: &std::path::Path) -> anyhow::Result<Vec<UserId>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("--users-file {}: {e}", path.display()))?;
    let mut users = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("");
        for word in line
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|w| !w.is_empty())
        {
            let user = UserId::parse(word).ok_or_else(|| {
                anyhow::anyhow!(
                    "--users-file {}:{}: `{word}` is not a user id",
                    path.display(),
                    n + 1
                )
            })?;
            users.push(user);
        }
    }
    Ok(users)
}

async fn warm_cache(
    settings: &Settings,
    scope: warm::Scope,
    tuning: warm::Tuning,
) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let warmer = warm::Warmer::from_settings(settings, tuning).map_err(anyhow::Error::msg)?;
    let progress = std::sync::Arc::new(warm::Progress::default());
    let reporter = tokio::spawn(report_progress(
        progress.clone(),
        std::io::stderr().is_terminal(),
    ));
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let result = warmer.run(&scope, &progress, stop).await;
    reporter.abort();
    let summary = result.map_err(anyhow::Error::msg)?;
    println!(
        "warm: {} pairs and {} users read, {} written, {} skipped (already cached), {} errors, \
         in {:.1}s ({:.0} entries/s){}",
        summary.pairs,
        summary.users,
        summary.written,
        summary.skipped,
        summary.errors,
        summary.seconds,
        summary.entries_per_second,
        if summary.interrupted {
            ", interrupted"
        } else {
            ""
        }
    );
    if summary.interrupted {
        anyhow::bail!("interrupted; run it again to finish (it is safe to re-run)");
    }
    if summary.errors > 0 {
        anyhow::bail!("{} entries could not be written to Redis", summary.errors);
    }
    Ok(())
}

/// A progress bar on a terminal; elsewhere a plain line every 2 s.
async fn report_progress(progress: std::sync::Arc<warm::Progress>, terminal: bool) {
    let started = std::time::Instant::now();
    let line = |p: &warm::Progress| {
        let read = warm::count(&p.pairs) + warm::count(&p.users);
        format!(
            "{read} read, {} written, {} skipped, {} errors, {:.0} entries/s",
            warm::count(&p.written),
            warm::count(&p.skipped),
            warm::count(&p.errors),
            read as f64 / started.elapsed().as_secs_f64().max(1e-9)
        )
    };
    if terminal {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} warm [{elapsed}] {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        loop {
            bar.set_message(line(&progress));
            bar.tick();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    } else {
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            eprintln!("warm: {}", line(&progress));
        }
    }
}
