//! `flox-activate -- CMD ARGS...`: runs CMD inside the activated Flox environment mounted at
//! /run/flox/env (see the library docs). Prints one error line and exits non-zero only when
//! the command could not be started.
fn main() {
    let args = std::env::args_os().skip(1).collect();
    let failure = match flox_activate::run::parse_args(args) {
        Ok(invocation) => flox_activate::run::activate(invocation),
        Err(failure) => failure,
    };
    if failure.exit_code == 0 {
        println!("{}", failure.message);
    } else {
        eprintln!("{}", failure.message);
    }
    std::process::exit(failure.exit_code);
}
