//! libFuzzer entry of the `commit_record` target (see fuzz/README.md).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mmsb_fuzz_targets::commit_record(data));
