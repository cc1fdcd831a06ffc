//! `meshd`: the routing-mesh daemon of one node. See `meshd --help`.

use clap::Parser;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MESHD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = dataplane::daemon::Args::parse();
    let result = args.resolve().and_then(dataplane::daemon::run);
    if let Err(e) = result {
        eprintln!("meshd: {e}");
        std::process::exit(1);
    }
}
