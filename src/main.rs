//! The `wyng` binary: parse the command line (and the configuration file), set up logging,
//! run one command, and map errors to the original Wyng's exit codes. Each command's options
//! and report text live in `cmd/<command>.rs`.

mod cmd;

use clap::Parser;

fn main() {
    let args =
        match cmd::config::apply_config(cmd::config::normalize_args(std::env::args_os().collect()))
        {
            Ok(a) => a,
            Err(e) => {
                eprintln!("wyng: error: {e}");
                std::process::exit(9);
            }
        };
    let cli = match cmd::Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 9 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    init_logging(&cli.global);
    wyng::progress::set_enabled(!cli.global.quiet);
    if let Err(e) = cmd::run(cli) {
        // Errors quote archive-supplied strings: never raw control bytes to the terminal.
        eprintln!("wyng: error: {}", wyng::archive::printable(&e.to_string()));
        std::process::exit(e.exit_code());
    }
}

fn init_logging(g: &cmd::Global) {
    let level = if g.debug {
        "debug"
    } else if g.quiet {
        "error"
    } else {
        match g.verbose {
            0 => "warn",
            1 => "info",
            _ => "debug",
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("WYNG_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Colours only on a terminal, and never with NO_COLOR set.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
}
