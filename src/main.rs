//! The `shardcast` binary: command line -> config -> runtime.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use shardcast::config::{Config, LogFormat, Overrides};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Thread-per-core WebSocket pub/sub server.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// TOML config file (keys and defaults: tuning/shardcast.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Override [server] listen, e.g. 0.0.0.0:8080 (port 0 = any free port).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Override [admin] listen, e.g. 127.0.0.1:9091 ("" disables the admin plane).
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<String>,
    /// Override [server] shards (0 = one per online core).
    #[arg(long, value_name = "N")]
    shards: Option<u64>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides = Overrides { listen: cli.listen, admin_listen: cli.admin_listen, shards: cli.shards };
    let config = match Config::load(cli.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shardcast: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.print_config {
        print!("{}", config.raw.to_toml());
        return ExitCode::SUCCESS;
    }
    init_logging(&config);
    // A panic is a bug. Unwinding would end only that shard's thread and
    // leave a node that looks healthy but has lost a core's connections and
    // listener; exit instead, so the supervisor (systemd: Restart=on-failure)
    // restarts a whole node.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!("panic: {info}; aborting so that shardcast is restarted whole");
        default_hook(info);
        std::process::abort();
    }));
    match shardcast::runtime::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("shardcast: {e}");
            ExitCode::FAILURE
        }
    }
}
