//! libFuzzer entry of the `checkpoint_manifest` target (see fuzz/README.md).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mmsb_fuzz_targets::checkpoint_manifest(data));
