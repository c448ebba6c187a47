//! Ctrl-C, SIGTERM and SIGHUP. Once training has started, the first one asks the loop to
//! finish its step, write a checkpoint and stop; the command then exits with the shell's code
//! for that signal (130, 143, 129), so a scheduler or a script can tell a stopped run from a
//! finished one. Before training starts (downloading, loading data) there is nothing to save,
//! and the process ends at once with the same code; so does a second signal.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};

/// Signals received.
pub static INTERRUPTS: AtomicUsize = AtomicUsize::new(0);
static LAST_SIGNAL: AtomicI32 = AtomicI32::new(0);
static TRAINING: AtomicBool = AtomicBool::new(false);

/// The exit code of a run stopped by `--max-training-hours` (sysexits' EX_TEMPFAIL: not done,
/// try again — with `--resume-from`).
pub const TIME_LIMIT_EXIT: i32 = 75;

extern "C" fn on_signal(sig: libc::c_int) {
    LAST_SIGNAL.store(sig, Ordering::SeqCst);
    let n = INTERRUPTS.fetch_add(1, Ordering::SeqCst) + 1;
    let quit = n >= 2 || !TRAINING.load(Ordering::SeqCst);
    let msg: &[u8] = if quit {
        b"\ninterrupt: quitting now\n"
    } else {
        b"\ninterrupt: finishing the current step and writing a checkpoint (again to quit at once)\n"
    };
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the rest is atomics.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        if quit {
            libc::_exit(128 + sig);
        }
    }
}

/// Install the handler for SIGINT, SIGTERM and SIGHUP (before anything slow starts).
pub fn install() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: `on_signal` is async-signal-safe (see above).
        unsafe {
            libc::signal(sig, handler);
        }
    }
}

/// From now on a signal stops the training loop at a step, with a checkpoint.
pub fn training_started() {
    TRAINING.store(true, Ordering::SeqCst);
}

/// Whether a stop was asked for.
pub fn interrupted() -> bool {
    INTERRUPTS.load(Ordering::SeqCst) > 0
}

static EXIT_CODE: AtomicI32 = AtomicI32::new(0);

/// The command's run ended for `reason` (a `StopReason` name): its exit code is 128 + the
/// signal for `interrupted`, [`TIME_LIMIT_EXIT`] for `time_limit`, 0 otherwise.
pub fn record_stop(reason: &str) {
    EXIT_CODE.store(exit_code_for(reason), Ordering::SeqCst);
}

/// The exit code of a command that returned without an error.
pub fn exit_code() -> i32 {
    EXIT_CODE.load(Ordering::SeqCst)
}

fn exit_code_for(reason: &str) -> i32 {
    match reason {
        "interrupted" => {
            128 + match LAST_SIGNAL.load(Ordering::SeqCst) {
                0 => libc::SIGINT, // another rank received it
                sig => sig,
            }
        }
        "time_limit" => TIME_LIMIT_EXIT,
        _ => 0,
    }
}
