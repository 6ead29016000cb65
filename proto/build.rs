//! Compiles `mailloop.proto` with the vendored protoc (no system install).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY-free: build scripts run single-threaded before any other code.
    unsafe { std::env::set_var("PROTOC", protoc) };
    tonic_prost_build::configure().compile_protos(&["mailloop.proto"], &["."])?;
    println!("cargo:rerun-if-changed=mailloop.proto");
    Ok(())
}
