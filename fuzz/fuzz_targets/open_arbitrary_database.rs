//! libFuzzer entry of the `open_arbitrary_database` target (see fuzz/README.md).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mmsb_fuzz_targets::open_arbitrary_database(data));
