//! `containerd-shim-flox-v2`: all work is in the library; main hands over argv and exits.
fn main() {
    std::process::exit(shim_launcher::run(std::env::args_os().skip(1).collect()));
}
