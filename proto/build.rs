//! Compiles `switchyard.proto`; generated code lives in OUT_DIR, never in the tree.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=switchyard.proto");
    tonic_prost_build::configure()
        // Records stored in discovery are JSON, so a person can read them in the store.
        .type_attribute(".switchyard.v1", "#[derive(serde::Serialize, serde::Deserialize)]")
        .message_attribute(".switchyard.v1", "#[serde(default)]")
        .compile_protos(&["switchyard.proto"], &["."])?;
    Ok(())
}
