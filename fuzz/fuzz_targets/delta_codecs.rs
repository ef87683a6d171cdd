//! libFuzzer entry of the `delta_codecs` target (see fuzz/README.md).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mmsb_fuzz_targets::delta_codecs(data));
