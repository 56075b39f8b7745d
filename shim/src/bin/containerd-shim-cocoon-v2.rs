//! `containerd-shim-cocoon-v2`: the containerd runtime `io.containerd.cocoon.v2`.

fn main() {
    std::process::exit(cocoon_shim::containerd::main());
}
