use clap::{CommandFactory, FromArgMatches};

fn main() {
    vitrs::util::tune_allocator();
    let matches = vitrs::cli::Cli::command().get_matches();
    let cli = vitrs::cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Err(e) = vitrs::commands::run(cli, &matches) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
