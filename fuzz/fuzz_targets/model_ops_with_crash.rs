//! libFuzzer entry of the `model_ops_with_crash` target (see fuzz/README.md).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mmsb_fuzz_targets::model_ops_with_crash(data));
