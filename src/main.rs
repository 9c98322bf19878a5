//! The `wyng` binary: parse the command line (and the configuration file), set up logging,
//! run one command, and map errors to the original Wyng's exit codes. Each command's options
//! and report text live in `cmd/<command>.rs`.

mod cmd;

use clap::FromArgMatches;

fn main() {
    // At a TAB, the shell's completion script runs `COMPLETE=<shell> wyng -- WORDS`: answer and
    // exit (nothing else runs).
    clap_complete::CompleteEnv::with_factory(cmd::shape::command).complete();
    let raw: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // Errors go to stderr as one line; with --json also as JSON on stdout, for scripts.
    let json = raw.iter().any(|a| a == "--json");
    let args = cmd::config::normalize_args(raw);
    let args = cmd::config::check_repeats(&args)
        .and_then(|()| cmd::config::apply_config(args))
        .unwrap_or_else(|e| fail(json, &e, 9, "usage"));
    let mut notes = Ok(Vec::new());
    let parsed = cmd::shape::command()
        .try_get_matches_from(args)
        .and_then(|m| {
            notes = cmd::shape::no_effect_notes(&m);
            cmd::Cli::from_arg_matches(&m)
        });
    let notes = notes.unwrap_or_else(|e| fail(json, &e, 9, "usage"));
    let cli = match parsed {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            std::process::exit(0);
        }
        Err(e) if json => {
            let text = e.render().to_string();
            let first = text
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("error: ");
            fail(true, first, 9, "usage")
        }
        Err(e) => {
            let _ = e.print();
            std::process::exit(9);
        }
    };
    init_logging(&cli.global);
    if !cli.global.quiet {
        notes.iter().for_each(|n| eprintln!("{n}"));
    }
    if let Err(e) = cmd::run(cli) {
        fail(json, &cmd::errors::message(&e), e.exit_code(), e.kind());
    }
}

/// Reports an error (stderr; and stdout as JSON with --json) and exits with `code`.
fn fail(json: bool, message: &str, code: i32, kind: &str) -> ! {
    // Errors quote archive-supplied strings: never raw control bytes to the terminal.
    let message = wyng::archive::printable(message);
    eprintln!("wyng: error: {message}");
    // Stdout holds one JSON document: a report already printed stands (the exit code and
    // stderr say what failed after it).
    if json && !cmd::json_written() {
        println!(
            "{}",
            serde_json::json!({"error": {"message": message, "exit_code": code, "kind": kind}})
        );
    }
    std::process::exit(code);
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
