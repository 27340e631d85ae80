//! `flox-runc`: the runc wrapper containerd's runc shim calls instead of runc.
//! All work is in the library; main only hands over argv and exits with its status.
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(flox_runc::run(args));
}
