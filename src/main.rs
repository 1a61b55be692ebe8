//! The `usage-gateway` command: run the gateway, check a configuration, hash a caller key, or
//! start a self-contained demo.

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use usage_gateway::config::{hash_key, Config};

/// Exit status for a configuration that cannot be used (sysexits.h `EX_USAGE`).
const EXIT_BAD_CONFIG: u8 = 64;

#[derive(Debug, Parser)]
#[command(version, about = "Caching gateway in front of the Onomondo usage API")]
struct Cli {
    /// Configuration file (TOML); `USAGE_GATEWAY__SECTION__KEY` variables override it.
    #[arg(long, global = true, env = "USAGE_GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run,
    /// Validate the configuration and print a summary without secrets.
    Check,
    /// Read a caller key on stdin and print the hex SHA-256 for `key_sha256`.
    HashKey,
    /// Print a new random key and the `key_sha256` line that configures it.
    GenKey,
    /// Start the built-in upstream simulator and the gateway in front of it, on loopback.
    // Without the `demo` feature the subcommand stays (hidden) to say so, rather than be unknown.
    #[cfg_attr(not(feature = "demo"), command(hide = true))]
    Demo {
        /// Where the demo gateway listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(cli.config),
        Command::Check => check(cli.config),
        Command::HashKey => hash_stdin(),
        Command::GenKey => gen_key(),
        Command::Demo { listen } => demo(listen),
    }
}

fn load(path: Option<PathBuf>) -> Result<Config, ExitCode> {
    Config::load(path.as_deref()).map_err(|error| {
        eprintln!("usage-gateway: {error}");
        if path.is_none() {
            let demo = if cfg!(feature = "demo") {
                ", or try `usage-gateway demo`"
            } else {
                ""
            };
            eprintln!("usage-gateway: no --config given; see config/gateway.example.toml{demo}");
        }
        ExitCode::from(EXIT_BAD_CONFIG)
    })
}

/// The runtime: `worker_threads` workers, or one per core when `None`.
fn runtime(worker_threads: Option<usize>) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = worker_threads {
        builder.worker_threads(threads);
    }
    builder.enable_all().build().map_err(|error| {
        eprintln!("usage-gateway: cannot start the runtime: {error}");
        ExitCode::FAILURE
    })
}

fn run(path: Option<PathBuf>) -> ExitCode {
    let config = match load(path.clone()) {
        Ok(config) => config,
        Err(code) => return code,
    };
    // Dropped last: the access lines still pending are written before the process ends.
    let _access_log = usage_gateway::telemetry::init(&config.log);
    let runtime = match runtime(config.server.worker_threads) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        let bind = |address| async move {
            tokio::net::TcpListener::bind(address)
                .await
                .map_err(|error| {
                    tracing::error!(%address, %error, "cannot listen");
                    ExitCode::FAILURE
                })
        };
        let listeners = match (
            bind(config.server.listen).await,
            bind(config.admin.listen).await,
        ) {
            (Ok(api), Ok(admin)) => usage_gateway::Listeners {
                api,
                admin: Some(admin),
            },
            (Err(code), _) | (_, Err(code)) => return code,
        };
        let (handle, reloads) = usage_gateway::reload::channel();
        tokio::spawn(reload_on_sighup(path, handle));
        match usage_gateway::serve(config, listeners, shutdown_signal(), reloads).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(%error, "the gateway stopped with an error");
                ExitCode::FAILURE
            }
        }
    })
}

fn check(path: Option<PathBuf>) -> ExitCode {
    match Config::load(path.as_deref()) {
        Ok(config) => {
            say(&format!("configuration is valid\n{}", config.summary()));
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("usage-gateway: {error}");
            ExitCode::FAILURE
        }
    }
}

fn hash_stdin() -> ExitCode {
    let mut key = String::new();
    if let Err(error) = std::io::stdin().read_to_string(&mut key) {
        eprintln!("usage-gateway: cannot read the key from stdin: {error}");
        return ExitCode::FAILURE;
    }
    let key = key.trim_end_matches(['\r', '\n']);
    if key.is_empty() {
        eprintln!(
            "usage-gateway: no key on stdin (try: printf '%s' \"$KEY\" | usage-gateway hash-key)"
        );
        return ExitCode::FAILURE;
    }
    say(&hash_key(key));
    ExitCode::SUCCESS
}

/// Prints a line to stdout; a closed pipe (`usage-gateway check | head -1`) is not an error.
fn say(text: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

fn gen_key() -> ExitCode {
    let mut bytes = [0u8; 32];
    if let Err(error) = getrandom::fill(&mut bytes) {
        eprintln!("usage-gateway: no randomness available: {error}");
        return ExitCode::FAILURE;
    }
    let key = format!("ugk_{}", hex::encode(bytes));
    say(&format!(
        "key        = {key}\nkey_sha256 = \"{}\"",
        hash_key(&key)
    ));
    ExitCode::SUCCESS
}

#[cfg(feature = "demo")]
fn demo(listen: SocketAddr) -> ExitCode {
    let _access_log = usage_gateway::telemetry::init_default();
    let runtime = match runtime(None) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        let demo = match usage_gateway::demo::Demo::start(listen).await {
            Ok(demo) => demo,
            Err(error) => {
                eprintln!("usage-gateway: the demo could not start: {error}");
                return ExitCode::FAILURE;
            }
        };
        say(&demo.instructions());
        shutdown_signal().await;
        demo.stop().await;
        ExitCode::SUCCESS
    })
}

#[cfg(not(feature = "demo"))]
fn demo(_listen: SocketAddr) -> ExitCode {
    eprintln!(
        "usage-gateway: this build has no demo: it was built without the `demo` feature \
         (cargo's default features include it)"
    );
    ExitCode::FAILURE
}

/// Reloads the configuration file on every SIGHUP; an invalid file is refused and the
/// running configuration stays.
async fn reload_on_sighup(path: Option<PathBuf>, handle: usage_gateway::reload::ReloadHandle) {
    #[cfg(unix)]
    {
        let Ok(mut hangups) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("cannot listen for SIGHUP; reloading is off");
            return;
        };
        while hangups.recv().await.is_some() {
            match Config::load(path.as_deref()) {
                Ok(config) => {
                    if let Err(error) = handle.reload(config).await {
                        tracing::error!(%error, "reload failed");
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "reload refused: the new configuration is invalid; the running one stays");
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (path, handle);
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
