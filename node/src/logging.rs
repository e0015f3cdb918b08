//! Logs through tracing, filtered by `RUST_LOG`, as text or JSON lines on stderr.

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The filter when `RUST_LOG` is unset: our info lines, and only ractor_cluster's warnings
/// (it logs every TCP session at info, and every closed one at warn: the link supervisor
/// says what matters about links itself).
pub const DEFAULT_FILTER: &str = "info,ractor_cluster=error,ractor=warn";

/// The filter of client commands when `RUST_LOG` is unset: their output is what they print.
pub const CLIENT_FILTER: &str = "warn,ractor_cluster=off,ractor=off";

/// Installs the global subscriber. A bad `RUST_LOG` falls back to the default, with a warning.
/// `quiet` picks the client commands' default filter.
pub fn init(format: LogFormat, quiet: bool) {
    let default = if quiet { CLIENT_FILTER } else { DEFAULT_FILTER };
    let (filter, bad) = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => match EnvFilter::try_new(&spec) {
            Ok(f) => (f, None),
            Err(e) => (
                EnvFilter::new(default),
                Some(format!("RUST_LOG={spec:?} ignored: {e}")),
            ),
        },
        _ => (EnvFilter::new(default), None),
    };
    // Colour codes only for a terminal: a log file or a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if let Some(bad) = bad {
        tracing::warn!("{bad}");
    }
}
