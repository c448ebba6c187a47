use clap::{CommandFactory, FromArgMatches};

fn main() {
    vitrs::util::tune_allocator();
    let matches = vitrs::cli::Cli::command().get_matches();
    let cli = vitrs::cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Err(e) = vitrs::commands::run(cli, &matches) {
        // Names the rank and ends the whole job when this is one process of several.
        vitrs::dist::fail(&e);
    }
    vitrs::dist::finalize();
}
