//! `cocoon`: the Cocoon admin CLI.

fn main() {
    std::process::exit(cocoon_shim::cli::main());
}
