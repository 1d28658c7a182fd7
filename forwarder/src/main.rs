//! `forwarder run|check|status|reload|server|switchover --config FILE`, `forwarder import-haproxy FILE`.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use forwarder::config::{self, Config};

#[derive(Parser)]
#[command(
    version,
    about = "Kernel-assisted TCP forwarder that keeps a Redis service highly available"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        /// Configuration file (TOML).
        #[arg(short, long, default_value_os_t = config::default_path())]
        config: PathBuf,
    },
    /// Validate a configuration and print the effective settings (defaults filled in).
    Check {
        #[arg(short, long, default_value_os_t = config::default_path())]
        config: PathBuf,
    },
    /// Ask the running daemon to re-read its configuration (as SIGHUP does) and print what
    /// changed, or why nothing did.
    Reload {
        #[arg(short, long, default_value_os_t = config::default_path())]
        config: PathBuf,
        /// The admin listener's address, instead of reading it from the configuration.
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
    },
    /// Set a server's state in the running daemon: `ready` (routed as the checks and Sentinels
    /// say), `drain` (no new sessions; established ones run until they end or timeout.drain) or
    /// `maint` (never routed, not checked). Kept across reloads, not across restarts.
    Server {
        /// The service's name.
        service: String,
        /// The server, ip:port as in /status.
        server: String,
        /// ready, drain or maint.
        #[arg(value_parser = ["ready", "drain", "maint"])]
        state: String,
        #[arg(short, long, default_value_os_t = config::default_path())]
        config: PathBuf,
        /// The admin listener's address, instead of reading it from the configuration.
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
    },
    /// Hand a Sentinel-managed service's master to a replica without losing a write: new
    /// clients are held, the replicas catch up, the Sentinels fail over, clients go to the new
    /// master. Prints how long clients were held.
    Switchover {
        /// The service's name.
        service: String,
        #[arg(short, long, default_value_os_t = config::default_path())]
        config: PathBuf,
        /// The admin listener's address, instead of reading it from the configuration.
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
    },
    /// Show the running daemon's services, masters, servers and counters (from its admin
    /// listener, found in the configuration unless --admin is given).
    Status {
        #[arg(short, long, default_value_os_t = config::default_path())]
        config: PathBuf,
        /// The admin listener's address, instead of reading it from the configuration.
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
        /// Print the /status JSON as the daemon sent it (pretty-printed) instead of the table.
        #[arg(long)]
        json: bool,
        /// Show it again every SECS seconds (default 2) until interrupted; a failed request is
        /// printed and tried again.
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2",
              value_parser = clap::value_parser!(u64).range(1..=3600))]
        watch: Option<u64>,
    },
    /// Translate an haproxy.cfg into a forwarder configuration (printed on stdout), listing
    /// every directive it could not translate, with its line, in a comment block at the end.
    ImportHaproxy {
        /// The haproxy.cfg to read.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::ImportHaproxy { file } => import_haproxy(&file),
        Command::Check { config } => match checked(&config) {
            Ok((cfg, budget)) => {
                println!(
                    "# descriptor budget: open-file limit {}, {} reserved, {} sessions in all",
                    budget.limit, budget.reserved, budget.sessions
                );
                let (tls, warnings) = cfg.tls_report(std::time::SystemTime::now());
                for line in tls {
                    println!("# {line}");
                }
                for w in warnings {
                    eprintln!("warning: {w}");
                }
                print!("{}", cfg.to_toml());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Reload { config, admin } => post(&config, admin, "/reload", ""),
        Command::Server {
            service,
            server,
            state,
            config,
            admin,
        } => post(
            &config,
            admin,
            &format!("/servers/{service}/{server}/state"),
            &state,
        ),
        Command::Switchover {
            service,
            config,
            admin,
        } => post(
            &config,
            admin,
            &format!("/services/{service}/switchover"),
            "",
        ),
        Command::Status {
            config,
            admin,
            json,
            watch,
        } => {
            let Some((admin, token)) = admin_of(&config, admin) else {
                return ExitCode::from(2);
            };
            let cli = forwarder::status::cli::Cli { admin, token, json };
            if let Some(secs) = watch {
                cli.watch(std::time::Duration::from_secs(secs));
            }
            printed(cli.once())
        }
        Command::Run { config } => {
            if let Err(e) = forwarder::budget::raise_nofile_limit() {
                tracing::warn!(error = %e, "cannot raise the open-file soft limit");
            }
            let (cfg, budget) = match checked(&config) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!("invalid configuration: {e}");
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            tracing::info!(
                limit = budget.limit,
                reserved = budget.reserved,
                sessions = budget.sessions,
                pipes_per_worker = budget.pipes_per_worker,
                "descriptor budget"
            );
            match run(cfg, budget, config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// POSTs `body` to `path` on the admin listener and prints the answer.
fn post(
    config: &std::path::Path,
    admin: Option<std::net::SocketAddr>,
    path: &str,
    body: &str,
) -> ExitCode {
    let Some((admin, token)) = admin_of(config, admin) else {
        return ExitCode::from(2);
    };
    printed(forwarder::status::cli::request(
        admin,
        "POST",
        path,
        body,
        token.as_deref(),
    ))
}

/// Prints an answer of the admin listener (exit 0), or the error (exit 1).
fn printed<E: std::fmt::Display>(answer: Result<String, E>) -> ExitCode {
    match answer {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the translation of haproxy.cfg `file`: exit 0 when there is one (warning on stderr
/// when it does not pass `forwarder check` as is), 2 when there is none.
fn import_haproxy(file: &std::path::Path) -> ExitCode {
    use std::io::Read;
    let mut text = Vec::new();
    let read =
        std::fs::File::open(file).and_then(|f| f.take(config::MAX_FILE + 1).read_to_end(&mut text));
    if let Err(e) = read {
        eprintln!("error: {}: cannot read: {e}", file.display());
        return ExitCode::from(2);
    }
    if text.len() as u64 > config::MAX_FILE {
        eprintln!(
            "error: {}: larger than {} bytes",
            file.display(),
            config::MAX_FILE
        );
        return ExitCode::from(2);
    }
    match forwarder::import::translate(&String::from_utf8_lossy(&text)) {
        Ok(t) => {
            print!("{}", t.toml);
            eprintln!(
                "{} service(s) translated, {} directive(s) not translated (listed at the end)",
                t.services,
                t.notes.len()
            );
            if let Err(e) = Config::parse(&t.toml, std::path::Path::new("<translation>")) {
                eprintln!("warning: the translation does not pass `forwarder check` as is: {e}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}: {e}", file.display());
            ExitCode::from(2)
        }
    }
}

/// Loads the configuration and plans it for this process's open-file limit.
fn checked(path: &std::path::Path) -> anyhow::Result<(Config, forwarder::budget::Budget)> {
    let mut cfg = Config::load(path)?;
    let limit = forwarder::budget::hard_nofile_limit()?;
    let budget = forwarder::budget::plan(&mut cfg, limit)
        .map_err(|e| anyhow::anyhow!("{}:{}: {}", path.display(), e.key, e.reason))?;
    Ok((cfg, budget))
}

fn run(cfg: Config, budget: forwarder::budget::Budget, path: PathBuf) -> anyhow::Result<()> {
    // Still one thread: bind (ports below 1024 need root), then drop privileges, then start the
    // threads, which inherit exactly what is kept.
    let bound = forwarder::daemon::bind(&cfg)?;
    let keep = forwarder::privileges::needed(cfg.datapath.mode);
    forwarder::privileges::drop_to(&cfg.process, &keep)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.datapath.threads())
        .enable_all()
        .build()?;
    rt.block_on(forwarder::daemon::run(cfg, budget, path, bound))
}

/// The admin listener (and its token) from `--admin` or the configuration file; prints why not.
fn admin_of(
    config: &std::path::Path,
    admin: Option<std::net::SocketAddr>,
) -> Option<(std::net::SocketAddr, Option<String>)> {
    let from_config = match Config::load_admin(config) {
        Ok(admin) => admin,
        Err(e) if admin.is_none() => {
            eprintln!("error: {e}");
            return None;
        }
        Err(_) => None,
    };
    // The full token, else the read-only one (enough for `status`; `reload` then gets a 403).
    let token = from_config
        .as_ref()
        .and_then(|a| a.token.clone().or_else(|| a.read_token.clone()));
    match admin.or(from_config.map(|a| a.listen)) {
        Some(a) => Some((a, token)),
        None => {
            eprintln!("error: {} has no [admin] listener", config.display());
            None
        }
    }
}

/// Logs to stderr. Colours only on a terminal, and not when `NO_COLOR` is set (no-color.org):
/// journald, files and log shippers get plain text.
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal() && !no_color)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
