//! Gives the shared library its soname, `libkeypipe.so.<ABI major>`, so a
//! program linked against it finds the same ABI at run time.

fn main() {
    let abi = std::env::var("CARGO_PKG_VERSION_MINOR").expect("cargo sets it");
    // Before 1.0 the minor version is the ABI version (0.2.x -> ABI 2).
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libkeypipe.so.{abi}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
