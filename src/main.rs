use clap::{CommandFactory, FromArgMatches};

fn main() {
    vitrs::util::tune_allocator();
    let matches = vitrs::cli::Cli::command().get_matches();
    let result = vitrs::cli::Cli::from_arg_matches(&matches)
        .map_err(|e| e.exit())
        .and_then(|cli| Ok(vitrs::commands::run(cli, &matches)));
    if let Ok(Err(e)) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
