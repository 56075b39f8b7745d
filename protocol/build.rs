//! Generates the agent API from `proto/agent.proto` with the pure-Rust
//! ttrpc code generator (no protoc needed).

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

fn main() {
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-changed=proto/agent.proto");
    Codegen::new()
        .out_dir(&out_dir)
        .inputs(["proto/agent.proto"])
        .include("proto")
        .rust_protobuf()
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
        .customize(Customize {
            async_all: true,
            ..Default::default()
        })
        .run()
        .expect("generating the agent protocol from proto/agent.proto");

    // The generated files carry crate-level inner attributes and docs, which
    // are not allowed inside the `include!` of a module; drop them.
    for name in ["agent.rs", "agent_ttrpc.rs"] {
        let path = out_dir.join(name);
        let text = std::fs::read_to_string(&path).expect("reading generated code");
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("#![") && !l.starts_with("//!"))
            .collect();
        std::fs::write(&path, kept.join("\n")).expect("writing generated code");
    }
}
