//! `cfg(mongodb)` when `MONGODB_URI` is set at build time: the MongoDB tests then run;
//! without it they compile as `#[ignore]` with the reason, so the runner shows them as
//! ignored rather than passed (there is no MongoDB server on the development machines).
fn main() {
    println!("cargo::rerun-if-env-changed=MONGODB_URI");
    println!("cargo::rustc-check-cfg=cfg(mongodb)");
    if std::env::var_os("MONGODB_URI").is_some_and(|v| !v.is_empty()) {
        println!("cargo::rustc-cfg=mongodb");
    }
}
