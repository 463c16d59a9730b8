//! What the fake servers' programs (`batchd-fake`, `batchd-fake-bedrock`) share: the port
//! flag, the rate argument parser, their runtime, the lines they announce on stdout and
//! waiting for SIGTERM or ctrl-c.

use std::io::Write;
use std::net::SocketAddr;

/// Where a fake listens.
#[derive(Debug, clap::Args)]
pub struct Listen {
    /// Port on 127.0.0.1; 0 lets the OS pick.
    #[arg(long, default_value_t = 0)]
    pub port: u16,
}

impl Listen {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

/// A probability argument: a number within 0..=1.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err("must be within 0..=1".to_owned())
    }
}

/// Runs `main` on a multi-threaded runtime of `threads` workers (at least one).
pub fn block_on<F: std::future::Future>(threads: usize, main: F) -> std::io::Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?;
    Ok(runtime.block_on(main))
}

/// Prints `lines` on stdout and flushes: scripts and tests read the first one to learn the
/// address.
pub fn announce(lines: &[String]) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    for line in lines {
        writeln!(stdout, "{line}")?;
    }
    stdout.flush()
}

/// Waits for SIGTERM or SIGINT (ctrl-c elsewhere).
#[cfg(unix)]
pub async fn wait_for_stop_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    Ok(())
}

/// Waits for ctrl-c.
#[cfg(not(unix))]
pub async fn wait_for_stop_signal() -> std::io::Result<()> {
    tokio::signal::ctrl_c().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_probabilities() {
        assert_eq!(parse_rate("0.25"), Ok(0.25));
        assert_eq!(parse_rate("1"), Ok(1.0));
        assert!(parse_rate("1.5").unwrap_err().contains("0..=1"));
        assert!(parse_rate("-0.1").is_err());
        assert!(parse_rate("half").is_err());
    }
}
