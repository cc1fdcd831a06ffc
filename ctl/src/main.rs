//! `meshctl`: drives meshd over its control socket. See `meshctl --help`.
#![forbid(unsafe_code)]

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
