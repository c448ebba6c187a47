use clap::{CommandFactory, FromArgMatches};

fn main() {
    vitrs::util::tune_allocator();
    // A panic while the loader makes a batch (on its thread or the pool's) is reported once,
    // as the command's error line (`Batches::finish`), not as a backtrace per sample.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        let in_loader = thread.name() == Some(vitrs::data::loader::LOADER_THREAD)
            || thread.name() != Some("main")
                && info
                    .location()
                    .is_some_and(|l| l.file().contains("src/data/"));
        if !in_loader {
            default_hook(info);
        }
    }));
    let matches = vitrs::cli::Cli::command().get_matches();
    let cli = vitrs::cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // Every command ends at once on a signal with the shell's code for it (a download, a long
    // evaluation); training commands install it again after MPI starts and then stop at a step.
    vitrs::signals::install();
    if let Err(e) = vitrs::cli::run::run(cli, &matches) {
        // Names the rank and ends the whole job when this is one process of several.
        vitrs::dist::fail(&e);
    }
    vitrs::dist::finalize();
    // A run stopped by a signal or its time limit is not a finished one (docs/reliability.md).
    std::process::exit(vitrs::signals::exit_code());
}
