//! `usage-sim`: serves the simulated Onomondo usage API on a loopback address until Ctrl-C or
//! SIGTERM. Exit codes: 0 after a clean shutdown, 64 for bad options, 1 for runtime failures.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use usage_sim::{serve, SimOptions, Simulator};

/// Local simulator of the Onomondo usage API (see upstream-api.md §8).
#[derive(Debug, Parser)]
#[command(name = "usage-sim", version)]
struct Cli {
    /// Bind address; loopback only.
    #[arg(long, env = "USAGE_SIM_LISTEN", default_value = "127.0.0.1:8087")]
    listen: SocketAddr,
    #[command(flatten)]
    options: SimOptions,
}

/// Completes on Ctrl-C or (on Unix) SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    if !cli.listen.ip().is_loopback() {
        eprintln!(
            "usage-sim: refusing to listen on {}: the simulator binds loopback addresses only (127.0.0.0/8 or ::1)",
            cli.listen
        );
        return ExitCode::from(64);
    }
    let started = Instant::now();
    let sim = match Simulator::new(cli.options) {
        Ok(sim) => sim,
        Err(e) => {
            eprintln!("usage-sim: {e}");
            return ExitCode::from(64);
        }
    };
    let built_ms = started.elapsed().as_millis();
    let listener = match tokio::net::TcpListener::bind(cli.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("usage-sim: cannot bind {}: {e}", cli.listen);
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().map_or(cli.listen, |a| a);
    tracing::info!(%addr, build_ms = built_ms as u64, sim = ?sim, "usage-sim listening");
    match serve(sim, listener, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            ExitCode::FAILURE
        }
    }
}
