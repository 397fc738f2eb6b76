//! Rebuild the programs when bpf-linker changes (e.g. `cargo xtask setup`
//! rebuilt it against a new LLVM).
fn main() {
    if let Some(linker) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("bpf-linker"))
            .find(|p| p.exists())
    }) {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
