//! cargo-fuzz target `tce` (see `fuzz/shared.rs` for what it feeds and checks).
#![no_main]

#[path = "../shared.rs"]
mod shared;

libfuzzer_sys::fuzz_target!(|data: &[u8]| shared::run("tce", data));
