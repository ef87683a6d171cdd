//! libFuzzer entry of the `sql_front_end` target (see fuzz/README.md).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mmsb_fuzz_targets::sql_front_end(data));
